//! Every series shaper exports, written from a [`Snapshot`]. Label sets are
//! bounded by the config: classes × interfaces × directions, the kernel
//! maps, the classifier's error counters; never a connection or an instance.

use super::{
    text::{Exposition, Kind, LabelSet},
    Format, Snapshot,
};
use crate::control::protocol::{ClassRow, MapUsage};

/// A series of one class row: family name, kind, help, and its value.
type ClassSeries = (&'static str, Kind, &'static str, fn(&ClassRow) -> u64);
/// A rate of one class row: family name, help, and the rate in bits/s.
type ClassRate = (&'static str, &'static str, fn(&ClassRow) -> u64);

/// The per-class rates, gauges in bytes/s (Prometheus' base unit; the
/// config and `shaper classes` speak bits/s: these are those over 8).
const CLASS_RATES: &[ClassRate] = &[
    (
        "shaper_class_current_rate_bytes_per_second",
        "Bytes/s the classifier put into the class over the last second (offered, before queueing and drops).",
        |c| c.current_bps,
    ),
    (
        "shaper_class_sent_rate_bytes_per_second",
        "Bytes/s HTB sent out of the class over the last seconds.",
        |c| c.rate_now_bps,
    ),
    (
        "shaper_class_rate_bytes_per_second",
        "The class's guaranteed rate in force (schedule windows and quota throttles applied), bytes/s.",
        |c| c.rate_bps,
    ),
    (
        "shaper_class_ceil_bytes_per_second",
        "The class's ceiling in force (schedule windows and quota throttles applied), bytes/s.",
        |c| c.ceil_bps,
    ),
];

/// The per-class series, labelled class, interface and direction.
const CLASS_SERIES: &[ClassSeries] = &[
    (
        "shaper_class_bytes",
        Kind::Counter,
        "Bytes the classifier put into the class (frames as seen on the hook, before queueing or drops).",
        |c| c.bytes,
    ),
    ("shaper_class_packets", Kind::Counter, "Packets the classifier put into the class.", |c| c.packets),
    ("shaper_class_sent_bytes", Kind::Counter, "Bytes HTB sent out of the class.", |c| c.sent_bytes),
    ("shaper_class_sent_packets", Kind::Counter, "Packets HTB sent out of the class.", |c| c.sent_packets),
    ("shaper_class_drops", Kind::Counter, "Packets the class's queue dropped.", |c| c.drops),
    ("shaper_class_overlimits", Kind::Counter, "Times HTB held the class back at its limits.", |c| {
        c.overlimits
    }),
    ("shaper_class_backlog_bytes", Kind::Gauge, "Bytes waiting in the class's queue.", |c| c.backlog_bytes),
];

/// The whole exposition of `snapshot` in `format`, written into `buffer`
/// (its text replaced, its room kept).
pub fn write(snapshot: &Snapshot, format: Format, buffer: String) -> String {
    // About a kilobyte per class row, and a few for the rest.
    let mut text = Exposition::in_buffer(format, buffer, 8 * 1024 + snapshot.classes.len() * 1100);
    text.family("shaper_build", Kind::Info, "The running shaper's version.")
        .int(&LabelSet::new(&[("version", &snapshot.version)]), 1);
    text.family(
        "shaper_start_time_seconds",
        Kind::Gauge,
        "When the daemon started, seconds since the Unix epoch.",
    )
    .int(&LabelSet::default(), snapshot.started_at);
    classes(&mut text, &snapshot.classes);
    flows(&mut text, snapshot);
    decisions(&mut text, snapshot);
    text.finish()
}

fn classes(text: &mut Exposition, rows: &[ClassRow]) {
    let labels: Vec<LabelSet> = rows
        .iter()
        .map(|c| {
            LabelSet::new(&[
                ("class", &c.name),
                ("interface", &c.interface),
                ("direction", c.direction.as_str()),
            ])
        })
        .collect();
    let mut info = text.family(
        "shaper_class",
        Kind::Info,
        "Each class on each interface and direction: its HTB class id and leaf queue.",
    );
    for c in rows {
        let (class, interface, direction) =
            (("class", &*c.name), ("interface", &*c.interface), ("direction", c.direction.as_str()));
        info.int(
            &LabelSet::new(&[class, interface, direction, ("classid", &c.classid), ("queue", &c.queue)]),
            1,
        );
    }
    for (name, kind, help, value) in CLASS_SERIES {
        let mut family = text.family(name, *kind, help);
        for (row, labels) in rows.iter().zip(&labels) {
            family.int(labels, value(row));
        }
    }
    for (name, help, bits) in CLASS_RATES {
        let mut family = text.family(name, Kind::Gauge, help);
        for (row, labels) in rows.iter().zip(&labels) {
            family.eighths(labels, bits(row));
        }
    }
}

fn flows(text: &mut Exposition, s: &Snapshot) {
    let none = LabelSet::default();
    let map = |m: &MapUsage| LabelSet::new(&[("map", &m.name)]);
    text.family("shaper_flows", Kind::Gauge, "Entries in the kernel's flow map at the last reconcile.")
        .int(&none, s.flows as u64);
    let mut entries =
        text.family("shaper_map_entries", Kind::Gauge, "Entries in each kernel map that grows with traffic.");
    for m in &s.maps {
        entries.int(&map(m), m.entries as u64);
    }
    let mut capacity =
        text.family("shaper_map_capacity", Kind::Gauge, "Entries each of those kernel maps can hold.");
    for m in &s.maps {
        capacity.int(&map(m), u64::from(m.capacity));
    }
    let lost = s.errors.iter().find(|(name, _)| name == "event_lost").map_or(0, |(_, v)| *v);
    text.family(
        "shaper_events_lost",
        Kind::Counter,
        "New-flow reports the classifier could not queue to the daemon (ring buffer full); the reconcile catches up.",
    )
    .int(&none, lost);
    let mut errors =
        text.family("shaper_classifier_errors", Kind::Counter, "The classifier's error counters, by name.");
    for (name, value) in &s.errors {
        errors.int(&LabelSet::new(&[("error", name)]), *value);
    }
    let mut instances =
        text.family("shaper_class_instances", Kind::Gauge, "Live instances of each class with `per`.");
    for (class, live) in &s.instances {
        instances.int(&LabelSet::new(&[("class", class)]), *live);
    }
}

fn decisions(text: &mut Exposition, s: &Snapshot) {
    let (d, none) = (&s.decisions, LabelSet::default());
    for (name, help, value) in [
        ("shaper_flow_reports", "New flows the classifier reported to the daemon.", d.events),
        (
            "shaper_provisional_flows",
            "Reported flows whose kernel verdict waited for the daemon (provisional).",
            d.provisional,
        ),
        ("shaper_flows_moved", "Flows the daemon moved to another class on a report.", d.changed),
        (
            "shaper_provisional_bytes",
            "Bytes sent in a provisional class before the daemon moved the flow.",
            d.provisional_bytes,
        ),
    ] {
        text.family(name, Kind::Counter, help).int(&none, value);
    }
    text.family("shaper_scan_duration_seconds", Kind::Histogram, "Wall time of each reconcile pass.")
        .histogram(&none, &s.scan_durations);
    text.family(
        "shaper_decision_latency_seconds",
        Kind::Histogram,
        "First packet to the daemon's final class, for flows the kernel classed provisionally.",
    )
    .histogram(&none, &s.decision_latency);
}
