//! The interface maps: IFACES (hash, ifindex → [`IfaceInfo`], every
//! registered interface) and IFACE_TABLE (array, the classifier's fast path:
//! entry `iface_table_index(ifindex)` holds one interface, named by its
//! `ifindex` field).
//!
//! The classifier reads a table entry with no lock while this side rewrites
//! it, so an entry is never changed in place under a valid tag: its tag is
//! cleared first (readers then fall back to IFACES, already up to date), the
//! new contents are written untagged, and the tag goes back last. Each of
//! these writes changes either the contents or the tag, never both, so a
//! reader that sees the tag sees contents written for that interface.

use aya::maps::{Array, HashMap, MapData, MapError};
use shaper_common::{iface_table_index, names, IfaceInfo, IFACE_TABLE_SIZE};

use super::DatapathError;

pub(super) struct Ifaces {
    map: HashMap<MapData, u32, IfaceInfo>,
    table: Array<MapData, IfaceInfo>,
}

fn table_error(action: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { action, map: names::MAP_IFACE_TABLE, source }
}

impl Ifaces {
    pub(super) fn new(map: HashMap<MapData, u32, IfaceInfo>, table: Array<MapData, IfaceInfo>) -> Self {
        Self { map, table }
    }

    /// Every registered interface.
    pub(super) fn all(&self) -> Vec<(u32, IfaceInfo)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Registers `ifindex` (or changes what is registered for it).
    pub(super) fn set(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DatapathError> {
        let info = IfaceInfo { ifindex, ..*info };
        self.map.insert(ifindex, info, 0).map_err(|source| DatapathError::Map {
            action: "registering an interface",
            map: names::MAP_IFACES,
            source,
        })?;
        self.publish(&info)
    }

    /// Forgets `ifindex`; another registered interface that wants its table
    /// entry takes it.
    pub(super) fn remove(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let index = iface_table_index(ifindex);
        let held = self.entry(index)?;
        if held.ifindex == ifindex {
            self.write(index, &IfaceInfo { ifindex: 0, ..held })?;
        }
        match self.map.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(DatapathError::Map {
                    action: "removing an interface",
                    map: names::MAP_IFACES,
                    source,
                })
            }
        }
        let waiting = self.all().into_iter().find(|(other, _)| iface_table_index(*other) == index);
        match waiting {
            Some((_, info)) => self.publish(&info),
            // Untagged already: the rest of the entry goes too, so an entry
            // no interface holds is all zeroes, as if never written.
            None if held.ifindex == ifindex => self.write(index, &IfaceInfo::new(0, 0, 0)),
            None => Ok(()),
        }
    }

    /// Puts `info` in its table entry, unless another interface holds it.
    fn publish(&mut self, info: &IfaceInfo) -> Result<(), DatapathError> {
        let index = iface_table_index(info.ifindex);
        let held = self.entry(index)?;
        if held == *info || (held.ifindex != 0 && held.ifindex != info.ifindex) {
            return Ok(());
        }
        if held.ifindex != 0 {
            self.write(index, &IfaceInfo { ifindex: 0, ..held })?;
        }
        self.write(index, &IfaceInfo { ifindex: 0, ..*info })?;
        self.write(index, info)
    }

    fn entry(&self, index: u32) -> Result<IfaceInfo, DatapathError> {
        debug_assert!(index < IFACE_TABLE_SIZE);
        self.table.get(&index, 0).map_err(table_error("reading an interface"))
    }

    fn write(&mut self, index: u32, info: &IfaceInfo) -> Result<(), DatapathError> {
        self.table.set(index, info, 0).map_err(table_error("registering an interface"))
    }
}
