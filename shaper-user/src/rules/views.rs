//! What the daemon derives from a process for the rule table (its owner
//! fields, its cgroup as ids, its answers to the userspace tests), kept by
//! pid with the facts it came from, next to the compiled table.

use std::sync::{Arc, Mutex};

use shaper_common::{
    rules::{eval::Eval, CGROUP_LEVELS},
    Owner,
};

use super::{index::KeyMap, pred::ProcessFacts};

/// What the table needs to know about a process, derived from its facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessView {
    /// The owner fields; `None` when the process's ids or name could not be
    /// read (it exited first): the tests on them are unknown.
    pub(super) owner: Option<Owner>,
    /// Its cgroup id and ancestors, as the ids the table tests (0 for others).
    pub(super) cgroup: Option<(u64, [u64; CGROUP_LEVELS])>,
    /// The answer to each userspace test, by number (`None`: unknown).
    pub(super) answers: Vec<Option<bool>>,
    /// The tests answered true, in order.
    pub(super) true_tests: Vec<u32>,
    /// Which of the tests below `USERSPACE_TESTS` are answered, when some are not.
    pub(super) known: Option<u64>,
}

/// Process views kept at most; past that the cache starts over.
pub(super) const MAX_VIEWS: usize = 4096;

/// The daemon's per-process views of one table, and the evaluator's state
/// (its candidate set is reused from one decision to the next).
#[derive(Default)]
pub(super) struct Views {
    pub(super) inner: Mutex<ViewsInner>,
}

#[derive(Default)]
pub(super) struct ViewsInner {
    /// By pid: the facts the view was derived from (a pid whose facts
    /// changed, after an exec or as another process, gets a new view) and the view.
    pub(super) by_pid: KeyMap<u32, (ProcessFacts, Arc<ProcessView>)>,
    pub(super) eval: Box<Eval>,
}

impl Clone for Views {
    /// A copy of a table starts with no views.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Views {
    /// Views are derived from the table: they never make two tables differ.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Views")
    }
}
