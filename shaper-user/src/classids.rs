//! Class names ↔ the kernel's class indices.
//!
//! A class's index is its HTB leaf (`1:(0x10 + index)`) and the slot of its
//! counters, so it must not move while the class lives: across reloads,
//! restarts and crashes. The config knows classes by name only; the
//! [`ClassIds`] in force belong to the datapath, which pins them next to the
//! counters (the CLASS_NAMES map) and hands them to a new daemon. A new config
//! gets its indices from [`ClassIds::assign`]: every class keeps the index its
//! name had, new classes take the lowest free ones.

use std::collections::{BTreeMap, BTreeSet};

use shaper_common::MAX_CLASSES;

/// Which index each class name has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassIds {
    by_name: BTreeMap<String, u16>,
    by_index: BTreeMap<u16, String>,
}

impl ClassIds {
    /// Indices as they were recorded (index → name), e.g. read from the pins.
    pub fn from_recorded(recorded: BTreeMap<u16, String>) -> Self {
        let mut ids = Self::default();
        for (index, name) in recorded {
            // A name recorded twice keeps its first index.
            if !ids.by_name.contains_key(&name) {
                ids.insert(name, index);
            }
        }
        ids
    }

    /// Indices in the order of `names` (0, 1, 2, …): what a host with no
    /// shaper state gives a config's classes.
    pub fn in_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self::default().assign(names)
    }

    /// Indices for the classes `names` (a config's, in file order): each keeps
    /// its index here, new ones take the lowest free indices, names left out
    /// lose theirs. Names past the [`MAX_CLASSES`] indices get none.
    pub fn assign<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Self {
        let names: Vec<&str> = names.into_iter().collect();
        let mut next = Self::default();
        let mut taken = BTreeSet::new();
        for name in &names {
            if let Some(index) = self.by_name.get(*name).filter(|i| taken.insert(**i)) {
                next.insert((*name).to_string(), *index);
            }
        }
        let mut free = (0..MAX_CLASSES as u16).filter(|i| !taken.contains(i));
        for name in names {
            if next.by_name.contains_key(name) {
                continue;
            }
            if let Some(index) = free.next() {
                next.insert(name.to_string(), index);
            }
        }
        next
    }

    fn insert(&mut self, name: String, index: u16) {
        self.by_index.insert(index, name.clone());
        self.by_name.insert(name, index);
    }

    pub fn index(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, index: u16) -> Option<&str> {
        self.by_index.get(&index).map(String::as_str)
    }

    /// (index, name) in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &str)> {
        self.by_index.iter().map(|(i, n)| (*i, n.as_str()))
    }

    /// Indices in use here whose name `next` no longer gives them: their
    /// counters must be cleared before another class can take them.
    pub fn released_by(&self, next: &ClassIds) -> Vec<u16> {
        self.iter().filter(|(i, n)| next.name(*i) != Some(*n)).map(|(i, _)| i).collect()
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_host_numbers_classes_in_file_order() {
        let ids = ClassIds::in_order(["a", "b", "d"]);
        assert_eq!(ids.iter().collect::<Vec<_>>(), [(0, "a"), (1, "b"), (2, "d")]);
    }

    #[test]
    fn names_keep_their_index_and_new_classes_fill_the_gaps() {
        let recorded = BTreeMap::from([(0, "a".to_string()), (1, "gone".into()), (2, "d".into())]);
        let before = ClassIds::from_recorded(recorded);
        let after = before.assign(["new", "d", "a", "later"]);
        assert_eq!((after.index("a"), after.index("d")), (Some(0), Some(2)));
        assert_eq!((after.index("new"), after.index("later")), (Some(1), Some(3)));
        assert_eq!(after.name(1), Some("new"));
        assert_eq!(before.released_by(&after), [1], "index 1 changes hands: its counters are cleared");
        assert_eq!(after.len(), 4);
    }
}
