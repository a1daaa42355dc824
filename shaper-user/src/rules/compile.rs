//! From the ordered rule list to the kernel's rule table: a branching program
//! of [`RuleNode`]s (see `shaper_common::RuleNode`).
//!
//! Rules are compiled back to front with continuations: a rule's test jumps to
//! its class when true and to the next rule's entry when false; `and`/`or`/`not`
//! only rewire continuations, so each atom becomes exactly one node and the
//! table grows linearly with the rules. Nodes are created so that every jump
//! points to a node created earlier; numbering them in reverse creation order
//! makes every jump go forward, which the kernel walk relies on to terminate.

use shaper_common::{
    target_class, RuleNode, MAX_RULE_NODES, OP_LADDR, OP_LPORT, OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE,
    TARGET_DEFAULT,
};

use super::pred::{Atom, Pred, Side};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the rules need {nodes} kernel tests; the rule table holds {max}")]
pub struct TooLarge {
    pub nodes: usize,
    pub max: u32,
}

/// A jump target while compiling: a verdict, or a node by creation number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Verdict(u16),
    Node(usize),
}

struct Builder {
    /// (atom, on_true, on_false) in creation order.
    nodes: Vec<(Atom, Target, Target)>,
}

impl Builder {
    fn emit(&mut self, pred: &Pred, on_true: Target, on_false: Target) -> Target {
        match pred {
            Pred::Const(true) => on_true,
            Pred::Const(false) => on_false,
            Pred::Not(inner) => self.emit(inner, on_false, on_true),
            Pred::And(items) => {
                items.iter().rev().fold(on_true, |next, item| self.emit(item, next, on_false))
            }
            Pred::Or(items) => items.iter().rev().fold(on_false, |next, item| self.emit(item, on_true, next)),
            Pred::Atom(atom) => {
                self.nodes.push((*atom, on_true, on_false));
                Target::Node(self.nodes.len() - 1)
            }
        }
    }
}

fn node(atom: &Atom) -> RuleNode {
    let mut n = RuleNode::default();
    match *atom {
        Atom::Proto { lo, hi } => {
            n.op = OP_PROTO;
            n.lo = u32::from(lo);
            n.hi = u32::from(hi);
        }
        Atom::Port { side, lo, hi } => {
            n.op = if side == Side::Local { OP_LPORT } else { OP_RPORT };
            n.lo = u32::from(lo);
            n.hi = u32::from(hi);
        }
        Atom::Addr { side, prefix } => {
            n.op = if side == Side::Local { OP_LADDR } else { OP_RADDR };
            n.family = prefix.family;
            n.a = prefix.addr;
            n.b = prefix.mask();
        }
    }
    n
}

/// Compiles `rules` (class index and predicate, first match wins) into a rule
/// table. The table always has at least one node, so the kernel never walks an
/// empty bank.
pub fn compile(rules: &[(u16, &Pred)]) -> Result<Vec<RuleNode>, TooLarge> {
    let atoms: usize = rules.iter().map(|(_, p)| p.atoms()).sum();
    if atoms >= MAX_RULE_NODES as usize {
        return Err(TooLarge { nodes: atoms + 1, max: MAX_RULE_NODES });
    }
    let mut b = Builder { nodes: Vec::new() };
    let mut entry = Target::Verdict(TARGET_DEFAULT);
    for (class, pred) in rules.iter().rev() {
        entry = b.emit(pred, Target::Verdict(target_class(*class)), entry);
    }
    if let Target::Verdict(v) = entry {
        // No test decides anything: one always-true node carrying the verdict.
        return Ok(vec![RuleNode { op: OP_TRUE, on_true: v, on_false: v, ..RuleNode::default() }]);
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
    Ok(b.nodes
        .iter()
        .rev()
        .map(|(atom, t, f)| RuleNode { on_true: index(*t), on_false: index(*f), ..node(atom) })
        .collect())
}
