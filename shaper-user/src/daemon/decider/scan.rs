//! The periodic reconcile: the sockets the kernel has, joined with its owner
//! records, against the flow map.
//!
//! 1. The processes behind known flows are checked (a cached read of
//!    /proc/PID/stat each): exited ones are forgotten, changed ones (an exec)
//!    mark their flows for a new decision.
//! 2. One sock_diag dump: each socket's state is noted; a socket whose
//!    process is not known yet gets it from its owner record (by cookie; an
//!    accepted connection from its listening port's).
//! 3. Sockets no record explains (they predate the daemon, or their owner
//!    exited after handing them on) are traced through every process's
//!    descriptors: at start, then at most every [`FD_WALK_EVERY`] passes.
//!    Every [`AUDIT_EVERY`] passes that walk covers every socket, so a socket
//!    handed on by a process that lives on is found in its new holder too.
//! 4. One batched walk of the flow map: flows marked are decided again,
//!    flows without a socket idle past the scan interval are removed.
//! 5. Sockets without a flow entry are adopted.

use std::{collections::HashSet, sync::Arc};

use shaper_common::{
    FlowKey, FlowValue, ListenKey, Owner, FLOW_PROVISIONAL, ORIGIN_DAEMON, ORIGIN_KERNEL, ORIGIN_PINNED,
};

use super::{conn, Conn, Decider, Tables};
use crate::{
    control::protocol::{Origin, ScanReport},
    flows,
    sockdiag::{SockState, Socket},
};

/// Reconciles between two walks of every process's descriptors for sockets
/// no owner record explains.
const FD_WALK_EVERY: u32 = 6;
/// Reconciles between two walks that check the holder of every socket.
const AUDIT_EVERY: u32 = 60;
/// Sockets remembered as traced already, at most.
const MAX_TRACED: usize = 1 << 20;
/// Stale flows a reconcile removes itself; the rest are left to
/// [`Decider::prune_stale`], which the daemon calls in batches with its lock
/// released in between (a flood leaves tens of thousands each pass).
const STALE_PER_PASS: usize = 1024;

impl Decider {
    /// Adopts connections the classifier has not seen, corrects classes the
    /// kernel could not know, and drops stale flows.
    pub fn reconcile(&mut self, tables: &mut dyn Tables) -> ScanReport {
        let started = std::time::Instant::now();
        self.generation = self.generation.wrapping_add(1).max(1);
        // First: a new table makes the answers left before it stale, those
        // this pass leaves included.
        self.refresh_cgroup_rules(tables);
        self.check_processes(tables);
        let mut report = ScanReport::default();
        let audit = self.generation % AUDIT_EVERY == 1;
        let Walked { orphans, unmapped } = match self.walk_sockets(tables, audit, &mut report) {
            Ok(walked) => walked,
            Err(e) => {
                log::warn!("scan: {}", crate::error_chain(&e));
                return report;
            }
        };
        self.trace(tables, orphans, audit);
        self.walk_flows(tables, &mut report);
        self.adopt(tables, unmapped, &mut report);
        self.forget_gone();
        self.forget_exited(tables);
        self.prune_kept(tables);
        self.system.sweep(self.scan_interval * 2);
        report.micros = started.elapsed().as_micros() as u64;
        self.scan_durations.observe_us(report.micros);
        log::debug!("scan: {report:?}");
        self.last_scan = Some(report.clone());
        report
    }

    /// Step 1: the processes behind known flows, as they are now.
    fn check_processes(&mut self, tables: &mut dyn Tables) {
        let pids: Vec<u32> = self.processes.keys().copied().collect();
        let mut changed = HashSet::new();
        for pid in pids {
            if !self.system.alive(pid) {
                self.processes.remove(&pid);
                changed.insert(pid);
                continue;
            }
            let facts = self.system.facts(pid, None, self.rules.needs);
            if self.processes.get(&pid).is_none_or(|known| **known != facts) {
                self.remember(tables, &facts);
                self.processes.insert(pid, Arc::new(facts));
                changed.insert(pid);
            }
        }
        if !changed.is_empty() {
            for conn in self.conns.values_mut().filter(|c| changed.contains(&c.pid)) {
                conn.dirty = true;
                if !self.processes.contains_key(&conn.pid) {
                    conn.pid = 0;
                }
            }
        }
    }

    /// Step 2: every socket. Returns (flow, inode) of those whose process no
    /// owner record gives (with `audit`: of every socket with an inode), and
    /// the sockets whose flow had no entry at the last pass (to adopt).
    fn walk_sockets(
        &mut self,
        tables: &mut dyn Tables,
        audit: bool,
        report: &mut ScanReport,
    ) -> Result<Walked, super::ScanError> {
        let generation = self.generation;
        let mut orphans = Vec::new();
        let mut unmapped = Vec::new();
        let mut owned: Vec<(FlowKey, Owner, u64)> = Vec::new();
        let (ids, conns) = (&self.ids, &mut self.conns);
        let missing = self.system.sockets(&mut |s: &Socket| {
            report.sockets += 1;
            let conn = conns.entry(ids.of(&s.key)).or_insert_with(|| Conn::new(Origin::Scan));
            conn.state = s.state;
            conn.seen = generation;
            if (conn.mapped == 0 || conn.mapped.wrapping_add(1) != generation)
                && s.state != SockState::TimeWait
            {
                unmapped.push(s.key);
            }
            if conn.pid != 0 || s.state == SockState::TimeWait {
                if audit && s.inode != 0 {
                    orphans.push((s.key, s.inode));
                }
                return;
            }
            match owner_of(&*tables, s) {
                Some(owner) => owned.push((s.key, owner, s.inode)),
                None if s.inode != 0 => orphans.push((s.key, s.inode)),
                None => {}
            }
        })?;
        report.from_proc_net = missing.iter().map(|t| t.as_str().to_string()).collect();
        for (key, owner, inode) in owned {
            // An owner that exited may have handed the socket on.
            if !self.attribute(tables, &key, owner.tgid, Some(&owner)) && inode != 0 {
                orphans.push((key, inode));
            }
        }
        Ok(Walked { orphans, unmapped })
    }

    /// Gives flow `key` the process `pid`, reading its facts if it is new to
    /// the decider; false when the process is gone.
    fn attribute(&mut self, tables: &mut dyn Tables, key: &FlowKey, pid: u32, owner: Option<&Owner>) -> bool {
        if !self.processes.contains_key(&pid) {
            if !self.system.alive(pid) {
                return false;
            }
            let facts = self.system.facts(pid, owner, self.rules.needs);
            self.remember(tables, &facts);
            self.processes.insert(pid, Arc::new(facts));
        }
        if let Some(conn) = self.conns.get_mut(&self.ids.of(key)) {
            conn.pid = pid;
            conn.dirty = true;
        }
        true
    }

    /// Step 3: who holds the sockets `orphans` (each a flow and its inode).
    /// A socket no walk could trace (a process outside this namespace's
    /// /proc, one that closed it meanwhile) triggers no walk of its own again;
    /// an audit walks for every socket anyway.
    fn trace(&mut self, tables: &mut dyn Tables, orphans: Vec<(FlowKey, u64)>, audit: bool) {
        if audit {
            self.traced.clear();
        }
        let new = orphans.iter().any(|(_, inode)| !self.traced.contains(inode));
        let due = self.last_fd_walk.is_none_or(|g| self.generation.wrapping_sub(g) >= FD_WALK_EVERY);
        if !(audit || new && due) {
            return;
        }
        self.last_fd_walk = Some(self.generation);
        let inodes: HashSet<u64> = orphans.iter().map(|(_, inode)| *inode).collect();
        let holders = self.system.holders(&inodes);
        if self.traced.len() > MAX_TRACED {
            self.traced.clear();
        }
        self.traced.extend(inodes);
        for (key, inode) in orphans {
            let known = self.conns.get(&self.ids.of(&key)).map_or(0, |c| c.pid);
            let pids = holders.get(&inode).map_or(&[][..], Vec::as_slice);
            match conn::choose(pids, known) {
                Some(pid) if pid != known => {
                    self.attribute(tables, &key, pid, None);
                }
                _ => {}
            }
        }
    }

    /// Step 4: decides again the flows marked, and removes stale ones.
    fn walk_flows(&mut self, tables: &mut dyn Tables, report: &mut ScanReport) {
        let (generation, now, stale_after) =
            (self.generation, self.system.coarse_ns(), self.stale_after_ns());
        let process_rules = self.rules.process;
        let mut moves: Vec<(FlowKey, u16)> = Vec::new();
        let mut stale: Vec<FlowKey> = Vec::new();
        let mut entries = 0;
        let (ids, conns, processes, rules) = (&self.ids, &mut self.conns, &self.processes, &self.rules);
        let walk = tables.for_each_flow(&mut |key, value| {
            entries += 1;
            let Some(conn) = conns.get_mut(&ids.of(key)).filter(|c| c.seen == generation) else {
                if now.saturating_sub(value.last_seen_ns) > stale_after {
                    stale.push(*key);
                }
                return;
            };
            conn.mapped = generation;
            let redo = conn.dirty || value.flags & FLOW_PROVISIONAL != 0;
            conn.dirty = false;
            let Some(facts) = processes.get(&conn.pid).filter(|_| redo && process_rules) else { return };
            let verdict = rules.verdict_of(key, Some(&**facts));
            // What could not be read decides nothing: the flow keeps its class.
            if value.origin != ORIGIN_PINNED && !verdict.provisional && verdict.class != value.class {
                moves.push((*key, verdict.class));
            }
        });
        match walk {
            Ok(()) => self.flows = entries,
            Err(e) => log::warn!("scan: walking the flows: {}", crate::error_chain(&e)),
        }
        for (key, class) in moves {
            self.settle(tables, &key, class);
            report.corrected += 1;
            if let Some(conn) = self.conns.get_mut(&self.ids.of(&key)) {
                conn.by = Origin::Scan;
            }
        }
        self.stale = stale;
        report.removed += self.remove_stale(tables, STALE_PER_PASS);
    }

    /// Removes up to `max` of the stale flows the last reconcile found; true
    /// while some are left.
    pub fn prune_stale(&mut self, tables: &mut dyn Tables, max: usize) -> bool {
        let removed = self.remove_stale(tables, max);
        if let Some(report) = self.last_scan.as_mut() {
            report.removed += removed;
        }
        !self.stale.is_empty()
    }

    fn remove_stale(&mut self, tables: &mut dyn Tables, max: usize) -> usize {
        let mut removed = 0;
        for _ in 0..max {
            let Some(key) = self.stale.pop() else { break };
            if self.still_stale(tables, &key) {
                match tables.remove_flow(&key) {
                    Ok(()) => {
                        removed += 1;
                        self.flows = self.flows.saturating_sub(1);
                    }
                    Err(e) => log::warn!("scan: removing a stale flow: {e}"),
                }
                let id = self.ids.of(&key);
                self.conns.remove(&id);
                self.provisional.remove(&id);
            }
        }
        removed
    }

    /// Step 5: sockets seen without a flow entry (of `candidates`, those
    /// whose flow had none at the last pass) get one.
    fn adopt(&mut self, tables: &mut dyn Tables, candidates: Vec<FlowKey>, report: &mut ScanReport) {
        let generation = self.generation;
        let process_rules = self.rules.process;
        for key in candidates {
            let Some(conn) = self.conns.get_mut(&self.ids.of(&key)).filter(|c| c.mapped != generation) else {
                continue;
            };
            conn.mapped = generation;
            conn.dirty = false;
            let facts = self.processes.get(&conn.pid).map(|f| &**f);
            let value = FlowValue {
                class: self.rules.class_of(&key, facts),
                origin: if process_rules { ORIGIN_DAEMON } else { ORIGIN_KERNEL },
                rules_gen: tables.rules_gen(),
                last_seen_ns: self.system.coarse_ns(),
                ..FlowValue::default()
            };
            match tables.adopt_flow(&key, &value) {
                Ok(true) => report.adopted += 1,
                Ok(false) => {}
                Err(e) => log::warn!("scan: adopting {}: {e}", flows::remote(&key)),
            }
        }
    }

    /// Forgets flows with neither a socket nor an entry, and the processes no
    /// flow points to any more.
    fn forget_gone(&mut self) {
        let generation = self.generation;
        self.conns.retain(|_, c| {
            if c.seen != generation {
                c.state = SockState::Gone;
            }
            c.seen == generation || c.mapped == generation
        });
        let in_use: HashSet<u32> = self.conns.values().map(|c| c.pid).collect();
        self.processes.retain(|pid, _| in_use.contains(pid));
        let conns = &self.conns;
        self.provisional.retain(|id, _| conns.contains_key(id));
        // A burst of connections grows the table; give the memory back after.
        if self.conns.capacity() > 4 * self.conns.len().max(1024) {
            self.conns.shrink_to_fit();
        }
    }

    fn stale_after_ns(&self) -> u64 {
        self.scan_interval.as_nanos().min(u128::from(u64::MAX)) as u64
    }

    /// Whether the flow is idle right now, not only in the walk's snapshot: with
    /// 100 000 flows the walk takes a while, and a new connection may meanwhile
    /// reuse the tuple of one that closed. Deleting its entry then would leave
    /// its last packets, sent after close() dropped the socket's owner record,
    /// to the default class.
    fn still_stale(&self, tables: &dyn Tables, key: &FlowKey) -> bool {
        let now = self.system.coarse_ns();
        tables.flow(key).is_some_and(|v| now.saturating_sub(v.last_seen_ns) > self.stale_after_ns())
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

    /// Forgets the decisions kept for flows FLOWS evicted whose socket is gone.
    /// (Bound ports need no pruning: their socket's release removes them.)
    fn prune_kept(&self, tables: &mut dyn Tables) {
        for key in tables.kept_flows() {
            if self.conns.get(&self.ids.of(&key)).is_none_or(|c| c.seen != self.generation) {
                if let Err(e) = tables.forget_kept_if_evicted(&key) {
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

/// What the walk of the sockets leaves to the later steps.
struct Walked {
    /// Sockets whose process no owner record gives: (flow, inode).
    orphans: Vec<(FlowKey, u64)>,
    /// Sockets whose flow had no entry at the last pass.
    unmapped: Vec<FlowKey>,
}

/// The owner record of a socket: its own (by cookie), or, for a connection
/// accepted on a bound port, the port's in this network namespace (see
/// `ListenKey::accepting`).
fn owner_of(tables: &dyn Tables, socket: &Socket) -> Option<Owner> {
    if socket.cookie != 0 {
        if let Some(owner) = tables.owner(socket.cookie) {
            return Some(owner);
        }
    }
    ListenKey::accepting(&socket.key, tables.netns()).iter().find_map(|key| tables.listener(key))
}
