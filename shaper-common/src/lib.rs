//! Types shared by the eBPF programs (`shaper-ebpf`) and the daemon (`shaper-user`).
//!
//! Every type here crosses the kernel/user boundary through a BPF map, so each is
//! `#[repr(C)]`, built from fixed-width integers and arrays only, with explicit
//! padding fields and a size assertion. Enumerations travel as integers: see the
//! `*_`-prefixed constants next to each field.
//!
//! Byte order: addresses are in network byte order (as on the wire), ports and
//! every other integer in host byte order.
#![no_std]

pub mod connlimit;
pub mod instances;
pub mod names;
pub mod rules;

pub use rules::{
    rule_node_index, target_class, RuleNode, CGROUP_LEVELS, MAX_CGROUP_LEVEL, MAX_RULES, MAX_RULE_NODES,
    OP_CGROUP, OP_CGROUP_UNDER, OP_COMM, OP_GID, OP_LADDR, OP_LPORT, OP_PID, OP_PROTO, OP_RADDR, OP_RPORT,
    OP_TRUE, OP_UID, OP_USERSPACE, RULE_BANKS, TARGET_DEFAULT, TARGET_VERDICT, USERSPACE_TESTS,
};

/// Largest number of classes (HTB leaves) per interface, the implicit default included.
pub const MAX_CLASSES: u32 = 1024;
/// Largest number of shaped interfaces.
pub const MAX_IFACES: u32 = 16;
/// Capacity of LISTENERS (bound ports).
pub const MAX_LISTENERS: u32 = 16_384;
/// Bound ports one user (other than root) may hold in LISTENERS; further
/// binds are counted (`ERR_LISTENER_CAP`), not recorded.
pub const MAX_LISTENERS_PER_UID: u32 = 1024;
/// Users LISTEN_COUNTS keeps a count for.
pub const MAX_LISTEN_UIDS: u32 = 65_536;
/// Default capacity of the flow map (`[daemon] max_flows` overrides it at load).
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;

/// HTB qdisc handle major used by shaper on every interface (`1:`).
pub const HTB_MAJOR: u32 = 1;
/// HTB minor of the root class under which every leaf hangs (`1:1`).
pub const HTB_ROOT_MINOR: u32 = 1;
/// HTB minor of class index 0; class index `i` is `1:(0x10 + i)` in hex, as `tc` prints it.
pub const HTB_LEAF_MINOR_BASE: u32 = 0x10;

/// HTB minor of the leaf every tree has for pure TCP acknowledgements (no
/// payload, or the few bytes of Ethernet padding): served first, so the ACKs
/// of a download are not stuck behind a saturating upload in their class's
/// queue. Outside every class: at most 1/20 of the capacity.
pub const HTB_ACK_MINOR: u32 = 0xc00;
const _: () = assert!(HTB_ACK_MINOR >= instances::SHARED_MINOR_BASE + MAX_CLASSES);
const _: () = assert!(HTB_ACK_MINOR + MAX_CLASSES <= instances::INSTANCE_MINOR_BASE);

/// The HTB class id (`major << 16 | minor`) of class index `class`.
#[inline(always)]
pub const fn classid_of(class: u32) -> u32 {
    (HTB_MAJOR << 16) | (HTB_LEAF_MINOR_BASE + class)
}

/// Which way a packet crosses an interface, seen from this host. The one
/// direction type of the workspace: the classifier, the HTB plans, the
/// attachments and the control protocol all use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum Direction {
    /// Leaving the host (uploads).
    Egress,
    /// Arriving at the host (downloads, shaped through an IFB).
    Ingress,
}

impl core::fmt::Display for Direction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Direction {
    /// Both directions, egress first.
    pub const BOTH: [Direction; 2] = [Direction::Egress, Direction::Ingress];

    /// "egress" or "ingress", as the CLI and the config spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of the flow map: one entry per socket tuple, seen from this host.
///
/// On egress the local side is the packet's source, on ingress its destination,
/// so both directions of a connection share one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`], or another for port-less protocols).
    pub proto: u8,
    /// Local port, host byte order (0 for protocols without ports).
    pub lport: u16,
    /// Remote port, host byte order (0 for protocols without ports).
    pub rport: u16,
    pub _pad: u16,
    /// Local address, network byte order; IPv4 uses the first 4 bytes, the rest are zero.
    pub laddr: [u8; 16],
    /// Remote address, network byte order; IPv4 uses the first 4 bytes, the rest are zero.
    pub raddr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// The kernel evaluated the rule table for this flow (it is re-evaluated when
/// [`Settings::rules_gen`] moves past [`FlowValue::rules_gen`]).
pub const ORIGIN_KERNEL: u8 = 0;
/// The daemon decided the class (rules the kernel cannot evaluate, or an adopted
/// connection); the kernel keeps it until the daemon changes it.
pub const ORIGIN_DAEMON: u8 = 1;
/// An operator pinned the flow into a class; nothing re-evaluates it.
pub const ORIGIN_PINNED: u8 = 2;

/// [`FlowValue::class`] meaning "the default class of whichever interface the packet
/// crosses" (the rules matched nothing, or no rules are loaded).
pub const CLASS_DEFAULT: u16 = 0xffff;

/// [`FlowValue::flags`]: the kernel's verdict depended on a test only the daemon
/// can make (or on a socket owner it did not know); the daemon has the final word.
pub const FLOW_PROVISIONAL: u8 = 1;

/// Value of the flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Class index the flow belongs to (see [`classid_of`]), or [`CLASS_DEFAULT`].
    pub class: u16,
    /// Who decided the class: one of the `ORIGIN_*` constants.
    pub origin: u8,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// [`Settings::rules_gen`] at the time the kernel decided.
    pub rules_gen: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC) of the last packet.
    pub last_seen_ns: u64,
    /// Bytes and packets this host sent on the flow.
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Bytes and packets this host received on the flow (ingress classification).
    pub rx_bytes: u64,
    pub rx_packets: u64,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 48);

/// Per-class counters kept by the classifier (a per-CPU array indexed by
/// [`class_stats_index`]). Bytes are `skb->len`: the whole frame as the
/// classifier saw it, link-layer header included.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClassStats {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}
const _: () = assert!(core::mem::size_of::<ClassStats>() == 32);

/// Index of (interface slot, class) in the class counters.
#[inline(always)]
pub const fn class_stats_index(iface_slot: u32, class: u32) -> u32 {
    iface_slot * MAX_CLASSES + class
}
pub const CLASS_STATS_ENTRIES: u32 = MAX_IFACES * MAX_CLASSES;

/// Entries of the interface table (IFACE_TABLE), a power of two.
pub const IFACE_TABLE_SIZE: u32 = 256;

/// Index of interface `ifindex` in the interface table.
#[inline(always)]
pub const fn iface_table_index(ifindex: u32) -> u32 {
    ifindex & (IFACE_TABLE_SIZE - 1)
}

/// What the classifier needs to know about an interface it is attached to.
///
/// Two maps hold it: IFACES (a hash keyed by ifindex, every registered
/// interface) and IFACE_TABLE (an array the classifier reads first, because
/// an array lookup costs a fraction of a hash lookup): entry
/// [`iface_table_index`]`(ifindex)` holds the interface whose `ifindex` field
/// it carries. An interface whose entry another one holds is found in IFACES.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    /// Slot of the interface in the class counters, `0..MAX_IFACES`.
    pub slot: u32,
    /// Class index for traffic that matches no rule, and for classes not instantiated here.
    pub default_class: u16,
    /// Length of the link-layer header in front of the IP header (14 on Ethernet, 0 on
    /// raw-IP devices such as WireGuard or tun).
    pub l2_len: u16,
    /// The IFB device ingress traffic is redirected to (its HTB tree shapes
    /// downloads); 0 when the interface's ingress is not shaped; [`IFB_DOWN`]
    /// while the IFB is down or gone (arriving packets pass unshaped).
    pub ifb_ifindex: u32,
    /// The interface described; 0 in an unused IFACE_TABLE entry (the
    /// datapath sets it when it registers the interface).
    pub ifindex: u32,
    /// Bit `i` is set when class index `i` exists (has an HTB leaf) on this
    /// interface, in both directions.
    pub classes: [u64; (MAX_CLASSES / 64) as usize],
}
const _: () = assert!(core::mem::size_of::<IfaceInfo>() == 16 + 8 * (MAX_CLASSES as usize / 64));

/// `IfaceInfo::ifb_ifindex` while the interface's IFB is down or deleted: a
/// redirect there would drop every arriving packet (the kernel frees a packet
/// redirected to an ifindex with no device, and a down device queues into
/// `noop`, which drops), so the classifier lets it pass unshaped and counts
/// `ERR_IFB_DOWN` until the daemon has restored the IFB. Never a real ifindex
/// (the kernel's are positive `int`s).
pub const IFB_DOWN: u32 = u32::MAX;

impl IfaceInfo {
    /// An interface with no classes yet and unshaped ingress.
    pub const fn new(slot: u32, default_class: u16, l2_len: u16) -> Self {
        Self {
            slot,
            default_class,
            l2_len,
            ifb_ifindex: 0,
            ifindex: 0,
            classes: [0; (MAX_CLASSES / 64) as usize],
        }
    }

    /// Marks class index `class` as present on the interface.
    pub fn add_class(&mut self, class: u32) {
        if let Some(word) = self.classes.get_mut(((class >> 6) & (MAX_CLASSES / 64 - 1)) as usize) {
            *word |= 1u64 << (class & 63);
        }
    }

    #[inline(always)]
    pub fn has_class(&self, class: u32) -> bool {
        let word = ((class >> 6) & (MAX_CLASSES / 64 - 1)) as usize;
        match self.classes.get(word) {
            Some(bits) => bits & (1u64 << (class & 63)) != 0,
            None => false,
        }
    }
}

/// Global run-time settings, a single-entry array map rewritten by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Generation of the rule table in force. The active bank is `rules_gen % RULE_BANKS`.
    /// Zero means "no rules loaded yet": every flow takes its interface's default class.
    pub rules_gen: u32,
    /// `SETTING_*` bits.
    pub flags: u32,
    /// Cookie of the network namespace of the shaped interfaces (the
    /// daemon's): connections there inherit the owners of ports bound there only.
    pub netns: u64,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 16);

/// The classifier evaluates process tests from socket owner records and sends
/// each new flow to the daemon. Off, process tests are unknown to the kernel
/// (the "scan only" model of pyshaper: the daemon decides at its next scan).
pub const SETTING_PROCESS_RULES: u32 = 1;
/// The rule table tests cgroups: look up the socket's cgroup ancestry on a miss.
pub const SETTING_CGROUP_RULES: u32 = 2;

/// The process that owns a socket, as the cgroup socket hooks saw it (OWNERS:
/// socket cookie → Owner; LISTENERS: [`ListenKey`] → Owner).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Owner {
    /// Process id (the thread group id).
    pub tgid: u32,
    /// Real uid and gid, as seen from the initial user namespace.
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    /// cgroup v2 id (the inode number of its directory) of the process.
    pub cgroup_id: u64,
    /// The socket the record was written for (for LISTENERS: the bound socket,
    /// so that its release removes only its own entry).
    pub cookie: u64,
    /// Name of the process (its thread group leader's: what /proc/PID/comm
    /// shows, whatever the thread itself is called), NUL-padded (at most 15
    /// characters).
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Owner>() == 48);

/// What the daemon found about one process for the table's userspace tests
/// (PROC_TESTS: tgid → ProcTests).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProcTests {
    /// [`Settings::rules_gen`] the bits belong to (test numbers change with the table).
    pub rules_gen: u32,
    pub _pad: u32,
    /// Bit `i`: the daemon knows the answer to userspace test `i` …
    pub known: u64,
    /// … and this is it.
    pub values: u64,
}
const _: () = assert!(core::mem::size_of::<ProcTests>() == 24);

/// Capacity of PROC_TESTS (processes).
pub const MAX_PROC_TESTS: u32 = 65_536;

/// Key of LISTENERS: a bound port, in one network namespace, on one local
/// address (all zeros for a wildcard bind: 0.0.0.0 or ::). Connections
/// accepted on it inherit its owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenKey {
    /// Cookie of the network namespace the socket was bound in
    /// (`bpf_get_netns_cookie`, `SO_NETNS_COOKIE`).
    pub netns: u64,
    /// The bound address, network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub proto: u8,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 32);

impl ListenKey {
    /// The bound ports a connection on `flow`, in network namespace `netns`,
    /// may have been accepted on, in the order to try them: its own address,
    /// its family's wildcard, then the IPv6 wildcard (a dual-stack IPv6 socket
    /// accepts IPv4 connections too). A bind in another namespace never
    /// matches. The classifier and the daemon's reconcile both look owners up
    /// this way.
    #[inline(always)]
    pub const fn accepting(flow: &FlowKey, netns: u64) -> [ListenKey; 3] {
        let exact = ListenKey {
            netns,
            addr: flow.laddr,
            family: flow.family,
            proto: flow.proto,
            port: flow.lport,
            _pad: 0,
        };
        let wildcard = ListenKey { addr: [0; 16], ..exact };
        [exact, wildcard, ListenKey { family: FAMILY_V6, ..wildcard }]
    }
}

/// [`FlowEvent::flags`]: `owner` is valid.
pub const EVENT_OWNER: u16 = 1;
/// [`FlowEvent::flags`]: the kernel's verdict is provisional (see [`FLOW_PROVISIONAL`]).
pub const EVENT_PROVISIONAL: u16 = 2;
/// [`FlowEvent::flags`]: the flow's class has `per` and its instance has no
/// leaf yet (see [`instances`]); `class` is the flow's class.
pub const EVENT_INSTANCE: u16 = 4;

/// A new flow with a local socket, sent by the classifier to the daemon
/// through the EVENTS ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub owner: Owner,
    /// Cookie of the packet's socket.
    pub cookie: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the flow's first packet.
    pub ts_ns: u64,
    /// The kernel's verdict: a class index or [`CLASS_DEFAULT`].
    pub class: u16,
    /// `EVENT_*` bits.
    pub flags: u16,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 112);

// Error counters, a per-CPU array (ERRORS) indexed by the `ERR_*` constants,
// each named in ERROR_NAMES as `status` shows it.
/// A new flow's entry could not be inserted in FLOWS.
pub const ERR_FLOW_INSERT: u32 = 0;
/// The rule table was malformed (or the evaluation ran out of steps): the flow took the default class.
pub const ERR_RULE_EVAL: u32 = 1;
/// A packet crossed an interface the daemon did not register.
pub const ERR_NO_IFACE: u32 = 2;
/// The EVENTS ring buffer was full: the daemon will see the flow at its next scan.
pub const ERR_EVENT_LOST: u32 = 3;
/// OWNERS or LISTENERS could not take a record.
pub const ERR_OWNER_INSERT: u32 = 4;
/// An arriving packet passed unshaped: its interface's IFB was down or gone
/// ([`IFB_DOWN`]) until the daemon restored it.
pub const ERR_IFB_DOWN: u32 = 5;
/// A user holding [`MAX_LISTENERS_PER_UID`] bound ports bound another (not recorded).
pub const ERR_LISTENER_CAP: u32 = 6;
/// The error counters there are.
pub const ERR_COUNT: u32 = 7;
/// The name of each error counter, by index (`ERR_*`).
pub const ERROR_NAMES: [&str; ERR_COUNT as usize] =
    ["flow_insert", "rule_eval", "no_interface", "event_lost", "owner_insert", "ifb_down", "listener_cap"];

/// Version of the layout of the pinned maps (their key and value types and
/// sizes). The daemon pins under `<pin dir>/v<PIN_LAYOUT>`; bump it with any
/// change to a pinned map's type, key, value or fixed size, so that a new
/// daemon never reads maps written by an incompatible one.
pub const PIN_LAYOUT: u32 = 6;

/// Entries of QUOTA_USAGE and QUOTA_GATES: classes with a quota and their
/// instances.
pub const MAX_QUOTAS: u32 = 16_384;

/// Key of QUOTA_USAGE and QUOTA_GATES: a class index and one of its
/// instances ([`QUOTA_CLASS_WIDE`]: the class as a whole). Instances are the
/// per-user/program/... leaves under a class with `per`; their key is
/// whatever the classifier derives for them (uid, cgroup id, ...).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct QuotaKey {
    pub class: u32,
    pub _pad: u32,
    pub instance: u64,
}
const _: () = assert!(core::mem::size_of::<QuotaKey>() == 16);

/// [`QuotaKey::instance`] of the class as a whole.
pub const QUOTA_CLASS_WIDE: u64 = 0;

/// The QUOTA_GATES entry present while some quota blocks (its flags are
/// [`GATE_BLOCKED`]): the connect hooks decide a new connection's class only
/// then. Never a real class.
pub const QUOTA_ANY_BLOCKED: QuotaKey = QuotaKey { class: u32::MAX, _pad: 0, instance: u64::MAX };

/// What the classifier counted against a quota this period (QUOTA_USAGE),
/// in bytes as the classifier sees them (`skb->len`: the IP packet with its
/// link-layer header; a GSO packet counts whole). The daemon writes an entry
/// only to create it, to reset it (a new period, `shaper usage reset`) or to
/// restore it from the state file; the classifier adds to it atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QuotaUsage {
    pub egress_bytes: u64,
    pub ingress_bytes: u64,
    /// Bytes the classifier dropped because the quota was used up (`then = "block"`).
    pub dropped_bytes: u64,
    pub _pad: u64,
}
const _: () = assert!(core::mem::size_of::<QuotaUsage>() == 32);

/// [`QuotaGate::directions`]: egress traffic counts against the quota.
pub const QUOTA_EGRESS: u32 = 1;
/// [`QuotaGate::directions`]: ingress traffic counts against the quota.
pub const QUOTA_INGRESS: u32 = 2;
/// [`QuotaGate::flags`]: drop the packet that would take the counted bytes
/// past `limit_bytes`, and every one after it (`then = "block"`), without
/// waiting for the daemon.
pub const GATE_BLOCK_AT_LIMIT: u32 = 1;
/// [`QuotaGate::flags`]: the quota is used up and blocks: drop every packet
/// of the class (instance), both directions.
pub const GATE_BLOCKED: u32 = 2;

/// A quota as the classifier enforces it (QUOTA_GATES), written by the daemon only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QuotaGate {
    pub limit_bytes: u64,
    /// Start of the period the usage belongs to, seconds since the Unix
    /// epoch: a daemon that finds another period here starts a new one.
    pub period_start: u64,
    /// `QUOTA_EGRESS` | `QUOTA_INGRESS`.
    pub directions: u32,
    /// `GATE_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<QuotaGate>() == 24);

/// Longest class name the pinned class table holds (bytes, NUL-padded).
pub const CLASS_NAME_BYTES: usize = 60;

/// The name a class index stands for (CLASS_NAMES, an array of
/// [`MAX_CLASSES`]). Written by the daemon, never read by the programs: it
/// keeps the name → index assignment with the pinned counters, so a restarted
/// daemon gives each class its old index (and HTB class id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassName {
    /// 1 when the index is in use.
    pub used: u32,
    pub name: [u8; CLASS_NAME_BYTES],
}
const _: () = assert!(core::mem::size_of::<ClassName>() == 64);

impl Default for ClassName {
    fn default() -> Self {
        Self { used: 0, name: [0; CLASS_NAME_BYTES] }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), has no implicit padding (explicit `_pad`
    // fields and the size assertions above), and is valid for any bit pattern.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::ClassStats {}
    unsafe impl aya::Pod for super::IfaceInfo {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::RuleNode {}
    unsafe impl aya::Pod for super::rules::RuleEntry {}
    unsafe impl aya::Pod for super::rules::RuleHead {}
    unsafe impl aya::Pod for super::rules::RuleChunk {}
    unsafe impl aya::Pod for super::rules::RuleBound {}
    unsafe impl aya::Pod for super::rules::PrefixKey {}
    unsafe impl aya::Pod for super::rules::CgroupKey {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::ProcTests {}
    unsafe impl aya::Pod for super::ClassName {}
    unsafe impl aya::Pod for super::QuotaKey {}
    unsafe impl aya::Pod for super::QuotaUsage {}
    unsafe impl aya::Pod for super::QuotaGate {}
    unsafe impl aya::Pod for super::instances::ClassMode {}
    unsafe impl aya::Pod for super::instances::InstanceKey {}
    unsafe impl aya::Pod for super::instances::InstanceSlot {}
    unsafe impl aya::Pod for super::instances::FlowInstance {}
    unsafe impl aya::Pod for super::instances::InstanceStats {}
    unsafe impl aya::Pod for super::connlimit::ConnLimit {}
    unsafe impl aya::Pod for super::connlimit::GateEntry {}
    unsafe impl aya::Pod for super::connlimit::ConnKernel {}
    unsafe impl aya::Pod for super::connlimit::ConnDaemon {}
}
