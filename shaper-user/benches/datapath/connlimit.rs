//! Section 9: connection limits. 20 clients, 20 ms apart, each served 1 s
//! by a server in the shaped namespace (inbound, IPv4), against
//! `max_connections = 4`; next to what a user does without shaper, in the
//! same sandbox and run: the same clients, no limit, a server that serves 4
//! at a time (a pool of 4 threads at accept(); the others wait, connected, in
//! the listen backlog). Measured at the server: the most served at once
//! (every 10 ms), each slot freed → the next admission (accept), each client's
//! wait from its connect() to its service. Then reject mode, next to a server
//! that resets the connections arriving while 4 are served: how long a
//! refused client waits for its answer.

use std::{io::Read as _, path::Path, process::Stdio};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use shaper_testkit::sandbox::{Daemon, Sandbox};

use super::{
    helper::{self, exe, wait_listening, Helper},
    median,
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

const S: &str = "9. connection limits";
const PORT: u16 = 8080;
const CLIENTS: usize = 20;
const LIMIT: usize = 4;
const SERVICE_MS: u64 = 1000;
const STAGGER_MS: u64 = 20;

/// What the server saw in a run: admissions (ns, client), ends of service,
/// connections reset, and the most served at once.
#[derive(Default)]
struct Seen {
    accepts: Vec<(u64, u8)>,
    closes: Vec<u64>,
    resets: usize,
    most: usize,
}

/// How a client fared: its start, and when it was served or failed.
struct Fared {
    id: u8,
    start: u64,
    end: u64,
    served: bool,
    kind: String,
}

/// A server setup: threads at accept() (0: one per connection), and the
/// number served beyond which it resets (0: none).
struct Server {
    pool: usize,
    cap: usize,
}

fn parse_server(text: &str) -> Result<Seen> {
    let mut seen = Seen::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["accept", at, id] => seen.accepts.push((at.parse()?, id.parse()?)),
            ["close", at] => seen.closes.push(at.parse()?),
            ["reset", _] => seen.resets += 1,
            ["most", n] => seen.most = n.parse()?,
            _ => bail!("the server printed {line:?}"),
        }
    }
    seen.accepts.sort_unstable();
    Ok(seen)
}

fn parse_clients(text: &str) -> Result<Vec<Fared>> {
    let parse = |line: &str| -> Result<Fared> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (id, start, end, how) = match f.as_slice() {
            [id, start, how, end, ..] => (id.parse()?, start.parse()?, end.parse()?, *how),
            _ => bail!("a client printed {line:?}"),
        };
        let kind = f.get(4).map_or(String::new(), |k| (*k).to_string());
        Ok(Fared { id, start, end, served: how == "served", kind })
    };
    text.lines().map(parse).collect()
}

/// One run of the clients against a server `server` in the sandbox's
/// namespace `a` (in its cgroup, where the daemon's sock_ops sees it).
fn one_run(sandbox: &Sandbox, server: &Server) -> Result<(Seen, Vec<Fared>)> {
    let addr = format!("{}:{PORT}", Sandbox::ADDR_A4);
    let mut cmd = sandbox.client(&exe()?)?;
    cmd.args([helper::FLAG, "waitserve", &addr, &SERVICE_MS.to_string()])
        .args([server.pool.to_string(), server.cap.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut serving = Helper::spawn(&mut cmd)?;
    wait_listening(&sandbox.a, PORT)?;
    let out = sandbox
        .b
        .command(&exe()?)
        .args([helper::FLAG, "waitclients", &addr, &CLIENTS.to_string(), &STAGGER_MS.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the clients")?;
    if !out.status.success() {
        bail!("the clients failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    drop(serving.0.stdin.take());
    let mut text = String::new();
    serving.0.stdout.take().context("the server's output")?.read_to_string(&mut text)?;
    Ok((parse_server(&text)?, parse_clients(&String::from_utf8_lossy(&out.stdout))?))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
}

/// Each admission after the first `LIMIT`: ms since the last end of service
/// before it (sorted).
fn freed_to_admitted(seen: &Seen) -> Vec<f64> {
    let mut gaps: Vec<f64> = seen
        .accepts
        .iter()
        .skip(LIMIT)
        .filter_map(|(at, _)| seen.closes.iter().filter(|c| *c <= at).max().map(|c| (at - c) as f64 / 1e6))
        .collect();
    gaps.sort_by(f64::total_cmp);
    gaps
}

/// Each served client's wait from its connect() to its admission, ms.
fn waits(seen: &Seen, clients: &[Fared]) -> Vec<f64> {
    clients
        .iter()
        .filter_map(|c| {
            let at = seen.accepts.iter().find(|(_, id)| *id == c.id)?.0;
            Some(at.saturating_sub(c.start) as f64 / 1e6)
        })
        .collect()
}

/// Refused clients' waits for their answer, ms (sorted).
fn refusals(clients: &[Fared]) -> Vec<f64> {
    let mut ms: Vec<f64> =
        clients.iter().filter(|c| !c.served).map(|c| c.end.saturating_sub(c.start) as f64 / 1e6).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

fn config(sandbox: &Sandbox, on_limit: &str) -> String {
    format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\ningress = \"1gbit\"\n\n[[class]]\nname = \"api\"\n\
         match = 'lport == {PORT}'\nmax_connections = {LIMIT}\non_limit = \"{on_limit}\"\n",
        sandbox.dev_a
    )
}

/// A run under a daemon with `on_limit`, a server with a thread per connection.
fn shaped_run(sandbox: &Sandbox, on_limit: &str) -> Result<(Seen, Vec<Fared>)> {
    let daemon = Daemon::start(sandbox, Path::new(SHAPER), &config(sandbox, on_limit))?;
    let run = one_run(sandbox, &Server { pool: 0, cap: 0 });
    drop(daemon);
    run
}

pub fn run(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("bconn")?;
    let (pool, pool_clients) = one_run(&sandbox, &Server { pool: LIMIT, cap: 0 })?;
    let (resetting, reset_clients) = one_run(&sandbox, &Server { pool: 0, cap: LIMIT })?;
    let (queued, queued_clients) = shaped_run(&sandbox, "queue")?;
    let (rejecting, rejected_clients) = shaped_run(&sandbox, "reject")?;
    let served = |c: &[Fared]| c.iter().filter(|c| c.served).count() as f64;
    let (ours_gaps, pool_gaps) = (freed_to_admitted(&queued), freed_to_admitted(&pool));
    let (ours_waits, pool_waits) = (waits(&queued, &queued_clients), waits(&pool, &pool_clients));
    let (ours_refused, peer_refused) = (refusals(&rejected_clients), refusals(&reset_clients));
    let peer = "no limit, a server serving 4 at a time (4 threads at accept())";
    let what = format!(
        "{CLIENTS} clients {STAGGER_MS} ms apart, {SERVICE_MS} ms of service each, max_connections = {LIMIT} (inbound, IPv4)"
    );
    let count = |v: f64| Figure::new(v, Unit::Count);
    let ms = |v: f64| Figure::new(v, Unit::Millis);
    report.push(Row::new(
        S,
        format!("most in service at once at the server (every 10 ms): {what}"),
        count(queued.most as f64),
        peer,
        count(pool.most as f64),
    ));
    report.push(Row::new(
        S,
        format!(
            "clients served of {CLIENTS} ({} refused or failed)",
            queued_clients.len() - served(&queued_clients) as usize
        ),
        count(served(&queued_clients)),
        peer,
        count(served(&pool_clients)),
    ));
    for p in [50.0, 99.0] {
        report.push(Row::new(
            S,
            format!("a slot freed → the next admission (accept), p{p:.0} of {}", ours_gaps.len()),
            ms(percentile(&ours_gaps, p)),
            peer,
            ms(percentile(&pool_gaps, p)),
        ));
    }
    let longest = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    report.push(Row::new(
        S,
        "longest wait of a client, connect() → service",
        ms(longest(&ours_waits)),
        peer,
        ms(longest(&pool_waits)),
    ));
    let kinds: Vec<&str> = rejected_clients.iter().filter(|c| !c.served).map(|c| c.kind.as_str()).collect();
    let how = match kinds.first() {
        Some(first) if kinds.iter().all(|k| k == first) => format!("all {first} at connect()"),
        _ => format!("{kinds:?}"),
    };
    report.push(Row::new(
        S,
        format!("on_limit = \"reject\": clients refused of the {} over the limit ({how})", CLIENTS - LIMIT),
        count(ours_refused.len() as f64),
        "a server resetting the connections over 4 (connect() succeeds, then a RST)",
        count(resetting.resets as f64),
    ));
    report.push(Row::new(
        S,
        format!(
            "on_limit = \"reject\": a refused client's wait for its answer, slowest (median {:.1} ms)",
            median(ours_refused.clone())
        ),
        ms(longest(&ours_refused)),
        &format!("the resetting server (median {:.1} ms)", median(peer_refused.clone())),
        ms(longest(&peer_refused)),
    ));
    report.detail(
        "connlimit",
        json!({
            "clients": CLIENTS, "limit": LIMIT, "service_ms": SERVICE_MS, "stagger_ms": STAGGER_MS,
            "queue": { "most": queued.most, "served": served(&queued_clients), "freed_to_admitted_ms": ours_gaps, "waits_ms": ours_waits },
            "pool_of_4": { "most": pool.most, "served": served(&pool_clients), "freed_to_admitted_ms": pool_gaps, "waits_ms": pool_waits },
            "reject": { "most": rejecting.most, "refused_ms": ours_refused, "kinds": kinds },
            "resetting_server": { "most": resetting.most, "resets": resetting.resets, "refused_ms": peer_refused },
        }),
    );
    Ok(())
}
