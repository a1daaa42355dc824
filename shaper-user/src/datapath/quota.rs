//! The quota maps: QUOTA_USAGE (what the classifier counted this period) and
//! QUOTA_GATES (each quota's limit, period and block state). Both are pinned:
//! usage outlives a daemon crash in the kernel.

use aya::maps::{HashMap, MapData, MapError};
use shaper_common::{names, QuotaGate, QuotaKey, QuotaUsage, GATE_BLOCKED, QUOTA_ANY_BLOCKED};

use super::{is_missing, DatapathError};

pub struct QuotaMaps {
    usage: HashMap<MapData, QuotaKey, QuotaUsage>,
    gates: HashMap<MapData, QuotaKey, QuotaGate>,
}

fn error(action: &'static str, map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { action, map, source }
}

impl QuotaMaps {
    pub(super) fn new(
        usage: HashMap<MapData, QuotaKey, QuotaUsage>,
        gates: HashMap<MapData, QuotaKey, QuotaGate>,
    ) -> Self {
        Self { usage, gates }
    }

    /// What the classifier counted for `key` (`None`: no entry).
    pub fn usage(&self, key: &QuotaKey) -> Option<QuotaUsage> {
        self.usage.get(key, 0).ok()
    }

    /// Sets the count of `key` (creates it, resets it, restores it).
    pub fn set_usage(&mut self, key: &QuotaKey, usage: &QuotaUsage) -> Result<(), DatapathError> {
        self.usage.insert(key, usage, 0).map_err(error("writing usage", names::MAP_QUOTA_USAGE))
    }

    pub fn gate(&self, key: &QuotaKey) -> Option<QuotaGate> {
        self.gates.get(key, 0).ok()
    }

    pub fn set_gate(&mut self, key: &QuotaKey, gate: &QuotaGate) -> Result<(), DatapathError> {
        self.gates.insert(key, gate, 0).map_err(error("writing a gate", names::MAP_QUOTA_GATES))
    }

    /// Tells the connect hooks whether some quota blocks (they decide a new
    /// connection's class only then).
    pub fn set_any_blocked(&mut self, any: bool) -> Result<(), DatapathError> {
        if any == self.gate(&QUOTA_ANY_BLOCKED).is_some() {
            return Ok(());
        }
        if any {
            let gate = QuotaGate { flags: GATE_BLOCKED, ..QuotaGate::default() };
            return self.set_gate(&QUOTA_ANY_BLOCKED, &gate);
        }
        self.remove(&QUOTA_ANY_BLOCKED)
    }

    /// Every quota the maps hold (gates and usage alike).
    pub fn keys(&self) -> Vec<QuotaKey> {
        let mut keys: Vec<QuotaKey> =
            self.gates.keys().filter_map(Result::ok).filter(|k| *k != QUOTA_ANY_BLOCKED).collect();
        keys.extend(self.usage.keys().filter_map(Result::ok));
        keys.sort();
        keys.dedup();
        keys
    }

    /// Forgets a quota: the classifier stops counting and gating it.
    pub fn remove(&mut self, key: &QuotaKey) -> Result<(), DatapathError> {
        for result in [self.gates.remove(key), self.usage.remove(key)] {
            match result {
                Ok(()) => {}
                Err(e) if is_missing(&e) => {}
                Err(source) => {
                    return Err(DatapathError::Map {
                        action: "removing",
                        map: names::MAP_QUOTA_USAGE,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}
