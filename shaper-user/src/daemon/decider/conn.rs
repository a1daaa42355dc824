//! What the decider remembers about each connection and about its decisions.

use std::collections::VecDeque;

use crate::{control::protocol::Origin, rules::pred::ProcessFacts};

/// Decision latencies kept for percentiles.
const LATENCY_SAMPLES: usize = 10_000;

/// What the daemon knows about a flow beyond the flow map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub cmd: Option<String>,
    /// Who decided the class last (`Kernel`, `Daemon` or `Scan`).
    pub by: Origin,
    /// For flows the kernel classed provisionally: microseconds from the first
    /// packet to the daemon's decision, and bytes sent in the provisional class
    /// meanwhile (0 when the kernel's guess was right).
    pub decided_us: Option<u64>,
    pub provisional_bytes: Option<u64>,
}

impl ConnInfo {
    pub fn of(facts: &ProcessFacts, by: Origin) -> Self {
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
pub struct DecisionStats {
    pub events: u64,
    /// Events whose kernel verdict was provisional.
    pub provisional: u64,
    /// Flows the daemon moved to another class on an event.
    pub changed: u64,
    /// Bytes that ran in a provisional class before the daemon moved them.
    pub provisional_bytes: u64,
    /// First packet → final class, microseconds, for provisional flows.
    latencies_us: VecDeque<u64>,
}

impl DecisionStats {
    pub fn record(&mut self, latency_us: u64) {
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
pub fn choose(pids: &[u32], known: Option<&ConnInfo>) -> Option<u32> {
    match known.and_then(|k| k.pid) {
        Some(pid) if pids.contains(&pid) => Some(pid),
        _ => pids.iter().copied().min(),
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
            by: Origin::Kernel,
            decided_us: None,
            provisional_bytes: None,
        };
        assert_eq!(choose(&[40, 30, 50], Some(&known)), Some(30));
        assert_eq!(choose(&[40, 50], Some(&known)), Some(40));
        assert_eq!(choose(&[], None), None);
    }
}
