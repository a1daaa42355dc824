//! The classifier's reports of new flows.

use std::sync::Arc;

use shaper_common::{FlowEvent, Owner, EVENT_OWNER, EVENT_PROVISIONAL};

use super::{Conn, Decider, Provisional, Tables};
use crate::{control::protocol::Origin, rules::pred::ProcessFacts};

/// Flows events may add to the decider's table at most: past that, a flood's
/// flows are left to the reconcile, which sees only flows that have a socket.
const MAX_EVENT_CONNS: usize = 1 << 18;

impl Decider {
    /// Handles a new flow reported by the classifier.
    pub fn on_event(&mut self, tables: &mut dyn Tables, event: &FlowEvent) {
        self.stats.events += 1;
        let provisional = event.flags & EVENT_PROVISIONAL != 0;
        if provisional {
            self.stats.provisional += 1;
        }
        if event.flags & EVENT_OWNER == 0 {
            // A socket made before the hooks were attached: the reconcile finds its process.
            return;
        }
        let Some(facts) = self.owner_facts(tables, &event.owner) else {
            // The owner exited already: what its record tells decides.
            let facts = self.system.facts(event.owner.tgid, Some(&event.owner), self.rules.needs);
            if provisional {
                self.decide_event(tables, event, &facts, true);
            }
            return;
        };
        if provisional {
            // The kernel had no answers of this table for a process the daemon
            // knows: leave them again, so its next flows do not wait.
            self.remember(tables, &facts);
        }
        self.decide_event(tables, event, &facts, provisional);
        if let Some(conn) = self.conns.get_mut(&self.ids.of(&event.key)) {
            conn.pid = event.owner.tgid;
        }
    }

    /// Notes what the decider knows of an event's flow, within [`MAX_EVENT_CONNS`].
    fn note(&mut self, key: &shaper_common::FlowKey, by: Origin) {
        let id = self.ids.of(key);
        if self.conns.len() < MAX_EVENT_CONNS || self.conns.contains_key(&id) {
            self.conns.insert(id, Conn::new(by));
        }
    }

    /// The facts of a socket owner's process: the ones known already when the
    /// kernel's record agrees with them (a new connection of a known process
    /// reads nothing from /proc; an exec since shows as another name), else
    /// read now. `None` when the process is gone.
    fn owner_facts(&mut self, tables: &mut dyn Tables, owner: &Owner) -> Option<Arc<ProcessFacts>> {
        if let Some(known) = self
            .processes
            .get(&owner.tgid)
            .filter(|f| f.cmd.as_deref().is_some_and(|c| same_name(c, &owner.comm)))
        {
            return Some(Arc::clone(known));
        }
        if !self.system.alive(owner.tgid) {
            return None;
        }
        let facts = Arc::new(self.system.facts(owner.tgid, Some(owner), self.rules.needs));
        self.remember(tables, &facts);
        self.processes.insert(owner.tgid, Arc::clone(&facts));
        Some(facts)
    }

    /// The daemon's class for the flow of `event`. A provisional verdict
    /// always gets the daemon's answer; a decided one is revisited with the
    /// process in view (its name, not its thread's).
    fn decide_event(
        &mut self,
        tables: &mut dyn Tables,
        event: &FlowEvent,
        facts: &ProcessFacts,
        provisional: bool,
    ) {
        let verdict = self.rules.verdict_of(&event.key, Some(facts));
        let class = verdict.class;
        let id = self.ids.of(&event.key);
        // The daemon knows no more than the kernel (a fact it could not read
        // decided): the kernel's class stays; the reconcile looks again.
        if verdict.provisional || (!provisional && class == event.class) {
            self.note(&event.key, Origin::Kernel);
            return;
        }
        let sent = self.settle(tables, &event.key, class);
        self.note(&event.key, Origin::Daemon);
        if class != event.class {
            self.stats.changed += 1;
        }
        if provisional {
            let latency_us = self.system.monotonic_ns().saturating_sub(event.ts_ns) / 1000;
            self.stats.record(latency_us);
            let wrong = if class == event.class { 0 } else { sent.unwrap_or(0) };
            self.stats.provisional_bytes += wrong;
            let decided_us = u32::try_from(latency_us).unwrap_or(u32::MAX);
            self.provisional.insert(id, Provisional { decided_us, bytes: wrong });
        }
    }
}

/// Whether the kernel's record of a name (the thread's, NUL-padded, at most
/// 15 bytes) is the process's name `cmd`.
fn same_name(cmd: &str, comm: &[u8; 16]) -> bool {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    cmd.as_bytes().get(..15.min(cmd.len())) == comm.get(..end)
}

#[cfg(test)]
mod tests {
    use super::same_name;

    #[test]
    fn names_compare_as_the_kernel_keeps_them() {
        let comm = |s: &str| {
            let mut c = [0u8; 16];
            c[..s.len()].copy_from_slice(s.as_bytes());
            c
        };
        assert!(same_name("curl", &comm("curl")));
        assert!(!same_name("curl", &comm("bash")));
        assert!(same_name("a-very-long-program", &comm("a-very-long-pro")));
    }
}
