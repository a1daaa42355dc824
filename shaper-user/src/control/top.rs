//! Wire types of `shaper top` (the reply to `top`), and the test of the
//! filters of `shaper conns` (which the daemon applies: a host with 100 000
//! flows does not ship them all to a client that wants ten).

use serde::{Deserialize, Serialize};

use super::protocol::{ClassRow, ConnFilter, ConnRow};

impl ConnFilter {
    /// Whether a flow of process `pid` (user, command name) passes the
    /// tests on processes (the class is tested apart).
    pub fn matches_process(&self, pid: Option<u32>, user: Option<&str>, cmd: Option<&str>) -> bool {
        self.pid.is_none_or(|p| pid == Some(p))
            && self.user.as_deref().is_none_or(|u| user == Some(u))
            && self.cmd.as_deref().is_none_or(|c| cmd.is_some_and(|cmd| cmd.contains(c)))
    }
}

/// The reply to `top`: the classes with their history, and the busiest
/// programs, users, units and connections by current rate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopReport {
    /// Milliseconds between the daemon's last two samples of the counters.
    pub interval_ms: u64,
    /// Wall time the last sample took, microseconds.
    pub sample_us: u64,
    /// Flows in the flow map, and of those the ones that moved bytes over the last interval.
    pub flows: usize,
    pub busy: usize,
    pub classes: Vec<TopClass>,
    pub programs: Vec<TopGroup>,
    pub users: Vec<TopGroup>,
    pub units: Vec<TopGroup>,
    /// The busiest connections, busiest first.
    pub conns: Vec<ConnRow>,
}

/// A class row with its last rates.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopClass {
    #[serde(flatten)]
    pub row: ClassRow,
    /// Its current rates of the last minute, one a second, oldest first.
    pub history: Vec<u64>,
}

/// The flows of one program, user or unit added up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopGroup {
    /// The program (command name), user or unit; "-" for flows whose process is not known.
    pub name: String,
    pub tx_bps: u64,
    pub rx_bps: u64,
    /// Its flows that moved bytes over the last interval.
    pub conns: usize,
}

impl TopGroup {
    pub fn bps(&self) -> u64 {
        self.tx_bps.saturating_add(self.rx_bps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_passes_every_test_given() {
        let all = ConnFilter::default();
        assert!(all.matches_process(None, None, None));
        let f = |filter: ConnFilter| filter.matches_process(Some(10), Some("root"), Some("backupjob"));
        assert!(f(ConnFilter { pid: Some(10), user: Some("root".into()), ..Default::default() }));
        assert!(!f(ConnFilter { pid: Some(10), user: Some("nobody".into()), ..Default::default() }));
        assert!(f(ConnFilter { cmd: Some("backup".into()), ..Default::default() }));
        assert!(!f(ConnFilter { cmd: Some("curl".into()), ..Default::default() }));
        // A flow whose process is not known passes no test on it.
        let pid = ConnFilter { pid: Some(10), ..Default::default() };
        assert!(!pid.matches_process(None, None, None));
    }
}
