//! The per-packet path shared by the egress and ingress classifiers.
//!
//! Both directions of a connection share one flow entry: on egress the
//! packet's source is the local end, on ingress its destination. Egress
//! packets carry their socket (owner record, cgroup); ingress packets have
//! none yet at tc, so a connection first seen on ingress (an inbound one)
//! takes the owner of the port it arrives on.

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP},
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_redirect, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
    },
    programs::TcContext,
};
use aya_log_ebpf::debug;
use shaper_common::{
    class_stats_index, instances::MODE_QUOTA, Direction, FlowEvent, FlowKey, FlowValue, CLASS_DEFAULT,
    ERR_EVENT_LOST, ERR_FLOW_INSERT, ERR_IFB_DOWN, ERR_NO_IFACE, EVENT_OWNER, EVENT_PROVISIONAL,
    FLOW_PROVISIONAL, HTB_ACK_MINOR, HTB_MAJOR, IFB_DOWN, ORIGIN_KERNEL, SETTING_CGROUP_RULES,
    SETTING_PROCESS_RULES,
};

use crate::{
    clock, iface, instance,
    listen::listener,
    maps::{count_error, CLASS_MODES, CLASS_STATS, EVENTS, FLOWS, KEPT_FLOWS, OWNERS, SCRATCH, SETTINGS},
    packet::{flow_key, KeyBuf},
    quota,
    rules::{self, verdict_class, Walk, CGROUP_LEVELS},
    TC_ACT_SHOT, TC_ACT_UNSPEC,
};

/// `TCP_TIME_WAIT` in `bpf_sock.state`.
const TCP_TIME_WAIT: u32 = 6;

#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // SAFETY: the pointer comes from a live map value; the atomic add keeps
    // concurrent CPUs from losing each other's updates.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Fills in what the rules may ask about the packet's socket (its owner and its
/// cgroup ancestry) in SCRATCH. Returns whether the daemon should hear of the
/// flow, and the socket's cookie (0 when there is none).
#[inline(always)]
fn socket_facts(
    ctx: &TcContext,
    direction: Direction,
    settings: u32,
    rules_gen: u32,
    key: &FlowKey,
) -> (bool, u64) {
    let Some(facts) = SCRATCH.get_ptr_mut(0) else { return (false, 0) };
    // SAFETY: this CPU's slot of SCRATCH, used by nothing else during this run.
    let facts = unsafe { &mut *facts };
    facts.has_owner = 0;
    facts.has_cgroup = 0;
    facts.rules_gen = rules_gen;
    if settings & SETTING_PROCESS_RULES == 0 {
        return (false, 0);
    }
    if direction == Direction::Ingress {
        // No socket yet: an inbound connection belongs to the port's owner.
        if let Some(owner) = listener(key) {
            facts.owner = owner;
            facts.has_owner = 1;
            return (true, 0);
        }
        return (false, 0);
    }
    let skb = ctx.skb.skb;
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut c_void) };
    if cookie == 0 {
        return (false, 0);
    }
    // SAFETY: read-only look at a map value.
    if let Some(owner) = unsafe { OWNERS.get(cookie) } {
        facts.owner = *owner;
        facts.has_owner = 1;
    } else {
        // A socket no hook saw: a connection accepted on a bound port (or the
        // handshake's request socket) inherits the port's owner. Time-wait
        // sockets are left out: their port may have been reused since.
        // SAFETY: reading the context's socket pointer, checked for null below.
        let sk = unsafe { (*skb).__bindgen_anon_2.sk };
        // SAFETY: `sk` is a valid socket (common part) after the null check.
        if !sk.is_null() && unsafe { (*sk).state } != TCP_TIME_WAIT {
            if let Some(owner) = listener(key) {
                facts.owner = owner;
                facts.has_owner = 1;
            }
        }
    }
    if settings & SETTING_CGROUP_RULES != 0 {
        // SAFETY: helpers on the program's own context.
        facts.cgroup = unsafe { bpf_skb_cgroup_id(skb) };
        if facts.cgroup != 0 {
            facts.has_cgroup = 1;
            let mut level = 0;
            while level < CGROUP_LEVELS {
                // SAFETY: as above; levels past the socket's depth give 0.
                facts.ancestors[level] = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
                level += 1;
            }
        }
    }
    // A socket no record explains is left to the reconcile: no report.
    (facts.has_owner != 0, cookie)
}

/// Tells the daemon about a flow whose verdict waits for it (the only ones
/// reported: a flood of flows the kernel decides costs the daemon nothing).
#[inline(always)]
fn send_event(walk: &Walk, cookie: u64, class: u16) {
    let Some(facts) = SCRATCH.get(0) else { return };
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count_error(ERR_EVENT_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved ring-buffer slot of the right size;
    // every field is written before the slot is submitted.
    unsafe {
        (*event).key = walk.key;
        (*event).owner = facts.owner;
        (*event).cookie = cookie;
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).class = class;
        let mut flags = EVENT_PROVISIONAL;
        if facts.has_owner != 0 {
            flags |= EVENT_OWNER;
        }
        (*event).flags = flags;
        (*event)._pad = 0;
    }
    // The verdict waits for the daemon's answer: wake it now (forced: the
    // kernel's adaptive wake-up stays silent while earlier reports are unread).
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}

/// A verdict, with what the daemon must be told about it.
struct Decision {
    class: u16,
    provisional: bool,
    report: bool,
    cookie: u64,
}

impl Decision {
    #[inline(always)]
    fn flags(&self) -> u8 {
        if self.provisional {
            FLOW_PROVISIONAL
        } else {
            0
        }
    }

    /// Tells the daemon, once the flow entry it will look for exists: only
    /// when its verdict waits for the daemon (a test only the daemon makes
    /// decided it). A flood of flows the kernel decides costs the daemon nothing.
    #[inline(always)]
    fn report(&self, walk: &Walk) {
        if self.report && self.provisional {
            send_event(walk, self.cookie, self.class);
        }
    }
}

/// Evaluates the rules for a flow.
#[inline(always)]
fn decide(ctx: &TcContext, direction: Direction, rules_gen: u32, settings: u32, walk: &mut Walk) -> Decision {
    let (report, cookie) = socket_facts(ctx, direction, settings, rules_gen, &walk.key);
    let (verdict, provisional) = rules::evaluate::<rules::Packet>(walk, rules_gen);
    Decision { class: verdict_class(verdict), provisional, report, cookie }
}

/// The class of the flow `key`, creating its flow entry on first sight.
#[inline(always)]
fn flow_class(ctx: &TcContext, direction: Direction, key: &FlowKey, len: u64) -> u16 {
    let (rules_gen, settings) = SETTINGS.get(0).map_or((0, 0), |s| (s.rules_gen, s.flags));
    let now = clock::coarse_ns();
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a value pointer from the map, valid for this program run.
        let flow = unsafe { &mut *flow };
        if flow.origin == ORIGIN_KERNEL && flow.rules_gen != rules_gen {
            let mut walk = Walk::new(key);
            let decision = decide(ctx, direction, rules_gen, settings, &mut walk);
            flow.class = decision.class;
            flow.flags = decision.flags();
            flow.rules_gen = rules_gen;
            decision.report(&walk);
        }
        flow.last_seen_ns = now;
        match direction {
            Direction::Egress => {
                add(&mut flow.tx_bytes, len);
                add(&mut flow.tx_packets, 1);
            }
            Direction::Ingress => {
                add(&mut flow.rx_bytes, len);
                add(&mut flow.rx_packets, 1);
            }
        }
        return flow.class;
    }
    // A flow the daemon or an operator decided, pushed out of FLOWS: its class stands.
    // SAFETY: read-only look at a map value.
    if let Some((class, origin)) = unsafe { KEPT_FLOWS.get(key) }.map(|k| (k.class, k.origin)) {
        let flow = FlowValue { class, origin, rules_gen, last_seen_ns: now, ..FlowValue::default() };
        insert_flow(key, flow, direction, len);
        return class;
    }
    let mut walk = Walk::new(key);
    let decision = decide(ctx, direction, rules_gen, settings, &mut walk);
    let class = decision.class;
    debug!(ctx, "new flow proto {} lport {} rport {}: class {}", key.proto, key.lport, key.rport, class);
    let flow = FlowValue {
        class,
        origin: ORIGIN_KERNEL,
        flags: decision.flags(),
        rules_gen,
        last_seen_ns: now,
        ..FlowValue::default()
    };
    insert_flow(key, flow, direction, len);
    decision.report(&walk);
    class
}

/// Enters a new flow, counting its first packet.
#[inline(always)]
fn insert_flow(key: &FlowKey, mut flow: FlowValue, direction: Direction, len: u64) {
    match direction {
        Direction::Egress => (flow.tx_bytes, flow.tx_packets) = (len, 1),
        Direction::Ingress => (flow.rx_bytes, flow.rx_packets) = (len, 1),
    }
    // Another CPU may have inserted the same flow meanwhile (EEXIST): fine, same verdict.
    if let Err(e) = FLOWS.insert(key, flow, BPF_NOEXIST as u64) {
        if e != -17 {
            count_error(ERR_FLOW_INSERT);
        }
    }
}

#[inline(always)]
pub(crate) fn classify(ctx: &TcContext, direction: Direction) -> i32 {
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(iface) = iface::lookup(ifindex) else {
        count_error(ERR_NO_IFACE);
        return TC_ACT_UNSPEC;
    };
    let ifb = iface.ifb_ifindex;
    if direction == Direction::Ingress && (ifb == 0 || ifb == IFB_DOWN) {
        // No IFB (ingress not shaped), or it is down or gone: never redirect
        // into a device that would drop the packet; pass it, unshaped.
        if ifb == IFB_DOWN {
            count_error(ERR_IFB_DOWN);
        }
        return TC_ACT_UNSPEC;
    }
    let len = ctx.len() as u64;
    let mut key = KeyBuf::new();
    let (parsed, bare_ack) = match flow_key(ctx, iface.l2_len as usize, direction, &mut key) {
        Some((key, bare_ack)) => (Some(key), bare_ack),
        None => (None, false),
    };
    let mut class = match parsed {
        Some(key) => flow_class(ctx, direction, key, len),
        None => CLASS_DEFAULT,
    };
    if class == CLASS_DEFAULT || !iface.has_class(class as u32) {
        class = iface.default_class;
    }
    if let Some(stats) = CLASS_STATS.get_ptr_mut(class_stats_index(iface.slot, class as u32)) {
        // SAFETY: per-CPU slot, written only by this CPU.
        let stats = unsafe { &mut *stats };
        match direction {
            Direction::Egress => {
                stats.tx_bytes += len;
                stats.tx_packets += 1;
            }
            Direction::Ingress => {
                stats.rx_bytes += len;
                stats.rx_packets += 1;
            }
        }
    }
    // What the class needs beyond its leaf: one array read, so that a class
    // without `per` or a quota costs no further lookup.
    let mode = CLASS_MODES.get(class as u32).copied().unwrap_or_default();
    let mut minor = instance::leaf_minor(ctx, direction, class, mode.per, parsed, len);
    if mode.flags & MODE_QUOTA != 0
        && quota::account(class as u32, instance::slot_plus_one(minor), direction, len)
    {
        // A quota that blocks, used up: the one drop by design (see quota.rs).
        return TC_ACT_SHOT;
    }
    if bare_ack {
        // Counted in its class (and instance), sent ahead of every queue.
        minor = HTB_ACK_MINOR;
    }
    // SAFETY: tc programs may write skb->priority; HTB reads it as the class id.
    unsafe { (*ctx.skb.skb).priority = (HTB_MAJOR << 16) | minor };
    match direction {
        Direction::Egress => TC_ACT_UNSPEC,
        // Through the IFB's HTB tree, which hands the packet back to this
        // interface's receive path once it may go.
        // SAFETY: plain helper. An ifindex with no device, or a down one, makes the
        // kernel drop the packet (after this program returns: it cannot see it);
        // the daemon writes IFB_DOWN the moment it hears of either.
        Direction::Ingress => unsafe { bpf_redirect(ifb, 0) as i32 },
    }
}
