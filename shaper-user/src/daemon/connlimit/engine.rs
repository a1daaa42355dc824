//! One turn of the admission thread: read the line from CONN_GATES, refuse,
//! admit and reap, then count.

use std::collections::{BTreeMap, HashMap};

use shaper_common::{
    connlimit::{
        in_service, waiting, ConnDaemon, ConnKernel, ConnLimit, GateEntry, GATE_GRANTED, GATE_IN_SERVICE,
        GATE_REJECT, GATE_WAITING,
    },
    instances::{InstanceKey, PER_NONE},
    FlowKey,
};

use super::inject::Injector;
use crate::{
    clock,
    config::connlimit::ConnLimitConfig,
    control::connlimit::ConnLimitRow,
    datapath::{ConnMaps, DatapathError},
};

/// A granted connection not established after this long gives its slot back
/// (its handshake failed unseen, or its socket is outside the hooks' cgroup).
const REAP_AFTER_NS: u64 = 10_000_000_000;
/// The whole line is read at least this often (for the reaper), and at every
/// turn while something waits or was refused.
const FULL_SCAN_NS: u64 = 1_000_000_000;

/// What the thread remembers of a class between turns.
#[derive(Default)]
struct Tally {
    max_in_service: u64,
    max_waiting: u64,
    longest_wait_ns: u64,
}

pub(super) struct Engine {
    maps: ConnMaps,
    injector: Injector,
    limits: BTreeMap<u16, (String, ConnLimitConfig)>,
    /// The classes CONN_LIMITS holds a limit for.
    written: BTreeMap<u16, ConnLimit>,
    tallies: BTreeMap<u16, Tally>,
    rows: BTreeMap<String, ConnLimitRow>,
    /// Refusals the kernel had counted at the last full read.
    last_rejected: u64,
    last_scan_ns: u64,
    /// Slots counted in service beyond the connections holding one, per
    /// instance, at the last read of the line (see [`Engine::audit`]).
    excess: HashMap<InstanceKey, u64>,
}

type Counts = HashMap<InstanceKey, (ConnKernel, ConnDaemon)>;

impl Engine {
    pub(super) fn new(maps: ConnMaps, injector: Injector) -> Self {
        Self {
            maps,
            injector,
            limits: BTreeMap::new(),
            written: BTreeMap::new(),
            tallies: BTreeMap::new(),
            rows: BTreeMap::new(),
            last_rejected: 0,
            last_scan_ns: 0,
            excess: HashMap::new(),
        }
    }

    /// No class has a limit: the thread may sleep longer.
    pub(super) fn idle(&self) -> bool {
        self.limits.is_empty() && self.written.is_empty()
    }

    /// Writes the classes' limits into CONN_LIMITS (0 for those that lost theirs).
    pub(super) fn set_limits(&mut self, limits: &BTreeMap<u16, (String, ConnLimitConfig)>) {
        let wanted: BTreeMap<u16, ConnLimit> = limits
            .iter()
            .map(|(i, (_, l))| (*i, ConnLimit { max: l.max, mode: l.on_limit.mode() }))
            .collect();
        for class in self.written.keys().filter(|c| !wanted.contains_key(c)) {
            if let Err(e) = self.maps.set_limit(*class, ConnLimit::default()) {
                log::error!("connection limits: {}", crate::error_chain(&e));
            }
        }
        for (class, limit) in &wanted {
            if let Err(e) = self.maps.set_limit(*class, *limit) {
                log::error!("connection limits: {}", crate::error_chain(&e));
            }
        }
        self.written = wanted;
        self.limits = limits.clone();
        self.tallies.retain(|class, _| limits.contains_key(class));
    }

    fn counts(&self) -> Counts {
        let mut counts: Counts =
            self.maps.kernel_counts().into_iter().map(|(k, c)| (k, (c, ConnDaemon::default()))).collect();
        for (key, d) in self.maps.daemon_counts() {
            counts.entry(key).or_insert((ConnKernel::default(), d)).1 = d;
        }
        counts
    }

    /// One turn: serve the line if anything waits (or was refused, or a full
    /// read is due), then count.
    pub(super) fn turn(&mut self) {
        let now = clock::monotonic_ns();
        let counts = self.counts();
        let waits = counts.values().any(|(k, d)| waiting(k, d) > 0);
        let rejected: u64 = counts.values().map(|(k, _)| k.rejected).sum();
        let mut counts = counts;
        if waits || rejected != self.last_rejected || now.saturating_sub(self.last_scan_ns) >= FULL_SCAN_NS {
            self.last_rejected = rejected;
            self.last_scan_ns = now;
            let gates = self.maps.gates();
            // Read after the line: every fast grant before a waiting entry is in them.
            counts = self.counts();
            if let Err(e) = self.serve(now, gates, &mut counts) {
                log::error!("connection limits: {}", crate::error_chain(&e));
            }
        }
        self.count(&counts);
    }

    /// Refuses, reaps, then admits per instance, oldest first.
    fn serve(
        &mut self,
        now: u64,
        gates: Vec<(FlowKey, GateEntry)>,
        counts: &mut Counts,
    ) -> Result<(), crate::datapath::DatapathError> {
        self.audit(&gates, counts)?;
        let mut line: HashMap<InstanceKey, Vec<(FlowKey, GateEntry)>> = HashMap::new();
        let mut reaped: HashMap<InstanceKey, u64> = HashMap::new();
        for (key, entry) in gates {
            match entry.state {
                // Whoever removes an entry acts on it (the kernel may remove it too).
                GATE_REJECT if self.maps.remove_gate(&key)? => self.send(Injector::refuse, &entry),
                GATE_WAITING => line.entry(entry.instance).or_default().push((key, entry)),
                GATE_GRANTED
                    if now.saturating_sub(entry.last_ns) > REAP_AFTER_NS
                        && self.maps.remove_gate(&key)? =>
                {
                    *reaped.entry(entry.instance).or_default() += 1;
                }
                _ => {}
            }
        }
        for (instance, n) in reaped {
            let (_, d) = counts.entry(instance).or_default();
            d.reaped += n;
            self.maps.set_daemon_counts(&instance, d)?;
        }
        for (instance, mut waiting) in line {
            waiting.sort_by_key(|(_, e)| e.first_seen_ns);
            self.admit(now, &instance, waiting, counts)?;
        }
        Ok(())
    }

    /// Gives back slots no connection holds. The counts can pass a slot by in
    /// one race: a local client killed while the daemon admits it (the kernel
    /// read WAITING, counts it as leaving the line, and the daemon counted it
    /// admitted). An excess over the granted and established entries seen at
    /// two reads of the line in a row is reaped (the smaller of the two: a
    /// slot taken between reading the line and the counts shows once).
    fn audit(&mut self, gates: &[(FlowKey, GateEntry)], counts: &mut Counts) -> Result<(), DatapathError> {
        let mut holding: HashMap<InstanceKey, u64> = HashMap::new();
        for (_, entry) in gates.iter().filter(|(_, e)| matches!(e.state, GATE_GRANTED | GATE_IN_SERVICE)) {
            *holding.entry(entry.instance).or_default() += 1;
        }
        let mut excess = HashMap::new();
        for (instance, (k, d)) in counts.iter_mut() {
            let over = in_service(k, d).saturating_sub(holding.get(instance).copied().unwrap_or(0));
            if over == 0 {
                continue;
            }
            let before = self.excess.get(instance).copied().unwrap_or(0);
            if before > 0 {
                d.reaped += over.min(before);
                self.maps.set_daemon_counts(instance, d)?;
                log::warn!(
                    "connection limits: class index {}: {} slot(s) held by no connection given back",
                    instance.class,
                    over.min(before)
                );
            } else {
                excess.insert(*instance, over);
            }
        }
        self.excess = excess;
        Ok(())
    }

    /// Admits the waiting connections of `instance` its free slots allow,
    /// oldest first, and refuses those past the queue timeout.
    fn admit(
        &mut self,
        now: u64,
        instance: &InstanceKey,
        waiting: Vec<(FlowKey, GateEntry)>,
        counts: &mut Counts,
    ) -> Result<(), crate::datapath::DatapathError> {
        let limit = self.limits.get(&instance.class).map(|(_, l)| *l);
        let (k, mut d) = counts.get(instance).copied().unwrap_or_default();
        let before = d;
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        let mut longest = 0;
        for (key, entry) in waiting {
            let waited = now.saturating_sub(entry.first_seen_ns);
            if limit.is_some_and(|l| waited > l.queue_timeout.as_nanos() as u64) {
                if self.maps.remove_gate(&key)? {
                    d.timed_out += 1;
                    d.dequeued += 1;
                    longest = longest.max(waited);
                    refused.push(entry);
                }
                continue;
            }
            if limit.is_some_and(|l| in_service(&k, &d) >= u64::from(l.max)) {
                continue;
            }
            let granted = GateEntry { state: GATE_GRANTED, last_ns: now, ..entry };
            if self.maps.update_gate(&key, &granted)? {
                d.granted_queued += 1;
                d.dequeued += 1;
                longest = longest.max(waited);
                admitted.push(granted);
            }
        }
        if d != before {
            // The counts first, then the packets: a connection is in service
            // (and out of the line) before its handshake can complete.
            self.maps.set_daemon_counts(instance, &d)?;
            counts.insert(*instance, (k, d));
        }
        let tally = self.tallies.entry(instance.class).or_default();
        tally.longest_wait_ns = tally.longest_wait_ns.max(longest);
        for entry in &admitted {
            self.send(Injector::resend_syn, entry);
        }
        for entry in &refused {
            self.send(Injector::refuse, entry);
        }
        Ok(())
    }

    fn send(&self, what: fn(&Injector, &GateEntry) -> std::io::Result<()>, entry: &GateEntry) {
        if let Err(e) = what(&self.injector, entry) {
            log::debug!("connection limits: sending on a waiting connection's behalf: {e}");
        }
    }

    /// Sums the counts per class, and the maxima seen.
    fn count(&mut self, counts: &Counts) {
        let mut rows: BTreeMap<String, ConnLimitRow> = BTreeMap::new();
        for (class, (name, _)) in &self.limits {
            let row = rows.entry(name.clone()).or_default();
            for (key, (k, d)) in counts.iter().filter(|(i, _)| i.class == *class) {
                let (serving, line) = (in_service(k, d), waiting(k, d));
                if key.per != PER_NONE && serving + line > 0 {
                    row.instances += 1;
                }
                row.in_service += serving;
                row.waiting += line;
                row.admitted += k.granted_fast + d.granted_queued;
                row.rejected += k.rejected;
                row.timed_out += d.timed_out;
                row.abandoned += k.abandoned;
            }
            let tally = self.tallies.entry(*class).or_default();
            tally.max_in_service = tally.max_in_service.max(row.in_service);
            tally.max_waiting = tally.max_waiting.max(row.waiting);
            row.max_in_service = tally.max_in_service;
            row.max_waiting = tally.max_waiting;
            row.longest_wait_ms = tally.longest_wait_ns / 1_000_000;
        }
        self.rows = rows;
    }

    pub(super) fn rows(&self) -> BTreeMap<String, ConnLimitRow> {
        self.rows.clone()
    }
}
