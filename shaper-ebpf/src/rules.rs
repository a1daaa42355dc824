//! The rule table read from the maps, evaluated by the shared evaluator
//! (`shaper_common::rules::eval`) one step per `bpf_loop` callback, so the
//! verifier checks one step instead of unrolling a whole evaluation.

use core::ffi::c_void;

use aya_ebpf::{helpers::generated::bpf_loop, maps::lpm_trie::Key};
use shaper_common::{
    rules::{
        bank_index,
        eval::{Table, MAX_EVAL_STEPS},
        CgroupKey, KernelView, ListRef, PrefixKey, RuleBound, RuleChunk, RuleEntry, RuleHead, SocketFacts,
        LIST_NONE, MAX_RULES, MAX_RULE_BOUNDS, MAX_RULE_CHUNKS, PREFIX_HEADER_BITS,
    },
    target_class, FlowKey, RuleNode, CLASS_DEFAULT, ERR_RULE_EVAL, MAX_RULE_NODES, RULE_BANKS,
    TARGET_DEFAULT,
};

pub(crate) use shaper_common::CGROUP_LEVELS;

use crate::maps::{
    count_error, EVAL, HOOK_EVAL, HOOK_SCRATCH, PROC_TESTS, RULES, RULE_BOUNDS, RULE_CGROUPS, RULE_ENTRIES,
    RULE_HEADS, RULE_LISTS, RULE_PREFIXES, SCRATCH,
};

/// Where an evaluation keeps the flow's socket facts and its state, per CPU:
/// one set for the classifier ([`Packet`], softirq) and one for the socket
/// hooks ([`Hook`], process context), so a packet classified in the middle
/// of a hook's evaluation cannot overwrite it.
pub(crate) trait Slots {
    fn eval() -> Option<*mut shaper_common::rules::eval::Eval>;
    fn facts() -> Option<*mut SocketFacts>;
}

/// The classifier's slots (SCRATCH, EVAL).
pub(crate) struct Packet;
/// The connect hooks' slots (HOOK_SCRATCH, HOOK_EVAL).
pub(crate) struct Hook;

impl Slots for Packet {
    #[inline(always)]
    fn eval() -> Option<*mut shaper_common::rules::eval::Eval> {
        EVAL.get_ptr_mut(0)
    }
    #[inline(always)]
    fn facts() -> Option<*mut SocketFacts> {
        SCRATCH.get_ptr_mut(0)
    }
}

impl Slots for Hook {
    #[inline(always)]
    fn eval() -> Option<*mut shaper_common::rules::eval::Eval> {
        HOOK_EVAL.get_ptr_mut(0)
    }
    #[inline(always)]
    fn facts() -> Option<*mut SocketFacts> {
        HOOK_SCRATCH.get_ptr_mut(0)
    }
}

/// Maps a rule-table verdict to a flow's class (`CLASS_DEFAULT` for "no match").
#[inline(always)]
pub(crate) fn verdict_class(verdict: u16) -> u16 {
    if verdict == TARGET_DEFAULT || verdict < shaper_common::TARGET_VERDICT {
        CLASS_DEFAULT
    } else {
        verdict & !shaper_common::TARGET_VERDICT
    }
}

/// A flow being decided, on the stack (bpf_loop's context must be).
#[repr(C)]
pub(crate) struct Walk {
    pub key: FlowKey,
    bank: u32,
    _pad: u32,
}

impl Walk {
    #[inline(always)]
    pub(crate) fn new(key: &FlowKey) -> Self {
        Self { key: *key, bank: 0, _pad: 0 }
    }
}

/// One bank of the rule table, in the maps.
struct Maps {
    bank: u32,
}

impl Table for Maps {
    #[inline(always)]
    fn head(&self) -> Option<&RuleHead> {
        RULE_HEADS.get(self.bank)
    }

    #[inline(always)]
    fn entry(&self, rule: u32) -> Option<&RuleEntry> {
        if rule >= MAX_RULES {
            return None;
        }
        RULE_ENTRIES.get(bank_index(self.bank, MAX_RULES, rule))
    }

    #[inline(always)]
    fn node(&self, index: u32) -> Option<&RuleNode> {
        if index >= MAX_RULE_NODES {
            return None;
        }
        RULES.get(bank_index(self.bank, MAX_RULE_NODES, index))
    }

    #[inline(always)]
    fn chunk(&self, index: u32) -> Option<&RuleChunk> {
        if index >= MAX_RULE_CHUNKS {
            return None;
        }
        RULE_LISTS.get(bank_index(self.bank, MAX_RULE_CHUNKS, index))
    }

    #[inline(always)]
    fn bound(&self, index: u32) -> Option<&RuleBound> {
        if index >= MAX_RULE_BOUNDS {
            return None;
        }
        RULE_BOUNDS.get(bank_index(self.bank, MAX_RULE_BOUNDS, index))
    }

    #[inline(always)]
    fn prefix(&self, dim: u8, family: u8, addr: &[u8; 16]) -> ListRef {
        let data = PrefixKey { bank: self.bank as u8, dim, family, addr: *addr, _pad: 0 };
        let key = Key::new(PREFIX_HEADER_BITS + 128, data);
        RULE_PREFIXES.get(key).copied().unwrap_or(LIST_NONE)
    }

    #[inline(always)]
    fn cgroup(&self, level: u32, id: u64) -> ListRef {
        let key = CgroupKey { bank: self.bank, level, id };
        // SAFETY: read-only look at a map value.
        unsafe { RULE_CGROUPS.get(key) }.copied().unwrap_or(LIST_NONE)
    }

    #[inline(always)]
    fn user_list(&self, test: u32) -> ListRef {
        match self.head() {
            Some(head) => head.user_lists.get(test as usize).copied().unwrap_or(LIST_NONE),
            None => LIST_NONE,
        }
    }
}

extern "C" fn step<S: Slots>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `evaluate` passed: a live `Walk` on its stack.
    let walk = unsafe { &*(ctx as *const Walk) };
    let (Some(eval), Some(socket)) = (S::eval(), S::facts()) else { return 1 };
    // SAFETY: this CPU's slots, used by nothing else during this run (see `Slots`).
    let (eval, socket) = unsafe { (&mut *eval, &*socket) };
    let view = KernelView { key: &walk.key, socket };
    i64::from(eval.step(&Maps { bank: walk.bank }, &view))
}

/// Takes the daemon's answers to the userspace tests for the socket owner's
/// process, if it left some for this rule generation.
#[inline(always)]
fn load_answers(socket: &mut SocketFacts) {
    socket.has_answers = 0;
    if socket.has_owner == 0 {
        return;
    }
    // SAFETY: read-only look at a map value.
    if let Some(tests) = unsafe { PROC_TESTS.get(socket.owner.tgid) } {
        if tests.rules_gen == socket.rules_gen {
            socket.known = tests.known;
            socket.values = tests.values;
            socket.has_answers = 1;
        }
    }
}

/// The verdict of rule table generation `rules_gen` for the flow in `walk`
/// (whose socket facts are in the facts slot of `S`): a `target_class(..)`
/// value or `TARGET_DEFAULT`, and whether it is provisional.
#[inline(always)]
pub(crate) fn evaluate<S: Slots>(walk: &mut Walk, rules_gen: u32) -> (u16, bool) {
    if rules_gen == 0 {
        return (TARGET_DEFAULT, false);
    }
    walk.bank = rules_gen % RULE_BANKS;
    let (Some(eval), Some(socket)) = (S::eval(), S::facts()) else {
        count_error(ERR_RULE_EVAL);
        return (TARGET_DEFAULT, false);
    };
    // SAFETY: this CPU's slots of EVAL and SCRATCH, used by nothing else during this run.
    let (eval, socket) = unsafe { (&mut *eval, &mut *socket) };
    load_answers(socket);
    eval.start(&Maps { bank: walk.bank }, &KernelView { key: &walk.key, socket });
    // SAFETY: `step` has the callback signature bpf_loop expects and `walk` outlives the call.
    let rc = unsafe { bpf_loop(MAX_EVAL_STEPS, step::<S> as *mut c_void, (walk as *mut Walk).cast(), 0) };
    let verdict = eval.verdict();
    if rc < 0 || !eval.done() || verdict.error {
        count_error(ERR_RULE_EVAL);
        return (TARGET_DEFAULT, false);
    }
    let target = if verdict.class == CLASS_DEFAULT { TARGET_DEFAULT } else { target_class(verdict.class) };
    (target, verdict.provisional)
}
