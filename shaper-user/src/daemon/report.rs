//! What the daemon tells its clients: `status`, `classes`, `conns`.

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use shaper_common::{CLASS_DEFAULT, ERROR_NAMES, ORIGIN_DAEMON, ORIGIN_PINNED};

use super::{decide::DecidedBy, shaper::Shaper, DaemonError};
use crate::{
    control::{ClassRow, Command, ConnRow, Decisions, InterfaceStatus, Reply, Status},
    flows,
    plan::Direction,
    procscan, tc,
};

/// Sent-byte samples of the HTB classes of one interface, for "rate now".
#[derive(Default)]
pub(super) struct Meter {
    samples: VecDeque<(Instant, HashMap<u32, u64>)>,
}

const METER_WINDOW: usize = 4;

impl Meter {
    fn push(&mut self, at: Instant, sent: HashMap<u32, u64>) {
        self.samples.push_back((at, sent));
        while self.samples.len() > METER_WINDOW {
            self.samples.pop_front();
        }
    }

    /// Bits per second class `classid` sent over the sampled window.
    fn rate(&self, classid: u32) -> u64 {
        let (Some((t0, first)), Some((t1, last))) = (self.samples.front(), self.samples.back()) else {
            return 0;
        };
        let secs = t1.duration_since(*t0).as_secs_f64();
        let (Some(a), Some(b)) = (first.get(&classid), last.get(&classid)) else { return 0 };
        if secs <= 0.0 {
            return 0;
        }
        (b.saturating_sub(*a) as f64 * 8.0 / secs) as u64
    }
}

impl Shaper {
    /// Samples the HTB counters for the "rate now" column.
    pub fn sample_rates(&mut self) {
        let at = Instant::now();
        let devices: Vec<(u32, &str)> = self
            .shaped
            .iter()
            .flat_map(|s| {
                std::iter::once((s.ifindex, s.name.as_str()))
                    .chain(s.ingress.as_ref().map(|i| (i.ifb.index, i.ifb.name.as_str())))
            })
            .collect();
        for (ifindex, name) in devices {
            match tc::class_stats(&self.netlink, ifindex) {
                Ok(stats) => {
                    let sent = stats.iter().map(|s| (s.classid, s.bytes)).collect();
                    self.meters.entry(ifindex).or_default().push(at, sent);
                }
                Err(e) => log::debug!("sampling {name}: {e}"),
            }
        }
    }

    pub fn status(&self) -> Status {
        let errors = self.datapath.errors().unwrap_or_default();
        let d = &self.decisions;
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            config: self.config.path.display().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            interfaces: self
                .shaped
                .iter()
                .map(|s| {
                    let conf = self.config.interfaces.iter().find(|i| i.name == s.name);
                    InterfaceStatus {
                        name: s.name.clone(),
                        ifindex: s.ifindex,
                        egress_bps: s.egress.capacity_bps,
                        ingress_bps: conf.and_then(|c| c.ingress_bps),
                        ifb: s.ingress.as_ref().map(|i| i.ifb.name.clone()),
                        attach: s.attach.to_string(),
                        default_class: self.class_name(s.egress.default_class),
                    }
                })
                .collect(),
            classes: self.config.classes.len(),
            rule_nodes: self.compiled.nodes.len(),
            rules_gen: self.datapath.rules_gen(),
            flows: self.datapath.flows().len(),
            max_flows: self.config.daemon.max_flows,
            errors: ERROR_NAMES.iter().zip(errors).map(|(n, v)| ((*n).to_string(), v)).collect(),
            scan_interval_ms: self.config.daemon.scan_interval.as_millis() as u64,
            last_scan: self.last_scan,
            hooks_cgroup: self.hooks.as_ref().map(|h| h.display().to_string()),
            pin_dir: self.config.daemon.pin_dir.display().to_string(),
            adopted: self.adopted,
            last_reload: self.last_reload.as_ref().map(|r| r.status()),
            drift: self.drift(),
            decisions: Decisions {
                events: d.events,
                provisional: d.provisional,
                changed: d.changed,
                provisional_bytes: d.provisional_bytes,
                p50_us: d.percentile(50.0),
                p99_us: d.percentile(99.0),
                max_us: d.percentile(100.0),
            },
        }
    }

    pub fn classes(&self) -> Result<Vec<ClassRow>, DaemonError> {
        let mut rows = Vec::new();
        for shaped in &self.shaped {
            let trees = std::iter::once((Direction::Egress, &shaped.egress, shaped.ifindex))
                .chain(shaped.ingress.as_ref().map(|i| (Direction::Ingress, &i.plan, i.ifb.index)));
            for (direction, plan, htb_ifindex) in trees {
                let htb: HashMap<u32, tc::ClassStats> = tc::class_stats(&self.netlink, htb_ifindex)?
                    .into_iter()
                    .map(|s| (s.classid, s))
                    .collect();
                let meter = self.meters.get(&htb_ifindex);
                for class in &plan.classes {
                    let classid = shaper_common::classid_of(u32::from(class.index));
                    let ours = self.datapath.class_stats(shaped.slot, u32::from(class.index))?;
                    let (bytes, packets) = match direction {
                        Direction::Egress => (ours.tx_bytes, ours.tx_packets),
                        Direction::Ingress => (ours.rx_bytes, ours.rx_packets),
                    };
                    let sent = htb.get(&classid);
                    rows.push(ClassRow {
                        name: class.name.clone(),
                        interface: shaped.name.clone(),
                        direction: direction.as_str().to_string(),
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
                        rate_now_bps: meter.map_or(0, |m| m.rate(classid)),
                        rule: self.config.class_by_index(class.index).and_then(|c| c.rule_source.clone()),
                    });
                }
            }
        }
        Ok(rows)
    }

    pub fn conns(&self) -> Vec<ConnRow> {
        let now = procscan::monotonic_coarse_ns();
        let mut rows: Vec<ConnRow> = self
            .datapath
            .flows()
            .into_iter()
            .map(|(key, value)| {
                let info = self.conns.get(&key);
                let origin = match (value.origin, info.map(|i| i.by)) {
                    (ORIGIN_PINNED, _) => "pinned",
                    (ORIGIN_DAEMON, Some(by)) => by.as_str(),
                    (ORIGIN_DAEMON, None) => DecidedBy::Scan.as_str(),
                    _ => DecidedBy::Kernel.as_str(),
                };
                let rule = (value.class != CLASS_DEFAULT)
                    .then(|| self.config.class_by_index(value.class).and_then(|c| c.rule_source.clone()))
                    .flatten();
                ConnRow {
                    id: flows::id(&key),
                    proto: flows::proto_name(key.proto),
                    local: flows::endpoint(&key, true),
                    remote: flows::endpoint(&key, false),
                    class: self.class_name(value.class),
                    origin: origin.to_string(),
                    pid: info.and_then(|i| i.pid),
                    user: info.and_then(|i| i.user.clone().or_else(|| i.uid.map(|u| u.to_string()))),
                    cmd: info.and_then(|i| i.cmd.clone()),
                    rule,
                    decided_us: info.and_then(|i| i.decided_us),
                    provisional_bytes: info.and_then(|i| i.provisional_bytes),
                    state: self.sockets.get(&key).map_or_else(|| "gone".to_string(), |s| s.state.clone()),
                    tx_bytes: value.tx_bytes,
                    tx_packets: value.tx_packets,
                    rx_bytes: value.rx_bytes,
                    rx_packets: value.rx_packets,
                    idle_ms: now.saturating_sub(value.last_seen_ns) / 1_000_000,
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.proto, &a.local, &a.remote).cmp(&(&b.proto, &b.local, &b.remote)));
        rows
    }

    /// Answers a control request (`stop` is the main loop's).
    pub(super) fn handle(&mut self, command: Command) -> Reply {
        let value = match command {
            Command::Reload => match self.reload() {
                Ok(applied) => serde_json::to_value(applied),
                Err(e) => return Reply::error(e),
            },
            Command::Set(set) => match self.set_class(&set) {
                Ok(applied) => serde_json::to_value(applied),
                Err(e) => return Reply::error(e),
            },
            Command::Move { conn, class } => match self.move_conn(&conn, &class) {
                Ok(v) => Ok(v),
                Err(e) => return Reply::error(e),
            },
            Command::Stop { .. } => return Reply::error("stop is handled by the daemon's main loop"),
            Command::Status => serde_json::to_value(self.status()),
            Command::Classes => match self.classes() {
                Ok(rows) => serde_json::to_value(rows),
                Err(e) => return Reply::error(crate::error_chain(&e)),
            },
            Command::Conns => serde_json::to_value(self.conns()),
        };
        match value {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::error(format!("encoding the reply: {e}")),
        }
    }
}
