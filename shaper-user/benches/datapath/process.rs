//! Process matching: how soon the final class is known, how many bytes run in
//! the wrong class before it is (shaper vs the pyshaper model: no events, a
//! scan every 30 s), and what the /proc scan costs.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use shaper_user::{
    control::{ClassRow, Command, Status},
    sandbox::{Daemon, Sandbox},
    units::format_bytes,
};

use super::{helper, median, Row, SHAPER};

const CONNECTIONS: usize = 1000;
const BYTES_PER_CONNECTION: usize = 64 * 1024;
const SINK_PORT: u16 = 5300;
const HELD_SOCKETS: usize = 10_000;
const MARKER: &str = "shp-bench-marker";

/// A helper process, killed on drop.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exe() -> Result<String> {
    Ok(std::env::current_exe()?.to_string_lossy().into_owned())
}

fn start_sink(sandbox: &Sandbox, mode: &str) -> Result<Helper> {
    let child = sandbox
        .b
        .command(&exe()?)
        .args([helper::FLAG, mode, &SINK_PORT.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("starting the sink")?;
    let helper = Helper(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandbox.b.run("ss", &["-Hltn", &format!("sport = :{SINK_PORT}")])?.stdout.is_empty() {
        if Instant::now() > deadline {
            bail!("the sink did not start listening");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(helper)
}

fn call<T: serde::de::DeserializeOwned>(daemon: &Daemon, command: Command) -> Result<T> {
    Ok(serde_json::from_value(daemon.call(command)?)?)
}

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
    let _sink = start_sink(&sandbox, "sink")?;
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

fn percent(part: u64, whole: u64) -> String {
    format!("{} ({:.1}%)", format_bytes(part), part as f64 * 100.0 / whole.max(1) as f64)
}

/// Section: decisions from the first packet vs the pyshaper model.
pub fn decisions(rows: &mut Vec<Row>) -> Result<()> {
    let daemon_rule = format!("args ~ \"{MARKER}\"");
    let cases = [
        ("kernel-decided rule (cmd), one process", "cmd ~ \"datapath*\"".to_string(), "connect"),
        ("daemon-decided rule (args), one process", daemon_rule.clone(), "connect"),
        ("daemon-decided rule (args), a new process each", daemon_rule, "fanout"),
    ];
    for (what, rule, mode) in cases {
        let ours = short_connections(&rule, mode, true)?;
        let theirs = short_connections(&rule, mode, false)?;
        rows.push(Row {
            what: format!(
                "bytes in the wrong class, {CONNECTIONS} new connections × {} KiB, {what}; baseline: pyshaper model (30 s scan)",
                BYTES_PER_CONNECTION / 1024
            ),
            shaper: percent(ours.wrong, ours.total),
            baseline: percent(theirs.wrong, theirs.total),
            ratio: format!("{:.4}", ours.wrong as f64 / theirs.wrong.max(1) as f64),
        });
        if mode == "fanout" {
            let d = &ours.status.decisions;
            let us = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} µs"));
            rows.push(Row {
                what: format!(
                    "first packet → final class, daemon-decided rule, p50 / p99 of {} new processes' connections; baseline: the pyshaper model's scan interval",
                    d.provisional
                ),
                shaper: format!("{} / {}", us(d.p50_us), us(d.p99_us)),
                baseline: "30 s".to_string(),
                ratio: d.p99_us.map_or("-".to_string(), |p| format!("{:.6}", p as f64 / 30e6)),
            });
        }
    }
    Ok(())
}

/// Section: the /proc scan with 10 000 open sockets vs `ss -tunap` listing them.
pub fn scan(rows: &mut Vec<Row>) -> Result<()> {
    let sandbox = Sandbox::new("bscan")?;
    let config = format!(
        "[daemon]\nscan_interval = \"1s\"\n\n[[interface]]\nname = \"{}\"\negress = \"100gbit\"\n\n\
         [[class]]\nname = \"mine\"\nmatch = 'user == \"root\" and args ~ \"{MARKER}\"'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config)?;
    let _sink = start_sink(&sandbox, "keep")?;
    let mut holder = Helper(
        sandbox
            .client(&exe()?)?
            .args([helper::FLAG, "hold", Sandbox::ADDR_B4, &SINK_PORT.to_string(), &HELD_SOCKETS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let stdout = holder.0.stdout.take().ok_or_else(|| anyhow!("no stdout from the holder"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the holder did not open its sockets: {line:?}");
    }
    // Scans of the daemon (every second), and ss in the same namespace, interleaved.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut last_seen = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ours.len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1100));
        let status: Value = daemon.call(Command::Status)?;
        let scan = &status["last_scan"];
        let (sockets, micros) = (scan["sockets"].as_u64().unwrap_or(0), scan["micros"].as_u64().unwrap_or(0));
        if sockets >= HELD_SOCKETS as u64 && Some(micros) != last_seen {
            last_seen = Some(micros);
            ours.push(micros as f64 / 1e3);
            let start = Instant::now();
            let out = sandbox.a.command("ss").arg("-tunap").stdout(Stdio::piped()).output()?;
            theirs.push(start.elapsed().as_secs_f64() * 1e3);
            let listed = String::from_utf8_lossy(&out.stdout).lines().count();
            if listed < HELD_SOCKETS {
                bail!("ss listed {listed} sockets, expected at least {HELD_SOCKETS}");
            }
        }
    }
    if ours.is_empty() {
        bail!("the daemon never scanned {HELD_SOCKETS} sockets");
    }
    let (o, t) = (median(ours), median(theirs));
    rows.push(Row {
        what: format!(
            "/proc scan with {HELD_SOCKETS} open sockets, processes and rules included; baseline: ss -tunap"
        ),
        shaper: format!("{o:.1} ms"),
        baseline: format!("{t:.1} ms"),
        ratio: format!("{:.2}", o / t),
    });
    Ok(())
}
