//! What the decider remembers about each connection and about its decisions.

use std::collections::VecDeque;

use crate::{
    control::protocol::Origin,
    metrics::{histogram::DECISION_BOUNDS_US, Histogram},
    sockdiag::SockState,
};

/// Decision latencies kept for percentiles.
const LATENCY_SAMPLES: usize = 10_000;

/// What the decider knows about one flow beyond the flow map. Kept small (16
/// bytes): a host may have hundreds of thousands. What a process is lives
/// once per process, in the decider's process table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// The process behind the flow (0: not known).
    pub pid: u32,
    /// The last reconcile that saw the socket, and the last that saw the flow entry.
    pub seen: u32,
    pub mapped: u32,
    /// Who decided the class last (`Kernel`, `Daemon` or `Scan`).
    pub by: Origin,
    /// The socket's state when last seen; `Gone` once a reconcile misses it.
    pub state: SockState,
    /// The class must be decided again: the process is new to the decider,
    /// changed (exec, another holder), or the rules did.
    pub dirty: bool,
}

impl Conn {
    pub fn new(by: Origin) -> Self {
        Self { pid: 0, seen: 0, mapped: 0, by, state: SockState::Gone, dirty: false }
    }
}

/// For a flow the kernel classed provisionally: microseconds from its first
/// packet to the daemon's decision, and bytes sent in the provisional class
/// meanwhile (0 when the kernel's guess was right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provisional {
    pub decided_us: u32,
    pub bytes: u64,
}

/// Counts of the daemon's decisions, for `status`, the metrics and the benchmarks.
#[derive(Debug)]
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
    /// The same since the start, by bucket (the metrics' histogram).
    pub latency: Histogram,
}

impl Default for DecisionStats {
    fn default() -> Self {
        Self {
            events: 0,
            provisional: 0,
            changed: 0,
            provisional_bytes: 0,
            latencies_us: VecDeque::new(),
            latency: Histogram::new(DECISION_BOUNDS_US),
        }
    }
}

impl DecisionStats {
    pub fn record(&mut self, latency_us: u64) {
        self.latency.observe_us(latency_us);
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
pub fn choose(pids: &[u32], known: u32) -> Option<u32> {
    if known != 0 && pids.contains(&known) {
        return Some(known);
    }
    pids.iter().copied().min()
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
        // The histogram counts them too: 50 at or below 50 µs, all 100 at or below 100 µs.
        assert_eq!(s.latency.cumulative()[..2], [(Some(50), 50), (Some(100), 100)]);
        for _ in 0..LATENCY_SAMPLES {
            s.record(7);
        }
        assert_eq!((s.latencies_us.len(), s.percentile(99.0)), (LATENCY_SAMPLES, Some(7)));
    }

    #[test]
    fn the_known_holder_of_a_shared_socket_is_kept() {
        assert_eq!(choose(&[40, 30, 50], 30), Some(30));
        assert_eq!(choose(&[40, 50], 30), Some(40));
        assert_eq!(choose(&[], 0), None);
        assert_eq!(std::mem::size_of::<Conn>(), 16, "one per flow: keep it small");
    }
}
