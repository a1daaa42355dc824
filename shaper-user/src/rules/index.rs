//! The index of a rule table, built from the rules' covers (see
//! `shaper_common::rules` for what it means and why first match stays exact).
//!
//! - Ports and uids: the interval bounds of every cover entry cut the values
//!   into segments; each segment gets the list of rules whose intervals hold
//!   it (adjacent segments with equal lists are one), found by binary search.
//! - Addresses: one entry per prefix, whose list unites the rules of every
//!   prefix that holds it (a longest-prefix match returns only the longest).
//! - Cgroups: (level, id) and (exact, id) keys.
//! - Userspace tests: one list per test.
//! - Per dimension the kernel may not know (uid, cgroup, userspace test), the
//!   list of every rule with a cover entry there.
//!
//! Equal lists are stored once. Lists of overlapping intervals or nested
//! prefixes can grow with the square of the rules; when the index would not
//! fit the table's capacity, the rules with the widest covers leave the index
//! for the residual list (evaluated for every flow), until it fits.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{BuildHasherDefault, Hasher},
};

use shaper_common::rules::{
    BoundRange, ListRef, RuleBound, RuleChunk, RuleEntry, RuleHead, CGROUP_EXACT, CGROUP_LEVELS, CHUNK_IDS,
    ENTRY_USER_HIGH, LIST_NONE, MAX_RULE_BOUNDS, MAX_RULE_CGROUPS, MAX_RULE_CHUNKS, MAX_RULE_PREFIXES,
    MODE_INDEXED, RANGES, RANGE_LPORT, RANGE_RPORT, RANGE_UID, SOURCE_CGROUP, SOURCE_LADDR, SOURCE_LPORT,
    SOURCE_RADDR, SOURCE_RESIDUAL, SOURCE_RPORT, SOURCE_UID, SOURCE_UNDER, SOURCE_USER, USERSPACE_TESTS,
};

use super::tree::{masked, Cover, Key};

/// An address prefix of the index: dimension (`DIM_*`), family, length, address.
pub type PrefixOf = (u8, u8, u8, [u8; 16]);

/// A multiply-rotate hasher for the index's small keys, which the daemon looks
/// up for every decision: several times cheaper than the default SipHash,
/// whose resistance to chosen keys is not needed for keys the config chose.
#[derive(Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by index keys.
pub type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// The index part of a rule table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub head: RuleHead,
    pub chunks: Vec<RuleChunk>,
    pub bounds: Vec<RuleBound>,
    pub prefixes: KeyMap<PrefixOf, ListRef>,
    /// (level or `CGROUP_EXACT`, id) → list.
    pub cgroups: KeyMap<(u32, u64), ListRef>,
    /// Per userspace test (all of them, not only those PROC_TESTS answers).
    pub user_lists: Vec<ListRef>,
    /// Rules left to the residual list.
    pub residual: usize,
    /// Prefix lengths present per (dimension, family), longest first.
    lengths: BTreeMap<(u8, u8), Vec<u8>>,
}

/// Lists of rule numbers, each stored once.
#[derive(Default)]
struct Pool {
    chunks: Vec<RuleChunk>,
    known: HashMap<Vec<u16>, ListRef>,
    /// Rule numbers the lists would hold, to give up early when too many.
    items: usize,
}

/// The index outgrew a capacity.
struct Full;

const MAX_ITEMS: usize = MAX_RULE_CHUNKS as usize * CHUNK_IDS;

impl Pool {
    fn add(&mut self, ids: &[u16]) -> Result<ListRef, Full> {
        if ids.is_empty() {
            return Ok(LIST_NONE);
        }
        if let Some(list) = self.known.get(ids) {
            return Ok(*list);
        }
        self.items += ids.len() + 1;
        if self.items > MAX_ITEMS || self.chunks.len() >= MAX_RULE_CHUNKS as usize {
            return Err(Full);
        }
        let list = self.chunks.len() as ListRef;
        let slots: Vec<u16> = std::iter::once(ids.len() as u16).chain(ids.iter().copied()).collect();
        for part in slots.chunks(CHUNK_IDS) {
            let mut chunk = RuleChunk::default();
            chunk.ids[..part.len()].copy_from_slice(part);
            self.chunks.push(chunk);
        }
        self.known.insert(ids.to_vec(), list);
        Ok(list)
    }
}

/// A sorted list without duplicates.
fn sorted(mut ids: Vec<u16>) -> Vec<u16> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The cover entries of the indexed rules, by dimension.
#[derive(Default)]
struct Entries {
    ranges: [Vec<(u32, u32, u16)>; RANGES],
    prefixes: Vec<(PrefixOf, u16)>,
    cgroups: BTreeMap<(u32, u64), Vec<u16>>,
    users: BTreeMap<u32, Vec<u16>>,
    uid_all: Vec<u16>,
    cgroup_all: Vec<u16>,
    user_all: Vec<u16>,
}

impl Entries {
    fn add(&mut self, rule: u16, cover: &Cover, entry: &mut RuleEntry) {
        for key in &cover.keys {
            match *key {
                Key::Range { range, lo, hi } => {
                    if let Some(r) = self.ranges.get_mut(range) {
                        r.push((lo, hi, rule));
                    }
                    if range == RANGE_UID {
                        self.uid_all.push(rule);
                    }
                }
                Key::Addr { dim, family, len, addr } => self.prefixes.push(((dim, family, len, addr), rule)),
                Key::Cgroup { level, id } => {
                    self.cgroups.entry((level, id)).or_default().push(rule);
                    self.cgroup_all.push(rule);
                }
                Key::User(test) => {
                    self.users.entry(test).or_default().push(rule);
                    self.user_all.push(rule);
                    if test < USERSPACE_TESTS {
                        entry.user_low |= 1 << test;
                    } else {
                        entry.flags |= ENTRY_USER_HIGH;
                    }
                }
            }
        }
    }
}

/// The bounds of one range dimension.
fn range_bounds(
    items: &[(u32, u32, u16)],
    pool: &mut Pool,
    bounds: &mut Vec<RuleBound>,
) -> Result<BoundRange, Full> {
    let start = bounds.len() as u32;
    if items.is_empty() {
        return Ok(BoundRange { start, count: 0 });
    }
    // Where rules enter (true) and leave (false) the active set.
    let mut events: BTreeMap<u64, Vec<(u16, bool)>> = BTreeMap::new();
    for &(lo, hi, rule) in items {
        events.entry(u64::from(lo)).or_default().push((rule, true));
        events.entry(u64::from(hi) + 1).or_default().push((rule, false));
    }
    events.entry(0).or_default();
    let mut active: BTreeMap<u16, u32> = BTreeMap::new();
    let mut last = None;
    for (point, mut changes) in events {
        let Ok(value) = u32::try_from(point) else { break };
        // Entries first: a rule whose intervals touch stays active.
        changes.sort_by_key(|(_, enters)| !enters);
        for (rule, enters) in changes {
            let count = active.entry(rule).or_default();
            if enters {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    active.remove(&rule);
                }
            }
        }
        let ids: Vec<u16> = active.keys().copied().collect();
        let list = pool.add(&ids)?;
        if last != Some(list) {
            if bounds.len() >= MAX_RULE_BOUNDS as usize {
                return Err(Full);
            }
            bounds.push(RuleBound { value, list });
            last = Some(list);
        }
    }
    Ok(BoundRange { start, count: bounds.len() as u32 - start })
}

impl Index {
    /// The index of a table whose rules have `covers` (`None`: no cover), with
    /// `tests` userspace tests. Sets the rules' entry flags.
    pub(super) fn build(covers: &[Option<Cover>], entries: &mut [RuleEntry], tests: usize) -> Self {
        let mut indexed: Vec<bool> = covers.iter().map(Option::is_some).collect();
        // Widest covers first: the first to leave the index if it does not fit.
        let mut widest: Vec<(usize, f64)> =
            covers.iter().enumerate().filter_map(|(i, c)| c.as_ref().map(|c| (i, c.cost))).collect();
        widest.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut demoted = 0;
        loop {
            if let Ok(index) = Self::try_build(covers, &indexed, entries, tests) {
                return index;
            }
            let batch = ((widest.len() - demoted) / 8).max(1);
            for (rule, _) in widest.iter().skip(demoted).take(batch) {
                if let Some(flag) = indexed.get_mut(*rule) {
                    *flag = false;
                }
            }
            demoted += batch;
            if demoted >= widest.len() {
                indexed.iter_mut().for_each(|f| *f = false);
                if let Ok(index) = Self::try_build(covers, &indexed, entries, tests) {
                    return index;
                }
                // Cannot happen: a residual-only index fits any table that has room for its rules.
                return Self::default();
            }
        }
    }

    fn try_build(
        covers: &[Option<Cover>],
        indexed: &[bool],
        entries: &mut [RuleEntry],
        tests: usize,
    ) -> Result<Self, Full> {
        let mut pool = Pool::default();
        let mut found = Entries::default();
        let mut residual = Vec::new();
        for (rule, (cover, entry)) in covers.iter().zip(entries.iter_mut()).enumerate() {
            entry.flags = 0;
            entry.user_low = 0;
            match cover {
                Some(cover) if indexed.get(rule) == Some(&true) => found.add(rule as u16, cover, entry),
                _ => residual.push(rule as u16),
            }
        }
        let mut head = RuleHead { rules: entries.len() as u32, mode: MODE_INDEXED, ..RuleHead::default() };
        head.residual = pool.add(&residual)?;
        head.uid_all = pool.add(&sorted(found.uid_all))?;
        head.cgroup_all = pool.add(&sorted(found.cgroup_all))?;
        head.user_all = pool.add(&sorted(found.user_all))?;
        let mut bounds = Vec::new();
        for (range, items) in found.ranges.iter().enumerate() {
            if let Some(r) = head.ranges.get_mut(range) {
                *r = range_bounds(items, &mut pool, &mut bounds)?;
            }
        }
        let (prefixes, lengths) = prefix_lists(&found.prefixes, &mut pool)?;
        let mut cgroups = KeyMap::default();
        for (key, ids) in found.cgroups {
            cgroups.insert(key, pool.add(&sorted(ids))?);
        }
        if cgroups.len() > MAX_RULE_CGROUPS as usize {
            return Err(Full);
        }
        let mut user_lists = vec![LIST_NONE; tests];
        for (test, ids) in found.users {
            if let Some(slot) = user_lists.get_mut(test as usize) {
                *slot = pool.add(&sorted(ids))?;
            }
        }
        for (slot, list) in head.user_lists.iter_mut().zip(&user_lists) {
            *slot = *list;
        }
        head.sources = sources(&head, &prefixes, &cgroups, &user_lists);
        Ok(Self {
            head,
            chunks: pool.chunks,
            bounds,
            prefixes,
            cgroups,
            user_lists,
            residual: residual.len(),
            lengths,
        })
    }

    /// The list of the longest prefix of dimension `dim` holding `addr`.
    pub fn prefix(&self, dim: u8, family: u8, addr: &[u8; 16]) -> ListRef {
        let Some(lengths) = self.lengths.get(&(dim, family)) else { return LIST_NONE };
        for len in lengths {
            if let Some(list) = self.prefixes.get(&(dim, family, *len, masked(addr, *len))) {
                return *list;
            }
        }
        LIST_NONE
    }
}

type PrefixLists = (KeyMap<PrefixOf, ListRef>, BTreeMap<(u8, u8), Vec<u8>>);

/// One list per prefix, uniting the rules of every prefix that holds it.
fn prefix_lists(items: &[(PrefixOf, u16)], pool: &mut Pool) -> Result<PrefixLists, Full> {
    let mut rules: HashMap<PrefixOf, Vec<u16>> = HashMap::new();
    let mut lengths: BTreeMap<(u8, u8), BTreeSet<u8>> = BTreeMap::new();
    for &(prefix, rule) in items {
        rules.entry(prefix).or_default().push(rule);
        lengths.entry((prefix.0, prefix.1)).or_default().insert(prefix.2);
    }
    if rules.len() > MAX_RULE_PREFIXES as usize {
        return Err(Full);
    }
    let mut out = KeyMap::default();
    for &(dim, family, len, addr) in rules.keys() {
        let mut ids = Vec::new();
        for shorter in lengths.get(&(dim, family)).into_iter().flatten().filter(|l| **l <= len) {
            if let Some(r) = rules.get(&(dim, family, *shorter, masked(&addr, *shorter))) {
                ids.extend_from_slice(r);
            }
        }
        out.insert((dim, family, len, addr), pool.add(&sorted(ids))?);
    }
    let longest_first = lengths.into_iter().map(|(k, v)| (k, v.into_iter().rev().collect())).collect();
    Ok((out, longest_first))
}

/// The `SOURCE_*` bits of what the index holds.
fn sources(
    head: &RuleHead,
    prefixes: &KeyMap<PrefixOf, ListRef>,
    cgroups: &KeyMap<(u32, u64), ListRef>,
    user_lists: &[ListRef],
) -> u32 {
    use shaper_common::rules::{DIM_LADDR, DIM_RADDR};
    let mut sources = 0;
    let mut add = |present: bool, bit: u32| {
        if present {
            sources |= bit;
        }
    };
    add(head.residual != LIST_NONE, SOURCE_RESIDUAL);
    add(head.ranges[RANGE_RPORT].count > 0, SOURCE_RPORT);
    add(head.ranges[RANGE_LPORT].count > 0, SOURCE_LPORT);
    add(head.ranges[RANGE_UID].count > 0, SOURCE_UID);
    add(prefixes.keys().any(|p| p.0 == DIM_RADDR), SOURCE_RADDR);
    add(prefixes.keys().any(|p| p.0 == DIM_LADDR), SOURCE_LADDR);
    add(cgroups.keys().any(|(level, _)| *level == CGROUP_EXACT), SOURCE_CGROUP);
    for level in 0..CGROUP_LEVELS as u32 {
        add(cgroups.keys().any(|(l, _)| *l == level), SOURCE_UNDER << level);
    }
    add(user_lists.iter().any(|l| *l != LIST_NONE), SOURCE_USER);
    sources
}
