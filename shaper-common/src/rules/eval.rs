//! Evaluating the rule table: the one implementation, compiled into the
//! classifier (which drives [`Eval::step`] from a `bpf_loop` callback, one step
//! per call) and into the daemon (which loops with [`Eval::evaluate`]).
//!
//! The table and the facts come through two traits, so each side reads its
//! own storage: BPF maps in the kernel, vectors in the daemon ([`Table`]); the
//! socket's owner record and PROC_TESTS in the kernel
//! ([`KernelView`](super::KernelView)), the process facts from /proc in the
//! daemon ([`Facts`], in `super::facts` with the test of a node).
//!
//! Written for the verifier: no panics, no recursion, no allocation, only
//! bounded loops, every array read through `.get()`.
//!
//! # Steps
//! Linear mode: for each rule in order, its nodes one per step, until one
//! matches. Indexed mode (see the module docs of [`super`]):
//! 1. clear the candidate set left by the previous evaluation (one step per
//!    word that was used);
//! 2. gather candidates: for each source (residual list, remote and local
//!    port, remote and local address, uid, cgroup and its ancestors, the
//!    userspace tests known to be true), one step to look its list up and one
//!    per chunk of 8 rules read from it, setting the rules' bits;
//! 3. for each dimension unknown to the facts, walk the list of rules with a
//!    cover entry there and note the first that is not a candidate;
//! 4. evaluate the candidates in rule order, one node per step, until one
//!    matches; the verdict is provisional if a test read an unknown fact or the
//!    rule noted in 3 comes before the winner.

use super::{
    facts::{has_ports, lowest_bit, test, Facts, UserKnown},
    BoundRange, ListRef, RuleBound, RuleChunk, RuleEntry, RuleHead, RuleNode, CGROUP_EXACT, CGROUP_LEVELS,
    DIM_LADDR, DIM_RADDR, ENTRY_USER_HIGH, JUMP_MATCH, JUMP_NEXT, LIST_NONE, MAX_RULES, MODE_LINEAR, RANGES,
    RANGE_LPORT, RANGE_RPORT, RANGE_UID, SOURCE_CGROUP, SOURCE_LADDR, SOURCE_LPORT, SOURCE_RADDR,
    SOURCE_RESIDUAL, SOURCE_RPORT, SOURCE_UID, SOURCE_UNDER, SOURCE_USER,
};
use crate::CLASS_DEFAULT;

/// Where the evaluator reads a bank of the rule table. Indices are within the
/// bank; a read past its end gives `None`.
pub trait Table {
    fn head(&self) -> Option<&RuleHead>;
    fn entry(&self, rule: u32) -> Option<&RuleEntry>;
    fn node(&self, index: u32) -> Option<&RuleNode>;
    fn chunk(&self, index: u32) -> Option<&RuleChunk>;
    fn bound(&self, index: u32) -> Option<&RuleBound>;
    /// The list of the longest prefix in dimension `dim` (`DIM_*`) holding `addr`.
    fn prefix(&self, dim: u8, family: u8, addr: &[u8; 16]) -> ListRef;
    /// The list of cgroup key (`level`, `id`); `level` is [`CGROUP_EXACT`] for the exact id.
    fn cgroup(&self, level: u32, id: u64) -> ListRef;
    /// The list of the rules whose cover has userspace test `test`.
    fn user_list(&self, test: u32) -> ListRef;
}

/// The bitmap word of rule `rule` (below `MAX_RULES`), masked so that the
/// verifier sees the bound on the index itself (a bounds check LLVM moves to
/// `rule` before the shift, it cannot follow).
#[inline(always)]
fn word_of(rule: u32) -> usize {
    ((rule >> 6) & (WORDS as u32 - 1)) as usize
}

/// The outcome of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The class of the first matching rule, or [`CLASS_DEFAULT`].
    pub class: u16,
    /// A test the facts could not answer decided (or could have decided) it.
    pub provisional: bool,
    /// The table was malformed or the evaluation ran out of steps: the
    /// verdict is the default class.
    pub error: bool,
}

/// Upper bound on the steps of one evaluation (a malformed table ends sooner
/// with an error; a well-formed one takes at most one step per rule, node,
/// list chunk and index source it touches).
pub const MAX_EVAL_STEPS: u32 = 1 << 22;

const WORDS: usize = MAX_RULES as usize / 64;
const SUMMARY: usize = WORDS.div_ceil(64);
/// No rule.
const NONE: u32 = u32::MAX;

const P_DONE: u32 = 0;
const P_CLEAR: u32 = 1;
const P_SOURCE: u32 = 2;
const P_ADD: u32 = 3;
const P_UNKNOWN: u32 = 4;
const P_UWALK: u32 = 5;
const P_SCAN: u32 = 6;
const P_LINEAR: u32 = 7;
const P_EVAL: u32 = 8;

// Lists of rules with cover entries on a dimension the facts do not know.
const U_UID: u32 = 1;
const U_CGROUP: u32 = 2;
const U_USER: u32 = 4;

/// `SOURCE_UNDER == 1 << UNDER_SHIFT`.
const UNDER_SHIFT: u32 = 7;
const _: () = assert!(SOURCE_UNDER == 1 << UNDER_SHIFT);

/// Steps of the binary search over a range dimension's bounds (enough for
/// `MAX_RULE_BOUNDS`).
const BOUND_STEPS: u32 = 16;
const _: () = assert!(super::MAX_RULE_BOUNDS <= 1 << BOUND_STEPS);

/// The state of one evaluation, with the candidate set (a bitmap over rule
/// numbers, with a summary of the words in use). About 2 KiB: the classifier
/// keeps it in a per-CPU map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Eval {
    phase: u32,
    /// Index sources left to gather (`SOURCE_*`).
    sources: u32,
    /// Unknown dimensions left to walk (`U_*`).
    unknown: u32,
    /// The user list is walked knowing the tests in `known` (`UserKnown::Bits`).
    user_bits: u32,
    known: u64,
    /// The list being read: its current chunk, next slot, ids left.
    list: u32,
    slot: u32,
    left: u32,
    /// The list being walked is the user list.
    walking_user: u32,
    /// Next rule to scan (or, while gathering, next userspace test).
    cursor: u32,
    rule: u32,
    pc: u32,
    rules: u32,
    linear: u32,
    /// First rule with a cover entry on an unknown fact and no candidate entry.
    first_unknown: u32,
    winner: u32,
    class: u32,
    provisional: u32,
    error: u32,
    residual: ListRef,
    uid_all: ListRef,
    cgroup_all: ListRef,
    user_all: ListRef,
    ranges: [BoundRange; RANGES],
    summary: [u64; SUMMARY],
    bits: [u64; WORDS],
}
const _: () = assert!(core::mem::size_of::<Eval>().is_multiple_of(8));

impl Default for Eval {
    fn default() -> Self {
        Self::new()
    }
}

impl Eval {
    pub const fn new() -> Self {
        Self {
            phase: P_DONE,
            sources: 0,
            unknown: 0,
            user_bits: 0,
            known: 0,
            list: 0,
            slot: 0,
            left: 0,
            walking_user: 0,
            cursor: 0,
            rule: 0,
            pc: 0,
            rules: 0,
            linear: 0,
            first_unknown: NONE,
            winner: NONE,
            class: CLASS_DEFAULT as u32,
            provisional: 0,
            error: 0,
            residual: LIST_NONE,
            uid_all: LIST_NONE,
            cgroup_all: LIST_NONE,
            user_all: LIST_NONE,
            ranges: [BoundRange { start: 0, count: 0 }; RANGES],
            summary: [0; SUMMARY],
            bits: [0; WORDS],
        }
    }

    /// Evaluates the table for the facts, looping over [`Eval::step`].
    pub fn evaluate<T: Table, F: Facts>(&mut self, table: &T, facts: &F) -> Verdict {
        self.start(table, facts);
        let mut steps = 0;
        while steps < MAX_EVAL_STEPS && !self.step(table, facts) {
            steps += 1;
        }
        if self.phase != P_DONE {
            self.fail();
        }
        self.verdict()
    }

    /// Prepares an evaluation; then call [`Eval::step`] until it returns true.
    #[inline(always)]
    pub fn start<T: Table, F: Facts>(&mut self, table: &T, facts: &F) {
        self.provisional = 0;
        self.error = 0;
        self.winner = NONE;
        self.first_unknown = NONE;
        self.class = u32::from(CLASS_DEFAULT);
        self.cursor = 0;
        let Some(head) = table.head() else {
            self.fail();
            return;
        };
        self.rules = if head.rules < MAX_RULES { head.rules } else { MAX_RULES };
        if head.mode == MODE_LINEAR {
            self.linear = 1;
            self.phase = P_LINEAR;
            return;
        }
        self.linear = 0;
        self.residual = head.residual;
        self.uid_all = head.uid_all;
        self.cgroup_all = head.cgroup_all;
        self.user_all = head.user_all;
        self.ranges = head.ranges;
        self.prepare_sources(head.sources, facts);
        self.phase = P_CLEAR;
    }

    /// Which sources to gather and which unknown dimensions to walk.
    #[inline(always)]
    fn prepare_sources<F: Facts>(&mut self, present: u32, facts: &F) {
        let mut sources = present;
        let mut unknown = 0;
        if !has_ports(facts.key()) {
            sources &= !(SOURCE_RPORT | SOURCE_LPORT);
        }
        if facts.owner().is_none() {
            sources &= !SOURCE_UID;
            unknown |= U_UID;
        }
        match facts.cgroup() {
            None => {
                sources &= !SOURCE_CGROUP;
                unknown |= U_CGROUP;
                let mut level = 0;
                while level < CGROUP_LEVELS {
                    sources &= !(SOURCE_UNDER << level);
                    level += 1;
                }
            }
            Some((_, ancestors)) => {
                for (level, id) in ancestors.iter().enumerate() {
                    if *id == 0 {
                        sources &= !(SOURCE_UNDER << level);
                    }
                }
            }
        }
        match facts.user_known() {
            UserKnown::Nothing => {
                sources &= !SOURCE_USER;
                unknown |= U_USER;
                self.user_bits = 0;
            }
            UserKnown::Bits { known } => {
                unknown |= U_USER;
                self.user_bits = 1;
                self.known = known;
            }
            UserKnown::All => self.user_bits = 0,
        }
        // Only the unknown dimensions some rule has a cover entry on.
        for (bit, list) in [(U_UID, self.uid_all), (U_CGROUP, self.cgroup_all), (U_USER, self.user_all)] {
            if list == LIST_NONE {
                unknown &= !bit;
            }
        }
        self.sources = sources;
        self.unknown = unknown;
    }

    /// One step; true when the evaluation is over. A step does one piece of
    /// work (an index lookup, a list chunk, a test) and chains the moves
    /// that cost nothing (to the next phase) or belong with it (a lookup and
    /// the first chunk of its list, the next candidate and its first test), in
    /// phase order, each at most once.
    #[inline(always)]
    pub fn step<T: Table, F: Facts>(&mut self, table: &T, facts: &F) -> bool {
        if self.phase == P_CLEAR {
            self.clear_step();
            if self.phase == P_CLEAR {
                return false;
            }
        }
        if self.phase == P_SOURCE {
            self.source_step(table, facts);
            if self.phase == P_SOURCE {
                return false;
            }
        }
        if self.phase == P_ADD {
            self.add_step(table);
            return false;
        }
        if self.phase == P_UNKNOWN {
            self.unknown_step(table);
            if self.phase == P_UNKNOWN {
                return false;
            }
        }
        if self.phase == P_UWALK {
            self.walk_step(table);
            return false;
        }
        if self.phase == P_SCAN {
            self.scan_step(table);
        }
        if self.phase == P_LINEAR {
            self.linear_step(table);
        }
        if self.phase == P_EVAL {
            self.eval_step(table, facts);
        }
        self.phase == P_DONE
    }

    pub fn verdict(&self) -> Verdict {
        if self.error != 0 {
            return Verdict { class: CLASS_DEFAULT, provisional: false, error: true };
        }
        Verdict { class: self.class as u16, provisional: self.provisional != 0, error: false }
    }

    /// Whether the evaluation is over.
    #[inline(always)]
    pub fn done(&self) -> bool {
        self.phase == P_DONE
    }

    /// The rule that matched, if one did.
    pub fn winner(&self) -> Option<u32> {
        (self.error == 0 && self.winner != NONE).then_some(self.winner)
    }

    #[inline(always)]
    fn fail(&mut self) {
        self.error = 1;
        self.phase = P_DONE;
    }

    #[inline(always)]
    fn finish(&mut self) {
        if self.first_unknown < self.winner {
            self.provisional = 1;
        }
        self.phase = P_DONE;
    }

    /// Clears one word of the candidate set left by an earlier evaluation.
    #[inline(always)]
    fn clear_step(&mut self) {
        for (s, summary) in self.summary.iter_mut().enumerate() {
            let w = *summary;
            if w != 0 {
                *summary = w & (w - 1);
                if let Some(word) = self.bits.get_mut(s * 64 + lowest_bit(w) as usize) {
                    *word = 0;
                }
                return;
            }
        }
        self.phase = P_SOURCE;
    }

    /// Adds rule `rule` to the candidates (a list naming a rule the bank does
    /// not have is a malformed table).
    #[inline(always)]
    fn set(&mut self, rule: u32) {
        if rule >= self.rules {
            self.fail();
            return;
        }
        let w = word_of(rule);
        if let Some(word) = self.bits.get_mut(w) {
            *word |= 1u64 << (rule & 63);
        }
        if let Some(summary) = self.summary.get_mut(w >> 6) {
            *summary |= 1u64 << (w & 63);
        }
    }

    #[inline(always)]
    fn is_set(&self, rule: u32) -> bool {
        match self.bits.get(word_of(rule)) {
            Some(word) => word & (1u64 << (rule & 63)) != 0,
            None => false,
        }
    }

    /// Starts reading `list` in phase `phase`; false when it is empty.
    #[inline(always)]
    fn open<T: Table>(&mut self, table: &T, list: ListRef, phase: u32) -> bool {
        if list == LIST_NONE {
            return false;
        }
        let Some(chunk) = table.chunk(list) else {
            self.fail();
            return false;
        };
        let len = u32::from(chunk.ids[0]);
        if len == 0 {
            return false;
        }
        self.list = list;
        self.slot = 1;
        self.left = len;
        self.phase = phase;
        true
    }

    /// The list of the bound range `range` holding `value`.
    #[inline(always)]
    fn range_list<T: Table>(&self, table: &T, range: usize, value: u32) -> ListRef {
        let Some(r) = self.ranges.get(range) else { return LIST_NONE };
        if r.count == 0 {
            return LIST_NONE;
        }
        let (mut lo, mut hi) = (0u32, r.count);
        let mut i = 0;
        while i < BOUND_STEPS && hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match table.bound(r.start + mid) {
                Some(b) if b.value <= value => lo = mid,
                Some(_) => hi = mid,
                None => return LIST_NONE,
            }
            i += 1;
        }
        match table.bound(r.start + lo) {
            Some(b) if b.value <= value => b.list,
            _ => LIST_NONE,
        }
    }

    /// Looks up the list of the next source.
    #[inline(always)]
    fn source_step<T: Table, F: Facts>(&mut self, table: &T, facts: &F) {
        if self.sources == 0 {
            self.phase = P_UNKNOWN;
            return;
        }
        let index = lowest_bit(u64::from(self.sources));
        let source = 1u32 << index;
        if source != SOURCE_USER {
            self.sources &= !source;
        }
        let key = facts.key();
        let list = match source {
            SOURCE_RESIDUAL => self.residual,
            SOURCE_RPORT => self.range_list(table, RANGE_RPORT, u32::from(key.rport)),
            SOURCE_LPORT => self.range_list(table, RANGE_LPORT, u32::from(key.lport)),
            SOURCE_RADDR => table.prefix(DIM_RADDR, key.family, &key.raddr),
            SOURCE_LADDR => table.prefix(DIM_LADDR, key.family, &key.laddr),
            SOURCE_UID => match facts.owner() {
                Some(owner) => self.range_list(table, RANGE_UID, owner.uid),
                None => LIST_NONE,
            },
            SOURCE_CGROUP => match facts.cgroup() {
                Some((id, _)) => table.cgroup(CGROUP_EXACT, id),
                None => LIST_NONE,
            },
            SOURCE_USER => match facts.next_true_test(self.cursor) {
                Some(test) if test >= self.cursor => {
                    self.cursor = test.saturating_add(1);
                    table.user_list(test)
                }
                _ => {
                    self.sources &= !SOURCE_USER;
                    LIST_NONE
                }
            },
            _ => {
                // An ancestor level.
                let level = index.saturating_sub(UNDER_SHIFT);
                match facts.cgroup() {
                    Some((_, ancestors)) => match ancestors.get(level as usize) {
                        Some(id) if *id != 0 => table.cgroup(level, *id),
                        _ => LIST_NONE,
                    },
                    None => LIST_NONE,
                }
            }
        };
        self.open(table, list, P_ADD);
    }

    /// Adds one chunk of a list to the candidates.
    #[inline(always)]
    fn add_step<T: Table>(&mut self, table: &T) {
        let Some(chunk) = table.chunk(self.list) else {
            self.fail();
            return;
        };
        for (i, id) in chunk.ids.iter().enumerate() {
            if (i as u32) < self.slot {
                continue;
            }
            if self.left == 0 {
                break;
            }
            self.left -= 1;
            self.set(u32::from(*id));
        }
        self.list = self.list.wrapping_add(1);
        self.slot = 0;
        if self.left == 0 {
            self.phase = P_SOURCE;
        }
    }

    /// Opens the list of the next unknown dimension.
    #[inline(always)]
    fn unknown_step<T: Table>(&mut self, table: &T) {
        if self.unknown == 0 {
            self.cursor = 0;
            self.phase = P_SCAN;
            return;
        }
        let which = 1u32 << lowest_bit(u64::from(self.unknown));
        self.unknown &= !which;
        let list = match which {
            U_UID => self.uid_all,
            U_CGROUP => self.cgroup_all,
            _ => self.user_all,
        };
        self.walking_user = u32::from(which == U_USER);
        self.open(table, list, P_UWALK);
    }

    /// Whether rule `rule`'s cover tests a userspace test the facts do not know.
    #[inline(always)]
    fn user_unknown<T: Table>(&self, table: &T, rule: u32) -> bool {
        if self.walking_user == 0 || self.user_bits == 0 {
            return true;
        }
        match table.entry(rule) {
            Some(entry) => entry.flags & ENTRY_USER_HIGH != 0 || entry.user_low & !self.known != 0,
            None => true,
        }
    }

    /// Walks one chunk of an unknown dimension's list, looking for a rule that
    /// is not a candidate.
    #[inline(always)]
    fn walk_step<T: Table>(&mut self, table: &T) {
        let Some(chunk) = table.chunk(self.list) else {
            self.fail();
            return;
        };
        let ids = chunk.ids;
        for (i, id) in ids.iter().enumerate() {
            if (i as u32) < self.slot {
                continue;
            }
            if self.left == 0 {
                break;
            }
            self.left -= 1;
            let rule = u32::from(*id);
            if rule >= self.rules {
                self.fail();
                return;
            }
            if rule >= self.first_unknown {
                self.left = 0;
                break;
            }
            if self.is_set(rule) || !self.user_unknown(table, rule) {
                continue;
            }
            self.first_unknown = rule;
            self.left = 0;
            break;
        }
        self.list = self.list.wrapping_add(1);
        self.slot = 0;
        if self.left == 0 {
            self.phase = P_UNKNOWN;
        }
    }

    /// The first candidate at or after `from`.
    #[inline(always)]
    fn next_candidate(&self, from: u32) -> Option<u32> {
        if from >= self.rules {
            return None;
        }
        // Hidden from the optimizer, so the bounds check is on the index itself.
        let w = core::hint::black_box(from >> 6) as usize;
        let word = self.bits.get(w)? & (u64::MAX << (from & 63));
        if word != 0 {
            return Some(((w as u32) << 6) | lowest_bit(word));
        }
        // The next word in use, from the summary (a loop over constants, so
        // the verifier sees every index's bound).
        let next = w + 1;
        let first = next >> 6;
        for (s, summary) in self.summary.iter().enumerate() {
            if s < first {
                continue;
            }
            let mask = if s == first { u64::MAX << (next & 63) } else { u64::MAX };
            let used = summary & mask;
            if used != 0 {
                let nw = s * 64 + lowest_bit(used) as usize;
                let word = *self.bits.get(nw)?;
                return (word != 0).then(|| ((nw as u32) << 6) | lowest_bit(word));
            }
        }
        None
    }

    #[inline(always)]
    fn begin_rule<T: Table>(&mut self, table: &T, rule: u32) {
        if rule >= self.rules {
            self.fail();
            return;
        }
        let Some(entry) = table.entry(rule) else {
            self.fail();
            return;
        };
        self.rule = rule;
        self.pc = entry.first;
        self.phase = P_EVAL;
    }

    #[inline(always)]
    fn scan_step<T: Table>(&mut self, table: &T) {
        match self.next_candidate(self.cursor) {
            Some(rule) => {
                self.cursor = rule.saturating_add(1);
                self.begin_rule(table, rule);
            }
            None => self.finish(),
        }
    }

    #[inline(always)]
    fn linear_step<T: Table>(&mut self, table: &T) {
        if self.cursor >= self.rules {
            self.finish();
            return;
        }
        let rule = self.cursor;
        self.cursor += 1;
        self.begin_rule(table, rule);
    }

    /// Applies one node of the current rule.
    #[inline(always)]
    fn eval_step<T: Table, F: Facts>(&mut self, table: &T, facts: &F) {
        let Some(node) = table.node(self.pc) else {
            self.fail();
            return;
        };
        let result = match test(node, facts) {
            Some(result) => result,
            None => {
                self.provisional = 1;
                false
            }
        };
        let jump = if result { node.on_true } else { node.on_false };
        if jump == JUMP_MATCH {
            let Some(entry) = table.entry(self.rule) else {
                self.fail();
                return;
            };
            self.class = u32::from(entry.class);
            self.winner = self.rule;
            self.finish();
        } else if jump == JUMP_NEXT {
            self.phase = if self.linear != 0 { P_LINEAR } else { P_SCAN };
        } else if jump == 0 {
            self.fail();
        } else {
            self.pc += u32::from(jump);
        }
    }
}
