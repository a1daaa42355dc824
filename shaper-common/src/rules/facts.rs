//! What a rule's test asks about a flow: the [`Facts`] trait, the kernel's
//! facts ([`KernelView`]), and the test of one node ([`test()`]). Compiled into
//! both sides with the evaluator (`super::eval`).

use super::{
    KernelView, RuleNode, CGROUP_LEVELS, OP_CGROUP, OP_CGROUP_UNDER, OP_COMM, OP_GID, OP_LADDR, OP_LPORT,
    OP_PID, OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE, OP_UID, OP_USERSPACE, USERSPACE_TESTS,
};
use crate::{FlowKey, Owner, PROTO_TCP, PROTO_UDP};

/// What the facts know about the userspace tests, for the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserKnown {
    /// Nothing: every userspace test is unknown.
    Nothing,
    /// The tests below [`USERSPACE_TESTS`] whose bit is set in `known`; the others are unknown.
    Bits { known: u64 },
    /// Every test.
    All,
}

/// What a rule may ask about a flow. `None` means "not known": the test reads
/// as false and the verdict becomes provisional.
pub trait Facts {
    fn key(&self) -> &FlowKey;
    /// The socket's owner (uid, gid, tgid, comm).
    fn owner(&self) -> Option<&Owner>;
    /// The socket's cgroup id and its ancestors by level (0 = the root; 0 past its depth).
    fn cgroup(&self) -> Option<(u64, &[u64; CGROUP_LEVELS])>;
    /// The answer to userspace test `test`.
    fn userspace(&self, test: u32) -> Option<bool>;
    fn user_known(&self) -> UserKnown;
    /// The smallest userspace test at or after `from` known to be true.
    fn next_true_test(&self, from: u32) -> Option<u32>;
}

impl Facts for KernelView<'_> {
    #[inline(always)]
    fn key(&self) -> &FlowKey {
        self.key
    }

    #[inline(always)]
    fn owner(&self) -> Option<&Owner> {
        (self.socket.has_owner != 0).then_some(&self.socket.owner)
    }

    #[inline(always)]
    fn cgroup(&self) -> Option<(u64, &[u64; CGROUP_LEVELS])> {
        (self.socket.has_cgroup != 0).then_some((self.socket.cgroup, &self.socket.ancestors))
    }

    #[inline(always)]
    fn userspace(&self, test: u32) -> Option<bool> {
        if self.socket.has_owner == 0 || self.socket.has_answers == 0 || test >= USERSPACE_TESTS {
            return None;
        }
        let bit = 1u64 << test;
        (self.socket.known & bit != 0).then_some(self.socket.values & bit != 0)
    }

    #[inline(always)]
    fn user_known(&self) -> UserKnown {
        if self.socket.has_owner != 0 && self.socket.has_answers != 0 {
            UserKnown::Bits { known: self.socket.known }
        } else {
            UserKnown::Nothing
        }
    }

    #[inline(always)]
    fn next_true_test(&self, from: u32) -> Option<u32> {
        if self.socket.has_owner == 0 || self.socket.has_answers == 0 || from >= USERSPACE_TESTS {
            return None;
        }
        let left = self.socket.known & self.socket.values & (u64::MAX << from);
        (left != 0).then(|| lowest_bit(left))
    }
}

#[inline(always)]
pub(super) fn has_ports(key: &FlowKey) -> bool {
    key.proto == PROTO_TCP || key.proto == PROTO_UDP
}

/// Whether the first `bits` bits of `value` and `pattern` are equal.
#[inline(always)]
pub fn prefix_equal(value: &[u8; 16], pattern: &[u8; 16], bits: u8) -> bool {
    let mut left = u32::from(bits);
    for (v, p) in value.iter().zip(pattern.iter()) {
        if left == 0 {
            break;
        }
        let mask = if left >= 8 { 0xff } else { 0xffu8 << (8 - left) };
        if (v ^ p) & mask != 0 {
            return false;
        }
        left = left.saturating_sub(8);
    }
    true
}

/// The test of one node: `None` when the facts do not tell.
#[inline(always)]
pub fn test<F: Facts>(node: &RuleNode, facts: &F) -> Option<bool> {
    let key = facts.key();
    let within = |v: u32| node.lo <= v && v <= node.hi;
    match node.op {
        OP_TRUE => Some(true),
        OP_PROTO => Some(within(u32::from(key.proto))),
        OP_RPORT => Some(has_ports(key) && within(u32::from(key.rport))),
        OP_LPORT => Some(has_ports(key) && within(u32::from(key.lport))),
        OP_RADDR => Some(node.family == key.family && prefix_equal(&key.raddr, &node.a, node.bits)),
        OP_LADDR => Some(node.family == key.family && prefix_equal(&key.laddr, &node.a, node.bits)),
        OP_UID => facts.owner().map(|o| within(o.uid)),
        OP_GID => facts.owner().map(|o| within(o.gid)),
        OP_PID => facts.owner().map(|o| within(o.tgid)),
        OP_COMM => facts.owner().map(|o| prefix_equal(&o.comm, &node.a, node.bits)),
        OP_CGROUP => facts.cgroup().map(|(id, _)| id == node.id()),
        OP_CGROUP_UNDER => facts.cgroup().map(|(_, ancestors)| match ancestors.get(node.lo as usize) {
            Some(id) => *id == node.id(),
            None => false,
        }),
        OP_USERSPACE => facts.userspace(node.lo),
        _ => Some(false),
    }
}

/// Index of the lowest set bit of `x` (0 for 0).
///
/// LLVM lowers it with a lookup table on BPF, whose result the verifier only
/// knows as a byte; the mask, hidden from the optimizer so it stays, shows the
/// verifier what LLVM knows: every index computed from it is in bounds.
#[inline(always)]
pub fn lowest_bit(x: u64) -> u32 {
    core::hint::black_box(x.trailing_zeros()) & 63
}
