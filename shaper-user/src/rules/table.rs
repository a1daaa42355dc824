//! The kernel's rule-table walk (shaper-ebpf/src/rules.rs), done in userspace,
//! so tests can hold the compiler to the predicates it compiles.

use shaper_common::{
    FlowKey, Owner, ProcTests, RuleNode, MAX_CGROUP_LEVEL, OP_CGROUP, OP_CGROUP_UNDER, OP_COMM, OP_GID,
    OP_LADDR, OP_LPORT, OP_PID, OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE, OP_UID, OP_USERSPACE, PROTO_TCP,
    PROTO_UDP, TARGET_DEFAULT, TARGET_VERDICT, USERSPACE_TESTS,
};

/// What the classifier knows when it walks the table.
#[derive(Clone, Copy, Debug)]
pub struct KernelFacts<'a> {
    pub key: &'a FlowKey,
    /// The socket's owner record, if it has one.
    pub owner: Option<&'a Owner>,
    /// The socket's cgroup id and its ancestors by level (0 = the root).
    pub cgroup: Option<(u64, &'a [u64])>,
    /// The daemon's answers to the userspace tests for the owner's process,
    /// as PROC_TESTS holds them (the generation check is the caller's).
    pub proc_tests: Option<&'a ProcTests>,
}

impl<'a> KernelFacts<'a> {
    /// Facts about the packet alone.
    pub fn packet(key: &'a FlowKey) -> Self {
        Self { key, owner: None, cgroup: None, proc_tests: None }
    }
}

fn masked_equal(value: &[u8; 16], node: &RuleNode) -> bool {
    value.iter().zip(node.b).zip(node.a).all(|((v, m), p)| v & m == p)
}

fn node_id(node: &RuleNode) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&node.a[..8]);
    u64::from_ne_bytes(id)
}

/// The test the kernel makes: `None` when it cannot (the verdict becomes provisional).
pub fn test(node: &RuleNode, facts: &KernelFacts<'_>) -> Option<bool> {
    let key = facts.key;
    let has_ports = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
    let within = |v: u32| (node.lo..=node.hi).contains(&v);
    Some(match node.op {
        OP_TRUE => true,
        OP_PROTO => within(u32::from(key.proto)),
        OP_RPORT => has_ports && within(u32::from(key.rport)),
        OP_LPORT => has_ports && within(u32::from(key.lport)),
        OP_RADDR => node.family == key.family && masked_equal(&key.raddr, node),
        OP_LADDR => node.family == key.family && masked_equal(&key.laddr, node),
        OP_UID => within(facts.owner?.uid),
        OP_GID => within(facts.owner?.gid),
        OP_PID => within(facts.owner?.tgid),
        OP_COMM => masked_equal(&facts.owner?.comm, node),
        OP_CGROUP => facts.cgroup?.0 == node_id(node),
        OP_CGROUP_UNDER => {
            let (_, ancestors) = facts.cgroup?;
            node.lo <= MAX_CGROUP_LEVEL && ancestors.get(node.lo as usize) == Some(&node_id(node))
        }
        OP_USERSPACE => {
            facts.owner?;
            let tests = facts.proc_tests?;
            let bit = 1u64.checked_shl(node.lo).filter(|_| node.lo < USERSPACE_TESTS)?;
            if tests.known & bit == 0 {
                return None;
            }
            tests.values & bit != 0
        }
        _ => false,
    })
}

/// The verdict for a flow: `target_class(..)` or `TARGET_DEFAULT`, and whether
/// it is provisional. A malformed table (a backward jump, a jump past the end)
/// gives the default, as in the kernel.
pub fn eval(nodes: &[RuleNode], facts: &KernelFacts<'_>) -> (u16, bool) {
    let mut provisional = false;
    let mut pc = 0usize;
    while let Some(node) = nodes.get(pc) {
        let result = test(node, facts).unwrap_or_else(|| {
            provisional = true;
            false
        });
        let next = if result { node.on_true } else { node.on_false };
        if next >= TARGET_VERDICT {
            return (next, provisional);
        }
        if usize::from(next) <= pc {
            return (TARGET_DEFAULT, false);
        }
        pc = usize::from(next);
    }
    (TARGET_DEFAULT, false)
}
