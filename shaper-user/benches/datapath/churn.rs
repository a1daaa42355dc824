//! Section 5: connection scale and churn. 8 processes hold 100 000 idle TCP
//! connections (100 000 flows in the map); then another opens and closes
//! 5 000 short connections a second for 30 s (each sends a small request
//! and the server closes, as a web server does). Rules put each process's
//! connections in a class of their own by program name.
//!
//! Measured from outside the daemon: its CPU time over the churn
//! (/proc/PID/stat) and its peak RSS (VmHWM), next to the same daemon with
//! the same flows and no churn (its scans alone); the flow map after the churn,
//! once the scan has dropped the closed connections (no leak: back to the
//! held ones); and packets of the churn that the classifier did not put in
//! the churning program's class (a later rule on the churn's ports catches
//! them: a misclassified connection shows there), next to the same churn
//! under the pyshaper model (no socket hooks, no events, a scan every 30 s)
//! on the same held connections. The daemon's reconcile with the 100 000
//! sockets is timed next to `ss -tunap` listing them.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use shaper_testkit::sandbox::{Daemon, Sandbox};
use shaper_user::control::{ClassRow, Command, Status};

use super::{
    call,
    helper::{self, exe, start_server},
    median,
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

const S: &str = "5. connection scale and churn";
const HELD: usize = 100_000;
/// Held connections come from 8 processes, each to a port of its own (a
/// process may have fewer than 20 000 files open here; a client address has
/// fewer than 30 000 ephemeral ports per server port).
const HOLDERS: u16 = 8;
const HOLD_PORT: u16 = 5500;
const CHURN_PORTS: &str = "5600,5601,5602,5603";
const CHURN_RATE: u64 = 5000;
const CHURN_SECONDS: u64 = 30;
const REQUEST_BYTES: usize = 512;
const HOLDER: &str = "shp-hold";
const CHURNER: &str = "shp-churn";
const MAX_FLOWS: u32 = 262_144;
/// How long the daemon's CPU is measured without churn, for comparison.
const IDLE: Duration = Duration::from_secs(15);

fn config(dev: &str, pyshaper_model: bool) -> String {
    let (scan, events) = if pyshaper_model { ("30s", false) } else { ("5s", true) };
    format!(
        "[daemon]\nscan_interval = \"{scan}\"\nevent_driven = {events}\nmax_flows = {MAX_FLOWS}\n\n\
         [[interface]]\nname = \"{dev}\"\negress = \"10gbit\"\n\n\
         [[class]]\nname = \"held\"\nmatch = 'cmd == \"{HOLDER}\"'\n\n\
         [[class]]\nname = \"churn\"\nmatch = 'cmd == \"{CHURNER}\"'\n\n\
         [[class]]\nname = \"missed\"\nmatch = 'rport in [{CHURN_PORTS}]'\n"
    )
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the daemon's stat")?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok((ticks(11) + ticks(12)) / hz)
}

/// A field of /proc/PID/status in kB, as bytes.
fn status_kb(pid: u32, field: &str) -> Result<f64> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the daemon's status")?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?.trim_start_matches(':').split_whitespace().next()?.parse::<f64>().ok()
        })
        .map(|kb| kb * 1024.0)
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

fn packets(rows: &[ClassRow], name: &str) -> u64 {
    rows.iter()
        .filter(|r| r.name == name && r.direction == shaper_common::Direction::Egress)
        .map(|r| r.packets)
        .sum()
}

/// Waits until the daemon's flow map satisfies `done`; returns the count.
fn wait_flows(daemon: &Daemon, timeout: Duration, done: impl Fn(usize) -> bool) -> Result<(usize, f64)> {
    let start = Instant::now();
    loop {
        let status: Status = call(daemon, Command::Status)?;
        if done(status.flows) || start.elapsed() > timeout {
            return Ok((status.flows, start.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What one churn run found.
struct Outcome {
    cpu_percent: f64,
    idle_cpu_percent: f64,
    idle_rss: f64,
    peak_rss: f64,
    flows_before: usize,
    flows_after: usize,
    cleanup_s: f64,
    wrong_packets: u64,
    churn_packets: u64,
    held_packets: u64,
    other_packets: u64,
    opened: u64,
    failed: u64,
    late: u64,
    scan_ms: Option<f64>,
    /// The last reconcile before the churn, with the held connections only.
    idle_scan_ms: Option<f64>,
}

fn churn_once(sandbox: &Sandbox, daemon: &Daemon, pyshaper_model: bool) -> Result<Outcome> {
    let pid = daemon.pid().ok_or_else(|| anyhow!("the daemon is not running"))?;
    let (flows_before, _) = wait_flows(daemon, Duration::from_secs(90), |n| n >= HELD)?;
    if flows_before < HELD {
        bail!("the flow map holds {flows_before} flows, expected the {HELD} held connections");
    }
    // The same daemon with the same flows, left alone (its scans only).
    let (idle_cpu_percent, idle_rss) = if pyshaper_model {
        (f64::NAN, f64::NAN)
    } else {
        let (cpu0, wall) = (cpu_seconds(pid)?, Instant::now());
        std::thread::sleep(IDLE);
        ((cpu_seconds(pid)? - cpu0) / wall.elapsed().as_secs_f64() * 100.0, status_kb(pid, "VmRSS")?)
    };
    let idle_status: Status = call(daemon, Command::Status)?;
    let idle_scan_ms = idle_status.last_scan.as_ref().map(|s| s.micros as f64 / 1e3);
    let before: Vec<ClassRow> = call(daemon, Command::Classes)?;
    let cpu0 = cpu_seconds(pid)?;
    let wall = Instant::now();
    let out = sandbox
        .client(&exe()?)?
        .args([helper::FLAG, "churn", CHURNER, Sandbox::ADDR_B4, CHURN_PORTS])
        .args([CHURN_RATE.to_string(), CHURN_SECONDS.to_string(), REQUEST_BYTES.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the churn client")?;
    let (cpu1, took) = (cpu_seconds(pid)?, wall.elapsed().as_secs_f64());
    if !out.status.success() {
        bail!("the churn client failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [opened, failed, late] = counts[..] else { bail!("the churn client printed {text:?}") };
    let after: Vec<ClassRow> = call(daemon, Command::Classes)?;
    let grew = |name: &str| packets(&after, name).saturating_sub(packets(&before, name));
    let peak_rss = status_kb(pid, "VmHWM")?;
    let status: Status = call(daemon, Command::Status)?;
    let scan_ms = status.last_scan.as_ref().map(|s| s.micros as f64 / 1e3);
    // The scan drops closed connections one scan interval after their last
    // packet: the map should come back to the held connections.
    let (flows_after, cleanup_s) = if pyshaper_model {
        (status.flows, 0.0)
    } else {
        wait_flows(daemon, Duration::from_secs(30), |n| n <= HELD + HELD / 100)?
    };
    Ok(Outcome {
        cpu_percent: (cpu1 - cpu0) / took * 100.0,
        idle_cpu_percent,
        idle_rss,
        peak_rss,
        flows_before,
        flows_after,
        cleanup_s,
        // A churn packet whose program was not recognised falls through to
        // "missed" (the default class also gets what is not the churn's: ARP,
        // IPv6 neighbour discovery).
        wrong_packets: grew("missed"),
        churn_packets: grew("churn") + grew("missed"),
        held_packets: grew("held"),
        other_packets: grew("default"),
        opened,
        failed,
        late,
        scan_ms,
        idle_scan_ms,
    })
}

pub fn run(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("bchurn")?;
    let mut servers = Vec::new();
    for k in 0..HOLDERS {
        servers.push(start_server(&sandbox.b, &["keep", &(HOLD_PORT + k).to_string()], HOLD_PORT + k)?);
    }
    servers.push(start_server(&sandbox.b, &["reply", CHURN_PORTS, &REQUEST_BYTES.to_string()], 5603)?);
    // shaper first, with the held connections opened under its hooks.
    let daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config(&sandbox.dev_a, false))?;
    let holders = helper::hold_connections(&sandbox, HOLDER, HOLD_PORT, HOLDERS, HELD)?;
    let ours = churn_once(&sandbox, &daemon, false).context("shaper")?;
    // `ss` over the same sockets, next to the daemon's scan.
    let mut ss_ms = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let out = sandbox.a.command("ss").arg("-tunap").stdout(Stdio::piped()).output()?;
        ss_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let listed = String::from_utf8_lossy(&out.stdout).lines().count();
        if listed < HELD {
            bail!("ss listed {listed} sockets, expected at least {HELD}");
        }
    }
    drop(daemon);
    let model = Daemon::start(&sandbox, Path::new(SHAPER), &config(&sandbox.dev_a, true))?;
    let theirs = churn_once(&sandbox, &model, true).context("the pyshaper model")?;
    drop(model);
    drop(holders);
    drop(servers);

    for (who, o) in [("shaper", &ours), ("pyshaper model", &theirs)] {
        eprintln!(
            "  {who}: {} opened, {} failed, {} late; {} churn packets, {} in a wrong class",
            o.opened, o.failed, o.late, o.churn_packets, o.wrong_packets
        );
    }
    if ours.failed > ours.opened / 100 {
        bail!("{} of {} churn connections failed", ours.failed, ours.opened + ours.failed);
    }
    let peer = "pyshaper model (30 s scan)";
    let per_s = ours.opened as f64 / CHURN_SECONDS as f64;
    let idle = format!("no churn ({} s)", IDLE.as_secs());
    report.push(Row::new(
        S,
        format!(
            "daemon CPU, {HELD} flows held, {per_s:.0} connections/s opened and closed for {CHURN_SECONDS} s (scans every 5 s included)"
        ),
        Figure::new(ours.cpu_percent, Unit::CpuPercent),
        &idle,
        Figure::new(ours.idle_cpu_percent, Unit::CpuPercent),
    ));
    report.push(Row::new(
        S,
        "daemon RSS, peak over the churn (VmHWM)",
        Figure::new(ours.peak_rss, Unit::Bytes),
        &idle,
        Figure::new(ours.idle_rss, Unit::Bytes),
    ));
    report.push(Row::new(
        S,
        format!("flows in the map after the churn ({:.0} s later, once the scan ran)", ours.cleanup_s),
        Figure::new(ours.flows_after as f64, Unit::Count),
        "before the churn",
        Figure::new(ours.flows_before as f64, Unit::Count),
    ));
    report.push(Row::new(
        S,
        format!(
            "packets of the {} churn connections put in a wrong class (rule on cmd; shaper: {} of {})",
            ours.opened, ours.wrong_packets, ours.churn_packets
        ),
        Figure::new(ours.wrong_packets as f64, Unit::Count),
        peer,
        Figure::new(theirs.wrong_packets as f64, Unit::Count),
    ));
    if let Some(scan) = ours.idle_scan_ms {
        report.push(Row::new(
            S,
            format!("one reconcile with {HELD} connections (sock_diag, owner records, flow map)"),
            Figure::new(scan, Unit::Millis),
            "ss -tunap listing them",
            Figure::new(median(ss_ms.clone()), Unit::Millis),
        ));
    }
    if let (Some(after), Some(idle)) = (ours.scan_ms, ours.idle_scan_ms) {
        report.push(Row::new(
            S,
            "the reconcile right after the churn (its closed flows dropped)".to_string(),
            Figure::new(after, Unit::Millis),
            "the reconcile before it",
            Figure::new(idle, Unit::Millis),
        ));
    }
    report.detail(
        "churn",
        json!([("shaper", &ours), ("pyshaper model", &theirs)]
            .iter()
            .map(|(who, o)| json!({
                "who": who, "cpu_percent": o.cpu_percent, "peak_rss_bytes": o.peak_rss,
                "idle_cpu_percent": o.idle_cpu_percent, "idle_rss_bytes": o.idle_rss,
                "flows_before": o.flows_before, "flows_after": o.flows_after, "cleanup_s": o.cleanup_s,
                "wrong_packets": o.wrong_packets, "churn_packets": o.churn_packets, "held_packets": o.held_packets, "default_packets": o.other_packets,
                "opened": o.opened, "failed": o.failed, "late": o.late, "scan_ms": o.scan_ms, "idle_scan_ms": o.idle_scan_ms,
            }))
            .collect::<Vec<_>>()),
    );
    Ok(())
}
