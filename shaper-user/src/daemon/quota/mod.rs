//! Quotas: the daemon's book of every class's (and instance's) allowance,
//! kept in step with the kernel's counters.
//!
//! The classifier counts (QUOTA_USAGE) and, for `then = "block"`, drops the
//! packet that would go past the limit by itself (QUOTA_GATES). The daemon
//! reads the counters every [`CHECK_INTERVAL`], and when a quota is used up
//! it applies the rest: a throttle (the class's limits change live, see
//! `daemon::effective`), a block of both directions, or a report. A new
//! period starts the count over and lifts the action.
//!
//! Usage outlives the daemon twice over: in the kernel's pinned maps (a
//! crash or `kill -9`: the next daemon reads them back, with the period they
//! belong to), and in the state file (a reboot), written at most every
//! [`SAVE_INTERVAL`] and at stop.
//!
//! Quotas are keyed by class and instance ([`QuotaId`]): a class with `per`
//! may add one per instance under the same class index.

mod statefile;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use jiff::{tz::TimeZone, Timestamp};
use shaper_common::{QuotaGate, QuotaKey, QuotaUsage, GATE_BLOCKED, GATE_BLOCK_AT_LIMIT, QUOTA_CLASS_WIDE};

pub use statefile::{SavedQuota, StateFile};

use crate::{
    classids::ClassIds,
    config::{Config, Counted, Quota, Then},
    control::protocol::{QuotaState, UsageRow},
    datapath::QuotaMaps,
    units,
};

/// How often the counters are read.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Least time between two writes of the state file (but at stop).
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// A quota's name: its class, and the instance for a class with `per`.
pub type QuotaId = (String, Option<String>);

/// A class limited to a rate while its quota is used up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    pub class: String,
    pub counted: Counted,
    pub bps: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("class \"{0}\" has no quota")]
    NoQuota(String),
    #[error("class \"{class}\" has no quota for instance \"{instance}\"")]
    NoInstance { class: String, instance: String },
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
}

/// One quota as the daemon follows it.
#[derive(Clone, Debug)]
struct Tracked {
    key: QuotaKey,
    quota: Quota,
    start: Timestamp,
    end: Timestamp,
    /// The counters at the last read.
    usage: QuotaUsage,
    state: QuotaState,
    /// Bytes counted when the daemon saw the quota used up (this period).
    used_at_action: Option<u64>,
}

impl Tracked {
    fn used(&self) -> u64 {
        let mut used = 0;
        if self.quota.counted != Counted::Ingress {
            used += self.usage.egress_bytes;
        }
        if self.quota.counted != Counted::Egress {
            used += self.usage.ingress_bytes;
        }
        used
    }

    /// Where the quota stands by its counters. A blocking quota never
    /// counts past its limit (the kernel drops the packet that would): its
    /// first drop says it is used up.
    fn judge(&self) -> QuotaState {
        if self.used() < self.quota.bytes && self.usage.dropped_bytes == 0 {
            return QuotaState::Ok;
        }
        match self.quota.then {
            Then::Throttle(_) => QuotaState::Throttled,
            Then::Block => QuotaState::Blocked,
            Then::Report => QuotaState::Reported,
        }
    }

    fn gate(&self) -> QuotaGate {
        let flags = match (self.quota.then, self.state) {
            (Then::Block, QuotaState::Blocked) => GATE_BLOCK_AT_LIMIT | GATE_BLOCKED,
            (Then::Block, _) => GATE_BLOCK_AT_LIMIT,
            _ => 0,
        };
        QuotaGate {
            limit_bytes: self.quota.bytes,
            period_start: self.start.as_second().max(0) as u64,
            directions: self.quota.counted.bits(),
            flags,
        }
    }

    /// Starts the period that holds `now`, from zero.
    fn new_period(&mut self, now: Timestamp, tz: &TimeZone) {
        (self.start, self.end) = self.quota.period.bounds(now, tz);
        self.usage = QuotaUsage::default();
        self.state = QuotaState::Ok;
        self.used_at_action = None;
    }
}

/// Every quota of the config in force.
pub struct Quotas {
    book: BTreeMap<QuotaId, Tracked>,
    tz: TimeZone,
    file: StateFile,
    /// What the state file held at start, until the quotas take it over.
    restored: Vec<SavedQuota>,
    /// The state file was read (at the first config with a quota).
    loaded: bool,
    saved_at: Option<Instant>,
    /// Usage changed since the last save.
    dirty: bool,
    /// Why the last save failed.
    save_error: Option<String>,
}

fn shown(id: &QuotaId) -> String {
    match &id.1 {
        Some(instance) => format!("{} ({instance})", id.0),
        None => id.0.clone(),
    }
}

impl Quotas {
    /// The quotas of a daemon whose state directory is `state_dir` (its
    /// state file is read at the first config with a quota).
    pub fn open(state_dir: &Path) -> Self {
        Self {
            book: BTreeMap::new(),
            tz: TimeZone::system(),
            file: StateFile::in_dir(state_dir),
            restored: Vec::new(),
            loaded: false,
            saved_at: None,
            dirty: false,
            save_error: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.book.is_empty()
    }

    /// Follows the quotas of `config` (class indices `ids`) from now on: a
    /// quota keeps the usage the kernel counted for its period (a restart, a
    /// reload), else what the state file saved for it (a reboot), else it
    /// starts from zero. Kernel entries of quotas the config no longer has go.
    pub fn sync(&mut self, config: &Config, ids: &ClassIds, maps: &mut QuotaMaps) -> Result<(), QuotaError> {
        let now = Timestamp::now();
        if !self.loaded && config.classes.iter().any(|c| c.quota.is_some()) {
            self.restored = self.file.load();
            self.loaded = true;
        }
        let mut next = BTreeMap::new();
        for class in &config.classes {
            let (Some(quota), Some(index)) = (&class.quota, ids.index(&class.name)) else { continue };
            let id: QuotaId = (class.name.clone(), None);
            let key = QuotaKey { class: u32::from(index), _pad: 0, instance: QUOTA_CLASS_WIDE };
            let (start, end) = quota.period.bounds(now, &self.tz);
            let mut tracked = Tracked {
                key,
                quota: quota.clone(),
                start,
                end,
                usage: QuotaUsage::default(),
                state: QuotaState::Ok,
                used_at_action: None,
            };
            match self.carried(&id, &tracked, maps) {
                Some(usage) => tracked.usage = usage,
                None => {
                    tracked.usage = self.restored(&id, &tracked).unwrap_or_default();
                    maps.set_usage(&key, &tracked.usage)?;
                }
            }
            tracked.state = tracked.judge();
            maps.set_gate(&key, &tracked.gate())?;
            if tracked.state != QuotaState::Ok {
                log::warn!("{}", used_up(&id, &tracked));
            }
            next.insert(id, tracked);
        }
        let kept: Vec<QuotaKey> = next.values().map(|t| t.key).collect();
        for key in maps.keys().into_iter().filter(|k| !kept.contains(k)) {
            maps.remove(&key)?;
        }
        self.book = next;
        self.restored.clear();
        self.dirty = true;
        self.tell_hooks(maps)
    }

    /// Whether the connect hooks must decide new connections' classes.
    fn tell_hooks(&self, maps: &mut QuotaMaps) -> Result<(), QuotaError> {
        let any = self.book.values().any(|t| t.state == QuotaState::Blocked);
        Ok(maps.set_any_blocked(any)?)
    }

    /// The kernel's count for a quota, when it belongs to the same quota
    /// (the same class had this index before, or the daemon just started
    /// on the pinned maps) and to the same period.
    fn carried(&self, id: &QuotaId, tracked: &Tracked, maps: &QuotaMaps) -> Option<QuotaUsage> {
        let same_quota = self.book.get(id).map_or(self.book.is_empty(), |t| t.key == tracked.key);
        let gate = maps.gate(&tracked.key)?;
        let usage = maps.usage(&tracked.key)?;
        (same_quota && gate.period_start == tracked.gate().period_start).then_some(usage)
    }

    /// What the state file saved for a quota, for the same period.
    fn restored(&self, id: &QuotaId, tracked: &Tracked) -> Option<QuotaUsage> {
        let start = tracked.gate().period_start;
        let saved = self
            .restored
            .iter()
            .find(|s| s.class == id.0 && s.instance == id.1 && s.period_start == start)?;
        log::info!("quota of {}: usage restored from {}", shown(id), self.file.path().display());
        Some(QuotaUsage {
            egress_bytes: saved.egress_bytes,
            ingress_bytes: saved.ingress_bytes,
            dropped_bytes: saved.dropped_bytes,
            _pad: 0,
        })
    }

    /// Reads the counters: starts new periods, and moves quotas that are
    /// used up to their action. Saves the state file when it is due.
    /// Returns whether the throttles changed (the class limits must follow).
    pub fn check(&mut self, maps: &mut QuotaMaps) -> Result<bool, QuotaError> {
        let before = self.throttles();
        let now = Timestamp::now();
        let mut result = Ok(());
        for (id, tracked) in &mut self.book {
            match check_one(id, tracked, maps, now, &self.tz) {
                Ok(changed) => self.dirty |= changed,
                Err(e) => result = Err(e),
            }
        }
        if self.dirty && self.saved_at.is_none_or(|t| t.elapsed() >= SAVE_INTERVAL) {
            self.save();
        }
        result.and_then(|()| self.tell_hooks(maps)).map(|()| before != self.throttles())
    }

    /// The classes held to their quota's rate now.
    pub fn throttles(&self) -> Vec<Throttle> {
        self.book
            .iter()
            .filter(|((_, instance), t)| instance.is_none() && t.state == QuotaState::Throttled)
            .filter_map(|((class, _), t)| match t.quota.then {
                Then::Throttle(bps) => Some(Throttle { class: class.clone(), counted: t.quota.counted, bps }),
                _ => None,
            })
            .collect()
    }

    /// Starts the period of `class` (`instance`) over: zero usage, no action.
    pub fn reset(
        &mut self,
        class: &str,
        instance: Option<&str>,
        maps: &mut QuotaMaps,
    ) -> Result<(), QuotaError> {
        let id: QuotaId = (class.to_string(), instance.map(str::to_string));
        let Some(tracked) = self.book.get_mut(&id) else {
            return Err(match instance {
                Some(i) if self.book.contains_key(&(class.to_string(), None)) => {
                    QuotaError::NoInstance { class: class.to_string(), instance: i.to_string() }
                }
                _ => QuotaError::NoQuota(class.to_string()),
            });
        };
        tracked.usage = QuotaUsage::default();
        tracked.state = QuotaState::Ok;
        tracked.used_at_action = None;
        maps.set_usage(&tracked.key, &tracked.usage)?;
        maps.set_gate(&tracked.key, &tracked.gate())?;
        log::info!("quota of {}: reset; usage starts from zero", shown(&id));
        self.dirty = true;
        self.tell_hooks(maps)
    }

    /// Where each quota stands (`shaper usage`).
    pub fn rows(&self) -> Vec<UsageRow> {
        self.book
            .iter()
            .map(|((class, instance), t)| UsageRow {
                class: class.clone(),
                instance: instance.clone(),
                used_bytes: t.used(),
                limit_bytes: t.quota.bytes,
                percent: t.used() as f64 * 100.0 / t.quota.bytes.max(1) as f64,
                egress_bytes: t.usage.egress_bytes,
                ingress_bytes: t.usage.ingress_bytes,
                dropped_bytes: t.usage.dropped_bytes,
                direction: t.quota.counted.as_str().to_string(),
                then: t.quota.then.describe(),
                period_start: t.start.as_second().max(0) as u64,
                period_end: t.end.as_second().max(0) as u64,
                state: t.state,
                used_at_action: t.used_at_action,
            })
            .collect()
    }

    /// The state of the class-wide quota of `class`, if it has one.
    pub fn state_of(&self, class: &str) -> Option<QuotaState> {
        self.book.get(&(class.to_string(), None)).map(|t| t.state)
    }

    /// The state file, and why the last write failed (if it did).
    pub fn file_status(&self) -> String {
        match &self.save_error {
            Some(e) => format!("{} (not saved: {e})", self.file.path().display()),
            None => self.file.path().display().to_string(),
        }
    }

    /// Writes the state file now (at stop, and when due).
    pub fn save(&mut self) {
        let saved: Vec<SavedQuota> = self
            .book
            .iter()
            .map(|((class, instance), t)| SavedQuota {
                class: class.clone(),
                instance: instance.clone(),
                period_start: t.start.as_second().max(0) as u64,
                egress_bytes: t.usage.egress_bytes,
                ingress_bytes: t.usage.ingress_bytes,
                dropped_bytes: t.usage.dropped_bytes,
            })
            .collect();
        self.saved_at = Some(Instant::now());
        match self.file.save(&saved) {
            Ok(()) => {
                self.dirty = false;
                self.save_error = None;
            }
            Err(e) => {
                let reason = crate::error_chain(&e);
                if self.save_error.as_deref() != Some(reason.as_str()) {
                    log::warn!("saving quota usage: {reason}; it survives restarts, not reboots");
                }
                self.save_error = Some(reason);
            }
        }
    }
}

/// One quota's check (see [`Quotas::check`]); true when its usage changed.
fn check_one(
    id: &QuotaId,
    tracked: &mut Tracked,
    maps: &mut QuotaMaps,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<bool, QuotaError> {
    if now >= tracked.end {
        let was = tracked.state;
        tracked.new_period(now, tz);
        maps.set_usage(&tracked.key, &tracked.usage)?;
        maps.set_gate(&tracked.key, &tracked.gate())?;
        log::info!(
            "quota of {}: a new period until {}; usage starts from zero{}",
            shown(id),
            tracked.end,
            if was == QuotaState::Ok { String::new() } else { format!(", no longer {}", was.as_str()) }
        );
        return Ok(true);
    }
    let Some(usage) = maps.usage(&tracked.key) else {
        // Gone from the kernel (a map emptied by hand): count again from what was read.
        maps.set_usage(&tracked.key, &tracked.usage)?;
        return Ok(false);
    };
    let changed = usage != tracked.usage;
    tracked.usage = usage;
    let state = tracked.judge();
    if state != tracked.state {
        tracked.state = state;
        tracked.used_at_action = (state != QuotaState::Ok).then(|| tracked.used());
        maps.set_gate(&tracked.key, &tracked.gate())?;
        log::warn!("{}", used_up(id, tracked));
    }
    Ok(changed)
}

/// "quota of bulk used up (20 MB of 20 MB this period): throttled to 1 Mbit/s until …".
fn used_up(id: &QuotaId, t: &Tracked) -> String {
    let action = match t.quota.then {
        Then::Throttle(bps) => format!("throttled to {}", units::format_rate(bps)),
        Then::Block => "blocked (its packets are dropped)".to_string(),
        Then::Report => "reported".to_string(),
    };
    format!(
        "quota of {} used up ({} of {} this period): {action} until {}",
        shown(id),
        units::format_bytes(t.used()),
        units::format_bytes(t.quota.bytes),
        t.end
    )
}
