//! The decider: which class each connection belongs to, beyond what the
//! classifier decides alone.
//!
//! 1. Events (events.rs): the classifier reports each new flow whose verdict
//!    waits for the daemon (provisional), with its socket's owner record. The daemon takes the owner's process facts (from
//!    a cache that rereads /proc only when the process changed), evaluates
//!    the rules, leaves the answers to the userspace tests in PROC_TESTS for
//!    the process's next connections, and moves the flow if the class differs.
//! 2. The reconcile (scan.rs, every `scan_interval`), from the kernel rather
//!    than /proc: one sock_diag dump of the sockets, joined by socket cookie
//!    with the kernel's owner records; one batched walk of the flow map. It
//!    adopts connections that predate the daemon, corrects classes of sockets
//!    whose process changed (exec, fd passing), and drops flows whose socket
//!    is gone. Only a flow whose process is new or changed is decided again.
//!
//! It owns its state (connections, the processes behind them, decision
//! statistics, the rules in force) and reaches the kernel and the host only
//! through [`Tables`] and [`System`], so unit tests drive it with neither.

mod conn;
mod events;
mod flowid;
mod ruleset;
mod scan;
mod system;
mod tables;
#[cfg(test)]
mod tests;

pub use conn::{Conn, DecisionStats, Provisional};
pub use flowid::{FlowIds, IdMap};
pub use ruleset::RuleSet;
pub use system::{LiveSystem, ScanError, System};
pub use tables::Tables;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use shaper_common::{
    FlowKey, FlowValue, FLOW_PROVISIONAL, ORIGIN_DAEMON, ORIGIN_KERNEL, ORIGIN_PINNED, SETTING_CGROUP_RULES,
    SETTING_PROCESS_RULES,
};

use crate::{
    control::protocol::{Origin, ScanReport},
    datapath::DatapathError,
    flows,
    metrics::{histogram, Histogram},
    rules::{self, compile::CgroupIndex, pred::ProcessFacts},
};

/// Decides connections' classes with the rules in force.
pub struct Decider {
    system: Box<dyn System>,
    rules: RuleSet,
    /// The classifier tests owner records and reports new flows (the socket
    /// hooks are attached); off, process rules are left to the reconcile.
    event_driven: bool,
    scan_interval: Duration,
    /// Who is behind each flow, and how its class was decided, by flow id.
    ids: FlowIds,
    conns: IdMap<Conn>,
    /// What provisional verdicts cost, for the flows that had one.
    provisional: IdMap<Provisional>,
    /// The facts of the processes behind the flows, as last decided with.
    processes: HashMap<u32, Arc<ProcessFacts>>,
    /// Reconciles so far (a flow's `seen` and `mapped` refer to them).
    generation: u32,
    /// When the descriptors of every process were last walked for sockets
    /// no owner record explains (a reconcile generation).
    last_fd_walk: Option<u32>,
    /// Socket inodes a walk of the descriptors looked for already.
    traced: HashSet<u64>,
    /// Flows the last reconcile found stale and has not removed yet.
    stale: Vec<FlowKey>,
    /// Entries in the flow map at the last reconcile, less those removed since.
    flows: usize,
    stats: DecisionStats,
    last_scan: Option<ScanReport>,
    /// Wall times of the reconciles (the metrics' histogram).
    scan_durations: Histogram,
    /// When an operator pinned each flow (`shaper move`), seconds since the Unix epoch.
    pinned_at: IdMap<u64>,
}

impl Decider {
    pub fn new(system: Box<dyn System>, event_driven: bool, scan_interval: Duration) -> Self {
        Self {
            system,
            rules: RuleSet::default(),
            event_driven,
            scan_interval,
            ids: FlowIds::new(),
            conns: IdMap::default(),
            provisional: IdMap::default(),
            processes: HashMap::new(),
            generation: 0,
            last_fd_walk: None,
            traced: HashSet::new(),
            stale: Vec::new(),
            flows: 0,
            stats: DecisionStats::default(),
            last_scan: None,
            scan_durations: Histogram::new(histogram::SCAN_BOUNDS_US),
            pinned_at: IdMap::default(),
        }
    }

    /// Where the rules' cgroup paths and units are looked up.
    pub fn cgroups(&self) -> &dyn CgroupIndex {
        self.system.cgroups()
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Whether `rules` would write the same table as the one in force.
    pub fn same_table(&self, rules: &RuleSet) -> bool {
        self.rules.compiled == rules.compiled
    }

    /// Puts `rules` in force; with `write`, their table goes to the kernel
    /// (the classifier sees the old table or the new one, never a mix).
    pub fn install(
        &mut self,
        tables: &mut dyn Tables,
        rules: RuleSet,
        write: bool,
    ) -> Result<(), DatapathError> {
        self.rules = rules;
        if write {
            self.write_table(tables)?;
        }
        Ok(())
    }

    fn write_table(&mut self, tables: &mut dyn Tables) -> Result<(), DatapathError> {
        let mut flags = 0;
        if self.event_driven {
            flags |= SETTING_PROCESS_RULES;
        }
        if self.rules.compiled.cgroups {
            flags |= SETTING_CGROUP_RULES;
        }
        let gen = tables.write_rules(&self.rules.compiled, flags)?;
        log::info!("rule table: {} nodes (generation {gen})", self.rules.compiled.nodes.len());
        // The answers in PROC_TESTS belong to a table generation: without new
        // ones, every flow of these processes would wait for the daemon again
        // (a report each at its next packet: a storm with many flows).
        for facts in self.processes.values() {
            self.remember(tables, facts);
        }
        Ok(())
    }

    /// What the decider knows about flow `key`.
    pub fn conn(&self, key: &FlowKey) -> Option<&Conn> {
        self.conns.get(&self.ids.of(key))
    }

    /// What the provisional verdict of flow `key` cost, if it had one.
    pub fn provisional(&self, key: &FlowKey) -> Option<&Provisional> {
        self.provisional.get(&self.ids.of(key))
    }

    /// The facts of process `pid`, if a flow of its is known.
    pub fn process(&self, pid: u32) -> Option<&ProcessFacts> {
        self.processes.get(&pid).map(|p| &**p)
    }

    pub fn stats(&self) -> &DecisionStats {
        &self.stats
    }

    /// Entries in the flow map as of the last reconcile (counting them
    /// anew walks the whole map: too slow for every `status`).
    pub fn flows(&self) -> usize {
        self.flows
    }

    pub fn last_scan(&self) -> Option<&ScanReport> {
        self.last_scan.as_ref()
    }

    /// How long the reconciles took, so far.
    pub fn scan_durations(&self) -> &Histogram {
        &self.scan_durations
    }

    /// Puts flow `key` into `class` for good; returns the bytes it had sent until
    /// now (`None` for a flow an operator pinned, which stays where it is).
    fn settle(&mut self, tables: &mut dyn Tables, key: &FlowKey, class: u16) -> Option<u64> {
        let mut value = match tables.flow(key) {
            Some(v) if v.origin == ORIGIN_PINNED => return None,
            Some(v) => v,
            None => FlowValue {
                rules_gen: tables.rules_gen(),
                last_seen_ns: self.system.coarse_ns(),
                ..FlowValue::default()
            },
        };
        let sent = value.tx_bytes;
        value.class = class;
        value.origin = ORIGIN_DAEMON;
        value.flags &= !FLOW_PROVISIONAL;
        if let Err(e) = tables.insert_flow(key, &value) {
            log::warn!("moving {} to class {class}: {}", flows::remote(key), crate::error_chain(&e));
        }
        Some(sent)
    }

    /// Tells the kernel the answers to the userspace tests for this process, so
    /// its next connections are decided from their first packet.
    fn remember(&self, tables: &mut dyn Tables, process: &ProcessFacts) {
        if self.rules.compiled.userspace.is_empty() || !self.event_driven {
            return;
        }
        let tests = rules::answers(&self.rules.compiled.userspace, process, tables.rules_gen());
        if let Err(e) = tables.set_proc_tests(process.pid, &tests) {
            log::debug!("{}", crate::error_chain(&e));
        }
    }

    /// Pins flow `key` into `class` (`shaper move`): neither the rules nor the
    /// daemon move it again while it lives.
    pub fn pin(&mut self, tables: &mut dyn Tables, key: &FlowKey, class: u16) -> Result<(), DatapathError> {
        let mut value = tables.flow(key).unwrap_or_default();
        value.class = class;
        value.origin = ORIGIN_PINNED;
        value.flags &= !FLOW_PROVISIONAL;
        tables.insert_flow(key, &value)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        self.pinned_at.insert(self.ids.of(key), now.map_or(0, |d| d.as_secs()));
        Ok(())
    }

    /// When flow `key` was pinned (`shaper move`), if this daemon did it.
    pub fn pinned_at(&self, key: &FlowKey) -> Option<u64> {
        self.pinned_at.get(&self.ids.of(key)).copied()
    }

    /// Who decided flow `key`, whose entry in the flow map is `value`.
    pub fn origin(&self, key: &FlowKey, value: &FlowValue) -> Origin {
        match (value.origin, self.conn(key).map(|c| c.by)) {
            (ORIGIN_PINNED, _) => Origin::Pinned,
            (ORIGIN_DAEMON, Some(by)) => by,
            (ORIGIN_DAEMON, None) => Origin::Scan,
            _ => Origin::Kernel,
        }
    }

    /// What /proc tells about process `pid` now, every fact a rule may ask
    /// (`None`: no such process).
    pub fn facts_now(&mut self, pid: u32) -> Option<ProcessFacts> {
        if !self.system.alive(pid) {
            return None;
        }
        let all = crate::process::Needs { exe: true, args: true, ancestors: true };
        Some(self.system.facts(pid, None, all))
    }

    /// After the rules changed: decides again the flows the daemon decided
    /// (the reconcile does it, with the process facts it has), and hands back
    /// to the kernel those it cannot (they are decided again at their next
    /// packet). Flows pinned by `shaper move` stay, unless their class is gone
    /// (not in `classes`). Returns how many were redone.
    pub fn reevaluate(&mut self, tables: &mut dyn Tables, classes: &HashSet<u16>) -> usize {
        let process_rules = self.rules.process;
        if process_rules {
            self.conns.values_mut().for_each(|c| c.dirty = true);
            self.reconcile(tables);
        }
        let generation = self.generation;
        let mut redone = 0;
        let mut handback = Vec::new();
        let (ids, conns) = (&self.ids, &self.conns);
        let walk = tables.for_each_flow(&mut |key, value| {
            let decided =
                conns.get(&ids.of(key)).is_some_and(|c| c.seen == generation && c.pid != 0) && process_rules;
            match value.origin {
                // The reconcile just decided it if it knows the process behind it.
                ORIGIN_DAEMON if decided => redone += 1,
                ORIGIN_DAEMON => handback.push((*key, *value)),
                ORIGIN_PINNED if !classes.contains(&value.class) => handback.push((*key, *value)),
                _ => {}
            }
        });
        if let Err(e) = walk {
            log::warn!("re-evaluating flows: {}", crate::error_chain(&e));
        }
        for (key, mut value) in handback {
            value.origin = ORIGIN_KERNEL;
            value.rules_gen = 0;
            value.flags &= !FLOW_PROVISIONAL;
            if tables.insert_flow(&key, &value).is_ok() {
                redone += 1;
            }
        }
        redone
    }
}
