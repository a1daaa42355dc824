//! From the ordered rule list to the rule table (see `shaper_common::rules`).
//!
//! First each atom becomes kernel tests: network and owner tests map one to
//! one; cgroup paths and unit names are looked up (a unit may have several
//! cgroups; a path that does not exist is a test that is false); tests only the
//! daemon can make become `OP_USERSPACE` nodes, which the kernel takes as
//! false while marking its verdict provisional.
//!
//! Then each rule becomes its own program (the `tree` module orders its tests
//! so that its cover comes first), compiled with continuations: each test
//! jumps to the test that follows it on that outcome, or to one of the rule's
//! exits (match, no match); `and`/`or`/`not` only rewire continuations, so each test becomes exactly one
//! node and the table grows linearly with the rules. Nodes are created so that
//! every jump points to a node created earlier; numbering them in reverse
//! creation order makes every jump go forward, which the evaluator relies on
//! to terminate. Last, [`super::index`] builds the index from the covers.
//!
//! A rule that can never match is left out; a rule that always matches ends
//! the table (no rule after it can win).

use std::collections::BTreeMap;

use shaper_common::{
    rules::{RuleEntry, JUMP_MATCH, JUMP_NEXT, MAX_RULES},
    RuleNode, MAX_CGROUP_LEVEL, MAX_RULE_NODES, OP_CGROUP, OP_CGROUP_UNDER, OP_COMM, OP_GID, OP_LADDR,
    OP_LPORT, OP_PID, OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE, OP_UID, OP_USERSPACE,
};

use super::{
    index::Index,
    pred::{Atom, Pred, Side},
    tree::{fold, order, Tree},
    views::Views,
};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the rules need {count} {what}; the rule table holds {max}")]
pub struct TooLarge {
    pub what: &'static str,
    pub count: usize,
    pub max: u32,
}

/// A cgroup found in the hierarchy: its path ("/a/b"), id and level (0 = the root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: String,
    pub id: u64,
    pub level: u32,
}

/// Where cgroup paths and unit names are found.
pub trait CgroupIndex {
    /// The id and level (0 = the root) of the cgroup at `path` ("/a/b").
    fn lookup(&self, path: &str) -> Option<(u64, u32)>;
    /// The cgroups of every unit named `unit`.
    fn units(&self, unit: &str) -> Vec<Found>;
}

/// An index that knows no cgroups (for checking a config away from its host).
pub struct NoCgroups;

impl CgroupIndex for NoCgroups {
    fn lookup(&self, _path: &str) -> Option<(u64, u32)> {
        None
    }
    fn units(&self, _unit: &str) -> Vec<Found> {
        Vec::new()
    }
}

/// How the evaluator picks the rules it evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every rule in order (the reference).
    Linear,
    /// The candidates the index selects, in order.
    Indexed,
}

/// A compiled rule table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// The rules' tests: each rule's program after the previous one's.
    pub nodes: Vec<RuleNode>,
    /// One entry per rule, in file order.
    pub entries: Vec<RuleEntry>,
    pub index: Index,
    /// The table tests cgroups (the classifier must look up the socket's ancestry).
    pub cgroups: bool,
    /// The userspace tests by number: the daemon answers them per process in
    /// PROC_TESTS (only the first `USERSPACE_TESTS` can be answered there).
    pub userspace: Vec<Atom>,
    /// The cgroup paths the table tests, with their ids: the daemon's view of
    /// a process's cgroup as ids, without asking the hierarchy again.
    pub cgroup_paths: BTreeMap<String, u64>,
    /// What the daemon derived about each process it decided for.
    pub(super) views: Views,
}

impl Compiled {
    pub fn mode(&self) -> Mode {
        if self.index.head.mode == shaper_common::rules::MODE_INDEXED {
            Mode::Indexed
        } else {
            Mode::Linear
        }
    }

    /// The same table evaluated in `mode`.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.index.head.mode = match mode {
            Mode::Linear => shaper_common::rules::MODE_LINEAR,
            Mode::Indexed => shaper_common::rules::MODE_INDEXED,
        };
        self
    }
}

/// What compiling collects besides the trees.
#[derive(Default)]
struct Context {
    /// The userspace tests, numbered (equal tests share a number).
    userspace: Vec<Atom>,
    cgroup_paths: BTreeMap<String, u64>,
}

impl Context {
    fn test(&mut self, atom: &Atom) -> Tree {
        let number = match self.userspace.iter().position(|a| a == atom) {
            Some(i) => i,
            None => {
                self.userspace.push(atom.clone());
                self.userspace.len() - 1
            }
        };
        let lo = u32::try_from(number).unwrap_or(u32::MAX);
        Tree::Test(RuleNode { op: OP_USERSPACE, lo, ..RuleNode::default() })
    }

    /// The cgroup at `path`, remembered; a cgroup the table cannot name (id 0) is none.
    fn cgroup(&mut self, path: &str, index: &dyn CgroupIndex) -> Option<(u64, u32)> {
        let (id, level) = index.lookup(path).filter(|(id, _)| *id != 0)?;
        self.cgroup_paths.insert(path.to_string(), id);
        Some((id, level))
    }

    /// The tests for "the socket's cgroup is `id` (at `level`) or below it"; too
    /// deep for the kernel, the test `atom` is left to the daemon.
    fn under(&mut self, id: u64, level: u32, atom: &Atom) -> Tree {
        if level > MAX_CGROUP_LEVEL {
            self.test(atom)
        } else {
            cgroup_node(OP_CGROUP_UNDER, id, level)
        }
    }
}

fn range(op: u8, lo: u32, hi: u32) -> Tree {
    Tree::Test(RuleNode { op, lo, hi, ..RuleNode::default() })
}

fn cgroup_node(op: u8, id: u64, level: u32) -> Tree {
    let mut node = RuleNode { op, lo: level, ..RuleNode::default() };
    node.a[..8].copy_from_slice(&id.to_ne_bytes());
    Tree::Test(node)
}

fn atom_tree(atom: &Atom, index: &dyn CgroupIndex, cx: &mut Context) -> Tree {
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
                bits: prefix.len,
                a: prefix.addr,
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
            let tested = if *prefix { bytes.len() } else { bytes.len() + 1 }.min(16);
            for (i, a) in node.a.iter_mut().enumerate().take(tested) {
                *a = bytes.get(i).copied().unwrap_or(0);
            }
            node.bits = (tested * 8) as u8;
            Tree::Test(node)
        }
        Atom::Cgroup { path, below } => match (cx.cgroup(path, index), below) {
            (None, _) => Tree::Const(false),
            (Some((id, _)), false) => cgroup_node(OP_CGROUP, id, 0),
            (Some((id, level)), true) => {
                Tree::And(vec![cx.under(id, level, atom), Tree::Not(Box::new(cgroup_node(OP_CGROUP, id, 0)))])
            }
        },
        Atom::Unit(name) => {
            let mut found = index.units(name);
            found.retain(|f| f.id != 0);
            Tree::Or(
                found
                    .into_iter()
                    .map(|f| {
                        cx.cgroup_paths.insert(f.path, f.id);
                        cx.under(f.id, f.level, atom)
                    })
                    .collect(),
            )
        }
        Atom::Text(..) => cx.test(atom),
    }
}

fn tree(pred: &Pred, index: &dyn CgroupIndex, cx: &mut Context) -> Tree {
    match pred {
        Pred::Const(b) => Tree::Const(*b),
        Pred::Not(p) => Tree::Not(Box::new(tree(p, index, cx))),
        Pred::And(ps) => Tree::And(ps.iter().map(|p| tree(p, index, cx)).collect()),
        Pred::Or(ps) => Tree::Or(ps.iter().map(|p| tree(p, index, cx)).collect()),
        Pred::Atom(a) => atom_tree(a, index, cx),
    }
}

/// A jump target while compiling: an exit of the rule, or a node by creation number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Match,
    Next,
    Node(usize),
}

#[derive(Default)]
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

/// A rule's program, its first node first; `None` for a rule that never matches.
fn program(tree: &Tree) -> Option<Vec<RuleNode>> {
    let mut b = Builder::default();
    match b.emit(tree, Target::Match, Target::Next) {
        Target::Next => return None,
        Target::Match => {
            let node =
                RuleNode { op: OP_TRUE, on_true: JUMP_MATCH, on_false: JUMP_MATCH, ..RuleNode::default() };
            return Some(vec![node]);
        }
        // The entry is the node created last, which becomes the first.
        Target::Node(_) => {}
    }
    let jump = |from: usize, t: Target| -> u16 {
        match t {
            Target::Match => JUMP_MATCH,
            Target::Next => JUMP_NEXT,
            // Created earlier, so placed later: a forward distance.
            Target::Node(created) => {
                from.checked_sub(created).and_then(|d| u16::try_from(d).ok()).unwrap_or(0)
            }
        }
    };
    Some(
        b.nodes
            .iter()
            .enumerate()
            .rev()
            .map(|(created, (node, t, f))| RuleNode {
                on_true: jump(created, *t),
                on_false: jump(created, *f),
                ..*node
            })
            .collect(),
    )
}

/// Compiles `rules` (class index and predicate, first match wins) into a rule
/// table, looking cgroups up in `index`. The table always has at least one
/// node, so no bank is ever empty.
pub fn compile(rules: &[(u16, &Pred)], index: &dyn CgroupIndex) -> Result<Compiled, TooLarge> {
    let mut cx = Context::default();
    let mut nodes = Vec::new();
    let mut entries = Vec::new();
    let mut covers = Vec::new();
    for (class, pred) in rules {
        let folded = fold(tree(pred, index, &mut cx));
        let always = folded == Tree::Const(true);
        let (ordered, cover) = order(folded);
        let Some(program) = program(&ordered) else { continue };
        entries.push(RuleEntry { first: nodes.len() as u32, class: *class, flags: 0, user_low: 0 });
        nodes.extend(program);
        covers.push(cover);
        if always {
            break;
        }
    }
    if nodes.len() > MAX_RULE_NODES as usize {
        return Err(TooLarge { what: "kernel tests", count: nodes.len(), max: MAX_RULE_NODES });
    }
    if entries.len() > MAX_RULES as usize {
        return Err(TooLarge { what: "rules", count: entries.len(), max: MAX_RULES });
    }
    let index = Index::build(&covers, &mut entries, cx.userspace.len());
    if nodes.is_empty() {
        let node = RuleNode { op: OP_TRUE, on_true: JUMP_NEXT, on_false: JUMP_NEXT, ..RuleNode::default() };
        nodes.push(node);
    }
    let cgroups = nodes.iter().any(|n| n.op == OP_CGROUP || n.op == OP_CGROUP_UNDER);
    Ok(Compiled {
        nodes,
        entries,
        index,
        cgroups,
        userspace: cx.userspace,
        cgroup_paths: cx.cgroup_paths,
        views: Views::default(),
    })
}
