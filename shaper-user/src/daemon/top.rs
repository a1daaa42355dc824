//! The reply to `top`: every class with its last minute of rates, and the
//! busiest programs, users, units and connections, added up here from the
//! flows that moved bytes over the last second (a client gets `n` of each,
//! never the whole flow table).

use std::{cmp::Reverse, collections::HashMap};

use super::{error::DaemonError, rates::Busy, report::View};
use crate::{
    clock,
    control::{
        top::{TopClass, TopGroup, TopReport},
        ConnRow,
    },
    rules::pred::ProcessFacts,
};

/// What a busy flow is grouped by.
#[derive(Clone, Copy)]
enum Kind {
    Program,
    User,
    Unit,
}

impl Kind {
    /// The group of a flow whose process is `process` ("-": not known).
    fn name(self, process: Option<&ProcessFacts>) -> String {
        let named = process.and_then(|p| match self {
            Kind::Program => p.cmd.clone(),
            Kind::User => p.user.clone().or_else(|| p.uid.map(|u| u.to_string())),
            Kind::Unit => unit(p),
        });
        named.unwrap_or_else(|| "-".to_string())
    }
}

/// The unit a process runs in: the innermost service or scope on its cgroup
/// path, else the innermost unit of any kind (a slice).
fn unit(process: &ProcessFacts) -> Option<String> {
    let units: Vec<&str> = process.units().collect();
    let service = units.iter().rev().find(|u| u.ends_with(".service") || u.ends_with(".scope"));
    service.or(units.last()).map(|u| (*u).to_string())
}

pub fn report(view: &View<'_>, n: usize) -> Result<TopReport, DaemonError> {
    let classes = view
        .keyed_classes()?
        .into_iter()
        .map(|(key, row)| TopClass { history: view.rates.history(&key), row })
        .collect();
    let busy = view.rates.busy();
    Ok(TopReport {
        interval_ms: view.rates.interval_ms(),
        sample_us: view.rates.cost_us(),
        flows: view.rates.flow_count(),
        busy: busy.len(),
        classes,
        programs: groups(view, busy, Kind::Program, n),
        users: groups(view, busy, Kind::User, n),
        units: groups(view, busy, Kind::Unit, n),
        conns: busiest(view, busy, n),
    })
}

/// The `n` busiest groups of `kind`, busiest first (ties by name).
fn groups(view: &View<'_>, busy: &[Busy], kind: Kind, n: usize) -> Vec<TopGroup> {
    let mut by_name: HashMap<String, TopGroup> = HashMap::new();
    for flow in busy {
        let process = view.decider.conn(&flow.key).and_then(|c| view.decider.process(c.pid));
        let name = kind.name(process);
        let group = by_name.entry(name).or_insert_with_key(|name| TopGroup {
            name: name.clone(),
            tx_bps: 0,
            rx_bps: 0,
            conns: 0,
        });
        group.tx_bps = group.tx_bps.saturating_add(flow.tx_bps);
        group.rx_bps = group.rx_bps.saturating_add(flow.rx_bps);
        group.conns += 1;
    }
    let mut list: Vec<TopGroup> = by_name.into_values().collect();
    list.sort_by(|a, b| (Reverse(a.bps()), &a.name).cmp(&(Reverse(b.bps()), &b.name)));
    list.truncate(n);
    list
}

/// The `n` busiest connections, busiest first.
fn busiest(view: &View<'_>, busy: &[Busy], n: usize) -> Vec<ConnRow> {
    let mut order: Vec<&Busy> = busy.iter().collect();
    order.sort_by_key(|b| Reverse(b.bps()));
    let names = view.names();
    let now = clock::monotonic_coarse_ns();
    order
        .into_iter()
        .filter_map(|b| view.datapath.flow(&b.key).map(|value| view.conn_row(&names, now, &b.key, &value)))
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_grouped_by_its_innermost_service_or_scope() {
        let p = |cgroup: &str| ProcessFacts { cgroup: Some(cgroup.to_string()), ..ProcessFacts::default() };
        let nested = p("/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope");
        assert_eq!(unit(&nested).as_deref(), Some("run-u7.scope"));
        assert_eq!(unit(&p("/system.slice/sshd.service")).as_deref(), Some("sshd.service"));
        assert_eq!(unit(&p("/machine.slice")).as_deref(), Some("machine.slice"));
        assert_eq!(unit(&p("/")), None);
        assert_eq!(Kind::Unit.name(None), "-");
        let uid_only = ProcessFacts { uid: Some(1000), ..ProcessFacts::default() };
        assert_eq!(Kind::User.name(Some(&uid_only)), "1000");
    }
}
