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
//! Quotas are keyed by class and instance ([`QuotaId`]). A class with `per`
//! has one per instance (its name: the user, program, …), made when the
//! instance's leaf is ([`Quotas::open_instance`]) with the kernel key of its
//! slot; the class's own entry is then the class total and never acts. An
//! instance that goes idle keeps its usage here and in the state file (its
//! kernel entry goes with its leaf) and gets it back when it returns in the
//! same period. Instance entries are bounded like instances: at most
//! `MAX_INSTANCES_PER_CLASS` per class (the idle ones with least usage go
//! first), and idle ones with nothing counted go at a new period.

mod statefile;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use jiff::{tz::TimeZone, Timestamp};
use shaper_common::{
    instances::MAX_INSTANCES_PER_CLASS, QuotaGate, QuotaKey, QuotaUsage, GATE_BLOCKED, GATE_BLOCK_AT_LIMIT,
    QUOTA_CLASS_WIDE,
};

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

/// A class (or one instance of it) limited to a rate while its quota is used up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    pub class: String,
    /// The instance, for a class with `per` (its leaf is held, not the class).
    pub instance: Option<String>,
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
    /// The kernel has its entry (an instance's goes while it is idle).
    live: bool,
    /// The class total of a class with `per`: counted, never acts.
    total: bool,
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
        if self.total || (self.used() < self.quota.bytes && self.usage.dropped_bytes == 0) {
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
            _ if self.total => 0,
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
                live: true,
                total: class.per.is_some(),
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
        self.carry_instances(&mut next, maps)?;
        let kept: Vec<QuotaKey> = next.values().filter(|t| t.live).map(|t| t.key).collect();
        for key in maps.keys().into_iter().filter(|k| !kept.contains(k)) {
            maps.remove(&key)?;
        }
        self.book = next;
        // Instances come back on sight: what the file saved for them waits.
        self.restored.retain(|s| s.instance.is_some());
        self.dirty = true;
        self.tell_hooks(maps)
    }

    /// Keeps the instance quotas of classes that keep their quota, `per`
    /// and index (with the quota as `config` has it now; a new period bound
    /// starts them over).
    fn carry_instances(
        &mut self,
        next: &mut BTreeMap<QuotaId, Tracked>,
        maps: &mut QuotaMaps,
    ) -> Result<(), QuotaError> {
        let old = std::mem::take(&mut self.book);
        for (id, mut tracked) in old.into_iter().filter(|(id, _)| id.1.is_some()) {
            let class =
                next.get(&(id.0.clone(), None)).filter(|c| c.total && c.key.class == tracked.key.class);
            let Some((quota, start)) = class.map(|c| (c.quota.clone(), c.start)) else { continue };
            tracked.quota = quota;
            if tracked.start != start {
                tracked.new_period(Timestamp::now(), &self.tz);
            }
            tracked.state = tracked.judge();
            if tracked.live {
                maps.set_usage(&tracked.key, &tracked.usage)?;
                maps.set_gate(&tracked.key, &tracked.gate())?;
            }
            next.insert(id, tracked);
        }
        Ok(())
    }

    /// Instance `name` of class index `class` has its leaf in `slot` (new,
    /// or its class just got a quota):
    /// its quota (if the class has one) counts under the slot's key from now
    /// on, from the usage it had this period (idle and back, or saved in the
    /// state file). Returns whether it is held to a rate now.
    pub fn open_instance(
        &mut self,
        class: u16,
        name: &str,
        slot: u32,
        maps: &mut QuotaMaps,
    ) -> Result<bool, QuotaError> {
        let Some((class_name, parent)) =
            self.book.iter().find(|(id, t)| id.1.is_none() && t.total && t.key.class == u32::from(class))
        else {
            return Ok(false);
        };
        let id: QuotaId = (class_name.0.clone(), Some(name.to_string()));
        let key = QuotaKey { class: u32::from(class), _pad: 0, instance: u64::from(slot) + 1 };
        if let Some(open) = self.book.get(&id).filter(|t| t.live && t.key == key) {
            // Already counting under this slot (a reload): the kernel's count stands.
            return Ok(open.state == QuotaState::Throttled);
        }
        let mut tracked = match self.book.get(&id) {
            Some(known) => Tracked { key, live: true, ..known.clone() },
            None => Tracked {
                key,
                total: false,
                usage: QuotaUsage::default(),
                state: QuotaState::Ok,
                used_at_action: None,
                ..parent.clone()
            },
        };
        if !self.book.contains_key(&id) {
            self.make_room(class);
            if let Some(usage) = self.restored(&id, &tracked) {
                tracked.usage = usage;
            }
        }
        tracked.state = tracked.judge();
        maps.set_usage(&key, &tracked.usage)?;
        maps.set_gate(&key, &tracked.gate())?;
        if tracked.state != QuotaState::Ok {
            log::warn!("{}", used_up(&id, &tracked));
        }
        let held = tracked.state == QuotaState::Throttled;
        self.book.insert(id, tracked);
        self.dirty = true;
        self.tell_hooks(maps).map(|()| held)
    }

    /// Instance `name` of class index `class` lost its leaf (idle, or its
    /// class changed): its usage stays here, its kernel entry goes.
    pub fn close_instance(&mut self, class: u16, name: &str, maps: &mut QuotaMaps) -> Result<(), QuotaError> {
        let found = self
            .book
            .iter_mut()
            .find(|(id, t)| id.1.as_deref() == Some(name) && t.live && t.key.class == u32::from(class));
        let Some((_, tracked)) = found else { return Ok(()) };
        if let Some(usage) = maps.usage(&tracked.key) {
            tracked.usage = usage;
        }
        tracked.live = false;
        self.dirty = true;
        Ok(maps.remove(&tracked.key)?)
    }

    /// At most `MAX_INSTANCES_PER_CLASS` instance quotas per class: the
    /// idle one with the least usage goes to make room for one more.
    fn make_room(&mut self, class: u16) {
        let of_class = |t: &Tracked| !t.total && t.key.class == u32::from(class);
        if self.book.values().filter(|t| of_class(t)).count() < MAX_INSTANCES_PER_CLASS as usize {
            return;
        }
        let least = self
            .book
            .iter()
            .filter(|(_, t)| of_class(t) && !t.live)
            .min_by_key(|(_, t)| t.used())
            .map(|(id, _)| id.clone());
        if let Some(id) = least {
            self.book.remove(&id);
        }
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
        let before = (self.throttles(), self.instance_throttles());
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
        // Idle instances with nothing counted this period are forgotten.
        self.book.retain(|id, t| id.1.is_none() || t.live || t.usage != QuotaUsage::default());
        result
            .and_then(|()| self.tell_hooks(maps))
            .map(|()| before != (self.throttles(), self.instance_throttles()))
    }

    /// The classes held to their quota's rate now.
    pub fn throttles(&self) -> Vec<Throttle> {
        self.held().filter(|t| t.instance.is_none()).collect()
    }

    /// The instances (of classes with `per`) held to their quota's rate now.
    pub fn instance_throttles(&self) -> Vec<Throttle> {
        self.held().filter(|t| t.instance.is_some()).collect()
    }

    fn held(&self) -> impl Iterator<Item = Throttle> + '_ {
        self.book.iter().filter(|(_, t)| t.state == QuotaState::Throttled).filter_map(
            |((class, instance), t)| match t.quota.then {
                Then::Throttle(bps) => Some(Throttle {
                    class: class.clone(),
                    instance: instance.clone(),
                    counted: t.quota.counted,
                    bps,
                }),
                _ => None,
            },
        )
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
        if tracked.live {
            maps.set_usage(&tracked.key, &tracked.usage)?;
            maps.set_gate(&tracked.key, &tracked.gate())?;
        }
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
        if tracked.live {
            maps.set_usage(&tracked.key, &tracked.usage)?;
            maps.set_gate(&tracked.key, &tracked.gate())?;
        }
        log::info!(
            "quota of {}: a new period until {}; usage starts from zero{}",
            shown(id),
            tracked.end,
            if was == QuotaState::Ok { String::new() } else { format!(", no longer {}", was.as_str()) }
        );
        return Ok(true);
    }
    if !tracked.live {
        return Ok(false);
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
