//! The rule table's maps, and writing a compiled table into one bank of them
//! (see `shaper_common::rules`). Only the idle bank is written: the
//! classifier reads the other until the generation flips. What this process
//! wrote into a bank is kept, so the next write there sends only the entries
//! that differ (a reload that changes one rule writes a few entries, not the
//! whole table); after a start, the first write of each bank is whole.
//!
//! What the maps cost in kernel memory (both banks): the arrays are
//! allocated in full when the object loads: RULES 32 768 × 32 B × 2 = 2 MiB,
//! RULE_ENTRIES 16 384 × 16 B × 2 = 512 KiB, RULE_LISTS 16 384 × 16 B × 2 =
//! 512 KiB, RULE_BOUNDS 32 768 × 8 B × 2 = 512 KiB, RULE_HEADS 2 × 312 B;
//! RULE_PREFIXES (an LPM trie) and RULE_CGROUPS (a hash without
//! preallocation) take memory per entry in use. Per CPU, the evaluation's
//! state (EVAL) takes about 2.2 KiB.

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, MapData, MapError,
};
use shaper_common::{
    names,
    rules::{
        bank_index, CgroupKey, ListRef, PrefixKey, RuleBound, RuleChunk, RuleEntry, RuleHead, MAX_RULES,
        MAX_RULE_BOUNDS, MAX_RULE_CGROUPS, MAX_RULE_CHUNKS, MAX_RULE_PREFIXES, PREFIX_HEADER_BITS,
    },
    RuleNode, MAX_RULE_NODES, RULE_BANKS,
};

use super::DatapathError;
use crate::rules::compile::Compiled;

/// The maps of the rule table.
pub(super) struct RuleMaps {
    pub nodes: Array<MapData, RuleNode>,
    pub entries: Array<MapData, RuleEntry>,
    pub heads: Array<MapData, RuleHead>,
    pub lists: Array<MapData, RuleChunk>,
    pub bounds: Array<MapData, RuleBound>,
    pub prefixes: LpmTrie<MapData, PrefixKey, ListRef>,
    pub cgroups: HashMap<MapData, CgroupKey, ListRef>,
    /// The table last written whole into each bank, if this process knows it.
    pub written: [Option<Box<Compiled>>; RULE_BANKS as usize],
}

fn map_error(action: &'static str, map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { action, map, source }
}

fn fits(what: &'static str, count: usize, max: u32) -> Result<(), DatapathError> {
    if count > max as usize {
        return Err(DatapathError::RulesTooLarge { what, count, max });
    }
    Ok(())
}

/// Writes `items` at the start of bank `bank` of a banked array, but for
/// those equal to what `before` says is there.
fn write_array<T: aya::Pod + PartialEq>(
    array: &mut Array<MapData, T>,
    bank: u32,
    per_bank: u32,
    items: &[T],
    before: Option<&[T]>,
    map: &'static str,
) -> Result<(), DatapathError> {
    for (i, item) in items.iter().enumerate() {
        if before.and_then(|b| b.get(i)) == Some(item) {
            continue;
        }
        array.set(bank_index(bank, per_bank, i as u32), item, 0).map_err(map_error("writing", map))?;
    }
    Ok(())
}

impl RuleMaps {
    /// Writes `compiled` into bank `bank`; its header last.
    pub fn write(&mut self, bank: u32, compiled: &Compiled) -> Result<(), DatapathError> {
        let index = &compiled.index;
        fits("kernel tests", compiled.nodes.len(), MAX_RULE_NODES)?;
        fits("rules", compiled.entries.len(), MAX_RULES)?;
        fits("list chunks", index.chunks.len(), MAX_RULE_CHUNKS)?;
        fits("interval bounds", index.bounds.len(), MAX_RULE_BOUNDS)?;
        fits("address prefixes", index.prefixes.len(), MAX_RULE_PREFIXES)?;
        fits("cgroup keys", index.cgroups.len(), MAX_RULE_CGROUPS)?;
        let slot = self.written.get_mut(bank as usize).ok_or(DatapathError::RulesTooLarge {
            what: "banks",
            count: bank as usize + 1,
            max: RULE_BANKS,
        })?;
        // Unknown until the write succeeds.
        let before = slot.take();
        let before = before.as_deref();
        write_array(
            &mut self.nodes,
            bank,
            MAX_RULE_NODES,
            &compiled.nodes,
            before.map(|b| b.nodes.as_slice()),
            names::MAP_RULES,
        )?;
        write_array(
            &mut self.entries,
            bank,
            MAX_RULES,
            &compiled.entries,
            before.map(|b| b.entries.as_slice()),
            names::MAP_RULE_ENTRIES,
        )?;
        write_array(
            &mut self.lists,
            bank,
            MAX_RULE_CHUNKS,
            &index.chunks,
            before.map(|b| b.index.chunks.as_slice()),
            names::MAP_RULE_LISTS,
        )?;
        write_array(
            &mut self.bounds,
            bank,
            MAX_RULE_BOUNDS,
            &index.bounds,
            before.map(|b| b.index.bounds.as_slice()),
            names::MAP_RULE_BOUNDS,
        )?;
        self.write_prefixes(bank, compiled, before)?;
        self.write_cgroups(bank, compiled, before)?;
        self.heads.set(bank, index.head, 0).map_err(map_error("writing", names::MAP_RULE_HEADS))?;
        if let Some(slot) = self.written.get_mut(bank as usize) {
            *slot = Some(Box::new(compiled.clone()));
        }
        Ok(())
    }

    /// The prefixes of bank `bank` that `compiled` does not have (all of the
    /// bank's prefixes, when what is there is unknown).
    fn stale_prefixes(
        &self,
        bank: u32,
        compiled: &Compiled,
        before: Option<&Compiled>,
    ) -> Vec<Key<PrefixKey>> {
        let new = &compiled.index.prefixes;
        match before {
            Some(b) => b
                .index
                .prefixes
                .keys()
                .filter(|p| !new.contains_key(*p))
                .map(|&(dim, family, len, addr)| prefix_key(bank, dim, family, len, addr))
                .collect(),
            None => self
                .prefixes
                .keys()
                .filter_map(Result::ok)
                .filter(|k| u32::from(k.data().bank) == bank)
                .collect(),
        }
    }

    fn write_prefixes(
        &mut self,
        bank: u32,
        compiled: &Compiled,
        before: Option<&Compiled>,
    ) -> Result<(), DatapathError> {
        let map = names::MAP_RULE_PREFIXES;
        for key in self.stale_prefixes(bank, compiled, before) {
            match self.prefixes.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error("removing a stale prefix from", map)(e)),
            }
        }
        for (p, list) in &compiled.index.prefixes {
            if before.and_then(|b| b.index.prefixes.get(p)) == Some(list) {
                continue;
            }
            let &(dim, family, len, addr) = p;
            let key = prefix_key(bank, dim, family, len, addr);
            self.prefixes.insert(&key, list, 0).map_err(map_error("writing", map))?;
        }
        Ok(())
    }

    fn write_cgroups(
        &mut self,
        bank: u32,
        compiled: &Compiled,
        before: Option<&Compiled>,
    ) -> Result<(), DatapathError> {
        let map = names::MAP_RULE_CGROUPS;
        let new = &compiled.index.cgroups;
        let stale: Vec<CgroupKey> = match before {
            Some(b) => b
                .index
                .cgroups
                .keys()
                .filter(|k| !new.contains_key(*k))
                .map(|&(level, id)| CgroupKey { bank, level, id })
                .collect(),
            None => self.cgroups.keys().filter_map(Result::ok).filter(|k| k.bank == bank).collect(),
        };
        for key in stale {
            match self.cgroups.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error("removing a stale cgroup from", map)(e)),
            }
        }
        for (&(level, id), list) in new {
            if before.and_then(|b| b.index.cgroups.get(&(level, id))) == Some(list) {
                continue;
            }
            self.cgroups.insert(CgroupKey { bank, level, id }, list, 0).map_err(map_error("writing", map))?;
        }
        Ok(())
    }
}

fn prefix_key(bank: u32, dim: u8, family: u8, len: u8, addr: [u8; 16]) -> Key<PrefixKey> {
    let data = PrefixKey { bank: bank as u8, dim, family, addr, _pad: 0 };
    Key::new(PREFIX_HEADER_BITS + u32::from(len), data)
}
