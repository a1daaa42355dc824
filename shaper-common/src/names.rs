//! Names of the programs and maps in the eBPF object. User code refers to these
//! constants and never spells the strings itself.

/// Egress classifier (tc / tcx).
pub const PROG_TC_EGRESS: &str = "tc_egress";
/// A classifier that does nothing: the baseline of the per-packet cost benchmark.
pub const PROG_TC_PASSTHROUGH: &str = "tc_passthrough";

/// LRU hash: [`crate::FlowKey`] → [`crate::FlowValue`].
pub const MAP_FLOWS: &str = "FLOWS";
/// Array: the two banks of [`crate::RuleNode`].
pub const MAP_RULES: &str = "RULES";
/// Array of one [`crate::Settings`].
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Hash: ifindex (u32) → [`crate::IfaceInfo`].
pub const MAP_IFACES: &str = "IFACES";
/// Per-CPU array of [`crate::ClassStats`].
pub const MAP_CLASS_STATS: &str = "CLASS_STATS";
/// Per-CPU array of u64 error counters (`ERR_*`).
pub const MAP_ERRORS: &str = "ERRORS";

/// aya-log's level global in the object (0 = off).
pub const GLOBAL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
