//! The instance maps (see `shaper_common::instances`): CLASS_MODES, each
//! class's `per` mode and per-packet work; INSTANCES, (class, instance) → slot; INSTANCE_SLOTS,
//! which slots are live; INSTANCE_STATS, bytes per slot. None is pinned: a
//! new daemon finds its instances again on sight.

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use shaper_common::{
    instances::{ClassMode, InstanceKey, InstanceSlot, InstanceStats, MAX_INSTANCES},
    names, MAX_CLASSES,
};

use super::DatapathError;

pub(super) struct InstanceMaps {
    pub(super) modes: Array<MapData, ClassMode>,
    pub(super) keys: HashMap<MapData, InstanceKey, u32>,
    pub(super) slots: Array<MapData, InstanceSlot>,
    pub(super) stats: PerCpuArray<MapData, InstanceStats>,
}

fn error(action: &'static str, map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { action, map, source }
}

impl InstanceMaps {
    /// Sets the mode of every class index (`modes[i]`, missing ones the default).
    pub(super) fn set_modes(&mut self, modes: &[ClassMode]) -> Result<(), DatapathError> {
        for index in 0..MAX_CLASSES {
            let want = modes.get(index as usize).copied().unwrap_or_default();
            if self.modes.get(&index, 0).is_ok_and(|m| m == want) {
                continue;
            }
            self.modes.set(index, want, 0).map_err(error("writing", names::MAP_CLASS_MODES))?;
        }
        Ok(())
    }

    /// Makes `slot` live for `class` and points `keys` at it (its leaves exist).
    pub(super) fn open(&mut self, slot: u32, class: u16, keys: &[InstanceKey]) -> Result<(), DatapathError> {
        let live = InstanceSlot { class_plus_one: u32::from(class) + 1, _pad: 0 };
        self.slots.set(slot, live, 0).map_err(error("writing", names::MAP_INSTANCE_SLOTS))?;
        for key in keys {
            self.keys.insert(key, slot, 0).map_err(error("writing", names::MAP_INSTANCES))?;
        }
        Ok(())
    }

    /// Adds one more key to a live slot (a unit's other cgroup).
    pub(super) fn alias(&mut self, slot: u32, key: &InstanceKey) -> Result<(), DatapathError> {
        self.keys.insert(key, slot, 0).map_err(error("writing", names::MAP_INSTANCES))
    }

    /// Frees `slot` (before its leaves go): the classifier stops using it.
    pub(super) fn close(&mut self, slot: u32, keys: &[InstanceKey]) -> Result<(), DatapathError> {
        self.slots
            .set(slot, InstanceSlot::default(), 0)
            .map_err(error("clearing", names::MAP_INSTANCE_SLOTS))?;
        for key in keys {
            match self.keys.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DatapathError::Map { action: "removing", map: names::MAP_INSTANCES, source })
                }
            }
        }
        Ok(())
    }

    /// Bytes sent and received in `slot`, summed over CPUs.
    pub(super) fn stats(&self, slot: u32) -> InstanceStats {
        if slot >= MAX_INSTANCES {
            return InstanceStats::default();
        }
        self.stats.get(&slot, 0).map_or(InstanceStats::default(), |per_cpu| {
            per_cpu.iter().fold(InstanceStats::default(), |sum, s| InstanceStats {
                tx_bytes: sum.tx_bytes + s.tx_bytes,
                rx_bytes: sum.rx_bytes + s.rx_bytes,
            })
        })
    }
}
