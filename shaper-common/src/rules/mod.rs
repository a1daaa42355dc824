//! The rule table: the daemon compiles the ordered rule list into these
//! types, the classifier and the daemon evaluate it with the same code
//! ([`eval`], compiled into both sides).
//!
//! # What is in a bank
//! The table has two banks; the daemon fills the idle one and then flips
//! [`crate::Settings::rules_gen`], so the kernel never sees a half-written rule
//! set. A bank holds:
//! - a [`RuleHead`]: the number of rules, the evaluation mode, and where the
//!   index's fixed lists start;
//! - one [`RuleEntry`] per rule, in file order: its class and the node where
//!   its test starts;
//! - the [`RuleNode`]s: each rule's test is its own small branching program.
//!   A node tests one fact and jumps forward within the rule, or exits with
//!   [`JUMP_MATCH`] (the rule matches: its class wins) or [`JUMP_NEXT`] (it does
//!   not). Each atom of a rule appears once, so the nodes grow linearly with
//!   the rules;
//! - the index: sorted lists of rule numbers ([`RuleChunk`]s), reached through
//!   sorted interval bounds for ports and uids ([`RuleBound`]), a longest-prefix
//!   match on addresses ([`PrefixKey`]), a hash on cgroup ids ([`CgroupKey`])
//!   and one list per userspace test.
//!
//! # The index, and why first match stays exact
//! The compiler gives each rule a *cover*: entries (dimension, values) such
//! that the rule can only be true when at least one entry holds. An atom on an
//! indexed dimension (remote or local port range, remote or local address
//! prefix, uid range, cgroup id, cgroup ancestor, userspace test) covers
//! itself; `a and b` takes the narrowest cover of its parts (an exact port over
//! `lport > 1024`; packet facts over owner facts over userspace tests); `a or b`
//! the union of both (none if either has none); `not`, protocol, gid, pid and
//! process-name tests have none. Rules without a cover form the *residual*
//! list, evaluated for every flow.
//!
//! Each rule's program starts with its cover (recursively: the chosen
//! conjunct of an `and` comes first). So when every cover atom is false, the
//! rule is false after touching exactly its cover atoms. The evaluator takes
//! the union of the lists the flow's facts select (its *candidates*), plus the
//! residual, and evaluates them in rule order until one matches: every rule
//! it skips would have been false, so the winner is the first match of the
//! linear walk.
//!
//! Facts the kernel may not know (the socket's owner, its cgroup, the answer to
//! a userspace test) read as false and make the verdict provisional. A rule
//! with a cover entry on a dimension unknown for the flow, and no candidate
//! entry, is false and would have touched that unknown fact: the evaluator
//! notes the first such rule and marks the verdict provisional if it comes
//! before the winner — exactly the flag the linear walk would set, without
//! evaluating those rules one by one.
//!
//! The linear mode (every rule in order) uses the same programs; it is the
//! reference the tests hold the index to.
//!
//! # Choices
//! - The candidates are a bitmap over rule numbers with a summary of the
//!   words in use, so gathering costs one bit per listed rule and scanning in
//!   order costs the words in use, not the table; no k-way merge of lists.
//! - A dimension the facts do not know costs one walk of its list until the
//!   first rule that is not a candidate (usually its first), instead of
//!   evaluating all of its rules: such a rule reads false and would have made
//!   the verdict provisional, which is all the linear walk would learn from it.
//! - Covers prefer packet facts, then owner facts (unknown when the socket has
//!   no owner record), then userspace tests (known in the kernel only once
//!   the daemon answered for the process), so that a rule on a port and a
//!   program is skipped, not provisional, for flows to other ports.
//! - Lists that would outgrow the table (overlapping intervals, nested
//!   prefixes) send their widest rules to the residual list rather than fail.
//! - The engine does not tie rules to classes: several rules may give one
//!   class (a config has at most [`crate::MAX_CLASSES`] classes, one `match`
//!   each; the library compiles any list of (class, predicate)).
//!
//! # Capacity
//! Per bank: [`MAX_RULES`] rules, [`MAX_RULE_NODES`] tests, [`MAX_RULE_CHUNKS`]
//! list chunks, [`MAX_RULE_BOUNDS`] interval bounds, [`MAX_RULE_PREFIXES`]
//! prefixes, [`MAX_RULE_CGROUPS`] cgroup keys. The array maps are allocated in
//! full for both banks when the object loads, about 3.5 MiB (see the
//! daemon's `datapath::rules` for the breakdown); the prefix trie and the
//! cgroup hash take memory per entry.

pub mod eval;
pub mod facts;

use crate::{FlowKey, Owner, MAX_CLASSES};

/// The rule table has two banks (see [`crate::Settings::rules_gen`]).
pub const RULE_BANKS: u32 = 2;
/// Rules per bank (several rules may give the same class).
pub const MAX_RULES: u32 = 16_384;
/// Tests per bank.
pub const MAX_RULE_NODES: u32 = 32_768;
/// List chunks per bank ([`CHUNK_IDS`] rule numbers each, the first slot of a
/// list holding its length).
pub const MAX_RULE_CHUNKS: u32 = 16_384;
/// Interval bounds per bank (ports and uids).
pub const MAX_RULE_BOUNDS: u32 = 32_768;
/// Address prefixes per bank.
pub const MAX_RULE_PREFIXES: u32 = 16_384;
/// Cgroup keys per bank.
pub const MAX_RULE_CGROUPS: u32 = 4_096;
/// Userspace tests whose answers PROC_TESTS can carry (one bit each).
pub const USERSPACE_TESTS: u32 = 64;
/// Cgroup levels below the root the classifier can test (deeper tests are left to the daemon).
pub const MAX_CGROUP_LEVEL: u32 = 8;
/// The socket's cgroup ancestry the classifier looks up: levels `0..=MAX_CGROUP_LEVEL`.
pub const CGROUP_LEVELS: usize = MAX_CGROUP_LEVEL as usize + 1;

/// Index of item `item` of bank `bank` in a banked array of `per_bank` items.
#[inline(always)]
pub const fn bank_index(bank: u32, per_bank: u32, item: u32) -> u32 {
    bank * per_bank + item
}

/// Index of node `node` of bank `bank` in the node array.
#[inline(always)]
pub const fn rule_node_index(bank: u32, node: u32) -> u32 {
    bank_index(bank, MAX_RULE_NODES, node)
}

/// A verdict as the classifier reports it: at or above this value, not a node.
pub const TARGET_VERDICT: u16 = 0x8000;
/// Verdict: the interface's default class.
pub const TARGET_DEFAULT: u16 = 0xffff;

/// Verdict "class index `class`".
#[inline(always)]
pub const fn target_class(class: u16) -> u16 {
    TARGET_VERDICT | class
}
const _: () = assert!(MAX_CLASSES <= TARGET_VERDICT as u32);

// Tests a rule node can make. The node's `a`/`bits`/`lo`/`hi` fields hold the operands.
/// Always true (a rule that needs no test).
pub const OP_TRUE: u8 = 0;
/// `lo <= proto <= hi`.
pub const OP_PROTO: u8 = 1;
/// Remote port in `lo..=hi`; false for protocols without ports.
pub const OP_RPORT: u8 = 2;
/// Local port in `lo..=hi`; false for protocols without ports.
pub const OP_LPORT: u8 = 3;
/// Remote address in the prefix: `family` matches and the first `bits` bits equal `a`'s.
pub const OP_RADDR: u8 = 4;
/// Local address in the prefix, likewise.
pub const OP_LADDR: u8 = 5;
/// The socket owner's uid in `lo..=hi` (owner tests are false, and the verdict
/// provisional, when the socket has no owner record).
pub const OP_UID: u8 = 6;
/// The socket owner's gid in `lo..=hi`.
pub const OP_GID: u8 = 7;
/// The socket owner's process id (tgid) in `lo..=hi`.
pub const OP_PID: u8 = 8;
/// The socket owner's process name: its first `bits` bits equal `a`'s (an
/// exact name includes the NUL after it).
pub const OP_COMM: u8 = 9;
/// The socket's cgroup id equals the u64 in `a[..8]` (native byte order).
pub const OP_CGROUP: u8 = 10;
/// The socket's cgroup, or its ancestor at level `lo`, has the id in `a[..8]`.
pub const OP_CGROUP_UNDER: u8 = 11;
/// A test only the daemon can make (exe, args, parent, …), number `lo` among
/// the table's userspace tests: the kernel takes its answer for the socket
/// owner's process from PROC_TESTS when the daemon left one there (tests below
/// [`USERSPACE_TESTS`]); otherwise the test is false and the verdict provisional.
pub const OP_USERSPACE: u8 = 12;

/// [`RuleNode::on_true`]/[`RuleNode::on_false`]: the rule matches.
pub const JUMP_MATCH: u16 = 0xffff;
/// The rule does not match: on to the next rule.
pub const JUMP_NEXT: u16 = 0xfffe;
/// The longest forward jump; below it a jump is "this many nodes ahead".
pub const MAX_JUMP: u16 = 0xfffd;

/// One test of a rule's program, and where to go next.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleNode {
    /// One of the `OP_*` constants.
    pub op: u8,
    /// Address family for the address tests ([`crate::FAMILY_V4`] / [`crate::FAMILY_V6`]).
    pub family: u8,
    /// Address and process-name tests: how many leading bits of `a` must match.
    pub bits: u8,
    pub _pad: u8,
    /// [`JUMP_MATCH`], [`JUMP_NEXT`], or the distance (1..=[`MAX_JUMP`]) to a later node.
    pub on_true: u16,
    pub on_false: u16,
    /// Inclusive integer range for the numeric tests; the test number for
    /// [`OP_USERSPACE`]; the level for [`OP_CGROUP_UNDER`].
    pub lo: u32,
    pub hi: u32,
    /// Address (network byte order, host bits zero), process name, or cgroup id.
    pub a: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<RuleNode>() == 32);

impl RuleNode {
    /// The cgroup id operand.
    #[inline(always)]
    pub fn id(&self) -> u64 {
        let a = &self.a;
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]])
    }
}

/// [`RuleEntry::flags`]: the rule's cover tests a userspace test numbered
/// [`USERSPACE_TESTS`] or above (one PROC_TESTS cannot answer).
pub const ENTRY_USER_HIGH: u16 = 1;

/// One rule of a bank, in file order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleEntry {
    /// Index (in the bank) of the rule's first node.
    pub first: u32,
    /// The class the rule gives.
    pub class: u16,
    /// `ENTRY_*` bits.
    pub flags: u16,
    /// Bit `i`: the rule's cover tests userspace test `i`.
    pub user_low: u64,
}
const _: () = assert!(core::mem::size_of::<RuleEntry>() == 16);

/// Rule numbers per list chunk.
pub const CHUNK_IDS: usize = 8;
/// A list: the chunk it starts at. Its first slot holds its length, the rule
/// numbers follow in increasing order, across as many chunks as needed.
pub type ListRef = u32;
/// No list.
pub const LIST_NONE: ListRef = u32::MAX;

/// Eight slots of a list.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct RuleChunk {
    pub ids: [u16; CHUNK_IDS],
}
const _: () = assert!(core::mem::size_of::<RuleChunk>() == 16);

/// One interval bound of a range dimension: values from `value` up to the next
/// bound select `list`. Each dimension's bounds are sorted, the first is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleBound {
    pub value: u32,
    pub list: ListRef,
}
const _: () = assert!(core::mem::size_of::<RuleBound>() == 8);

/// Where a range dimension's bounds are ([`RuleHead::ranges`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BoundRange {
    /// Index of the first bound in the bank.
    pub start: u32,
    pub count: u32,
}

/// Range dimensions, by their index in [`RuleHead::ranges`].
pub const RANGE_RPORT: usize = 0;
pub const RANGE_LPORT: usize = 1;
pub const RANGE_UID: usize = 2;
pub const RANGES: usize = 3;

/// Address dimensions ([`PrefixKey::dim`]).
pub const DIM_RADDR: u8 = 0;
pub const DIM_LADDR: u8 = 1;

/// Evaluation modes ([`RuleHead::mode`]).
/// Every rule in order (the reference).
pub const MODE_LINEAR: u32 = 0;
/// Candidates from the index, in order.
pub const MODE_INDEXED: u32 = 1;

// Which index sources a bank has ([`RuleHead::sources`]); the evaluator skips
// the others without a lookup.
pub const SOURCE_RESIDUAL: u32 = 1 << 0;
pub const SOURCE_RPORT: u32 = 1 << 1;
pub const SOURCE_LPORT: u32 = 1 << 2;
pub const SOURCE_RADDR: u32 = 1 << 3;
pub const SOURCE_LADDR: u32 = 1 << 4;
pub const SOURCE_UID: u32 = 1 << 5;
pub const SOURCE_CGROUP: u32 = 1 << 6;
/// Ancestor level `l` is `SOURCE_UNDER << l`.
pub const SOURCE_UNDER: u32 = 1 << 7;
pub const SOURCE_USER: u32 = 1 << (7 + CGROUP_LEVELS as u32);
const _: () = assert!(7 + CGROUP_LEVELS < 31);

/// A bank's header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleHead {
    /// Number of rules ([`RuleEntry`]s).
    pub rules: u32,
    /// `MODE_*`.
    pub mode: u32,
    /// `SOURCE_*` bits: the index sources the bank has.
    pub sources: u32,
    /// Rules without a cover: candidates for every flow.
    pub residual: ListRef,
    /// Rules with a cover entry on a uid, a cgroup, a userspace test.
    pub uid_all: ListRef,
    pub cgroup_all: ListRef,
    pub user_all: ListRef,
    pub _pad: u32,
    /// Bounds of the range dimensions (`RANGE_*`).
    pub ranges: [BoundRange; RANGES],
    /// The rules whose cover has userspace test `i`, for the tests PROC_TESTS answers.
    pub user_lists: [ListRef; USERSPACE_TESTS as usize],
}
const _: () = assert!(core::mem::size_of::<RuleHead>() == 32 + 8 * RANGES + 4 * USERSPACE_TESTS as usize);

impl Default for RuleHead {
    fn default() -> Self {
        Self {
            rules: 0,
            mode: MODE_LINEAR,
            sources: 0,
            residual: LIST_NONE,
            uid_all: LIST_NONE,
            cgroup_all: LIST_NONE,
            user_all: LIST_NONE,
            _pad: 0,
            ranges: [BoundRange::default(); RANGES],
            user_lists: [LIST_NONE; USERSPACE_TESTS as usize],
        }
    }
}

/// The data of an address prefix in the LPM trie (the trie's key adds the
/// prefix length in bits, [`PREFIX_HEADER_BITS`] plus the address prefix's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct PrefixKey {
    pub bank: u8,
    /// `DIM_RADDR` or `DIM_LADDR`.
    pub dim: u8,
    pub family: u8,
    /// Network byte order, host bits zero; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PrefixKey>() == 20);
/// Bits of [`PrefixKey`] before the address: bank, dimension, family.
pub const PREFIX_HEADER_BITS: u32 = 24;

/// [`CgroupKey::level`] of an exact cgroup id test.
pub const CGROUP_EXACT: u32 = u32::MAX;

/// Key of the cgroup index: (level, id) for "ancestor at `level` is `id`",
/// ([`CGROUP_EXACT`], id) for "the cgroup is `id`".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct CgroupKey {
    pub bank: u32,
    pub level: u32,
    pub id: u64,
}
const _: () = assert!(core::mem::size_of::<CgroupKey>() == 16);

/// What the classifier knows about a packet's socket when it evaluates the
/// rules: its owner record, its cgroup ancestry, the daemon's answers to the
/// userspace tests for the owner's process. Filled per new flow in a per-CPU
/// scratch map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SocketFacts {
    /// The socket's owner, valid when `has_owner` is 1.
    pub owner: Owner,
    pub has_owner: u32,
    /// The socket's cgroup and its ancestors by level (0 = the root), valid when `has_cgroup` is 1.
    pub has_cgroup: u32,
    pub cgroup: u64,
    pub ancestors: [u64; CGROUP_LEVELS],
    /// The rule generation being evaluated (for PROC_TESTS entries).
    pub rules_gen: u32,
    /// 1 when `known`/`values` hold the daemon's answers for the owner's process.
    pub has_answers: u32,
    /// Bit `i`: the daemon knows the answer to userspace test `i` …
    pub known: u64,
    /// … and this is it.
    pub values: u64,
}
const _: () = assert!(core::mem::size_of::<SocketFacts>() == 48 + 16 + 8 * CGROUP_LEVELS + 24);

/// The kernel's view of a flow: its key and its socket's facts.
#[derive(Clone, Copy, Debug)]
pub struct KernelView<'a> {
    pub key: &'a FlowKey,
    pub socket: &'a SocketFacts,
}
