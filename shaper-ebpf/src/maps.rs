//! The maps shared with the daemon. Names and value types come from shaper-common.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use shaper_common::{
    instances::{ClassMode, FlowInstance, InstanceKey, InstanceSlot, InstanceStats, MAX_INSTANCES},
    rules::{
        eval::Eval, CgroupKey, ListRef, PrefixKey, RuleBound, RuleChunk, RuleEntry, RuleHead, SocketFacts,
        MAX_RULES, MAX_RULE_BOUNDS, MAX_RULE_CGROUPS, MAX_RULE_CHUNKS, MAX_RULE_PREFIXES,
    },
    ClassName, ClassStats, FlowKey, FlowValue, IfaceInfo, ListenKey, Owner, ProcTests, QuotaGate, QuotaKey,
    QuotaUsage, RuleNode, Settings, CLASS_STATS_ENTRIES, DEFAULT_MAX_FLOWS, ERR_COUNT, MAX_CLASSES,
    MAX_IFACES, MAX_LISTENERS, MAX_PROC_TESTS, MAX_QUOTAS, MAX_RULE_NODES, RULE_BANKS,
};

/// Socket tuple → class and counters. Sized at load by the daemon (`max_flows`).
#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

// The compiled rule table, two banks of each part (see `Settings::rules_gen`
// and `shaper_common::rules`).
/// The rules' tests.
#[map]
pub(crate) static RULES: Array<RuleNode> = Array::with_max_entries(RULE_BANKS * MAX_RULE_NODES, 0);

/// One entry per rule: its class and first test.
#[map]
pub(crate) static RULE_ENTRIES: Array<RuleEntry> = Array::with_max_entries(RULE_BANKS * MAX_RULES, 0);

/// One header per bank.
#[map]
pub(crate) static RULE_HEADS: Array<RuleHead> = Array::with_max_entries(RULE_BANKS, 0);

/// The index's lists of rule numbers.
#[map]
pub(crate) static RULE_LISTS: Array<RuleChunk> = Array::with_max_entries(RULE_BANKS * MAX_RULE_CHUNKS, 0);

/// Port and uid intervals → lists.
#[map]
pub(crate) static RULE_BOUNDS: Array<RuleBound> = Array::with_max_entries(RULE_BANKS * MAX_RULE_BOUNDS, 0);

/// Address prefixes → lists (allocated per entry).
#[map]
pub(crate) static RULE_PREFIXES: LpmTrie<PrefixKey, ListRef> =
    LpmTrie::with_max_entries(RULE_BANKS * MAX_RULE_PREFIXES, 0);

/// Cgroup ids (exact, or an ancestor at a level) → lists (allocated per entry).
#[map]
pub(crate) static RULE_CGROUPS: HashMap<CgroupKey, ListRef> =
    HashMap::with_max_entries(RULE_BANKS * MAX_RULE_CGROUPS, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// ifindex → what the classifier needs about the interface.
#[map]
pub(crate) static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_IFACES, 0);

#[map]
pub(crate) static CLASS_STATS: PerCpuArray<ClassStats> =
    PerCpuArray::with_max_entries(CLASS_STATS_ENTRIES, 0);

/// Flows the daemon or an operator decided (`ORIGIN_DAEMON`, `ORIGIN_PINNED`),
/// written by the daemon only; the classifier reads it when FLOWS has no entry
/// (an LRU eviction under a flood), so their class survives. Sized at load like FLOWS.
#[map]
pub(crate) static KEPT_FLOWS: HashMap<FlowKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_PREALLOC);

/// Socket cookie → the process that owns the socket. Sized at load like FLOWS.
/// Not LRU: a record lives as long as its socket (sock_release removes it), so
/// a flood of sockets can fail to get records (counted) but never push out
/// another's.
#[map]
pub(crate) static OWNERS: HashMap<u64, Owner> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Bound port → its owner, for connections accepted on it.
#[map]
pub(crate) static LISTENERS: HashMap<ListenKey, Owner> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// tgid → the daemon's answers to the userspace tests for that process.
#[map]
pub(crate) static PROC_TESTS: HashMap<u32, ProcTests> = HashMap::with_max_entries(MAX_PROC_TESTS, 0);

/// New flows for the daemon (`FlowEvent`s).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
const EVENTS_BYTES: u32 = 2 * 1024 * 1024;

/// The socket facts of the packet being classified (`SocketFacts`). Too large
/// for the BPF stack next to everything else, they live in a per-CPU map: tc
/// programs run with bottom halves disabled, so no other run on the same CPU
/// can interleave with one that filled it.
#[map]
pub(crate) static SCRATCH: PerCpuArray<SocketFacts> = PerCpuArray::with_max_entries(1, 0);

/// The rule evaluation's state and candidate set (`Eval`, about 2 KiB), per CPU
/// like SCRATCH.
#[map]
pub(crate) static EVAL: PerCpuArray<Eval> = PerCpuArray::with_max_entries(1, 0);

/// The connect hooks' socket facts and evaluation state (see `rules::Slots`),
/// and the evaluation each CPU's slots belong to (`refuse.rs`).
#[map]
pub(crate) static HOOK_SCRATCH: PerCpuArray<SocketFacts> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static HOOK_EVAL: PerCpuArray<Eval> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static HOOK_TOKEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Class index → name, kept by the daemon with the pinned counters (see
/// `ClassName`); only `keep_class_names` touches it, to keep it in the object.
#[map]
pub(crate) static CLASS_NAMES: Array<ClassName> = Array::with_max_entries(MAX_CLASSES, 0);

/// Bytes counted against each quota this period (see `quota.rs`).
#[map]
pub(crate) static QUOTA_USAGE: HashMap<QuotaKey, QuotaUsage> = HashMap::with_max_entries(MAX_QUOTAS, 0);

/// Each quota's limit and block state, written by the daemon.
#[map]
pub(crate) static QUOTA_GATES: HashMap<QuotaKey, QuotaGate> = HashMap::with_max_entries(MAX_QUOTAS, 0);
/// Class index → its `per` mode (see `shaper_common::instances`).
#[map]
pub(crate) static CLASS_MODES: Array<ClassMode> = Array::with_max_entries(MAX_CLASSES, 0);

/// (class, instance) → slot: written by the daemon once the slot's leaves exist.
#[map]
pub(crate) static INSTANCES: HashMap<InstanceKey, u32> = HashMap::with_max_entries(MAX_INSTANCES, 0);

/// Slot → the class it belongs to (0: free), checked before a flow's cached slot is used.
#[map]
pub(crate) static INSTANCE_SLOTS: Array<InstanceSlot> = Array::with_max_entries(MAX_INSTANCES, 0);

/// Flow → its instance slot, as last found.
#[map]
pub(crate) static FLOW_INSTANCES: LruHashMap<FlowKey, FlowInstance> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Bytes per instance slot.
#[map]
pub(crate) static INSTANCE_STATS: PerCpuArray<InstanceStats> =
    PerCpuArray::with_max_entries(MAX_INSTANCES, 0);

#[map]
pub(crate) static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERR_COUNT, 0);

/// A use of CLASS_NAMES the linker cannot drop (an unused map disappears from
/// the object, and the daemon needs it created and pinned with the rest).
#[inline(always)]
pub(crate) fn keep_class_names() {
    core::hint::black_box(CLASS_NAMES.get_ptr(0));
}

#[inline(always)]
pub(crate) fn count_error(which: u32) {
    if let Some(counter) = ERRORS.get_ptr_mut(which) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
