//! Why a flow gets its class (`shaper explain`): the table evaluated by the
//! evaluator the classifier and the daemon run (`shaper_common::rules::eval`),
//! through a table that records each test the evaluator read, then every
//! rule's tests valued with the same test function (`facts::test`) and the
//! same facts the daemon decides with ([`DaemonFacts`]).
//!
//! No second evaluator: the verdict and the winning rule are the
//! evaluator's; what this module adds is the value of every test of every
//! rule, read or not, for people to see why the rules before the winner
//! were false, and which rules the index let the evaluator skip.

use std::cell::RefCell;

use shaper_common::{
    rules::{
        eval::{Eval, Table, Verdict},
        facts::test,
        ListRef, RuleBound, RuleChunk, RuleEntry, RuleHead,
    },
    FlowKey, RuleNode, OP_LPORT,
};

use super::{compile::Compiled, engine::DaemonFacts, pred::ProcessFacts};

/// What the evaluation of one rule came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first rule to match: its class wins.
    Matched,
    /// Evaluated, false.
    Failed,
    /// Not evaluated: the index showed its cover cannot hold for this flow.
    Skipped,
    /// After the winner: never looked at.
    After,
}

/// One test of a rule: the node, its value for the flow (`None`: a fact
/// that is not known), and whether the evaluator read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestTrace {
    pub node: RuleNode,
    pub value: Option<bool>,
    pub read: bool,
}

/// One rule of the table, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleTrace {
    /// Its class index.
    pub class: u16,
    pub tests: Vec<TestTrace>,
    pub outcome: Outcome,
}

/// The evaluation of the whole table for one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The evaluator's verdict: the class, and whether an unknown fact decided it.
    pub verdict: Verdict,
    /// The rule (its number among the table's rules) that matched.
    pub winner: Option<u32>,
    pub rules: Vec<RuleTrace>,
    /// The local port was not known (a connection not made yet): its tests
    /// show as unknown, and one the evaluator read makes the verdict uncertain.
    pub lport_unknown: bool,
}

/// The compiled table, with the nodes the evaluator reads noted.
struct Recording<'a> {
    table: &'a Compiled,
    read: RefCell<Vec<u32>>,
}

impl Table for Recording<'_> {
    fn head(&self) -> Option<&RuleHead> {
        self.table.head()
    }
    fn entry(&self, rule: u32) -> Option<&RuleEntry> {
        self.table.entry(rule)
    }
    fn node(&self, index: u32) -> Option<&RuleNode> {
        self.read.borrow_mut().push(index);
        self.table.node(index)
    }
    fn chunk(&self, index: u32) -> Option<&RuleChunk> {
        self.table.chunk(index)
    }
    fn bound(&self, index: u32) -> Option<&RuleBound> {
        self.table.bound(index)
    }
    fn prefix(&self, dim: u8, family: u8, addr: &[u8; 16]) -> ListRef {
        self.table.prefix(dim, family, addr)
    }
    fn cgroup(&self, level: u32, id: u64) -> ListRef {
        self.table.cgroup(level, id)
    }
    fn user_list(&self, test: u32) -> ListRef {
        self.table.user_list(test)
    }
}

impl Compiled {
    /// Explains the class the rules give flow `key` of `process` (as
    /// [`Compiled::decide`] decides it); `lport_known: false` for a
    /// connection whose local port is not chosen yet.
    pub fn explain(&self, key: &FlowKey, process: Option<&ProcessFacts>, lport_known: bool) -> Trace {
        let view = process.map(|p| self.view(p));
        let facts = DaemonFacts { key, view: view.as_ref() };
        let recording = Recording { table: self, read: RefCell::new(Vec::new()) };
        let mut eval = Box::new(Eval::new());
        let verdict = eval.evaluate(&recording, &facts);
        let winner = eval.winner();
        let read = recording.read.into_inner();
        let rules = (0..self.entries.len())
            .map(|rule| {
                let nodes = self.rule_nodes(rule);
                let tests: Vec<TestTrace> = nodes
                    .clone()
                    .filter_map(|i| {
                        let node = *self.nodes.get(i)?;
                        let value = match node.op {
                            OP_LPORT if !lport_known => None,
                            _ => test(&node, &facts),
                        };
                        Some(TestTrace { node, value, read: read.contains(&(i as u32)) })
                    })
                    .collect();
                let outcome = match winner {
                    Some(w) if w as usize == rule => Outcome::Matched,
                    Some(w) if (w as usize) < rule => Outcome::After,
                    _ if tests.iter().any(|t| t.read) => Outcome::Failed,
                    _ => Outcome::Skipped,
                };
                let class = self.entries.get(rule).map_or(0, |e| e.class);
                RuleTrace { class, tests, outcome }
            })
            .collect();
        Trace { verdict, winner, rules, lport_unknown: !lport_known }
    }

    /// The node indices of rule `rule`'s program.
    fn rule_nodes(&self, rule: usize) -> std::ops::Range<usize> {
        let start = self.entries.get(rule).map_or(0, |e| e.first as usize);
        let end = self.entries.get(rule + 1).map_or(self.nodes.len(), |e| e.first as usize);
        start..end.max(start)
    }
}

impl Trace {
    /// Whether the verdict could change with the local port (a test on it
    /// was read, and the port is not known).
    pub fn depends_on_lport(&self) -> bool {
        self.lport_unknown
            && self.rules.iter().flat_map(|r| &r.tests).any(|t| t.read && t.node.op == OP_LPORT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{compile, compile::NoCgroups, lower, parser, pred::Pred, SystemEnv};
    use shaper_common::{CLASS_DEFAULT, FAMILY_V4, PROTO_TCP};

    fn preds(rules: &[&str]) -> Vec<Pred> {
        let env = SystemEnv::default();
        rules.iter().map(|r| lower::lower(&parser::parse(r).unwrap(), &env.env()).unwrap()).collect()
    }

    fn key(rport: u16) -> FlowKey {
        let mut k =
            FlowKey { family: FAMILY_V4, proto: PROTO_TCP, lport: 40000, rport, ..FlowKey::default() };
        k.laddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        k.raddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        k
    }

    fn process(cmd: &str, exe: &str) -> ProcessFacts {
        ProcessFacts {
            pid: 42,
            uid: Some(1000),
            gid: Some(1000),
            cmd: Some(cmd.into()),
            exe: Some(exe.into()),
            ..ProcessFacts::default()
        }
    }

    #[test]
    fn the_trace_agrees_with_the_decision_in_both_modes() {
        let p = preds(&[
            "rport == 443",
            "exe == \"/usr/bin/curl\" and rport in 80..90",
            "uid == 1000 and not cmd == \"wget\"",
            "lport > 50000",
        ]);
        let rules: Vec<(u16, &Pred)> = p.iter().enumerate().map(|(i, p)| (i as u16, p)).collect();
        let table = compile::compile(&rules, &NoCgroups).unwrap();
        for mode in [compile::Mode::Linear, compile::Mode::Indexed] {
            let table = table.clone().with_mode(mode);
            for (port, proc_, class) in [
                (443, None, Some(0)),
                (80, Some(process("curl", "/usr/bin/curl")), Some(1)),
                (80, Some(process("wget", "/usr/bin/wget")), None),
                (22, Some(process("ssh", "/usr/bin/ssh")), Some(2)),
            ] {
                let trace = table.explain(&key(port), proc_.as_ref(), true);
                let decided = table.decide(&key(port), proc_.as_ref());
                assert_eq!(trace.verdict, decided, "{mode:?} port {port}");
                assert_eq!(trace.verdict.class, class.unwrap_or(CLASS_DEFAULT), "{mode:?} port {port}");
                let matched: Vec<usize> = trace
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.outcome == Outcome::Matched)
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(matched, class.map(usize::from).into_iter().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn every_test_is_valued_and_unknown_facts_say_so() {
        let p = preds(&["rport == 443", "exe == \"/usr/bin/curl\"", "rport == 80"]);
        let rules: Vec<(u16, &Pred)> = p.iter().enumerate().map(|(i, p)| (i as u16 * 10, p)).collect();
        let table = compile::compile(&rules, &NoCgroups).unwrap();
        // No process known: the exe test is unknown, the verdict provisional.
        let trace = table.explain(&key(80), None, true);
        assert_eq!(trace.verdict.class, 20);
        assert!(trace.verdict.provisional);
        let values: Vec<Vec<Option<bool>>> =
            trace.rules.iter().map(|r| r.tests.iter().map(|t| t.value).collect()).collect();
        assert_eq!(values, [vec![Some(false)], vec![None], vec![Some(true)]]);
        assert_eq!(trace.rules[2].outcome, Outcome::Matched);
        // Indexed: rule 0 (rport 443) is never a candidate for port 80.
        assert_eq!(trace.rules[0].outcome, Outcome::Skipped);
        assert!(!trace.rules[0].tests[0].read);
        // With the process, the daemon's answer decides: rule 1, and rule 2 is after it.
        let trace = table.explain(&key(80), Some(&process("curl", "/usr/bin/curl")), true);
        assert_eq!((trace.verdict.class, trace.winner), (10, Some(1)));
        assert_eq!(trace.rules[1].tests[0].value, Some(true));
        assert_eq!(trace.rules[2].outcome, Outcome::After);
    }

    #[test]
    fn an_unknown_local_port_shows_as_unknown() {
        let p = preds(&["lport == 40000", "rport == 80"]);
        let rules: Vec<(u16, &Pred)> = p.iter().enumerate().map(|(i, p)| (i as u16, p)).collect();
        let table = compile::compile(&rules, &NoCgroups).unwrap().with_mode(compile::Mode::Linear);
        let trace = table.explain(&key(80), None, false);
        assert_eq!(trace.rules[0].tests[0].value, None);
        assert!(trace.depends_on_lport());
        let known = table.explain(&key(80), None, true);
        assert!(!known.depends_on_lport());
        assert_eq!(known.verdict.class, 0);
    }
}
