//! What the daemon tells its clients: `status`, `classes`, `conns`, built
//! from the parts that hold the facts.

use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, Instant},
};

use shaper_common::{
    classid_of, Direction, FlowKey, FlowValue, CLASS_DEFAULT, ERROR_NAMES, ORIGIN_DAEMON, ORIGIN_PINNED,
};

use super::{
    decider::Decider,
    error::DaemonError,
    host::{Host, Shaped},
    instances::Instances,
    live::ConfigState,
    quota::Quotas,
    rates::{ClassKey, Rates},
    schedules::Schedules,
};
use crate::{
    classids::ClassIds,
    control::protocol::{
        ClassRow, ConnRow, Decisions, InstanceCounters, InterfaceStatus, MapUsage, Origin, SockState, Status,
    },
    datapath::Datapath,
    flows,
    plan::Plan,
    tc,
};

/// Where a report takes HTB's counters (sent, drops, backlog) from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HtbRead {
    /// A dump of the classes now (`classes`, `top`).
    Now,
    /// The once-a-second rate sample's, when at most [`SAMPLE_MAX_AGE`]
    /// old (the metrics: a dump of 1 000 classes per scrape cost a fifth of it).
    Sampled,
}

/// The oldest rate sample whose HTB counters a report takes.
pub(super) const SAMPLE_MAX_AGE: Duration = Duration::from_secs(1);

/// A read-only view of the daemon for its reports.
pub struct View<'a> {
    pub host: &'a Host,
    pub datapath: &'a Datapath,
    pub decider: &'a Decider,
    pub instances: &'a Instances,
    pub state: &'a ConfigState,
    pub schedules: &'a Schedules,
    pub started: Instant,
    pub adopted: bool,
    pub hooks: Option<&'a std::path::Path>,
    pub scan_only: Option<&'a str>,
    pub quotas: &'a Quotas,
    pub rates: &'a Rates,
    pub connlimits: &'a super::connlimit::ConnLimits,
}

/// Class indices → names, as the reports show them.
pub(super) struct Names<'a> {
    ids: ClassIds,
    view: &'a View<'a>,
    /// Each class's `match`, as written, by name (see [`View::rules`]).
    rules: HashMap<&'a str, &'a str>,
}

impl Names<'_> {
    /// The name of class `index`; "the default class" of flows no rule matched
    /// is named when every interface has the same default.
    pub(super) fn class(&self, index: u16) -> String {
        if index == CLASS_DEFAULT {
            let config = self.view.state.config();
            let mut defaults = config.interfaces.iter().map(|i| i.default_class.as_str());
            return match defaults.next() {
                Some(first) if defaults.all(|d| d == first) => first.to_string(),
                _ => "(interface default)".to_string(),
            };
        }
        self.ids.name(index).map_or_else(|| format!("#{index}"), str::to_string)
    }

    /// The `match` of class `index`, as written.
    fn rule(&self, index: u16) -> Option<String> {
        self.rules.get(self.ids.name(index)?).map(|r| (*r).to_string())
    }
}

impl<'a> View<'a> {
    pub(super) fn names(&'a self) -> Names<'a> {
        Names { ids: self.datapath.class_ids(), view: self, rules: self.rules() }
    }

    /// Each class's `match`, as written, by class name: looked up per row,
    /// where a search of the config's classes would cost 1 000 × 1 000
    /// compares with 1 000 classes.
    fn rules(&self) -> HashMap<&'a str, &'a str> {
        let classes = &self.state.config().classes;
        classes.iter().filter_map(|c| Some((c.name.as_str(), c.rule_source.as_deref()?))).collect()
    }

    pub fn status(&self) -> Status {
        let config = self.state.config();
        let errors = self.datapath.errors().unwrap_or_default();
        let names = self.names();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            config: config.path.display().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            interfaces: self.host.shaped().iter().map(|s| self.interface(s, &names)).collect(),
            waiting: self.host.waiting().to_vec(),
            classes: config.classes.len(),
            rule_nodes: self.decider.rules().compiled.nodes.len(),
            rules_gen: self.datapath.rules_gen(),
            flows: self.decider.flows(),
            max_flows: config.daemon.max_flows,
            errors: ERROR_NAMES.iter().zip(errors).map(|(n, v)| ((*n).to_string(), v)).collect(),
            scan_interval_ms: config.daemon.scan_interval.as_millis() as u64,
            last_scan: self.decider.last_scan().cloned(),
            hooks_cgroup: self.hooks.map(|h| h.display().to_string()),
            scan_only: self.scan_only.map(str::to_string),
            pin_dir: config.daemon.pin_dir.display().to_string(),
            adopted: self.adopted,
            last_reload: self.state.last_reload(),
            drift: self.state.drift(),
            decisions: self.decisions(),
            maps: self.map_usage(),
            quotas: self.quotas.rows(),
            state_file: (!self.quotas.is_empty()).then(|| self.quotas.file_status()),
            instances: self.instance_counters(),
            windows: self.schedules.windows(config),
            queues: self.schedules.queues(),
            connection_limits: self.connlimits.rows(),
        }
    }

    /// How full the kernel maps that grow with traffic are.
    pub fn map_usage(&self) -> Vec<MapUsage> {
        let occupancy = self.datapath.occupancy(self.decider.flows());
        occupancy
            .into_iter()
            .map(|(name, entries, capacity)| MapUsage { name: name.to_string(), entries, capacity })
            .collect()
    }

    /// The instances of classes with `per`, by class name.
    pub fn instance_counters(&self) -> InstanceCounters {
        let names = self.names();
        self.instances.counters(|index| names.class(index))
    }

    fn interface(&self, s: &Shaped, names: &Names<'_>) -> InterfaceStatus {
        let conf = self.state.config().interfaces.iter().find(|i| i.name == s.name());
        InterfaceStatus {
            name: s.name().to_string(),
            ifindex: s.ifindex(),
            egress_bps: s.egress.capacity_bps,
            ingress_bps: conf.and_then(|c| c.ingress_bps),
            ifb: s.ingress.as_ref().map(|i| i.ifb.name.clone()),
            attach: s.attach,
            default_class: names.class(s.egress.default_class),
        }
    }

    fn decisions(&self) -> Decisions {
        let d = self.decider.stats();
        Decisions {
            events: d.events,
            provisional: d.provisional,
            changed: d.changed,
            provisional_bytes: d.provisional_bytes,
            p50_us: d.percentile(50.0),
            p99_us: d.percentile(99.0),
            max_us: d.percentile(100.0),
        }
    }

    /// One row per class, interface and direction.
    pub fn classes(&self) -> Result<Vec<ClassRow>, DaemonError> {
        self.class_rows(HtbRead::Now)
    }

    /// [`View::classes`], HTB's counters read as `htb` says.
    pub(super) fn class_rows(&self, htb: HtbRead) -> Result<Vec<ClassRow>, DaemonError> {
        Ok(self.keyed_class_rows(htb)?.into_iter().map(|(_, row)| row).collect())
    }

    /// [`View::classes`], each row with the key of its rates.
    pub fn keyed_classes(&self) -> Result<Vec<(ClassKey, ClassRow)>, DaemonError> {
        self.keyed_class_rows(HtbRead::Now)
    }

    fn keyed_class_rows(&self, htb: HtbRead) -> Result<Vec<(ClassKey, ClassRow)>, DaemonError> {
        let rules = self.rules();
        let mut rows = Vec::new();
        for shaped in self.host.shaped() {
            for (direction, plan, device) in shaped.trees() {
                self.tree_rows(shaped, (direction, plan, device), htb, &rules, &mut rows)?;
            }
        }
        Ok(rows)
    }

    fn tree_rows(
        &self,
        shaped: &Shaped,
        (direction, plan, device): (Direction, &Plan, u32),
        htb: HtbRead,
        rules: &HashMap<&str, &str>,
        rows: &mut Vec<(ClassKey, ClassRow)>,
    ) -> Result<(), DaemonError> {
        let htb = match htb {
            HtbRead::Now => Cow::Owned(self.host.htb_stats(device)?),
            HtbRead::Sampled => self.host.recent_htb_stats(device, SAMPLE_MAX_AGE)?,
        };
        rows.reserve(plan.classes.len());
        let counters = self.datapath.class_stats_of(shaped.slot)?;
        for class in &plan.classes {
            let classid = classid_of(u32::from(class.index));
            let key = ClassKey { slot: shaped.slot, class: class.index, direction };
            let ours = counters.get(usize::from(class.index)).copied().unwrap_or_default();
            let (bytes, packets) = match direction {
                Direction::Egress => (ours.tx_bytes, ours.tx_packets),
                Direction::Ingress => (ours.rx_bytes, ours.rx_packets),
            };
            let sent = htb.get(&classid);
            rows.push((
                key,
                ClassRow {
                    name: class.name.clone(),
                    interface: shaped.name().to_string(),
                    direction,
                    classid: tc::format_handle(classid),
                    rate_bps: class.rate_bps,
                    ceil_bps: class.ceil_bps,
                    priority: class.priority,
                    bytes,
                    packets,
                    sent_bytes: sent.map_or(0, |s| s.bytes),
                    sent_packets: sent.map_or(0, |s| s.packets),
                    drops: sent.map_or(0, |s| u64::from(s.drops)),
                    overlimits: sent.map_or(0, |s| u64::from(s.overlimits)),
                    backlog_bytes: sent.map_or(0, |s| u64::from(s.backlog)),
                    rate_now_bps: self.host.rate_now(device, classid),
                    current_bps: self.rates.class(&key),
                    rule: rules.get(class.name.as_str()).map(|r| (*r).to_string()),
                    quota: self.quotas.state_of(&class.name),
                    per: class.per.as_ref().map(|p| p.per.as_str().to_string()),
                    instances: class
                        .per
                        .as_ref()
                        .map(|per| self.instances.rows(self.host, (direction, device), class.index, per))
                        .unwrap_or_default(),
                    queue: class.queue.as_str().to_string(),
                    window: self.schedules.window(self.state.config(), &class.name),
                    connections: self.connlimits.row(&class.name),
                },
            ));
        }
        Ok(())
    }

    /// Flow `key`'s row, its entry `value` read at `now` (CLOCK_MONOTONIC_COARSE).
    pub(super) fn conn_row(&self, names: &Names<'_>, now: u64, key: &FlowKey, value: &FlowValue) -> ConnRow {
        let info = self.decider.conn(key);
        let process = info.and_then(|i| self.decider.process(i.pid));
        let provisional = self.decider.provisional(key);
        let origin = match (value.origin, info.map(|i| i.by)) {
            (ORIGIN_PINNED, _) => Origin::Pinned,
            (ORIGIN_DAEMON, Some(by)) => by,
            (ORIGIN_DAEMON, None) => Origin::Scan,
            _ => Origin::Kernel,
        };
        let rate = self.rates.flow(key).unwrap_or_default();
        ConnRow {
            id: flows::id(key),
            proto: flows::proto_name(key.proto),
            local: flows::endpoint(key, true),
            remote: flows::endpoint(key, false),
            class: names.class(value.class),
            origin,
            pid: info.map(|i| i.pid).filter(|p| *p != 0),
            user: process.and_then(|p| p.user.clone().or_else(|| p.uid.map(|u| u.to_string()))),
            cmd: process.and_then(|p| p.cmd.clone()),
            rule: names.rule(value.class),
            decided_us: provisional.map(|p| u64::from(p.decided_us)),
            provisional_bytes: provisional.map(|p| p.bytes),
            state: info.map_or(SockState::Gone, |i| i.state),
            tx_bytes: value.tx_bytes,
            tx_packets: value.tx_packets,
            rx_bytes: value.rx_bytes,
            rx_packets: value.rx_packets,
            idle_ms: now.saturating_sub(value.last_seen_ns) / 1_000_000,
            tx_bps: rate.tx_bps,
            rx_bps: rate.rx_bps,
            age_s: rate.age_s,
        }
    }
}
