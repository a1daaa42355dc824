//! What the clients of a running daemon print: its replies as tables and
//! lines for people, or as JSON (`--json`: exactly the protocol's `result`).

use anyhow::Result;
use shaper_user::{
    control::{protocol::WindowStatus, Applied, ClassRow, ConnRow, Status},
    table::Table,
    units::{format_bytes, format_rate},
};

pub(crate) fn print_applied(applied: &Applied, json: bool) -> Result<()> {
    if json {
        return print_json(applied);
    }
    println!("applied in {} ms: {}", applied.took_ms, applied.changes.summary());
    if !applied.restart_needed.is_empty() {
        println!("take effect at the next start: {}", applied.restart_needed.join(", "));
    }
    Ok(())
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn print_status(status: &Status, json: bool) -> Result<()> {
    if json {
        return print_json(status);
    }
    println!(
        "shaper {} (pid {}), up {}s, config {}",
        status.version, status.pid, status.uptime_s, status.config
    );
    for i in &status.interfaces {
        let ingress = match (&i.ifb, i.ingress_bps) {
            (Some(ifb), Some(bps)) => format!("ingress {} through {ifb}", format_rate(bps)),
            _ => "ingress not shaped".to_string(),
        };
        println!(
            "  {} (ifindex {}): egress {}, {ingress}, via {}, default class {}",
            i.name,
            i.ifindex,
            format_rate(i.egress_bps),
            i.attach.as_str(),
            i.default_class
        );
    }
    for name in &status.waiting {
        println!("  {name}: absent; shaped as soon as it appears");
    }
    println!(
        "  classes: {}, rule table: {} nodes (generation {})",
        status.classes, status.rule_nodes, status.rules_gen
    );
    println!("  flows: {} of {}", status.flows, status.max_flows);
    if !status.maps.is_empty() {
        let maps: Vec<String> =
            status.maps.iter().map(|m| format!("{} {}/{}", m.name, m.entries, m.capacity)).collect();
        println!("  maps: {}", maps.join(", "));
    }
    if let Some(scan) = &status.last_scan {
        println!(
            "  last scan: {} sockets, {} adopted, {} corrected, {} stale removed, {} µs (every {} ms)",
            scan.sockets, scan.adopted, scan.corrected, scan.removed, scan.micros, status.scan_interval_ms
        );
        if !scan.from_proc_net.is_empty() {
            println!(
                "  degraded: the kernel cannot list {} sockets over sock_diag; read from /proc/net (no cookies)",
                scan.from_proc_net.join(", ")
            );
        }
    }
    println!("  pinned at {}{}", status.pin_dir, if status.adopted { " (taken over at start)" } else { "" });
    if let Some(r) = &status.last_reload {
        match &r.error {
            None => println!("  last reload: ok"),
            Some(e) => println!("  last reload: refused ({e}); the previous config stays in force"),
        }
    }
    for d in &status.drift {
        println!("  changed by `shaper set` (not in the file): {d}");
    }
    for q in &status.quotas {
        println!(
            "  quota of {}{}: {} of {} ({:.1}%), {}",
            q.class,
            q.instance.as_ref().map_or_else(String::new, |i| format!(" ({i})")),
            format_bytes(q.used_bytes),
            format_bytes(q.limit_bytes),
            q.percent,
            q.state.as_str()
        );
    }
    if let Some(file) = &status.state_file {
        println!("  quota usage saved in {file}");
    }
    for w in &status.windows {
        println!("  schedule: {} in {}", w.class, window(w));
    }
    for (class, c) in &status.connection_limits {
        println!("  connections of {class}: {}", c.summary());
    }
    let q = &status.queues;
    match (&q.probe_error, q.fq_codel) {
        (_, true) => println!("  leaf queues: fq_codel unless a class names another"),
        (None, false) => {
            println!("  leaf queues: bfifo unless a class names another (this kernel has no fq_codel)")
        }
        (Some(e), false) => {
            println!("  leaf queues: bfifo unless a class names another (fq_codel unknown: {e})")
        }
    }
    match &status.hooks_cgroup {
        Some(cgroup) => println!("  socket hooks: cgroup {cgroup}"),
        None => println!(
            "  socket hooks: off (process rules are decided by the /proc scan: {})",
            status.scan_only.as_deref().unwrap_or("no cgroup v2")
        ),
    }
    let d = &status.decisions;
    let us = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} µs"));
    println!(
        "  new flows: {} reported, {} provisional, {} moved by the daemon (p50 {}, p99 {}, max {}; {} in provisional classes)",
        d.events,
        d.provisional,
        d.changed,
        us(d.p50_us),
        us(d.p99_us),
        us(d.max_us),
        format_bytes(d.provisional_bytes)
    );
    let i = &status.instances;
    if *i != Default::default() {
        let by_class: Vec<String> = i.by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!(
            "  instances (per): {} live ({}), {} created, {} removed idle or changed, {} over the cap, {} failed",
            i.live,
            if by_class.is_empty() { "none".to_string() } else { by_class.join(", ") },
            i.created,
            i.removed,
            i.capped,
            i.failed
        );
    }
    let errors: Vec<String> =
        status.errors.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "  classifier errors: {}",
        if errors.is_empty() { "none".to_string() } else { errors.join(", ") }
    );
    Ok(())
}

/// "window 1 (mon-fri 09:00-18:00) since Wed 09:00 until Wed 18:00", local time.
fn window(w: &WindowStatus) -> String {
    let at = |secs: Option<u64>| {
        let t = secs.and_then(|s| jiff::Timestamp::from_second(s as i64).ok())?;
        Some(t.to_zoned(jiff::tz::TimeZone::system()).strftime("%a %H:%M").to_string())
    };
    let mut out = format!("window {} ({})", w.window, w.text);
    if let Some(since) = at(w.since) {
        out.push_str(&format!(" since {since}"));
    }
    if let Some(until) = at(w.until) {
        out.push_str(&format!(" until {until}"));
    }
    out
}

pub(crate) fn print_classes(rows: &[ClassRow], json: bool) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    let quotas = rows.iter().any(|r| r.quota.is_some());
    let windows = rows.iter().any(|r| r.window.is_some());
    let mut columns = vec![
        ("CLASS", false),
        ("INTERFACE", false),
        ("DIR", false),
        ("CLASSID", false),
        ("PRIO", true),
        ("RATE", true),
        ("CEIL", true),
        ("CURRENT", true),
        ("NOW", true),
        ("BYTES", true),
        ("PACKETS", true),
        ("DROPS", true),
        ("QUEUE", false),
    ];
    if quotas {
        columns.push(("QUOTA", false));
    }
    if windows {
        columns.push(("WINDOW", false));
    }
    let mut table = Table::new(&columns);
    for r in rows {
        let mut cells = vec![
            r.name.clone(),
            r.interface.clone(),
            r.direction.as_str().to_string(),
            r.classid.clone(),
            r.priority.to_string(),
            format_rate(r.rate_bps),
            format_rate(r.ceil_bps),
            format_rate(r.current_bps),
            format_rate(r.rate_now_bps),
            format_bytes(r.bytes),
            r.packets.to_string(),
            r.drops.to_string(),
            r.queue.clone(),
        ];
        if quotas {
            cells.push(r.quota.map_or("-", |q| q.as_str()).to_string());
        }
        if windows {
            cells.push(r.window.as_ref().map_or_else(|| "-".to_string(), window));
        }
        table.row(cells);
        for i in &r.instances {
            table.row(vec![
                format!("  {} {}", r.per.as_deref().unwrap_or("per"), i.key),
                r.interface.clone(),
                r.direction.as_str().to_string(),
                i.classid.clone(),
                "-".to_string(),
                format_rate(i.rate_bps),
                format_rate(i.ceil_bps),
                "-".to_string(),
                format_rate(i.rate_now_bps),
                format_bytes(i.bytes),
                "-".to_string(),
                "-".to_string(),
            ]);
        }
    }
    print!("{}", table.render());
    // One line per class with a connection limit (its rows share it).
    let mut limited: Vec<(&str, String)> =
        rows.iter().filter_map(|r| Some((r.name.as_str(), r.connections.as_ref()?.summary()))).collect();
    limited.dedup_by(|a, b| a.0 == b.0);
    for (class, summary) in limited {
        println!("connections of {class}: {summary}");
    }
    Ok(())
}

pub(crate) fn print_conns(rows: &[ConnRow], json: bool) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    // Received bytes are counted where ingress is shaped; without any, the column says nothing.
    let received = rows.iter().any(|r| r.rx_bytes > 0);
    let mut columns = vec![
        ("ID", false),
        ("PROTO", false),
        ("LOCAL", false),
        ("REMOTE", false),
        ("STATE", false),
        ("PID", true),
        ("USER", false),
        ("CMD", false),
        ("CLASS", false),
        ("BY", false),
        ("RATE", true),
        ("SENT", true),
    ];
    if received {
        columns.push(("RECEIVED", true));
    }
    columns.extend([("IDLE", true), ("RULE", false)]);
    let mut table = Table::new(&columns);
    for r in rows {
        let mut cells = vec![
            r.id.clone(),
            r.proto.clone(),
            r.local.clone(),
            r.remote.clone(),
            r.state.to_string(),
            r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            r.user.clone().unwrap_or_else(|| "-".to_string()),
            r.cmd.clone().unwrap_or_else(|| "-".to_string()),
            r.class.clone(),
            r.origin.as_str().to_string(),
            format_rate(r.tx_bps.saturating_add(r.rx_bps)),
            format_bytes(r.tx_bytes),
        ];
        if received {
            cells.push(format_bytes(r.rx_bytes));
        }
        cells.extend([
            format!("{:.1}s", r.idle_ms as f64 / 1000.0),
            r.rule.clone().unwrap_or_else(|| "-".to_string()),
        ]);
        table.row(cells);
    }
    print!("{}", table.render());
    Ok(())
}
