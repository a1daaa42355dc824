//! From the ordered rule list to the kernel's rule table: a branching program
//! of [`RuleNode`]s (see `shaper_common::RuleNode`).
//!
//! First each atom becomes kernel tests: network and owner tests map one to
//! one; cgroup paths and unit names are looked up (a unit may have several
//! cgroups; a path that does not exist is a test that is false); tests only the
//! daemon can make become `OP_USERSPACE` nodes, which the kernel takes as
//! false while marking its verdict provisional.
//!
//! Then rules are compiled back to front with continuations: a rule's test
//! jumps to its class when true and to the next rule's entry when false;
//! `and`/`or`/`not` only rewire continuations, so each test becomes exactly one
//! node and the table grows linearly with the rules. Nodes are created so that
//! every jump points to a node created earlier; numbering them in reverse
//! creation order makes every jump go forward, which the kernel walk relies on
//! to terminate.

use shaper_common::{
    target_class, RuleNode, MAX_CGROUP_LEVEL, MAX_RULE_NODES, OP_CGROUP, OP_CGROUP_UNDER, OP_COMM, OP_GID,
    OP_LADDR, OP_LPORT, OP_PID, OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE, OP_UID, OP_USERSPACE, TARGET_DEFAULT,
};

use super::pred::{Atom, Pred, Side};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the rules need {nodes} kernel tests; the rule table holds {max}")]
pub struct TooLarge {
    pub nodes: usize,
    pub max: u32,
}

/// Where cgroup paths and unit names are found.
pub trait CgroupIndex {
    /// The id and level (0 = the root) of the cgroup at `path` ("/a/b").
    fn lookup(&self, path: &str) -> Option<(u64, u32)>;
    /// The cgroups of every unit named `unit`, as (id, level).
    fn units(&self, unit: &str) -> Vec<(u64, u32)>;
}

/// An index that knows no cgroups (for checking a config away from its host).
pub struct NoCgroups;

impl CgroupIndex for NoCgroups {
    fn lookup(&self, _path: &str) -> Option<(u64, u32)> {
        None
    }
    fn units(&self, _unit: &str) -> Vec<(u64, u32)> {
        Vec::new()
    }
}

/// A compiled rule table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub nodes: Vec<RuleNode>,
    /// The table tests cgroups (the classifier must look up the socket's ancestry).
    pub cgroups: bool,
    /// The userspace tests by number: the daemon answers them per process in
    /// PROC_TESTS (only the first `USERSPACE_TESTS` can be answered there).
    pub userspace: Vec<Atom>,
}

/// A rule tree whose leaves are kernel tests.
enum Tree {
    Const(bool),
    Not(Box<Tree>),
    And(Vec<Tree>),
    Or(Vec<Tree>),
    Test(RuleNode),
}

fn range(op: u8, lo: u32, hi: u32) -> Tree {
    Tree::Test(RuleNode { op, lo, hi, ..RuleNode::default() })
}

fn cgroup_node(op: u8, id: u64, level: u32) -> Tree {
    let mut node = RuleNode { op, lo: level, ..RuleNode::default() };
    node.a[..8].copy_from_slice(&id.to_ne_bytes());
    Tree::Test(node)
}

/// Numbers the userspace tests of a table (equal tests share a number).
#[derive(Default)]
struct Numbering {
    atoms: Vec<Atom>,
}

impl Numbering {
    fn test(&mut self, atom: &Atom) -> Tree {
        let number = match self.atoms.iter().position(|a| a == atom) {
            Some(i) => i,
            None => {
                self.atoms.push(atom.clone());
                self.atoms.len() - 1
            }
        };
        // Tests past the last number PROC_TESTS can carry stay unanswered.
        let lo = u32::try_from(number).unwrap_or(u32::MAX);
        Tree::Test(RuleNode { op: OP_USERSPACE, lo, ..RuleNode::default() })
    }
}

/// The tests for "the socket's cgroup is `id` (at `level`) or below it"; too
/// deep for the kernel, the test `atom` is left to the daemon.
fn under(id: u64, level: u32, atom: &Atom, numbering: &mut Numbering) -> Tree {
    if level > MAX_CGROUP_LEVEL {
        numbering.test(atom)
    } else {
        cgroup_node(OP_CGROUP_UNDER, id, level)
    }
}

fn atom_tree(atom: &Atom, index: &dyn CgroupIndex, numbering: &mut Numbering) -> Tree {
    match atom {
        Atom::Proto { lo, hi } => range(OP_PROTO, u32::from(*lo), u32::from(*hi)),
        Atom::Port { side, lo, hi } => {
            range(if *side == Side::Local { OP_LPORT } else { OP_RPORT }, u32::from(*lo), u32::from(*hi))
        }
        Atom::Addr { side, prefix } => {
            let op = if *side == Side::Local { OP_LADDR } else { OP_RADDR };
            Tree::Test(RuleNode {
                op,
                family: prefix.family,
                a: prefix.addr,
                b: prefix.mask(),
                ..RuleNode::default()
            })
        }
        Atom::Uid { lo, hi } => range(OP_UID, *lo, *hi),
        Atom::Gid { lo, hi } => range(OP_GID, *lo, *hi),
        Atom::Pid { lo, hi } => range(OP_PID, *lo, *hi),
        Atom::Cmd { name, prefix } => {
            let mut node = RuleNode { op: OP_COMM, ..RuleNode::default() };
            let bytes = name.as_bytes();
            // An exact name also tests the NUL after it ("rsync" is not "rsyncd").
            let tested = if *prefix { bytes.len() } else { bytes.len() + 1 };
            for i in 0..tested.min(16) {
                node.a[i] = bytes.get(i).copied().unwrap_or(0);
                node.b[i] = 0xff;
            }
            Tree::Test(node)
        }
        Atom::Cgroup { path, below } => match (index.lookup(path), below) {
            (None, _) => Tree::Const(false),
            (Some((id, _)), false) => cgroup_node(OP_CGROUP, id, 0),
            (Some((id, level)), true) => Tree::And(vec![
                under(id, level, atom, numbering),
                Tree::Not(Box::new(cgroup_node(OP_CGROUP, id, 0))),
            ]),
        },
        Atom::Unit(name) => Tree::Or(
            index.units(name).into_iter().map(|(id, level)| under(id, level, atom, numbering)).collect(),
        ),
        Atom::Text(..) => numbering.test(atom),
    }
}

fn tree(pred: &Pred, index: &dyn CgroupIndex, numbering: &mut Numbering) -> Tree {
    match pred {
        Pred::Const(b) => Tree::Const(*b),
        Pred::Not(p) => Tree::Not(Box::new(tree(p, index, numbering))),
        Pred::And(ps) => Tree::And(ps.iter().map(|p| tree(p, index, numbering)).collect()),
        Pred::Or(ps) => Tree::Or(ps.iter().map(|p| tree(p, index, numbering)).collect()),
        Pred::Atom(a) => atom_tree(a, index, numbering),
    }
}

/// Folds constants away, so that no test is compiled that no path reaches
/// (`false and x` would otherwise leave `x` behind, unreachable). The result
/// is a constant only at the top.
fn fold(tree: Tree) -> Tree {
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

/// A jump target while compiling: a verdict, or a node by creation number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Verdict(u16),
    Node(usize),
}

struct Builder {
    /// (test, on_true, on_false) in creation order.
    nodes: Vec<(RuleNode, Target, Target)>,
}

impl Builder {
    fn emit(&mut self, tree: &Tree, on_true: Target, on_false: Target) -> Target {
        match tree {
            Tree::Const(true) => on_true,
            Tree::Const(false) => on_false,
            Tree::Not(inner) => self.emit(inner, on_false, on_true),
            Tree::And(items) => {
                items.iter().rev().fold(on_true, |next, item| self.emit(item, next, on_false))
            }
            Tree::Or(items) => items.iter().rev().fold(on_false, |next, item| self.emit(item, on_true, next)),
            Tree::Test(node) => {
                self.nodes.push((*node, on_true, on_false));
                Target::Node(self.nodes.len() - 1)
            }
        }
    }
}

/// Compiles `rules` (class index and predicate, first match wins) into a rule
/// table, looking cgroups up in `index`. The table always has at least one
/// node, so the kernel never walks an empty bank.
pub fn compile(rules: &[(u16, &Pred)], index: &dyn CgroupIndex) -> Result<Compiled, TooLarge> {
    let mut numbering = Numbering::default();
    let trees: Vec<(u16, Tree)> =
        rules.iter().map(|(class, p)| (*class, fold(tree(p, index, &mut numbering)))).collect();
    let mut b = Builder { nodes: Vec::new() };
    let mut entry = Target::Verdict(TARGET_DEFAULT);
    for (class, tree) in trees.iter().rev() {
        entry = b.emit(tree, Target::Verdict(target_class(*class)), entry);
    }
    if b.nodes.len() > MAX_RULE_NODES as usize {
        return Err(TooLarge { nodes: b.nodes.len(), max: MAX_RULE_NODES });
    }
    if let Target::Verdict(v) = entry {
        // No test decides anything: one always-true node carrying the verdict.
        let node = RuleNode { op: OP_TRUE, on_true: v, on_false: v, ..RuleNode::default() };
        return Ok(Compiled { nodes: vec![node], cgroups: false, userspace: Vec::new() });
    }
    let count = b.nodes.len();
    // The entry is always the node created last, which becomes node 0.
    debug_assert_eq!(entry, Target::Node(count - 1));
    let index = |t: Target| -> u16 {
        match t {
            Target::Verdict(v) => v,
            Target::Node(created) => (count - 1 - created) as u16,
        }
    };
    let nodes: Vec<RuleNode> = b
        .nodes
        .iter()
        .rev()
        .map(|(node, t, f)| RuleNode { on_true: index(*t), on_false: index(*f), ..*node })
        .collect();
    let cgroups = nodes.iter().any(|n| n.op == OP_CGROUP || n.op == OP_CGROUP_UNDER);
    Ok(Compiled { nodes, cgroups, userspace: numbering.atoms })
}
