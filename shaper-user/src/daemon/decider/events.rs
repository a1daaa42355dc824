//! The classifier's reports of new flows.

use shaper_common::{FlowEvent, EVENT_OWNER, EVENT_PROVISIONAL};

use super::{Conn, Decider, Tables};
use crate::control::protocol::Origin;

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
        let owner = &event.owner;
        let facts = self.system.facts(owner.tgid, Some(owner), self.rules.needs);
        let alive = self.system.alive(owner.tgid);
        let class = self.rules.class_of(&event.key, Some(&facts));
        if alive {
            self.remember(tables, &facts);
        }
        let mut conn = Conn::new(Origin::Kernel);
        conn.pid = owner.tgid;
        // A provisional verdict always gets the daemon's answer. A decided one is
        // revisited only with the process in view (its name, not its thread's).
        if provisional || (alive && class != event.class) {
            let sent = self.settle(tables, &event.key, class);
            conn.by = Origin::Daemon;
            if class != event.class {
                self.stats.changed += 1;
            }
            if provisional {
                let latency_us = self.system.monotonic_ns().saturating_sub(event.ts_ns) / 1000;
                self.stats.record(latency_us);
                let wrong = if class == event.class { 0 } else { sent.unwrap_or(0) };
                self.stats.provisional_bytes += wrong;
                conn.decided_us = Some(u32::try_from(latency_us).unwrap_or(u32::MAX));
                conn.provisional_bytes = Some(wrong);
            }
        }
        if alive {
            self.processes.insert(owner.tgid, facts);
        }
        self.conns.insert(event.key, conn);
    }
}
