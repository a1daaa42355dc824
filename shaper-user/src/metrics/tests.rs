use super::*;
use crate::control::protocol::Direction;

fn row(name: &str, direction: Direction, bytes: u64) -> ClassRow {
    ClassRow {
        name: name.to_string(),
        interface: "eth1".to_string(),
        direction,
        classid: "1:10".to_string(),
        rate_bps: 5_000_000,
        ceil_bps: 10_000_000,
        priority: 4,
        bytes,
        packets: 3,
        sent_bytes: bytes - 100,
        sent_packets: 2,
        drops: 1,
        overlimits: 9,
        backlog_bytes: 1514,
        rate_now_bps: 4_800_000,
        current_bps: 4_000_000,
        rule: None,
        queue: "fq_codel".to_string(),
        window: None,
        quota: None,
        per: None,
        instances: Vec::new(),
        connections: None,
    }
}

fn snapshot() -> Snapshot {
    let mut scans = Histogram::new(histogram::SCAN_BOUNDS_US);
    scans.observe_us(3_000);
    let mut latency = Histogram::new(histogram::DECISION_BOUNDS_US);
    latency.observe_us(120);
    latency.observe_us(80);
    Snapshot {
        version: "0.1.0".into(),
        started_at: 1_700_000_000,
        classes: vec![row("web", Direction::Egress, 1000), row("we\"b\\2", Direction::Ingress, 2000)],
        flows: 12,
        maps: vec![MapUsage { name: "FLOWS".into(), entries: 12, capacity: 65536 }],
        errors: vec![("flow_insert".into(), 0), ("event_lost".into(), 4)],
        instances: BTreeMap::from([("bulk".to_string(), 2)]),
        decisions: Decisions {
            events: 5,
            provisional: 2,
            changed: 1,
            provisional_bytes: 700,
            ..Default::default()
        },
        scan_durations: scans,
        decision_latency: latency,
    }
}

/// The sample lines of `text` whose name starts with `name`.
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| !l.starts_with('#') && l.starts_with(name)).collect()
}

#[test]
fn each_class_row_has_its_series_with_escaped_labels() {
    let text = snapshot().render(Format::Text);
    assert_eq!(
        samples(&text, "shaper_class_bytes_total"),
        [
            r#"shaper_class_bytes_total{class="web",interface="eth1",direction="egress"} 1000"#,
            r#"shaper_class_bytes_total{class="we\"b\\2",interface="eth1",direction="ingress"} 2000"#,
        ]
    );
    for (series, value) in [
        ("shaper_class_packets_total", "3"),
        ("shaper_class_sent_bytes_total", "900"),
        ("shaper_class_sent_packets_total", "2"),
        ("shaper_class_drops_total", "1"),
        ("shaper_class_overlimits_total", "9"),
        ("shaper_class_backlog_bytes", "1514"),
        ("shaper_class_current_rate_bytes_per_second", "500000"),
        ("shaper_class_sent_rate_bytes_per_second", "600000"),
        ("shaper_class_rate_bytes_per_second", "625000"),
        ("shaper_class_ceil_bytes_per_second", "1250000"),
    ] {
        let line = format!(r#"{series}{{class="web",interface="eth1",direction="egress"}} {value}"#);
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
    assert!(text.contains(
        "shaper_class_info{class=\"web\",interface=\"eth1\",direction=\"egress\",classid=\"1:10\",queue=\"fq_codel\"} 1\n"
    ));
}

#[test]
fn the_daemon_wide_series() {
    let text = snapshot().render(Format::Text);
    for line in [
        "shaper_build_info{version=\"0.1.0\"} 1",
        "shaper_start_time_seconds 1700000000",
        "shaper_flows 12",
        "shaper_map_entries{map=\"FLOWS\"} 12",
        "shaper_map_capacity{map=\"FLOWS\"} 65536",
        "shaper_events_lost_total 4",
        "shaper_classifier_errors_total{error=\"event_lost\"} 4",
        "shaper_classifier_errors_total{error=\"flow_insert\"} 0",
        "shaper_class_instances{class=\"bulk\"} 2",
        "shaper_flow_reports_total 5",
        "shaper_provisional_flows_total 2",
        "shaper_flows_moved_total 1",
        "shaper_provisional_bytes_total 700",
        "shaper_scan_duration_seconds_bucket{le=\"0.0025\"} 0",
        "shaper_scan_duration_seconds_bucket{le=\"0.005\"} 1",
        "shaper_scan_duration_seconds_count 1",
        "shaper_decision_latency_seconds_bucket{le=\"0.0001\"} 1",
        "shaper_decision_latency_seconds_bucket{le=\"0.00025\"} 2",
        "shaper_decision_latency_seconds_bucket{le=\"+Inf\"} 2",
        "shaper_decision_latency_seconds_sum 0.0002",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
}

/// Every family once, its HELP and TYPE before its samples, its samples together.
fn check_families(text: &str, format: Format) {
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or("").to_string();
            assert!(seen.insert(name.clone()), "family {name} twice");
            current = name;
        } else if !line.starts_with('#') {
            let sample = line.split(['{', ' ']).next().unwrap_or("");
            let base = match format {
                Format::Text => sample.trim_end_matches("_bucket").trim_end_matches("_count"),
                Format::OpenMetrics => sample.trim_end_matches("_total").trim_end_matches("_info"),
            };
            let base = base.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
            assert!(sample == current || base == current, "{sample} outside its family (in {current})");
        }
    }
}

#[test]
fn families_are_whole_in_both_formats() {
    let text = snapshot().render(Format::Text);
    check_families(&text, Format::Text);
    assert!(!text.contains("# EOF"));
    let om = snapshot().render(Format::OpenMetrics);
    check_families(&om, Format::OpenMetrics);
    assert!(om.ends_with("\n# EOF\n"), "{om}");
    assert!(om.contains("# TYPE shaper_class_bytes counter\n"));
    assert!(om.contains("# TYPE shaper_class info\n"));
    // The same samples, whatever the format.
    let values = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(values(&text), values(&om));
}
