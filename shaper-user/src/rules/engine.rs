//! The user half of the rule engine: the compiled table read from vectors,
//! and the daemon's facts about a flow, for the evaluator the classifier runs
//! too (`shaper_common::rules::eval`).
//!
//! The daemon knows everything the rules may ask: the owner fields and the
//! cgroup from the process facts, and the answer to every userspace test
//! (evaluated with [`Atom::matches`](super::pred::Atom::matches)). A process's
//! view (its owner fields, its cgroup as ids, its answers) is derived once and
//! kept by pid with the facts it came from, so a process's later connections
//! cost a comparison of facts and the index lookups.

use std::sync::{Arc, PoisonError};

use shaper_common::{
    rules::{
        eval::{Eval, Table, Verdict},
        facts::{Facts, UserKnown},
        ListRef, RuleBound, RuleChunk, RuleEntry, RuleHead, CGROUP_LEVELS,
    },
    FlowKey, Owner, RuleNode,
};

use super::{
    compile::Compiled,
    pred::ProcessFacts,
    views::{ProcessView, MAX_VIEWS},
};

impl Table for Compiled {
    fn head(&self) -> Option<&RuleHead> {
        Some(&self.index.head)
    }

    fn entry(&self, rule: u32) -> Option<&RuleEntry> {
        self.entries.get(rule as usize)
    }

    fn node(&self, index: u32) -> Option<&RuleNode> {
        self.nodes.get(index as usize)
    }

    fn chunk(&self, index: u32) -> Option<&RuleChunk> {
        self.index.chunks.get(index as usize)
    }

    fn bound(&self, index: u32) -> Option<&RuleBound> {
        self.index.bounds.get(index as usize)
    }

    fn prefix(&self, dim: u8, family: u8, addr: &[u8; 16]) -> ListRef {
        self.index.prefix(dim, family, addr)
    }

    fn cgroup(&self, level: u32, id: u64) -> ListRef {
        self.index.cgroups.get(&(level, id)).copied().unwrap_or(shaper_common::rules::LIST_NONE)
    }

    fn user_list(&self, test: u32) -> ListRef {
        self.index.user_lists.get(test as usize).copied().unwrap_or(shaper_common::rules::LIST_NONE)
    }
}

/// The daemon's facts about a flow: what /proc and the owner record told
/// about its process (a fact that could not be read is unknown, as in the
/// kernel), or (without a process) nothing about the process.
#[derive(Clone, Copy, Debug)]
pub struct DaemonFacts<'a> {
    pub key: &'a FlowKey,
    pub view: Option<&'a ProcessView>,
}

impl Facts for DaemonFacts<'_> {
    fn key(&self) -> &FlowKey {
        self.key
    }

    fn owner(&self) -> Option<&Owner> {
        self.view.and_then(|v| v.owner.as_ref())
    }

    fn cgroup(&self) -> Option<(u64, &[u64; CGROUP_LEVELS])> {
        self.view.and_then(|v| v.cgroup.as_ref()).map(|(id, ancestors)| (*id, ancestors))
    }

    fn userspace(&self, test: u32) -> Option<bool> {
        self.view.and_then(|v| v.answers.get(test as usize).copied().unwrap_or(Some(false)))
    }

    fn user_known(&self) -> UserKnown {
        match self.view {
            Some(ProcessView { known: Some(known), .. }) => UserKnown::Bits { known: *known },
            Some(_) => UserKnown::All,
            None => UserKnown::Nothing,
        }
    }

    fn next_true_test(&self, from: u32) -> Option<u32> {
        let tests = &self.view?.true_tests;
        tests.get(tests.partition_point(|t| *t < from)).copied()
    }
}

impl Compiled {
    /// The class the rules give flow `key` of `process` (`None`: no process
    /// known, every process test is false): the daemon's final word.
    pub fn decide(&self, key: &FlowKey, process: Option<&ProcessFacts>) -> Verdict {
        let mut inner = self.views.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let view = process.map(|p| {
            if self.userspace.is_empty() && !self.cgroups {
                // Only the owner fields: cheaper to derive than to look up.
                return Arc::new(self.view(p));
            }
            if let Some((facts, view)) = inner.by_pid.get(&p.pid) {
                if facts == p {
                    return Arc::clone(view);
                }
            }
            if inner.by_pid.len() >= MAX_VIEWS {
                inner.by_pid.clear();
            }
            let view = Arc::new(self.view(p));
            inner.by_pid.insert(p.pid, (p.clone(), Arc::clone(&view)));
            view
        });
        let facts = DaemonFacts { key, view: view.as_deref() };
        inner.eval.evaluate(self, &facts)
    }

    /// Evaluates the table with any facts (the kernel's view, in tests).
    pub fn evaluate<F: Facts>(&self, facts: &F) -> Verdict {
        Eval::new().evaluate(self, facts)
    }

    /// What the table needs to know about `process`.
    pub fn view(&self, process: &ProcessFacts) -> ProcessView {
        let owner = match (process.uid, process.gid, process.cmd.as_deref()) {
            (Some(uid), Some(gid), Some(cmd)) => {
                let mut comm = [0u8; 16];
                // The kernel keeps 15 bytes and a NUL.
                for (c, b) in comm.iter_mut().zip(cmd.bytes().take(15)) {
                    *c = b;
                }
                Some(Owner { tgid: process.pid, uid, gid, comm, ..Owner::default() })
            }
            // The kernel's record is all or nothing: so is the daemon's.
            _ => None,
        };
        let cgroup = if self.cgroups { process.cgroup.as_deref().map(|p| self.cgroup_ids(p)) } else { None };
        let key = FlowKey::default();
        let facts = super::pred::Facts { key: &key, process: Some(process) };
        let answers: Vec<Option<bool>> =
            self.userspace.iter().map(|a| a.known_for(process).then(|| a.matches(&facts))).collect();
        let true_tests = answers
            .iter()
            .enumerate()
            .filter(|(_, answer)| **answer == Some(true))
            .map(|(i, _)| i as u32)
            .collect();
        let known = answers.iter().any(Option::is_none).then(|| {
            let below = answers.iter().take(shaper_common::rules::USERSPACE_TESTS as usize);
            below.enumerate().filter(|(_, a)| a.is_some()).fold(0u64, |bits, (i, _)| bits | 1 << i)
        });
        ProcessView { owner, cgroup, answers, true_tests, known }
    }

    /// The cgroup at `path` and its ancestors, as the ids the table tests
    /// (paths the table does not test get 0, which no test has).
    fn cgroup_ids(&self, path: &str) -> (u64, [u64; CGROUP_LEVELS]) {
        let id = |p: &str| self.cgroup_paths.get(p).copied().unwrap_or(0);
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let mut ancestors = [0u64; CGROUP_LEVELS];
        for (level, slot) in ancestors.iter_mut().enumerate().take(parts.len() + 1) {
            let prefix = format!("/{}", parts.get(..level).unwrap_or_default().join("/"));
            *slot = id(&prefix);
        }
        (id(path), ancestors)
    }
}
