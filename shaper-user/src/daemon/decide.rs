//! The daemon's final word on each flow's class.
//!
//! 1. Events: the classifier reports every new flow that has a local socket,
//!    with the socket's owner record and its own (maybe provisional) verdict.
//!    The daemon reads what the kernel cannot (exe, args, ancestors, …) from
//!    /proc, evaluates every rule, and moves the flow if the class differs.
//! 2. The scan (every `scan_interval`): connected sockets from /proc/net, their
//!    processes from /proc/*/fd. It adopts connections that predate the daemon,
//!    corrects classes of sockets whose process changed (exec, fd passing), and
//!    drops flows whose socket is gone.

use std::collections::{HashMap, HashSet, VecDeque};

use shaper_common::{
    FlowEvent, FlowKey, FlowValue, EVENT_OWNER, EVENT_PROVISIONAL, FLOW_PROVISIONAL, ORIGIN_DAEMON,
    ORIGIN_KERNEL, ORIGIN_PINNED,
};

use super::shaper::Shaper;
use crate::{
    events, flows, process,
    procscan::{self, ScanReport},
    rules::{self, pred::ProcessFacts},
};

/// Decision latencies kept for percentiles.
const LATENCY_SAMPLES: usize = 10_000;

/// Who decided a flow's class last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DecidedBy {
    /// The classifier, at the flow's first packet.
    Kernel,
    /// The daemon, from the classifier's event.
    Daemon,
    /// The /proc scan.
    Scan,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Kernel => "kernel",
            DecidedBy::Daemon => "daemon",
            DecidedBy::Scan => "scan",
        }
    }
}

/// What the daemon knows about a flow beyond the flow map.
#[derive(Clone, Debug)]
pub(super) struct ConnInfo {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub cmd: Option<String>,
    pub by: DecidedBy,
    /// For flows the kernel classed provisionally: microseconds from the first
    /// packet to the daemon's decision, and bytes sent in the provisional class
    /// meanwhile (0 when the kernel's guess was right).
    pub decided_us: Option<u64>,
    pub provisional_bytes: Option<u64>,
}

impl ConnInfo {
    fn of(facts: &ProcessFacts, by: DecidedBy) -> Self {
        Self {
            pid: Some(facts.pid),
            uid: Some(facts.uid),
            user: facts.user.clone(),
            cmd: Some(facts.cmd.clone()),
            by,
            decided_us: None,
            provisional_bytes: None,
        }
    }
}

/// Counts of the daemon's decisions, for `status` and the benchmarks.
#[derive(Debug, Default)]
pub(super) struct DecisionStats {
    pub events: u64,
    /// Events whose kernel verdict was provisional.
    pub provisional: u64,
    /// Flows the daemon moved to another class on an event.
    pub changed: u64,
    /// Bytes that ran in a provisional class before the daemon moved them.
    pub provisional_bytes: u64,
    /// First packet → final class, microseconds, for provisional flows.
    pub latencies_us: VecDeque<u64>,
}

impl DecisionStats {
    fn record(&mut self, latency_us: u64) {
        if self.latencies_us.len() == LATENCY_SAMPLES {
            self.latencies_us.pop_front();
        }
        self.latencies_us.push_back(latency_us);
    }

    /// The `p`-th percentile (0..=100) of the recorded latencies.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let mut v: Vec<u64> = self.latencies_us.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v.get(rank.min(v.len() - 1)).copied()
    }
}

/// The holder of a socket: the one the flow was already attributed to if it
/// still holds it, else the lowest pid (usually the parent of the others).
fn choose(pids: &[u32], known: Option<&ConnInfo>) -> Option<u32> {
    match known.and_then(|k| k.pid) {
        Some(pid) if pids.contains(&pid) => Some(pid),
        _ => pids.iter().copied().min(),
    }
}

impl Shaper {
    /// The class every rule gives a flow: a class index or `CLASS_DEFAULT`.
    pub(super) fn final_class(&self, key: &FlowKey, process: Option<&ProcessFacts>) -> u16 {
        self.compiled.decide(key, process).class
    }

    /// Puts flow `key` into `class` for good; returns the bytes it had sent until
    /// now (`None` for a flow an operator pinned, which stays where it is).
    fn settle(&mut self, key: &FlowKey, class: u16) -> Option<u64> {
        let mut value = match self.datapath.flow(key) {
            Some(v) if v.origin == ORIGIN_PINNED => return None,
            Some(v) => v,
            None => FlowValue {
                rules_gen: self.datapath.rules_gen(),
                last_seen_ns: procscan::monotonic_coarse_ns(),
                ..FlowValue::default()
            },
        };
        let sent = value.tx_bytes;
        value.class = class;
        value.origin = ORIGIN_DAEMON;
        value.flags &= !FLOW_PROVISIONAL;
        if let Err(e) = self.datapath.insert_flow(key, &value) {
            log::warn!("moving {} to class {class}: {}", flows::remote(key), crate::error_chain(&e));
        }
        Some(sent)
    }

    /// Tells the kernel the answers to the userspace tests for this process, so
    /// its next connections are decided from their first packet.
    fn remember(&mut self, process: &ProcessFacts) {
        if self.compiled.userspace.is_empty() || !self.event_driven {
            return;
        }
        let tests = rules::answers(&self.compiled.userspace, process, self.datapath.rules_gen());
        if let Err(e) = self.datapath.set_proc_tests(process.pid, &tests) {
            log::debug!("{}", crate::error_chain(&e));
        }
    }

    /// Handles a new flow reported by the classifier.
    pub fn on_event(&mut self, event: &FlowEvent) {
        self.decisions.events += 1;
        let provisional = event.flags & EVENT_PROVISIONAL != 0;
        if provisional {
            self.decisions.provisional += 1;
        }
        if event.flags & EVENT_OWNER == 0 {
            // A socket made before the hooks were attached: the scan finds its process.
            return;
        }
        let owner = &event.owner;
        let facts =
            process::facts(owner.tgid, Some(owner), self.needs, &self.accounts, self.cgroups.as_ref());
        let alive = std::path::Path::new(&format!("/proc/{}", owner.tgid)).exists();
        let class = self.final_class(&event.key, Some(&facts));
        if alive {
            self.remember(&facts);
        }
        let mut info = ConnInfo::of(&facts, DecidedBy::Kernel);
        // A provisional verdict always gets the daemon's answer. A decided one is
        // revisited only with the process in view (its name, not its thread's).
        if provisional || (alive && class != event.class) {
            let sent = self.settle(&event.key, class);
            info.by = DecidedBy::Daemon;
            if class != event.class {
                self.decisions.changed += 1;
            }
            if provisional {
                let latency_us = events::monotonic_ns().saturating_sub(event.ts_ns) / 1000;
                self.decisions.record(latency_us);
                let wrong = if class == event.class { 0 } else { sent.unwrap_or(0) };
                self.decisions.provisional_bytes += wrong;
                info.decided_us = Some(latency_us);
                info.provisional_bytes = Some(wrong);
            }
        }
        self.conns.insert(event.key, info);
    }

    /// Adopts connections the classifier has not seen, corrects classes the
    /// kernel could not know, and drops stale flows.
    pub fn reconcile(&mut self) -> ScanReport {
        let watch = procscan::Stopwatch::start();
        let sockets = match procscan::connected_sockets() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("scan: {}", crate::error_chain(&e));
                return ScanReport::default();
            }
        };
        let now = procscan::monotonic_coarse_ns();
        let stale_after = procscan::stale_after(self.config.daemon.scan_interval);
        let process_rules = self.has_process_rules();
        let mut report = ScanReport { sockets: sockets.len(), ..ScanReport::default() };
        let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).filter(|i| *i != 0).collect();
        let holders = process::socket_holders(&inodes);
        let mut facts_of: HashMap<u32, ProcessFacts> = HashMap::new();
        self.forget_exited();
        for socket in &sockets {
            let key = socket.key;
            let pid = holders.get(&socket.inode).and_then(|pids| choose(pids, self.conns.get(&key)));
            let facts = pid.map(|pid| {
                facts_of
                    .entry(pid)
                    .or_insert_with(|| {
                        process::facts(pid, None, self.needs, &self.accounts, self.cgroups.as_ref())
                    })
                    .clone()
            });
            let class = self.final_class(&key, facts.as_ref());
            let mut corrected = false;
            match self.datapath.flow(&key) {
                // Only a socket with a known process can correct a class: without
                // one, process rules would read as false.
                Some(v)
                    if process_rules && facts.is_some() && v.origin != ORIGIN_PINNED && v.class != class =>
                {
                    self.settle(&key, class);
                    report.corrected += 1;
                    corrected = true;
                }
                Some(_) => {}
                None if socket.state == "time-wait" => {}
                None => {
                    let value = FlowValue {
                        class,
                        origin: if process_rules { ORIGIN_DAEMON } else { ORIGIN_KERNEL },
                        rules_gen: self.datapath.rules_gen(),
                        last_seen_ns: now,
                        ..FlowValue::default()
                    };
                    match self.datapath.insert_flow(&key, &value) {
                        Ok(()) => report.adopted += 1,
                        Err(e) => log::warn!("scan: adopting {}: {e}", flows::remote(&key)),
                    }
                }
            }
            if let Some(facts) = &facts {
                let entry = self.conns.entry(key).or_insert_with(|| ConnInfo::of(facts, DecidedBy::Scan));
                entry.pid = Some(facts.pid);
                entry.user = facts.user.clone();
                entry.cmd = Some(facts.cmd.clone());
                if corrected {
                    entry.by = DecidedBy::Scan;
                }
            }
        }
        for facts in facts_of.values() {
            self.remember(facts);
        }
        self.sockets = sockets.into_iter().map(|s| (s.key, s)).collect();
        let mut live = HashSet::new();
        for (key, value) in self.datapath.flows() {
            if !self.sockets.contains_key(&key)
                && now.saturating_sub(value.last_seen_ns) > stale_after
                && self.still_stale(&key, stale_after)
            {
                match self.datapath.remove_flow(&key) {
                    Ok(()) => report.removed += 1,
                    Err(e) => log::warn!("scan: removing a stale flow: {e}"),
                }
            } else {
                live.insert(key);
            }
        }
        self.conns.retain(|key, _| live.contains(key));
        self.prune_listeners();
        self.refresh_cgroup_rules();
        report.micros = watch.micros();
        log::debug!("scan: {report:?}");
        self.last_scan = Some(report);
        report
    }

    /// Whether the flow is idle right now, not only in the walk's snapshot: with
    /// 100 000 flows the walk takes a good part of a second, and a new
    /// connection may meanwhile reuse the tuple of one that closed. Deleting its
    /// entry then would leave its last packets, sent after close() dropped the
    /// socket's owner record, to the default class.
    fn still_stale(&self, key: &FlowKey, stale_after: u64) -> bool {
        self.datapath
            .flow(key)
            .is_some_and(|v| procscan::monotonic_coarse_ns().saturating_sub(v.last_seen_ns) > stale_after)
    }

    /// Drops the answers of processes that exited (their pid may come back as another program).
    fn forget_exited(&mut self) {
        for pid in self.datapath.proc_tests_pids() {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                if let Err(e) = self.datapath.remove_proc_tests(pid) {
                    log::debug!("scan: {e}");
                }
            }
        }
    }

    /// Forgets bound ports whose socket was released (their owner record is gone).
    fn prune_listeners(&mut self) {
        for (key, owner) in self.datapath.listeners() {
            if self.datapath.owner(owner.cookie).is_none() {
                if let Err(e) = self.datapath.remove_listener(&key) {
                    log::debug!("scan: {e}");
                }
            }
        }
    }

    /// Cgroups come and go (a unit restarts with a new cgroup id): compiles the
    /// rules again and swaps the table when the ids changed.
    fn refresh_cgroup_rules(&mut self) {
        use crate::rules::pred::Atom;
        let Some(cgroups) = &self.cgroups else { return };
        let uses_cgroups = self
            .rules()
            .iter()
            .any(|(_, p)| p.any_atom(&|a| matches!(a, Atom::Cgroup { .. } | Atom::Unit(_))));
        if !uses_cgroups {
            return;
        }
        match self.config.compile_rules(cgroups) {
            Ok(compiled) if compiled != self.compiled => {
                self.compiled = compiled;
                if let Err(e) = self.apply_rules() {
                    log::warn!("scan: updating the rule table: {}", crate::error_chain(&e));
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("scan: compiling the rules: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_decision_latency() {
        let mut s = DecisionStats::default();
        assert_eq!(s.percentile(50.0), None);
        for us in 1..=100 {
            s.record(us);
        }
        assert_eq!(s.percentile(50.0), Some(51));
        assert_eq!(s.percentile(99.0), Some(99));
        assert_eq!(s.percentile(100.0), Some(100));
        for _ in 0..LATENCY_SAMPLES {
            s.record(7);
        }
        assert_eq!((s.latencies_us.len(), s.percentile(99.0)), (LATENCY_SAMPLES, Some(7)));
    }

    #[test]
    fn the_known_holder_of_a_shared_socket_is_kept() {
        let known = ConnInfo {
            pid: Some(30),
            uid: None,
            user: None,
            cmd: None,
            by: DecidedBy::Kernel,
            decided_us: None,
            provisional_bytes: None,
        };
        assert_eq!(choose(&[40, 30, 50], Some(&known)), Some(30));
        assert_eq!(choose(&[40, 50], Some(&known)), Some(40));
        assert_eq!(choose(&[], None), None);
    }
}
