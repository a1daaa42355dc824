//! What `top` shows, as tables of text: one per view, built from the
//! daemon's `top` reply. The live view and `--batch` print the same tables.

use std::cmp::Reverse;

use shaper_user::{
    control::{
        connlimit::ConnLimitRow,
        top::{TopClass, TopGroup},
        ConnRow, TopReport,
    },
    units::{format_bytes, format_rate},
};

/// Samples a class's sparkline shows (its last half minute).
pub(crate) const SPARK_SAMPLES: usize = 30;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The views, in the order their keys (1–5) name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    Classes,
    Programs,
    Users,
    Units,
    Conns,
}

impl View {
    pub(crate) const ALL: [View; 5] = [View::Classes, View::Programs, View::Users, View::Units, View::Conns];

    pub(crate) fn title(self) -> &'static str {
        match self {
            View::Classes => "classes",
            View::Programs => "programs",
            View::Users => "users",
            View::Units => "units",
            View::Conns => "connections",
        }
    }
}

/// How rows are ordered: busiest first, or by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sort {
    Rate,
    Name,
}

impl Sort {
    pub(crate) fn other(self) -> Sort {
        match self {
            Sort::Rate => Sort::Name,
            Sort::Name => Sort::Rate,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Sort::Rate => "current rate",
            Sort::Name => "name",
        }
    }
}

/// A table: its headers (with right alignment) and rows of cells.
pub(crate) struct Grid {
    pub(crate) columns: Vec<(&'static str, bool)>,
    pub(crate) rows: Vec<Vec<String>>,
}

/// The line above the tables: when, how often, how many flows.
pub(crate) fn summary(report: &TopReport) -> String {
    format!(
        "{} flows, {} moving; counters sampled every {} ms (last sample {} µs)",
        report.flows, report.busy, report.interval_ms, report.sample_us
    )
}

pub(crate) fn grid(report: &TopReport, view: View, sort: Sort) -> Grid {
    match view {
        View::Classes => classes(&report.classes, sort),
        View::Programs => groups("PROGRAM", &report.programs, sort),
        View::Users => groups("USER", &report.users, sort),
        View::Units => groups("UNIT", &report.units, sort),
        View::Conns => conns(&report.conns, sort),
    }
}

/// A sparkline of `history`, scaled to its highest value: "▁▁▃▅█▇".
pub(crate) fn sparkline(history: &[u64]) -> String {
    let recent = &history[history.len().saturating_sub(SPARK_SAMPLES)..];
    let max = recent.iter().copied().max().unwrap_or(0);
    recent
        .iter()
        .map(|v| match (*v, max) {
            (0, _) | (_, 0) => BARS[0],
            (v, max) => BARS[(1 + (v as u128 * 6 / max as u128) as usize).min(7)],
        })
        .collect()
}

fn classes(list: &[TopClass], sort: Sort) -> Grid {
    let mut list: Vec<&TopClass> = list.iter().collect();
    match sort {
        Sort::Rate => list.sort_by_key(|c| Reverse(c.row.current_bps)),
        Sort::Name => {
            list.sort_by(|a, b| (&a.row.name, &a.row.interface).cmp(&(&b.row.name, &b.row.interface)))
        }
    }
    let quotas = list.iter().any(|c| c.row.quota.is_some());
    let limits = list.iter().any(|c| c.row.connections.is_some());
    let mut columns = vec![
        ("CLASS", false),
        ("INTERFACE", false),
        ("DIR", false),
        ("RATE", true),
        ("CEIL", true),
        ("CURRENT", true),
        ("LAST 30 S", false),
        ("DROPS", true),
        ("BACKLOG", true),
    ];
    if quotas {
        columns.push(("QUOTA", false));
    }
    if limits {
        columns.push(("CONNECTIONS", false));
    }
    let rows = list
        .iter()
        .map(|c| {
            let r = &c.row;
            let mut cells = vec![
                r.name.clone(),
                r.interface.clone(),
                r.direction.as_str().to_string(),
                format_rate(r.rate_bps),
                format_rate(r.ceil_bps),
                format_rate(r.current_bps),
                sparkline(&c.history),
                r.drops.to_string(),
                format_bytes(r.backlog_bytes),
            ];
            if quotas {
                cells.push(r.quota.map_or("-", |q| q.as_str()).to_string());
            }
            if limits {
                cells.push(r.connections.as_ref().map_or_else(|| "-".to_string(), connections));
            }
            cells
        })
        .collect();
    Grid { columns, rows }
}

/// A connection limit in a cell: "2/4, 3 waiting, 1 rejected".
fn connections(c: &ConnLimitRow) -> String {
    let mut cell = c.in_service_of_limit();
    for (count, what) in [(c.waiting, "waiting"), (c.rejected, "rejected"), (c.timed_out, "timed out")] {
        if count > 0 {
            cell.push_str(&format!(", {count} {what}"));
        }
    }
    cell
}

fn groups(title: &'static str, list: &[TopGroup], sort: Sort) -> Grid {
    let mut list: Vec<&TopGroup> = list.iter().collect();
    if sort == Sort::Name {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let columns =
        vec![(title, false), ("CURRENT", true), ("SENT/S", true), ("RECEIVED/S", true), ("CONNS", true)];
    let rows = list
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                format_rate(g.bps()),
                format_rate(g.tx_bps),
                format_rate(g.rx_bps),
                g.conns.to_string(),
            ]
        })
        .collect();
    Grid { columns, rows }
}

fn conns(list: &[ConnRow], sort: Sort) -> Grid {
    let mut list: Vec<&ConnRow> = list.iter().collect();
    if sort == Sort::Name {
        list.sort_by(|a, b| (&a.cmd, &a.id).cmp(&(&b.cmd, &b.id)));
    }
    let columns = vec![
        ("ID", false),
        ("PROTO", false),
        ("LOCAL", false),
        ("REMOTE", false),
        ("PID", true),
        ("USER", false),
        ("CMD", false),
        ("CLASS", false),
        ("CURRENT", true),
        ("SENT", true),
        ("AGE", true),
    ];
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let rows = list
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.proto.clone(),
                c.local.clone(),
                c.remote.clone(),
                dash(c.pid.map(|p| p.to_string())),
                dash(c.user.clone()),
                dash(c.cmd.clone()),
                c.class.clone(),
                format_rate(c.tx_bps.saturating_add(c.rx_bps)),
                format_bytes(c.tx_bytes),
                format!("{}s", c.age_s),
            ]
        })
        .collect();
    Grid { columns, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_highest_rate() {
        assert_eq!(sparkline(&[]), "");
        assert_eq!(sparkline(&[0, 0, 0]), "▁▁▁");
        assert_eq!(sparkline(&[0, 1, 3, 6]), "▁▃▅█");
        let long: Vec<u64> = (0..60).collect();
        assert_eq!(sparkline(&long).chars().count(), SPARK_SAMPLES);
    }

    #[test]
    fn a_connection_limit_shows_who_is_served_and_who_waits() {
        let idle = ConnLimitRow { max_connections: 4, ..ConnLimitRow::default() };
        assert_eq!(connections(&idle), "0/4");
        let busy = ConnLimitRow { in_service: 4, waiting: 3, timed_out: 1, ..idle };
        assert_eq!(connections(&busy), "4/4, 3 waiting, 1 timed out");
    }

    #[test]
    fn groups_by_rate_as_sent_or_by_name() {
        let g = |name: &str, tx| TopGroup { name: name.into(), tx_bps: tx, rx_bps: 0, conns: 1 };
        let list = [g("curl", 5_000_000), g("backup", 1_000)];
        let names =
            |s| groups("PROGRAM", &list, s).rows.into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
        assert_eq!(names(Sort::Rate), ["curl", "backup"]);
        assert_eq!(names(Sort::Name), ["backup", "curl"]);
        assert_eq!(groups("PROGRAM", &list, Sort::Rate).rows[0][1], "5 Mbit/s");
    }
}
