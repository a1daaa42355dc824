//! The periodic reconcile: the sockets that exist against the flow map.

use std::collections::{HashMap, HashSet};

use shaper_common::{FlowKey, FlowValue, ORIGIN_DAEMON, ORIGIN_KERNEL, ORIGIN_PINNED};

use super::{conn, ConnInfo, Decider, Tables};
use crate::{
    control::protocol::{Origin, ScanReport},
    flows,
    procscan::{SockState, Socket},
    rules::pred::ProcessFacts,
};

impl Decider {
    /// Adopts connections the classifier has not seen, corrects classes the
    /// kernel could not know, and drops stale flows.
    pub fn reconcile(&mut self, tables: &mut dyn Tables) -> ScanReport {
        let started = std::time::Instant::now();
        let sockets = match self.system.sockets() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("scan: {}", crate::error_chain(&e));
                return ScanReport::default();
            }
        };
        let mut report = ScanReport { sockets: sockets.len(), ..ScanReport::default() };
        self.forget_exited(tables);
        let processes = self.processes_of(&sockets);
        for socket in &sockets {
            let facts = processes.pid_of.get(&socket.key).and_then(|pid| processes.facts.get(pid));
            self.reconcile_socket(tables, socket, facts, &mut report);
        }
        for facts in processes.facts.values() {
            self.remember(tables, facts);
        }
        self.sockets = sockets.into_iter().map(|s| (s.key, s)).collect();
        report.removed = self.remove_stale(tables);
        self.prune_listeners(tables);
        self.refresh_cgroup_rules(tables);
        report.micros = started.elapsed().as_micros() as u64;
        log::debug!("scan: {report:?}");
        self.last_scan = Some(report);
        report
    }

    /// The process behind each socket, and its facts (read once per process).
    fn processes_of(&self, sockets: &[Socket]) -> Processes {
        let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).filter(|i| *i != 0).collect();
        let holders = self.system.holders(&inodes);
        let mut out = Processes::default();
        for socket in sockets {
            let pids = holders.get(&socket.inode).map_or(&[][..], Vec::as_slice);
            let Some(pid) = conn::choose(pids, self.conns.get(&socket.key)) else { continue };
            out.pid_of.insert(socket.key, pid);
            out.facts.entry(pid).or_insert_with(|| self.system.facts(pid, None, self.rules.needs));
        }
        out
    }

    /// Step of [`Decider::reconcile`] for one socket.
    fn reconcile_socket(
        &mut self,
        tables: &mut dyn Tables,
        socket: &Socket,
        facts: Option<&ProcessFacts>,
        report: &mut ScanReport,
    ) {
        let key = socket.key;
        let class = self.rules.class_of(&key, facts);
        let process_rules = self.rules.process;
        let mut corrected = false;
        match tables.flow(&key) {
            // Only a socket with a known process can correct a class: without
            // one, process rules would read as false.
            Some(v) if process_rules && facts.is_some() && v.origin != ORIGIN_PINNED && v.class != class => {
                self.settle(tables, &key, class);
                report.corrected += 1;
                corrected = true;
            }
            Some(_) => {}
            None if socket.state == SockState::TimeWait => {}
            None => {
                let value = FlowValue {
                    class,
                    origin: if process_rules { ORIGIN_DAEMON } else { ORIGIN_KERNEL },
                    rules_gen: tables.rules_gen(),
                    last_seen_ns: self.system.coarse_ns(),
                    ..FlowValue::default()
                };
                match tables.insert_flow(&key, &value) {
                    Ok(()) => report.adopted += 1,
                    Err(e) => log::warn!("scan: adopting {}: {e}", flows::remote(&key)),
                }
            }
        }
        if let Some(facts) = facts {
            let entry = self.conns.entry(key).or_insert_with(|| ConnInfo::of(facts, Origin::Scan));
            entry.pid = Some(facts.pid);
            entry.user = facts.user.clone();
            entry.cmd = Some(facts.cmd.clone());
            if corrected {
                entry.by = Origin::Scan;
            }
        }
    }

    /// Removes flows without a socket that stayed idle longer than the scan
    /// interval; forgets what it knew about them. Returns how many went.
    fn remove_stale(&mut self, tables: &mut dyn Tables) -> usize {
        let now = self.system.coarse_ns();
        let mut live = HashSet::new();
        let mut removed = 0;
        for (key, value) in tables.flows() {
            if !self.sockets.contains_key(&key)
                && now.saturating_sub(value.last_seen_ns) > self.stale_after_ns
                && self.still_stale(tables, &key)
            {
                match tables.remove_flow(&key) {
                    Ok(()) => removed += 1,
                    Err(e) => log::warn!("scan: removing a stale flow: {e}"),
                }
            } else {
                live.insert(key);
            }
        }
        self.conns.retain(|key, _| live.contains(key));
        removed
    }

    /// Whether the flow is idle right now, not only in the walk's snapshot: with
    /// 100 000 flows the walk takes a good part of a second, and a new
    /// connection may meanwhile reuse the tuple of one that closed. Deleting its
    /// entry then would leave its last packets, sent after close() dropped the
    /// socket's owner record, to the default class.
    fn still_stale(&self, tables: &dyn Tables, key: &FlowKey) -> bool {
        let now = self.system.coarse_ns();
        tables.flow(key).is_some_and(|v| now.saturating_sub(v.last_seen_ns) > self.stale_after_ns)
    }

    /// Drops the answers of processes that exited (their pid may come back as another program).
    fn forget_exited(&self, tables: &mut dyn Tables) {
        for pid in tables.proc_tests_pids() {
            if !self.system.alive(pid) {
                if let Err(e) = tables.remove_proc_tests(pid) {
                    log::debug!("scan: {e}");
                }
            }
        }
    }

    /// Forgets bound ports whose socket was released (their owner record is gone).
    fn prune_listeners(&self, tables: &mut dyn Tables) {
        for (key, owner) in tables.listeners() {
            if tables.owner(owner.cookie).is_none() {
                if let Err(e) = tables.remove_listener(&key) {
                    log::debug!("scan: {e}");
                }
            }
        }
    }

    /// Cgroups come and go (a unit restarts with a new cgroup id): compiles the
    /// rules again and swaps the table when the ids changed.
    fn refresh_cgroup_rules(&mut self, tables: &mut dyn Tables) {
        if !self.rules.cgroups {
            return;
        }
        if let Some(compiled) = self.rules.recompiled(self.system.cgroups()) {
            self.rules.compiled = compiled;
            if let Err(e) = self.write_table(tables) {
                log::warn!("scan: updating the rule table: {}", crate::error_chain(&e));
            }
        }
    }
}

/// Who is behind the sockets of one reconcile.
#[derive(Default)]
struct Processes {
    pid_of: HashMap<FlowKey, u32>,
    facts: HashMap<u32, ProcessFacts>,
}
