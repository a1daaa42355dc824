//! The ingress path: what the ingress classifier costs per packet, and what a
//! download through the IFB and its HTB tree keeps of the bare pair's speed.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use shaper_common::names;
use shaper_user::{
    control::Command,
    plan::Direction,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Sandbox},
    tc,
    units::format_rate,
};

use super::{in_netns, load_datapath, median, ns, run_stats, Row, SHAPER};

const ROUNDS: usize = 3;
const SECONDS: u32 = 2;
const THROUGHPUT_RUNS: usize = 5;
const THROUGHPUT_SECONDS: u32 = 4;

/// Section: the ingress classifier (classify and redirect) vs an empty
/// program on the same hook, on live downloads.
pub fn cost(rows: &mut Vec<Row>) -> Result<()> {
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
    rows.push(Row {
        what: "per packet, ingress classifier (classify + redirect to the IFB) on live TCP downloads; baseline: an empty program on the ingress hook".into(),
        shaper: ns(ours),
        baseline: ns(base),
        ratio: format!("{:.2}", ours / base),
    });
    Ok(())
}

/// Section: one download through the IFB (a class whose ceiling is above the
/// link speed) vs the bare pair, and with the IFB at the kernel's default
/// transmit queue of 32.
pub fn throughput(rows: &mut Vec<Row>) -> Result<()> {
    let bare = Sandbox::new("bibare")?;
    let shaped = Sandbox::new("bishape")?;
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"100gbit\"\ningress = \"100gbit\"\n[[class]]\nname = \"all\"\n\
         ingress = {{ rate = \"50gbit\", ceil = \"100gbit\" }}\nmatch = 'rport == 5201'\n",
        shaped.dev_a
    );
    let daemon = Daemon::start(&shaped, Path::new(SHAPER), &config)?;
    let status = daemon.call(Command::Status)?;
    let ifb =
        status["interfaces"][0]["ifb"].as_str().ok_or_else(|| anyhow!("no IFB in {status}"))?.to_string();
    let _s1 = IperfServer::start(&bare.b, Sandbox::ADDR_B4, 5201)?;
    let _s2 = IperfServer::start(&shaped.b, Sandbox::ADDR_B4, 5201)?;
    let args = ["-t", &THROUGHPUT_SECONDS.to_string(), "-O", "1", "-R"];
    let run = |sandbox: &Sandbox| -> Result<f64> {
        Ok(finish_client(spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &args)?)?.received_bps)
    };
    let txqueuelen = |len: &str| shaped.a.run("ip", &["link", "set", &ifb, "txqueuelen", len]);
    let (mut ours, mut base, mut default_queue) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..THROUGHPUT_RUNS {
        base.push(run(&bare)?);
        txqueuelen(&shaper_user::daemon::IFB_TXQUEUELEN.to_string())?;
        ours.push(run(&shaped)?);
        txqueuelen("32")?;
        default_queue.push(run(&shaped)?);
    }
    let show = |v: &[f64]| v.iter().map(|x| format!("{:.1}", x / 1e9)).collect::<Vec<_>>().join(" ");
    println!(
        "download runs (Gbit/s): shaper [{}], bare [{}], IFB queue of 32 [{}]",
        show(&ours),
        show(&base),
        show(&default_queue)
    );
    let (o, b, d) = (median(ours), median(base), median(default_queue));
    rows.push(Row {
        what: format!(
            "one TCP download through the IFB and HTB (ceil above link speed) vs bare veth (median of {THROUGHPUT_RUNS} interleaved runs)"
        ),
        shaper: format_rate(o as u64),
        baseline: format_rate(b as u64),
        ratio: format!("{:.2}", o / b),
    });
    rows.push(Row {
        what: format!(
            "the same with the IFB's transmit queue at {} (shaper's) vs 32 (the kernel's default)",
            shaper_user::daemon::IFB_TXQUEUELEN
        ),
        shaper: format_rate(o as u64),
        baseline: format_rate(d as u64),
        ratio: format!("{:.2}", o / d),
    });
    Ok(())
}
