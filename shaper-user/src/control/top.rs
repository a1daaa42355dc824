//! Wire types of `shaper top` (the reply to `top`), and the filters of
//! `shaper conns` at work (applied by the daemon, so a host with 100 000
//! flows does not ship them all to a client that wants ten).

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use super::protocol::{ClassRow, ConnFilter, ConnRow, ConnSort};

impl ConnFilter {
    /// Whether `row` passes every test given.
    pub fn keeps(&self, row: &ConnRow) -> bool {
        self.class.as_ref().is_none_or(|c| *c == row.class)
            && self.pid.is_none_or(|p| row.pid == Some(p))
            && self.user.as_ref().is_none_or(|u| row.user.as_ref() == Some(u))
            && self.cmd.as_ref().is_none_or(|c| row.cmd.as_ref().is_some_and(|cmd| cmd.contains(c.as_str())))
    }

    /// `rows` (in the daemon's order) filtered, sorted and cut as asked.
    pub fn apply(&self, mut rows: Vec<ConnRow>) -> Vec<ConnRow> {
        rows.retain(|r| self.keeps(r));
        // Stable: rows that tie keep the daemon's order.
        match self.sort {
            Some(ConnSort::Rate) => rows.sort_by_key(|r| Reverse(r.tx_bps.saturating_add(r.rx_bps))),
            Some(ConnSort::Bytes) => rows.sort_by_key(|r| Reverse(r.tx_bytes.saturating_add(r.rx_bytes))),
            Some(ConnSort::Age) => rows.sort_by_key(|r| Reverse(r.age_s)),
            None => {}
        }
        if let Some(n) = self.limit {
            rows.truncate(n);
        }
        rows
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
    use crate::control::{Origin, SockState};

    fn row(id: &str, class: &str, cmd: &str, pid: u32, tx: (u64, u64), age_s: u64) -> ConnRow {
        ConnRow {
            id: id.into(),
            proto: "tcp".into(),
            local: "198.18.0.1:40000".into(),
            remote: "198.18.0.2:5201".into(),
            class: class.into(),
            origin: Origin::Kernel,
            pid: Some(pid),
            user: Some("root".into()),
            cmd: Some(cmd.into()),
            rule: None,
            decided_us: None,
            provisional_bytes: None,
            state: SockState::Established,
            tx_bytes: tx.0,
            tx_packets: 1,
            rx_bytes: 0,
            rx_packets: 0,
            idle_ms: 0,
            tx_bps: tx.1,
            rx_bps: 0,
            age_s,
        }
    }

    #[test]
    fn filters_sort_and_cut() {
        let rows = vec![
            row("a", "bulk", "backupjob", 10, (500, 1), 30),
            row("b", "web", "curl", 11, (100, 9), 5),
            row("c", "bulk", "backup2", 12, (900, 4), 60),
        ];
        let ids = |f: &ConnFilter| f.apply(rows.clone()).into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(&ConnFilter::default()), ["a", "b", "c"]);
        assert_eq!(ids(&ConnFilter { class: Some("bulk".into()), ..Default::default() }), ["a", "c"]);
        assert_eq!(ids(&ConnFilter { pid: Some(11), ..Default::default() }), ["b"]);
        assert_eq!(ids(&ConnFilter { cmd: Some("backup".into()), ..Default::default() }), ["a", "c"]);
        assert_eq!(ids(&ConnFilter { user: Some("nobody".into()), ..Default::default() }), [""; 0]);
        assert_eq!(ids(&ConnFilter { sort: Some(ConnSort::Rate), ..Default::default() }), ["b", "c", "a"]);
        assert_eq!(ids(&ConnFilter { sort: Some(ConnSort::Bytes), ..Default::default() }), ["c", "a", "b"]);
        let oldest = ConnFilter { sort: Some(ConnSort::Age), limit: Some(2), ..Default::default() };
        assert_eq!(ids(&oldest), ["c", "a"]);
        assert_eq!("age".parse::<ConnSort>(), Ok(ConnSort::Age));
        assert_eq!("size".parse::<ConnSort>(), Err("unknown sort \"size\" (rate, bytes or age)".to_string()));
    }
}
