//! Current rates. Once a second the daemon reads the classifier's byte
//! counters, per class and direction (CLASS_STATS) and per flow (FLOWS), and
//! keeps what each moved over that interval as bits/s: the "current rate" of
//! `classes`, `conns`, `top` and the metrics. Each class and direction also
//! keeps its last [`HISTORY`] rates (a minute, for sparklines).
//!
//! The cost stays bounded with the flow count: the flows are read with the
//! batched dump (a syscall per few thousand), each flow's record is 48 bytes
//! in a map that is updated in place (it allocates only while it grows), and
//! the flows that moved bytes are copied into a list whose room is kept from
//! one second to the next. Nothing is allocated per flow per second.

use std::{
    collections::{hash_map::Entry, BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use shaper_common::{Direction, FlowKey, FlowValue};

use super::{
    decider::{FlowIds, IdMap},
    host::Host,
};
use crate::datapath::Datapath;

/// Rates kept per class and direction: a minute of one-second samples.
pub const HISTORY: usize = 60;

/// One class on one interface, in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClassKey {
    pub slot: u32,
    pub class: u16,
    pub direction: Direction,
}

#[derive(Debug, Default)]
struct ClassRate {
    bytes: u64,
    bps: u64,
    /// Oldest first.
    history: VecDeque<u64>,
    seen: u32,
}

/// What is kept per flow between two samples.
#[derive(Clone, Copy, Debug)]
struct FlowRate {
    tx_bytes: u64,
    rx_bytes: u64,
    tx_bps: u64,
    rx_bps: u64,
    /// Seconds since the tracker started at which it first counted the flow.
    first_s: u32,
    seen: u32,
}

/// A flow's current rate (`conns`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowNow {
    pub tx_bps: u64,
    pub rx_bps: u64,
    /// Seconds since the daemon first counted the flow.
    pub age_s: u64,
}

/// A flow that moved bytes over the last interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    pub key: FlowKey,
    pub tx_bps: u64,
    pub rx_bps: u64,
}

impl Busy {
    pub fn bps(&self) -> u64 {
        self.tx_bps.saturating_add(self.rx_bps)
    }
}

/// The rates of the last interval, and the counters they were taken from.
pub struct Rates {
    ids: FlowIds,
    classes: BTreeMap<ClassKey, ClassRate>,
    flows: IdMap<FlowRate>,
    busy: Vec<Busy>,
    started: Instant,
    last: Option<Instant>,
    /// Seconds between the last two samples (0 before the second).
    interval: f64,
    generation: u32,
    /// Seconds from the start to the sample under way.
    now_s: u32,
    /// Wall time of the last sample.
    cost: Duration,
}

impl Default for Rates {
    fn default() -> Self {
        Self::new()
    }
}

impl Rates {
    pub fn new() -> Self {
        Self {
            ids: FlowIds::new(),
            classes: BTreeMap::new(),
            flows: IdMap::default(),
            busy: Vec::new(),
            started: Instant::now(),
            last: None,
            interval: 0.0,
            generation: 0,
            now_s: 0,
            cost: Duration::ZERO,
        }
    }

    /// Reads every class's and every flow's counters and updates the rates.
    pub fn sample(&mut self, host: &Host, datapath: &Datapath) {
        let at = Instant::now();
        self.begin(at);
        for shaped in host.shaped() {
            for (direction, plan, _) in shaped.trees() {
                for class in &plan.classes {
                    let Ok(stats) = datapath.class_stats(shaped.slot, u32::from(class.index)) else {
                        continue;
                    };
                    let bytes = match direction {
                        Direction::Egress => stats.tx_bytes,
                        Direction::Ingress => stats.rx_bytes,
                    };
                    self.class_bytes(ClassKey { slot: shaped.slot, class: class.index, direction }, bytes);
                }
            }
        }
        self.end_classes();
        match datapath.for_each_flow(|key, value| self.flow_bytes(key, value)) {
            Ok(_) => self.end_flows(),
            Err(e) => log::debug!("sampling flow rates: {}", crate::error_chain(&e)),
        }
        self.cost = at.elapsed();
    }

    /// Starts a sample taken at `at`.
    fn begin(&mut self, at: Instant) {
        self.interval = self.last.map_or(0.0, |last| at.duration_since(last).as_secs_f64());
        self.last = Some(at);
        self.generation = self.generation.wrapping_add(1);
        self.now_s = at.saturating_duration_since(self.started).as_secs() as u32;
        self.busy.clear();
    }

    /// Bits/s of `now - before` bytes over the interval (see [`bps`]).
    fn bps(&self, before: u64, now: u64) -> u64 {
        bps(self.interval, before, now)
    }

    fn class_bytes(&mut self, key: ClassKey, bytes: u64) {
        let (generation, sampled) = (self.generation, self.interval > 0.0);
        let known = self.classes.get(&key).map(|c| c.bytes);
        let bps = known.map_or(0, |before| self.bps(before, bytes));
        let entry = self.classes.entry(key).or_default();
        entry.bytes = bytes;
        entry.bps = bps;
        entry.seen = generation;
        if sampled && known.is_some() {
            if entry.history.len() == HISTORY {
                entry.history.pop_front();
            }
            entry.history.push_back(bps);
        }
    }

    /// Forgets the classes this sample did not see.
    fn end_classes(&mut self) {
        let generation = self.generation;
        self.classes.retain(|_, c| c.seen == generation);
    }

    fn flow_bytes(&mut self, key: &FlowKey, value: &FlowValue) {
        let (interval, generation, now_s) = (self.interval, self.generation, self.now_s);
        let (tx_bps, rx_bps) = match self.flows.entry(self.ids.of(key)) {
            Entry::Occupied(mut known) => {
                let f = known.get_mut();
                let rates =
                    (bps(interval, f.tx_bytes, value.tx_bytes), bps(interval, f.rx_bytes, value.rx_bytes));
                *f = FlowRate {
                    tx_bytes: value.tx_bytes,
                    rx_bytes: value.rx_bytes,
                    tx_bps: rates.0,
                    rx_bps: rates.1,
                    first_s: f.first_s,
                    seen: generation,
                };
                rates
            }
            Entry::Vacant(new) => {
                new.insert(FlowRate {
                    tx_bytes: value.tx_bytes,
                    rx_bytes: value.rx_bytes,
                    tx_bps: 0,
                    rx_bps: 0,
                    first_s: now_s,
                    seen: generation,
                });
                (0, 0)
            }
        };
        if tx_bps > 0 || rx_bps > 0 {
            self.busy.push(Busy { key: *key, tx_bps, rx_bps });
        }
    }

    /// Forgets the flows the dump did not return.
    fn end_flows(&mut self) {
        let generation = self.generation;
        self.flows.retain(|_, f| f.seen == generation);
    }

    /// The class's rate over the last interval, bits/s.
    pub fn class(&self, key: &ClassKey) -> u64 {
        self.classes.get(key).map_or(0, |c| c.bps)
    }

    /// The class's last rates, oldest first (at most [`HISTORY`]).
    pub fn history(&self, key: &ClassKey) -> Vec<u64> {
        self.classes.get(key).map(|c| c.history.iter().copied().collect()).unwrap_or_default()
    }

    /// Flow `key`'s rates, if the last sample counted it.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowNow> {
        let now = self.started.elapsed().as_secs();
        self.flows.get(&self.ids.of(key)).map(|f| FlowNow {
            tx_bps: f.tx_bps,
            rx_bps: f.rx_bps,
            age_s: now.saturating_sub(u64::from(f.first_s)),
        })
    }

    /// The flows that moved bytes over the last interval, in no order.
    pub fn busy(&self) -> &[Busy] {
        &self.busy
    }

    /// Flows the last sample counted.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Milliseconds between the last two samples.
    pub fn interval_ms(&self) -> u64 {
        (self.interval * 1000.0) as u64
    }

    /// Wall time of the last sample, microseconds.
    pub fn cost_us(&self) -> u64 {
        self.cost.as_micros() as u64
    }
}

/// Bits/s of `now - before` bytes over `interval` seconds: 0 before the
/// second sample, and when the counter went back (a class index reused, a
/// map made anew).
fn bps(interval: f64, before: u64, now: u64) -> u64 {
    if interval <= 0.0 || now < before {
        return 0;
    }
    ((now - before) as f64 * 8.0 / interval) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey { proto: 6, lport: port, rport: 5201, ..FlowKey::default() }
    }

    fn value(class: u16, tx: u64, rx: u64) -> FlowValue {
        FlowValue { class, tx_bytes: tx, rx_bytes: rx, ..FlowValue::default() }
    }

    #[test]
    fn rates_are_the_bytes_of_the_last_interval_and_history_keeps_a_minute() {
        let mut r = Rates::new();
        let key = ClassKey { slot: 0, class: 3, direction: Direction::Egress };
        let t0 = Instant::now();
        r.begin(t0);
        r.class_bytes(key, 1_000);
        r.end_classes();
        assert_eq!((r.class(&key), r.history(&key)), (0, vec![]), "no rate from one sample");
        for i in 1..=70u64 {
            r.begin(t0 + Duration::from_millis(500 * i));
            // 125 000 bytes per half second: 2 Mbit/s.
            r.class_bytes(key, 1_000 + 125_000 * i);
            r.end_classes();
        }
        assert_eq!(r.class(&key), 2_000_000);
        assert_eq!(r.interval_ms(), 500);
        let history = r.history(&key);
        assert_eq!(history.len(), HISTORY);
        assert!(history.iter().all(|b| *b == 2_000_000));
        // A counter that went back (a class index reused) is no burst.
        r.begin(t0 + Duration::from_millis(500 * 71));
        r.class_bytes(key, 10);
        r.end_classes();
        assert_eq!(r.class(&key), 0);
        // A class no longer sampled is forgotten.
        r.begin(t0 + Duration::from_millis(500 * 72));
        r.end_classes();
        assert_eq!((r.class(&key), r.history(&key).len()), (0, 0));
    }

    #[test]
    fn flows_get_rates_per_direction_and_only_busy_ones_are_listed() {
        let mut r = Rates::new();
        let t0 = Instant::now();
        let (a, b) = (flow(40000), flow(40001));
        r.begin(t0);
        r.flow_bytes(&a, &value(2, 100, 0));
        r.flow_bytes(&b, &value(3, 500, 500));
        r.end_flows();
        assert!(r.busy().is_empty());
        r.begin(t0 + Duration::from_secs(2));
        r.flow_bytes(&a, &value(2, 100 + 250_000, 50_000));
        r.flow_bytes(&b, &value(3, 500, 500));
        r.end_flows();
        assert_eq!(r.flow(&a).map(|f| (f.tx_bps, f.rx_bps)), Some((1_000_000, 200_000)));
        assert_eq!(r.flow(&b).map(|f| (f.tx_bps, f.rx_bps)), Some((0, 0)));
        assert_eq!(r.busy(), &[Busy { key: a, tx_bps: 1_000_000, rx_bps: 200_000 }]);
        assert_eq!(r.busy()[0].bps(), 1_200_000);
        // Gone from the map: gone from the rates.
        r.begin(t0 + Duration::from_secs(3));
        r.flow_bytes(&b, &value(3, 600, 500));
        r.end_flows();
        assert_eq!(r.flow(&a), None);
        assert_eq!(r.flow(&b).map(|f| f.tx_bps), Some(800));
    }
}
