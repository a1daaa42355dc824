//! The rule table's maps, and writing a compiled table into one bank of them
//! (see `shaper_common::rules`). Only the idle bank is written: the
//! classifier reads the other until the generation flips.
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
    RuleNode, MAX_RULE_NODES,
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

/// Writes `items` at the start of bank `bank` of a banked array.
fn write_array<T: aya::Pod>(
    array: &mut Array<MapData, T>,
    bank: u32,
    per_bank: u32,
    items: &[T],
    map: &'static str,
) -> Result<(), DatapathError> {
    for (i, item) in items.iter().enumerate() {
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
        write_array(&mut self.nodes, bank, MAX_RULE_NODES, &compiled.nodes, names::MAP_RULES)?;
        write_array(&mut self.entries, bank, MAX_RULES, &compiled.entries, names::MAP_RULE_ENTRIES)?;
        write_array(&mut self.lists, bank, MAX_RULE_CHUNKS, &index.chunks, names::MAP_RULE_LISTS)?;
        write_array(&mut self.bounds, bank, MAX_RULE_BOUNDS, &index.bounds, names::MAP_RULE_BOUNDS)?;
        self.write_prefixes(bank, compiled)?;
        self.write_cgroups(bank, compiled)?;
        self.heads.set(bank, index.head, 0).map_err(map_error("writing", names::MAP_RULE_HEADS))
    }

    fn write_prefixes(&mut self, bank: u32, compiled: &Compiled) -> Result<(), DatapathError> {
        let map = names::MAP_RULE_PREFIXES;
        let stale: Vec<Key<PrefixKey>> = self
            .prefixes
            .keys()
            .filter_map(Result::ok)
            .filter(|k| u32::from(k.data().bank) == bank)
            .collect();
        for key in stale {
            match self.prefixes.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error("removing a stale prefix from", map)(e)),
            }
        }
        for (&(dim, family, len, addr), list) in &compiled.index.prefixes {
            let data = PrefixKey { bank: bank as u8, dim, family, addr, _pad: 0 };
            let key = Key::new(PREFIX_HEADER_BITS + u32::from(len), data);
            self.prefixes.insert(&key, list, 0).map_err(map_error("writing", map))?;
        }
        Ok(())
    }

    fn write_cgroups(&mut self, bank: u32, compiled: &Compiled) -> Result<(), DatapathError> {
        let map = names::MAP_RULE_CGROUPS;
        let stale: Vec<CgroupKey> =
            self.cgroups.keys().filter_map(Result::ok).filter(|k| k.bank == bank).collect();
        for key in stale {
            match self.cgroups.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error("removing a stale cgroup from", map)(e)),
            }
        }
        for (&(level, id), list) in &compiled.index.cgroups {
            self.cgroups.insert(CgroupKey { bank, level, id }, list, 0).map_err(map_error("writing", map))?;
        }
        Ok(())
    }
}
