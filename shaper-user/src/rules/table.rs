//! The kernel's rule-table walk, done in userspace: the daemon uses it to
//! classify connections it adopts from /proc exactly as the classifier would,
//! and the tests use it to check the compiler against [`super::Pred`].

use shaper_common::{
    FlowKey, RuleNode, OP_LADDR, OP_LPORT, OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE, PROTO_TCP, PROTO_UDP,
    TARGET_DEFAULT, TARGET_VERDICT,
};

fn in_prefix(addr: &[u8; 16], node: &RuleNode) -> bool {
    addr.iter().zip(node.b).zip(node.a).all(|((a, m), p)| a & m == p)
}

/// The same test the kernel makes (shaper-ebpf/src/rules.rs).
pub fn test(node: &RuleNode, key: &FlowKey) -> bool {
    let has_ports = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
    let within = |v: u32| (node.lo..=node.hi).contains(&v);
    match node.op {
        OP_TRUE => true,
        OP_PROTO => within(u32::from(key.proto)),
        OP_RPORT => has_ports && within(u32::from(key.rport)),
        OP_LPORT => has_ports && within(u32::from(key.lport)),
        OP_RADDR => node.family == key.family && in_prefix(&key.raddr, node),
        OP_LADDR => node.family == key.family && in_prefix(&key.laddr, node),
        _ => false,
    }
}

/// The verdict for `key`: `target_class(..)` or `TARGET_DEFAULT`. A malformed
/// table (a backward jump, a jump past the end) gives the default, as in the kernel.
pub fn eval(nodes: &[RuleNode], key: &FlowKey) -> u16 {
    let mut pc = 0usize;
    while let Some(node) = nodes.get(pc) {
        let next = if test(node, key) { node.on_true } else { node.on_false };
        if next >= TARGET_VERDICT {
            return next;
        }
        if usize::from(next) <= pc {
            return TARGET_DEFAULT;
        }
        pc = usize::from(next);
    }
    TARGET_DEFAULT
}
