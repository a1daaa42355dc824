//! Names of the programs and maps in the eBPF object. User code refers to these
//! constants and never spells the strings itself.

/// Egress classifier (tc / tcx).
pub const PROG_TC_EGRESS: &str = "tc_egress";
/// Ingress classifier: classifies with the reverse tuple and redirects to the IFB.
pub const PROG_TC_INGRESS: &str = "tc_ingress";
/// A classifier that does nothing: the baseline of the per-packet cost benchmark.
/// The daemon never loads it; the benchmark does, through the test kit.
pub const PROG_TC_PASSTHROUGH: &str = "tc_passthrough";

/// cgroup/sock_create: records the owner of every new IPv4/IPv6 socket.
pub const PROG_SOCK_CREATE: &str = "sock_create";
/// cgroup/sock_release: forgets it.
pub const PROG_SOCK_RELEASE: &str = "sock_release";
/// cgroup/post_bind4 and 6: a bound port's owner, inherited by accepted connections.
pub const PROG_POST_BIND4: &str = "post_bind4";
pub const PROG_POST_BIND6: &str = "post_bind6";
/// cgroup/connect4 and 6: the connecting process becomes the owner.
pub const PROG_CONNECT4: &str = "connect4";
pub const PROG_CONNECT6: &str = "connect6";
/// cgroup/sendmsg4 and 6: likewise for unconnected UDP.
pub const PROG_SENDMSG4: &str = "sendmsg4";
pub const PROG_SENDMSG6: &str = "sendmsg6";

/// The connection-limit gates, after the classifier: on an interface's
/// egress, and on its IFB's egress (arriving packets).
pub const PROG_TC_GATE_EGRESS: &str = "tc_gate_egress";
pub const PROG_TC_GATE_INGRESS: &str = "tc_gate_ingress";
/// sock_ops: connection limits' accounting (established, leaving service).
pub const PROG_SOCK_OPS: &str = "conn_sock_ops";

/// Hash: socket cookie (u64) → [`crate::Owner`]; entries go at sock_release.
pub const MAP_OWNERS: &str = "OWNERS";
/// Hash: [`crate::ListenKey`] → [`crate::Owner`].
pub const MAP_LISTENERS: &str = "LISTENERS";
/// Hash: bound socket cookie (u64) → the [`crate::ListenKey`] it holds in LISTENERS.
pub const MAP_BOUND: &str = "BOUND";
/// Hash: uid (u32) → LISTENERS entries it holds (u32).
pub const MAP_LISTEN_COUNTS: &str = "LISTEN_COUNTS";
/// Hash: tgid (u32) → [`crate::ProcTests`].
pub const MAP_PROC_TESTS: &str = "PROC_TESTS";
/// Ring buffer of [`crate::FlowEvent`].
pub const MAP_EVENTS: &str = "EVENTS";

/// LRU hash: [`crate::FlowKey`] → [`crate::FlowValue`].
pub const MAP_FLOWS: &str = "FLOWS";
/// Hash (not LRU): [`crate::FlowKey`] → [`crate::FlowValue`] of the flows the
/// daemon or an operator decided; read when FLOWS has no entry, so that an
/// eviction from FLOWS never undoes their class.
pub const MAP_KEPT_FLOWS: &str = "KEPT_FLOWS";
/// Array: the two banks of [`crate::RuleNode`] (the rules' tests).
pub const MAP_RULES: &str = "RULES";
/// Array: the two banks of [`crate::rules::RuleEntry`] (one per rule).
pub const MAP_RULE_ENTRIES: &str = "RULE_ENTRIES";
/// Array of two [`crate::rules::RuleHead`]s, one per bank.
pub const MAP_RULE_HEADS: &str = "RULE_HEADS";
/// Array: the two banks of [`crate::rules::RuleChunk`] (the index's lists).
pub const MAP_RULE_LISTS: &str = "RULE_LISTS";
/// Array: the two banks of [`crate::rules::RuleBound`] (port and uid intervals).
pub const MAP_RULE_BOUNDS: &str = "RULE_BOUNDS";
/// LPM trie: [`crate::rules::PrefixKey`] → list (address prefixes).
pub const MAP_RULE_PREFIXES: &str = "RULE_PREFIXES";
/// Hash: [`crate::rules::CgroupKey`] → list.
pub const MAP_RULE_CGROUPS: &str = "RULE_CGROUPS";
/// Array of one [`crate::Settings`].
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Hash: ifindex (u32) → [`crate::IfaceInfo`].
pub const MAP_IFACES: &str = "IFACES";
/// Array of [`crate::IFACE_TABLE_SIZE`] [`crate::IfaceInfo`]: a direct-mapped
/// copy of IFACES, entry `ifindex % IFACE_TABLE_SIZE`, read first.
pub const MAP_IFACE_TABLE: &str = "IFACE_TABLE";
/// Per-CPU array of [`crate::ClassStats`].
pub const MAP_CLASS_STATS: &str = "CLASS_STATS";
/// Per-CPU array of u64 error counters (`ERR_*`).
pub const MAP_ERRORS: &str = "ERRORS";

/// Array of [`crate::instances::ClassMode`]: which classes have `per`.
/// Not pinned: the daemon rewrites it at every start and reload.
pub const MAP_CLASS_MODES: &str = "CLASS_MODES";
/// Hash: [`crate::instances::InstanceKey`] → instance slot (u32). Not pinned:
/// a new daemon starts with no instances, which are found again on sight.
pub const MAP_INSTANCES: &str = "INSTANCES";
/// Array of [`crate::instances::InstanceSlot`]: which slots are live.
pub const MAP_INSTANCE_SLOTS: &str = "INSTANCE_SLOTS";
/// LRU hash: [`crate::FlowKey`] → [`crate::instances::FlowInstance`].
pub const MAP_FLOW_INSTANCES: &str = "FLOW_INSTANCES";
/// Per-CPU array of [`crate::instances::InstanceStats`].
pub const MAP_INSTANCE_STATS: &str = "INSTANCE_STATS";

/// Array of [`crate::ClassName`]: which class name each index stands for.
pub const MAP_CLASS_NAMES: &str = "CLASS_NAMES";

/// Hash: [`crate::QuotaKey`] → [`crate::QuotaUsage`]: bytes counted against
/// each quota this period (only classes with a quota have an entry).
pub const MAP_QUOTA_USAGE: &str = "QUOTA_USAGE";
/// Hash: [`crate::QuotaKey`] → [`crate::QuotaGate`]: each quota's limit,
/// period and block state.
pub const MAP_QUOTA_GATES: &str = "QUOTA_GATES";

/// Array of [`crate::connlimit::ConnLimit`]: each class's `max_connections`.
pub const MAP_CONN_LIMITS: &str = "CONN_LIMITS";
/// Hash: [`crate::FlowKey`] → [`crate::connlimit::GateEntry`]: gated connections.
pub const MAP_CONN_GATES: &str = "CONN_GATES";
/// Hash: [`crate::instances::InstanceKey`] → [`crate::connlimit::ConnKernel`].
pub const MAP_CONN_KERNEL: &str = "CONN_KERNEL";
/// Hash: [`crate::instances::InstanceKey`] → [`crate::connlimit::ConnDaemon`].
pub const MAP_CONN_DAEMON: &str = "CONN_DAEMON";

/// The maps pinned under the pin directory: everything that must outlive the
/// daemon (shaping state, counters, owner records, the rule table).
pub const PINNED_MAPS: [&str; 27] = [
    MAP_FLOWS,
    MAP_KEPT_FLOWS,
    MAP_BOUND,
    MAP_LISTEN_COUNTS,
    MAP_RULES,
    MAP_RULE_ENTRIES,
    MAP_RULE_HEADS,
    MAP_RULE_LISTS,
    MAP_RULE_BOUNDS,
    MAP_RULE_PREFIXES,
    MAP_RULE_CGROUPS,
    MAP_SETTINGS,
    MAP_IFACES,
    MAP_IFACE_TABLE,
    MAP_CLASS_STATS,
    MAP_ERRORS,
    MAP_OWNERS,
    MAP_LISTENERS,
    MAP_PROC_TESTS,
    MAP_EVENTS,
    MAP_CLASS_NAMES,
    MAP_QUOTA_USAGE,
    MAP_QUOTA_GATES,
    MAP_CONN_LIMITS,
    MAP_CONN_GATES,
    MAP_CONN_KERNEL,
    MAP_CONN_DAEMON,
];

/// aya-log's level global in the object (0 = off).
pub const GLOBAL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// Byte offset of `task_struct.group_leader` in the running kernel (0 =
/// unknown), set at load from the kernel's BTF: the socket hooks read the
/// process's name through it (see `owner.rs`).
pub const GLOBAL_TASK_GROUP_LEADER: &str = "TASK_GROUP_LEADER_OFFSET";
/// Byte offset of `task_struct.comm` (0 = unknown), as above.
pub const GLOBAL_TASK_COMM: &str = "TASK_COMM_OFFSET";
