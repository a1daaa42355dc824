//! Walking the compiled rule table (see `shaper_common::RuleNode`).
//!
//! The walk runs under `bpf_loop`, so the verifier checks one step instead of
//! unrolling thousands; jumps only go forward, so it ends within the table size.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use shaper_common::{
    rule_node_index, FlowKey, RuleNode, MAX_RULE_NODES, OP_LADDR, OP_LPORT, OP_PROTO, OP_RADDR, OP_RPORT,
    OP_TRUE, PROTO_TCP, PROTO_UDP, RULE_BANKS, TARGET_DEFAULT, TARGET_VERDICT,
};

use crate::maps::{count_error, RULES};

#[repr(C)]
struct Walk {
    key: FlowKey,
    bank: u32,
    pc: u32,
    verdict: u32,
}

#[inline(always)]
fn in_prefix(addr: &[u8; 16], node: &RuleNode) -> bool {
    let mut i = 0;
    while i < 16 {
        if addr[i] & node.b[i] != node.a[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn test(node: &RuleNode, key: &FlowKey) -> bool {
    let has_ports = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
    match node.op {
        OP_TRUE => true,
        OP_PROTO => (node.lo..=node.hi).contains(&(key.proto as u32)),
        OP_RPORT => has_ports && (node.lo..=node.hi).contains(&(key.rport as u32)),
        OP_LPORT => has_ports && (node.lo..=node.hi).contains(&(key.lport as u32)),
        OP_RADDR => node.family == key.family && in_prefix(&key.raddr, node),
        OP_LADDR => node.family == key.family && in_prefix(&key.laddr, node),
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
    let next = if test(node, &walk.key) { node.on_true } else { node.on_false };
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

/// The verdict of the rule table generation `rules_gen` for `key`: a
/// `target_class(..)` value or `TARGET_DEFAULT`.
#[inline(always)]
pub(crate) fn evaluate(key: &FlowKey, rules_gen: u32) -> u16 {
    if rules_gen == 0 {
        return TARGET_DEFAULT;
    }
    let mut walk = Walk { key: *key, bank: rules_gen % RULE_BANKS, pc: 0, verdict: u32::MAX };
    // SAFETY: `step` has the callback signature bpf_loop expects and `walk` outlives the call.
    let rc = unsafe { bpf_loop(MAX_RULE_NODES, step as *mut c_void, (&mut walk as *mut Walk).cast(), 0) };
    if rc < 0 || walk.verdict == u32::MAX {
        count_error(shaper_common::ERR_RULE_EVAL);
        return TARGET_DEFAULT;
    }
    walk.verdict as u16
}
