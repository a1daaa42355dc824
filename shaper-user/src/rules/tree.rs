//! A rule as a tree of kernel tests, on its way to the rule table: constants
//! folded away, then each rule's *cover* computed and its tests ordered so the
//! cover comes first (see `shaper_common::rules` for why that keeps the
//! first match exact).

use shaper_common::{
    rules::{CGROUP_EXACT, DIM_LADDR, DIM_RADDR, RANGE_LPORT, RANGE_RPORT, RANGE_UID},
    RuleNode, FAMILY_V4, MAX_CGROUP_LEVEL, OP_CGROUP, OP_CGROUP_UNDER, OP_LADDR, OP_LPORT, OP_RADDR,
    OP_RPORT, OP_UID, OP_USERSPACE,
};

/// A rule tree whose leaves are kernel tests.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tree {
    Const(bool),
    Not(Box<Tree>),
    And(Vec<Tree>),
    Or(Vec<Tree>),
    Test(RuleNode),
}

/// Folds constants away, so that no test is compiled that no path reaches
/// (`false and x` would otherwise leave `x` behind, unreachable). The result
/// is a constant only at the top.
pub(super) fn fold(tree: Tree) -> Tree {
    match tree {
        Tree::Not(inner) => match fold(*inner) {
            Tree::Const(b) => Tree::Const(!b),
            other => Tree::Not(Box::new(other)),
        },
        Tree::And(items) => fold_list(items, true),
        Tree::Or(items) => fold_list(items, false),
        leaf => leaf,
    }
}

/// Folds an `and` (`all`) or `or` list: its identity element drops out, its
/// absorbing element decides the whole list.
fn fold_list(items: Vec<Tree>, all: bool) -> Tree {
    let mut kept = Vec::new();
    for item in items.into_iter().map(fold) {
        match item {
            Tree::Const(b) if b == all => {}
            Tree::Const(b) => return Tree::Const(b),
            other => kept.push(other),
        }
    }
    match kept.len() {
        0 => Tree::Const(all),
        1 => kept.remove(0),
        _ if all => Tree::And(kept),
        _ => Tree::Or(kept),
    }
}

/// One entry of a cover: a set of values on one indexed dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Key {
    /// A port or uid interval (`RANGE_*`).
    Range { range: usize, lo: u32, hi: u32 },
    /// An address prefix (`DIM_*`), host bits zero.
    Addr { dim: u8, family: u8, len: u8, addr: [u8; 16] },
    /// A cgroup id, exact ([`CGROUP_EXACT`]) or as the ancestor at `level`.
    Cgroup { level: u32, id: u64 },
    /// A userspace test is true.
    User(u32),
}

/// Entries such that the rule is false when none holds, and a guess of how
/// many flows it lets through (lower is better).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Cover {
    pub keys: Vec<Key>,
    pub cost: f64,
}

// What a cover costs is the share of flows it selects, weighed by how often
// the kernel knows the dimension: always for packet facts, when the socket
// has an owner record for uids and cgroups, rarely for userspace tests (whose
// rules are then cheap in the kernel but provisional). A uid or cgroup cover
// wins over a port range only when it is much narrower.
const OWNER_WEIGHT: f64 = 4.0;
const USER_WEIGHT: f64 = 64.0;
/// Guess: the share of sockets in one cgroup, or running as one uid.
const ONE_OF_MANY: f64 = 1.0 / 1024.0;

fn cover_of(node: &RuleNode) -> Option<Cover> {
    let width = |lo: u32, hi: u32| f64::from(hi.saturating_sub(lo)) + 1.0;
    let (key, cost) = match node.op {
        OP_RPORT | OP_LPORT if node.lo <= node.hi => {
            let range = if node.op == OP_RPORT { RANGE_RPORT } else { RANGE_LPORT };
            (Key::Range { range, lo: node.lo, hi: node.hi }, width(node.lo, node.hi) / 65536.0)
        }
        OP_RADDR | OP_LADDR => {
            let dim = if node.op == OP_RADDR { DIM_RADDR } else { DIM_LADDR };
            let max = if node.family == FAMILY_V4 { 32 } else { 128 };
            let len = node.bits.min(max);
            let key = Key::Addr { dim, family: node.family, len, addr: masked(&node.a, len) };
            (key, 0.5f64.powi(i32::from(len)))
        }
        OP_UID if node.lo <= node.hi => {
            // Uids are mostly below 65 536, like ports.
            let share = (width(node.lo, node.hi) / 65536.0).min(1.0);
            (Key::Range { range: RANGE_UID, lo: node.lo, hi: node.hi }, share * OWNER_WEIGHT)
        }
        OP_CGROUP if node.id() != 0 => {
            (Key::Cgroup { level: CGROUP_EXACT, id: node.id() }, ONE_OF_MANY * OWNER_WEIGHT)
        }
        OP_CGROUP_UNDER if node.id() != 0 && node.lo <= MAX_CGROUP_LEVEL => {
            let share = 0.25f64.powi(node.lo as i32).max(ONE_OF_MANY);
            (Key::Cgroup { level: node.lo, id: node.id() }, share * OWNER_WEIGHT)
        }
        OP_USERSPACE => (Key::User(node.lo), ONE_OF_MANY * USER_WEIGHT),
        _ => return None,
    };
    Some(Cover { keys: vec![key], cost })
}

/// `addr` with the bits past `len` cleared.
pub(super) fn masked(addr: &[u8; 16], len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, (o, a)) in out.iter_mut().zip(addr).enumerate() {
        let bits = (i32::from(len) - 8 * i as i32).clamp(0, 8);
        let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        *o = a & mask;
    }
    out
}

/// The tree with every `and`'s narrowest covered conjunct moved first, and the
/// cover of the whole (`None`: the rule must be evaluated for every flow).
pub(super) fn order(tree: Tree) -> (Tree, Option<Cover>) {
    match tree {
        Tree::Test(node) => (Tree::Test(node), cover_of(&node)),
        Tree::Not(inner) => (Tree::Not(Box::new(order(*inner).0)), None),
        Tree::And(items) => {
            let mut ordered: Vec<(Tree, Option<Cover>)> = items.into_iter().map(order).collect();
            let best = ordered
                .iter()
                .enumerate()
                .filter_map(|(i, (_, c))| c.as_ref().map(|c| (i, c.cost)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            let cover = best.and_then(|i| {
                let chosen = ordered.remove(i);
                let cover = chosen.1.clone();
                ordered.insert(0, chosen);
                cover
            });
            (Tree::And(ordered.into_iter().map(|(t, _)| t).collect()), cover)
        }
        Tree::Or(items) => {
            let ordered: Vec<(Tree, Option<Cover>)> = items.into_iter().map(order).collect();
            let mut cover = Some(Cover { keys: Vec::new(), cost: 0.0 });
            for (_, c) in &ordered {
                cover = match (cover, c) {
                    (Some(mut all), Some(c)) => {
                        all.keys.extend(c.keys.iter().cloned());
                        all.cost += c.cost;
                        Some(all)
                    }
                    _ => None,
                };
            }
            (Tree::Or(ordered.into_iter().map(|(t, _)| t).collect()), cover)
        }
        Tree::Const(b) => (Tree::Const(b), None),
    }
}
