//! The ingress path: what the ingress classifier costs per packet, and what a
//! download through the IFB and its HTB tree keeps of the bare pair's speed.
//! (The IFB's transmit queue barely matters with shaper's byte-FIFO leaves:
//! 1000 vs the kernel's 32 measured 1.01 when issue 4 landed.)

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use shaper_common::names;
use shaper_testkit::sandbox::{finish_client, spawn_client, Daemon, IperfServer, Sandbox};
use shaper_user::{plan::Direction, tc};

use super::{
    in_netns, load_datapath, median,
    report::{Figure, Report, Row, Unit},
    run_stats, SHAPER,
};

const S: &str = "1c. ingress classifier (downloads)";
const ROUNDS: usize = 3;
const SECONDS: u32 = 2;
const THROUGHPUT_RUNS: usize = 3;
const THROUGHPUT_SECONDS: u32 = 3;

pub fn run(report: &mut Report) -> Result<()> {
    cost(report)?;
    throughput(report)
}

/// The ingress classifier (classify and redirect) vs an empty program on the
/// same hook, on live downloads.
fn cost(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("bicost")?;
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201)?;
    let (ours, base) = in_netns(&sandbox.a, || {
        let nl = tc::Netlink::open()?;
        let link = tc::link_by_name(&nl, &sandbox.dev_a)?.ok_or_else(|| anyhow!("no {}", sandbox.dev_a))?;
        // Removed with the sandbox's namespace.
        let ifb = tc::create_ifb(&nl, "shpbenchifb", link.mtu, 1000)?;
        let mut dp = load_datapath(link.index, ifb.index)?;
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf_stats")?;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            for (name, into) in [(names::PROG_TC_INGRESS, &mut ours), (names::PROG_TC_PASSTHROUGH, &mut base)]
            {
                dp.attach(name, &sandbox.dev_a, 0, Direction::Ingress)?;
                let before = run_stats(&mut dp, name)?;
                let args = ["-t", &SECONDS.to_string(), "-R"];
                finish_client(spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &args)?)?;
                let after = run_stats(&mut dp, name)?;
                dp.detach(&sandbox.dev_a)?;
                let runs = after.1.saturating_sub(before.1).max(1);
                into.push(after.0.saturating_sub(before.0) as f64 / runs as f64);
            }
        }
        Ok((median(ours), median(base)))
    })?;
    report.push(Row::new(
        S,
        "per packet, ingress classifier (classify + redirect to the IFB), live TCP downloads (bpf_stats)",
        Figure::new(ours, Unit::Nanos),
        "an empty program on the hook",
        Figure::new(base, Unit::Nanos),
    ));
    Ok(())
}

/// One download through the IFB (a class whose ceiling is above the link
/// speed) vs the bare pair, interleaved.
fn throughput(report: &mut Report) -> Result<()> {
    let bare = Sandbox::new("bibare")?;
    let shaped = Sandbox::new("bishape")?;
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"100gbit\"\ningress = \"100gbit\"\n[[class]]\nname = \"all\"\n\
         ingress = {{ rate = \"50gbit\", ceil = \"100gbit\" }}\nmatch = 'rport == 5201'\n",
        shaped.dev_a
    );
    let daemon = Daemon::start(&shaped, Path::new(SHAPER), &config)?;
    let status = daemon.status()?;
    if status.interfaces.first().and_then(|i| i.ifb.as_ref()).is_none() {
        return Err(anyhow!("no IFB in {status:?}"));
    }
    let _s1 = IperfServer::start(&bare.b, Sandbox::ADDR_B4, 5201)?;
    let _s2 = IperfServer::start(&shaped.b, Sandbox::ADDR_B4, 5201)?;
    let args = ["-t", &THROUGHPUT_SECONDS.to_string(), "-O", "1", "-R"];
    let run = |sandbox: &Sandbox| -> Result<f64> {
        Ok(finish_client(spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &args)?)?.received_bps)
    };
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..THROUGHPUT_RUNS {
        base.push(run(&bare)?);
        ours.push(run(&shaped)?);
    }
    report.push(Row::new(
        S,
        format!("one TCP download through the IFB and HTB (ceil above link speed), median of {THROUGHPUT_RUNS} interleaved"),
        Figure::new(median(ours), Unit::BitsPerSecond),
        "the bare veth pair",
        Figure::new(median(base), Unit::BitsPerSecond),
    ));
    Ok(())
}
