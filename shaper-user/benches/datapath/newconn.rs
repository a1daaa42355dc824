//! Section 3: shaping new connections from their first packet. One new client
//! process opens 100 short connections, one after the other, under a
//! 10 Mbit/s limit, three ways:
//! - shaper, a rule on the program's name (decided in the kernel);
//! - the pyshaper model: the same rule, shaper with events off and a 30 s
//!   scan (what a daemon that rescans connections sees);
//! - trickle (userspace, LD_PRELOAD) limiting the same client.
//!
//! A counting server on the far side prints what has arrived every 10 ms;
//! "escaped" is the most the client ever got ahead of the limit in the first
//! seconds: max over t of (bytes arrived by t − limit × t).

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use shaper_testkit::sandbox::{Daemon, Sandbox};

use super::{
    helper::{self, exe, Helper},
    meter::Meter,
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

pub const SECTION: &str = "3. new connections";

const CONNECTIONS: usize = 100;
const BYTES_PER_CONNECTION: usize = 64 * 1024;
const LIMIT_BPS: u64 = 10_000_000;
const OBSERVE: Duration = Duration::from_secs(3);
const PORT: u16 = 5400;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Shaper,
    PyshaperModel,
    Trickle,
}

/// What arrived, sampled: (seconds since the client started, bytes).
struct Arrivals(Vec<(f64, u64)>);

impl Arrivals {
    fn escaped(&self) -> f64 {
        let limit = LIMIT_BPS as f64 / 8.0;
        self.0.iter().map(|&(t, b)| b as f64 - limit * t).fold(0.0, f64::max)
    }
    fn by_end(&self) -> u64 {
        self.0.last().map_or(0, |p| p.1)
    }
}

fn run_once(tool: Tool) -> Result<Arrivals> {
    let sandbox = Sandbox::new("bnew")?;
    let _daemon = match tool {
        Tool::Trickle => None,
        Tool::Shaper | Tool::PyshaperModel => {
            let events = tool == Tool::Shaper;
            let scan = if events { "5s" } else { "30s" };
            let config = format!(
                "[daemon]\nscan_interval = \"{scan}\"\nevent_driven = {events}\n\n\
                 [[interface]]\nname = \"{}\"\negress = \"10gbit\"\n\n\
                 [[class]]\nname = \"limited\"\negress = \"{LIMIT_BPS}\"\nmatch = 'cmd ~ \"datapath*\"'\n",
                sandbox.dev_a
            );
            Some(Daemon::start(&sandbox, Path::new(SHAPER), &config)?)
        }
    };
    let counter = Meter::spawn(sandbox.b.command(&exe()?).args([helper::FLAG, "count", &PORT.to_string()]))?;
    helper::wait_listening(&sandbox.b, PORT)?;
    let client_args = [
        helper::FLAG.to_string(),
        "connect".into(),
        Sandbox::ADDR_B4.into(),
        PORT.to_string(),
        CONNECTIONS.to_string(),
        BYTES_PER_CONNECTION.to_string(),
    ];
    let mut client = match tool {
        Tool::Trickle => {
            // trickle's unit is KiB/s.
            let kib = format!("{:.0}", LIMIT_BPS as f64 / 8.0 / 1024.0);
            let mut cmd = sandbox.client("trickle")?;
            cmd.args(["-s", "-u", &kib, "-d", &kib, &exe()?]).args(&client_args);
            cmd
        }
        _ => {
            let mut cmd = sandbox.client(&exe()?)?;
            cmd.args(&client_args);
            cmd
        }
    };
    let t0 = helper::monotonic_ns();
    let _client = Helper::spawn(client.stdin(Stdio::null()).stdout(Stdio::null()))?;
    std::thread::sleep(OBSERVE + Duration::from_millis(100));
    let points: Vec<(f64, u64)> = counter
        .finish()
        .into_iter()
        .filter(|(ns, _)| *ns >= t0)
        .map(|(ns, bytes)| ((ns - t0) as f64 / 1e9, bytes))
        .filter(|(t, _)| *t <= OBSERVE.as_secs_f64())
        .collect();
    if points.is_empty() {
        bail!("the counter reported nothing while the client ran");
    }
    Ok(Arrivals(points))
}

pub fn run(report: &mut Report) -> Result<()> {
    const S: &str = SECTION;
    let mut found = Vec::new();
    for tool in [Tool::Shaper, Tool::PyshaperModel, Tool::Trickle] {
        let arrivals = run_once(tool).with_context(|| format!("{tool:?}"))?;
        found.push((tool, arrivals));
    }
    let get = |tool| {
        found.iter().find(|(t, _)| *t == tool).map(|(_, a)| a).ok_or_else(|| anyhow!("no {tool:?} run"))
    };
    let ours = get(Tool::Shaper)?;
    let what = format!(
        "bytes past a 10 Mbit/s limit in the first {} s of {CONNECTIONS} new {} KiB connections from a new process",
        OBSERVE.as_secs(),
        BYTES_PER_CONNECTION / 1024
    );
    for (peer, tool) in [("pyshaper model (30 s scan)", Tool::PyshaperModel), ("trickle", Tool::Trickle)] {
        report.push(Row::new(
            S,
            what.clone(),
            Figure::new(ours.escaped(), Unit::Bytes),
            peer,
            Figure::new(get(tool)?.escaped(), Unit::Bytes),
        ));
    }
    let allowed = LIMIT_BPS as f64 / 8.0 * OBSERVE.as_secs_f64();
    for (peer, tool) in [("pyshaper model (30 s scan)", Tool::PyshaperModel), ("trickle", Tool::Trickle)] {
        report.push(Row::new(
            S,
            format!(
                "bytes delivered in those {} s (the limit allows {:.2} MB)",
                OBSERVE.as_secs(),
                allowed / 1e6
            ),
            Figure::new(ours.by_end() as f64, Unit::Bytes),
            peer,
            Figure::new(get(tool)?.by_end() as f64, Unit::Bytes),
        ));
    }
    report.detail(
        "new_connections",
        json!(found
            .iter()
            .map(|(tool, a)| json!({ "tool": format!("{tool:?}"), "escaped_bytes": a.escaped(), "arrivals_s_bytes": a.0 }))
            .collect::<Vec<_>>()),
    );
    Ok(())
}
