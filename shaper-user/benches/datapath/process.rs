//! Section 3, rules only the daemon can answer (`args`): how many bytes run in
//! the wrong class before the daemon's answer (shaper vs the pyshaper model:
//! no events, a scan every 30 s), and how soon the final class is known.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{bail, Result};
use shaper_testkit::sandbox::{Daemon, Sandbox};
use shaper_user::control::{ClassRow, Command, Status};

use super::{
    call,
    helper::{self, exe, start_server},
    newconn::SECTION,
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

const CONNECTIONS: usize = 1000;
const BYTES_PER_CONNECTION: usize = 64 * 1024;
const SINK_PORT: u16 = 5300;
const MARKER: &str = "shp-bench-marker";

fn class_bytes(rows: &[ClassRow], name: &str) -> u64 {
    rows.iter().find(|r| r.name == name).map_or(0, |r| r.bytes)
}

/// What one run of the short-connection workload left behind.
struct Outcome {
    /// Bytes the classifier put in the default class (the wrong one: every
    /// connection matches the rule) and in all classes.
    wrong: u64,
    total: u64,
    status: Status,
}

/// 1000 connections of 64 KiB from the bench helper (`mode` "connect": one
/// process; "fanout": a process each), with `rule` putting them in class
/// "marked"; `event_driven` false is the pyshaper model.
fn short_connections(rule: &str, mode: &str, event_driven: bool) -> Result<Outcome> {
    let sandbox = Sandbox::new("bconn")?;
    let scan = if event_driven { "5s" } else { "30s" };
    let config = format!(
        "[daemon]\nscan_interval = \"{scan}\"\nevent_driven = {event_driven}\n\n\
         [[interface]]\nname = \"{}\"\negress = \"100gbit\"\n\n\
         [[class]]\nname = \"marked\"\negress = {{ rate = \"1gbit\", ceil = \"100gbit\" }}\nmatch = '{rule}'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config)?;
    let _sink = start_server(&sandbox.b, &["sink", &SINK_PORT.to_string()], SINK_PORT)?;
    let before: Vec<ClassRow> = call(&daemon, Command::Classes)?;
    let status = sandbox
        .client(&exe()?)?
        .args([helper::FLAG, mode, Sandbox::ADDR_B4, &SINK_PORT.to_string()])
        .args([CONNECTIONS.to_string(), BYTES_PER_CONNECTION.to_string(), MARKER.to_string()])
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("the client helper failed ({status})");
    }
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<ClassRow> = call(&daemon, Command::Classes)?;
    let grew = |name: &str| class_bytes(&after, name).saturating_sub(class_bytes(&before, name));
    Ok(Outcome {
        wrong: grew("default"),
        total: grew("default") + grew("marked"),
        status: call(&daemon, Command::Status)?,
    })
}

/// Bytes in the wrong class while short connections start, under a rule
/// only the daemon can answer, and how soon it answered.
pub fn decisions(report: &mut Report) -> Result<()> {
    let rule = format!("args ~ \"{MARKER}\"");
    let kib = BYTES_PER_CONNECTION / 1024;
    let cases = [
        (format!("bytes in the wrong class, {CONNECTIONS} new {kib} KiB connections from one process, rule on args (daemon-decided)"), "connect"),
        ("the same, each connection from a new process".to_string(), "fanout"),
    ];
    for (what, mode) in cases {
        let ours = short_connections(&rule, mode, true)?;
        let theirs = short_connections(&rule, mode, false)?;
        report.push(Row::new(
            SECTION,
            format!("{what} (shaper {:.1}% of all)", ours.wrong as f64 * 100.0 / ours.total.max(1) as f64),
            Figure::new(ours.wrong as f64, Unit::Bytes),
            "pyshaper model (30 s scan)",
            Figure::new(theirs.wrong as f64, Unit::Bytes),
        ));
        if mode == "fanout" {
            let d = &ours.status.decisions;
            let us = |v: Option<u64>| Figure::new(v.map_or(f64::NAN, |v| v as f64), Unit::Micros);
            report.push(Row::new(
                SECTION,
                format!(
                    "first packet → final class, rule on args, p99 of {} new processes (p50 {})",
                    d.provisional,
                    us(d.p50_us).text()
                ),
                us(d.p99_us),
                "pyshaper model (30 s scan)",
                Figure::new(30e6, Unit::Micros),
            ));
        }
    }
    Ok(())
}
