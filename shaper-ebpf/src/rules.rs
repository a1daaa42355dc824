//! Walking the compiled rule table (see `shaper_common::RuleNode`).
//!
//! The walk runs under `bpf_loop`, so the verifier checks one step instead of
//! unrolling thousands; jumps only go forward, so it ends within the table size.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use shaper_common::{
    rule_node_index, FlowKey, Owner, RuleNode, MAX_CGROUP_LEVEL, MAX_RULE_NODES, OP_CGROUP, OP_CGROUP_UNDER,
    OP_COMM, OP_GID, OP_LADDR, OP_LPORT, OP_PID, OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE, OP_UID, OP_USERSPACE,
    PROTO_TCP, PROTO_UDP, RULE_BANKS, TARGET_DEFAULT, TARGET_VERDICT, USERSPACE_TESTS,
};

use crate::maps::{count_error, PROC_TESTS, RULES, SCRATCH};

pub(crate) const CGROUP_LEVELS: usize = MAX_CGROUP_LEVEL as usize + 1;

/// What the rules can be asked about a packet's socket. Too large for the BPF
/// stack next to everything else, it lives in the per-CPU SCRATCH map: egress
/// tc programs run with bottom halves disabled, so no other run on the same
/// CPU can interleave with one that filled it.
#[repr(C)]
pub(crate) struct SocketFacts {
    /// The socket's owner, valid when `has_owner` is 1.
    pub owner: Owner,
    pub has_owner: u32,
    /// The socket's cgroup and its ancestors by level (0 = the root), valid when `has_cgroup` is 1.
    pub has_cgroup: u32,
    pub cgroup: u64,
    pub ancestors: [u64; CGROUP_LEVELS],
    /// The rule generation being walked (for PROC_TESTS entries).
    pub rules_gen: u32,
    pub _pad: u32,
}

/// The walk's state, on the stack (bpf_loop's context must be).
#[repr(C)]
pub(crate) struct Walk {
    pub key: FlowKey,
    bank: u32,
    pc: u32,
    verdict: u32,
    /// Set when a test the kernel cannot make was reached.
    provisional: u32,
}

impl Walk {
    #[inline(always)]
    pub(crate) fn new(key: &FlowKey) -> Self {
        Self { key: *key, bank: 0, pc: 0, verdict: u32::MAX, provisional: 0 }
    }
}

#[inline(always)]
fn masked_equal(value: &[u8; 16], node: &RuleNode) -> bool {
    let mut i = 0;
    while i < 16 {
        if value[i] & node.b[i] != node.a[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn node_id(node: &RuleNode) -> u64 {
    u64::from_ne_bytes([
        node.a[0], node.a[1], node.a[2], node.a[3], node.a[4], node.a[5], node.a[6], node.a[7],
    ])
}

/// A test on the socket's facts; `None` when the kernel does not know them.
#[inline(always)]
fn socket_test(node: &RuleNode) -> Option<bool> {
    let facts = SCRATCH.get(0)?;
    let within = |v: u32| (node.lo..=node.hi).contains(&v);
    match node.op {
        OP_UID | OP_GID | OP_PID | OP_COMM if facts.has_owner == 0 => None,
        OP_UID => Some(within(facts.owner.uid)),
        OP_GID => Some(within(facts.owner.gid)),
        OP_PID => Some(within(facts.owner.tgid)),
        OP_COMM => Some(masked_equal(&facts.owner.comm, node)),
        OP_CGROUP | OP_CGROUP_UNDER if facts.has_cgroup == 0 => None,
        OP_CGROUP => Some(facts.cgroup == node_id(node)),
        OP_CGROUP_UNDER => Some(match facts.ancestors.get(node.lo as usize) {
            Some(id) => *id == node_id(node),
            None => false,
        }),
        // What the daemon found about this process, if it has looked already.
        OP_USERSPACE if facts.has_owner != 0 && node.lo < USERSPACE_TESTS => {
            // SAFETY: read-only look at a map value.
            let tests = unsafe { PROC_TESTS.get(facts.owner.tgid) }?;
            let bit = 1u64 << node.lo;
            (tests.rules_gen == facts.rules_gen && tests.known & bit != 0).then_some(tests.values & bit != 0)
        }
        _ => None,
    }
}

#[inline(always)]
fn test(node: &RuleNode, walk: &mut Walk) -> bool {
    let key = &walk.key;
    let has_ports = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
    let within = |v: u32| (node.lo..=node.hi).contains(&v);
    match node.op {
        OP_TRUE => true,
        OP_PROTO => within(key.proto as u32),
        OP_RPORT => has_ports && within(key.rport as u32),
        OP_LPORT => has_ports && within(key.lport as u32),
        OP_RADDR => node.family == key.family && masked_equal(&key.raddr, node),
        OP_LADDR => node.family == key.family && masked_equal(&key.laddr, node),
        OP_UID | OP_GID | OP_PID | OP_COMM | OP_CGROUP | OP_CGROUP_UNDER | OP_USERSPACE => {
            match socket_test(node) {
                Some(result) => result,
                None => {
                    walk.provisional = 1;
                    false
                }
            }
        }
        _ => false,
    }
}

extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `evaluate` passed: a live `Walk` on its stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let Some(node) = RULES.get(rule_node_index(walk.bank, walk.pc)) else {
        walk.verdict = TARGET_DEFAULT as u32;
        return 1;
    };
    let next = if test(node, walk) { node.on_true } else { node.on_false };
    if next >= TARGET_VERDICT {
        walk.verdict = next as u32;
        return 1;
    }
    if next as u32 <= walk.pc || next as u32 >= MAX_RULE_NODES {
        // A backward or out-of-range jump: the table is malformed.
        return 1;
    }
    walk.pc = next as u32;
    0
}

/// The verdict of rule table generation `rules_gen` for the flow in `walk`: a
/// `target_class(..)` value or `TARGET_DEFAULT`, and whether it is provisional.
#[inline(always)]
pub(crate) fn evaluate(walk: &mut Walk, rules_gen: u32) -> (u16, bool) {
    if rules_gen == 0 {
        return (TARGET_DEFAULT, false);
    }
    walk.bank = rules_gen % RULE_BANKS;
    walk.pc = 0;
    walk.verdict = u32::MAX;
    walk.provisional = 0;
    // SAFETY: `step` has the callback signature bpf_loop expects and `walk` outlives the call.
    let rc = unsafe { bpf_loop(MAX_RULE_NODES, step as *mut c_void, (walk as *mut Walk).cast(), 0) };
    if rc < 0 || walk.verdict == u32::MAX {
        count_error(shaper_common::ERR_RULE_EVAL);
        return (TARGET_DEFAULT, false);
    }
    (walk.verdict as u16, walk.provisional != 0)
}
