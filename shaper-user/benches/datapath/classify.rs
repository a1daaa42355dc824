//! Sections 1 and 4 (live part): what classifying a packet costs, shaper's
//! classifier next to a `tc u32` chain doing the same job (one filter per
//! connection, as pyshaper and classic tc scripts did) and next to no
//! classifier at all, on the same veth pair and the same HTB tree.
//!
//! The instrument is the sender's own CPU time (CLOCK_THREAD_CPUTIME_ID): on
//! a veth pair the egress path, qdisc and classifier included, runs in the
//! sending thread, so what a classifier adds to a packet shows up there
//! whether it is BPF or u32. A UDP sender blasts 64-byte datagrams of one
//! flow; each setup's blast is followed at once by one with no classifier,
//! setups take turns round by round, and the median of the differences is
//! kept. bpf_stats gives shaper's program alone as a cross-check.

use std::{path::Path, process::Stdio};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use shaper_common::{names, IfaceInfo};
use shaper_testkit::sandbox::{finish_client, spawn_client, IperfServer, Sandbox};
use shaper_user::{
    config,
    datapath::{Datapath, LoadOptions},
    plan::Direction,
    rules::{compile::NoCgroups, SystemEnv},
    tc,
};

use super::{
    fill_flows,
    helper::{self, exe, Helper},
    in_netns, median,
    report::{Figure, Report, Row, Unit},
    run_stats,
};

pub const COUNTS: [usize; 3] = [10, 100, 1000];
/// Rules in force while the connection count varies (and flows while the rule count does).
const BASE_RULES: usize = 10;
const BASE_FLOWS: usize = 1000;
const ROUNDS: usize = 15;
const PACKETS: u64 = 30_000;
const PAYLOAD: usize = 64;
const TCP_SECONDS: u32 = 2;
const TCP_ROUNDS: usize = 5;
const UDP_PORT: u16 = 5301;
const UDP_SPORT: u16 = 40_000;
const TCP_PORT: u16 = 5201;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// The HTB tree alone: every packet in its default class.
    Bare,
    Shaper {
        rules: usize,
        flows: usize,
    },
    U32 {
        filters: usize,
    },
}

impl Setup {
    fn key(self) -> String {
        match self {
            Setup::Bare => "bare".into(),
            Setup::Shaper { rules, flows } => format!("shaper rules={rules} flows={flows}"),
            Setup::U32 { filters } => format!("u32 filters={filters}"),
        }
    }
}

/// `rules` classes, each with a rule; the measured UDP flow matches only the
/// last, so a new flow walks all of them. Class `i` is HTB leaf 1:(0x10+i).
fn rules_config(dev: &str, rules: usize) -> String {
    let mut text = format!("[[interface]]\nname = \"{dev}\"\negress = \"100gbit\"\n");
    for i in 0..rules {
        let rule = if i + 1 == rules {
            format!("proto == \"udp\" and rport == {UDP_PORT} or proto == \"tcp\" and rport == {TCP_PORT}")
        } else {
            format!("rport == {} and raddr in 198.18.0.0/15", 10_000 + i)
        };
        text.push_str(&format!("[[class]]\nname = \"c{i}\"\nmatch = '{rule}'\n"));
    }
    text
}

/// The u32 chain for `n` connections: the measured UDP flow's filter and the
/// TCP stream's sit in the middle (the average walk), the others match other
/// source ports. Every filter sends its packets to leaf `minor`.
fn u32_batch(dev: &str, n: usize, minor: u32) -> String {
    let mut out = String::new();
    let filter = |matches: String| {
        format!("filter add dev {dev} parent 1: protocol ip prio 1 u32 {matches} flowid 1:{minor:x}\n")
    };
    for j in 0..n {
        if j == n / 2 {
            out.push_str(&filter(format!(
                "match ip protocol 17 0xff match ip src 198.18.0.1/32 match ip dst 198.18.0.2/32 match ip sport {UDP_SPORT} 0xffff match ip dport {UDP_PORT} 0xffff"
            )));
            out.push_str(&filter(format!(
                "match ip protocol 6 0xff match ip src 198.18.0.1/32 match ip dst 198.18.0.2/32 match ip dport {TCP_PORT} 0xffff"
            )));
        } else {
            out.push_str(&filter(format!(
                "match ip protocol 17 0xff match ip src 198.18.0.1/32 match ip dst 198.18.0.2/32 match ip sport {} 0xffff match ip dport {UDP_PORT} 0xffff",
                41_000 + j
            )));
        }
    }
    out
}

/// An HTB tree with leaves for class indices `classes` (default: the first),
/// ceilings far above the link.
fn htb_batch(dev: &str, classes: &[u32]) -> String {
    let minor = |c: u32| shaper_common::HTB_LEAF_MINOR_BASE + c;
    let mut out = format!("qdisc replace dev {dev} root handle 1: htb default {:x}\n", minor(classes[0]));
    out.push_str(&format!("class add dev {dev} parent 1: classid 1:1 htb rate 100gbit ceil 100gbit\n"));
    for &c in classes {
        out.push_str(&format!(
            "class add dev {dev} parent 1:1 classid 1:{:x} htb rate 50gbit ceil 100gbit\n",
            minor(c)
        ));
        out.push_str(&format!("qdisc add dev {dev} parent 1:{:x} bfifo limit 4000000\n", minor(c)));
    }
    out
}

fn tc_batch(sandbox: &Sandbox, text: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("shaper-bench-{}-{}.tc", sandbox.tag, std::process::id()));
    std::fs::write(&file, text)?;
    let out = sandbox.a.command("tc").arg("-force").arg("-batch").arg(&file).stdout(Stdio::null()).output();
    let _ = std::fs::remove_file(&file);
    let out = out.context("running tc -batch")?;
    if !out.status.success() {
        bail!("tc -batch failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The live measurements of one setup, over the rounds.
#[derive(Default)]
struct Samples {
    cpu_ns: Vec<f64>,
    /// Sender CPU per packet above the blast with no classifier right after.
    added_ns: Vec<f64>,
    pps: Vec<f64>,
    prog_ns: Vec<f64>,
    tcp_bps: Vec<f64>,
}

/// One blast: (sender CPU ns per packet, packets per second).
fn blast(sandbox: &Sandbox) -> Result<(f64, f64)> {
    let out = sandbox
        .client(&exe()?)?
        .args([helper::FLAG, "blast", Sandbox::ADDR_B4, &UDP_PORT.to_string(), &UDP_SPORT.to_string()])
        .args([PACKETS.to_string(), PAYLOAD.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running the UDP sender")?;
    if !out.status.success() {
        bail!("the UDP sender failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [cpu, wall, sent] = fields[..] else { bail!("the UDP sender printed {text:?}") };
    if sent < PACKETS as f64 * 0.99 {
        bail!("the UDP sender sent only {sent} of {PACKETS} datagrams");
    }
    Ok((cpu / sent, sent / (wall / 1e9)))
}

/// What the section hands to the rule-scale section.
pub struct Measured {
    /// Median sender CPU per packet (ns) of each u32 chain length.
    pub u32_cpu: Vec<(usize, f64)>,
    /// What each u32 chain adds per packet over no classifier (ns, paired by round).
    pub u32_added: Vec<(usize, f64)>,
    /// Median sender CPU per packet with shaper at 1000 flows and N rules.
    pub shaper_rules_cpu: Vec<(usize, f64)>,
}

/// Section 1 (and the live rows of section 4).
pub fn run(report: &mut Report) -> Result<Measured> {
    let sandbox = Sandbox::new("bclass")?;
    let _udp =
        Helper::spawn(sandbox.b.command(&exe()?).args([helper::FLAG, "udpsink", &UDP_PORT.to_string()]))?;
    let _tcp = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, TCP_PORT)?;
    let mut setups = vec![Setup::Bare];
    setups.extend(COUNTS.iter().map(|&n| Setup::Shaper { rules: BASE_RULES, flows: n }));
    setups.extend(
        COUNTS.iter().filter(|&&n| n != BASE_RULES).map(|&n| Setup::Shaper { rules: n, flows: BASE_FLOWS }),
    );
    setups.extend(COUNTS.iter().map(|&n| Setup::U32 { filters: n }));
    let tcp_setups =
        [Setup::Bare, Setup::Shaper { rules: BASE_RULES, flows: BASE_FLOWS }, Setup::U32 { filters: 1000 }];

    let dev = sandbox.dev_a.clone();
    let max_rules = *COUNTS.iter().max().unwrap_or(&1000);
    // Leaves for every class a setup may use: the default (index 0) and each rule count's last class.
    let mut leaves = vec![0u32];
    leaves.extend(COUNTS.iter().map(|&n| n as u32 - 1));
    leaves.sort_unstable();
    leaves.dedup();
    tc_batch(&sandbox, &htb_batch(&dev, &leaves))?;
    let env = SystemEnv::load();
    let mut samples: Vec<Samples> = setups.iter().map(|_| Samples::default()).collect();
    in_netns(&sandbox.a, || {
        let nl = tc::Netlink::open()?;
        let link = tc::link_by_name(&nl, &dev)?.ok_or_else(|| anyhow!("no {dev}"))?;
        let mut dp = Datapath::load(LoadOptions { max_flows: 131_072, kernel_log_level: 0, pins: None })
            .context("loading the eBPF object (are you root?)")?;
        let mut info = IfaceInfo::new(0, 0, 14);
        for &c in &leaves {
            info.add_class(c);
        }
        dp.set_iface(link.index, &info)?;
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf_stats")?;
        let mut loaded_rules = 0;
        let mut prepare = |dp: &mut Datapath, setup: Setup| -> Result<()> {
            match setup {
                Setup::Bare => {}
                Setup::Shaper { rules, flows } => {
                    if rules != loaded_rules {
                        let conf =
                            config::parse(Path::new("bench.toml"), &rules_config(&dev, rules), &env.env())?;
                        dp.set_rules(&conf.compile_rules(&conf.class_ids_in_file_order(), &NoCgroups)?)?;
                        loaded_rules = rules;
                    }
                    let measured = shaper_user::flows::key(
                        shaper_common::PROTO_UDP,
                        format!("198.18.0.1:{UDP_SPORT}").parse()?,
                        format!("198.18.0.2:{UDP_PORT}").parse()?,
                    );
                    fill_flows(dp, flows.saturating_sub(1), &measured)?;
                    dp.attach(names::PROG_TC_EGRESS, &dev, link.index, Direction::Egress)?;
                }
                Setup::U32 { filters } => tc_batch(
                    &sandbox,
                    &u32_batch(&dev, filters, shaper_common::HTB_LEAF_MINOR_BASE + max_rules as u32 - 1),
                )?,
            }
            Ok(())
        };
        let clear = |dp: &mut Datapath, setup: Setup| -> Result<()> {
            match setup {
                Setup::Bare => {}
                Setup::Shaper { .. } => dp.detach(&dev)?,
                Setup::U32 { .. } => {
                    sandbox.a.run(
                        "tc",
                        &["filter", "del", "dev", &dev, "parent", "1:", "protocol", "ip", "prio", "1"],
                    )?;
                }
            }
            Ok(())
        };
        // Each classifier's blast is followed at once by one with no
        // classifier: the pair sees the same moment of this shared machine.
        let bare = setups.iter().position(|s| *s == Setup::Bare).unwrap_or(0);
        for _ in 0..ROUNDS {
            for (i, setup) in setups.iter().enumerate() {
                if *setup == Setup::Bare {
                    continue;
                }
                prepare(&mut dp, *setup)?;
                let before = run_stats(&mut dp, names::PROG_TC_EGRESS)?;
                let (cpu, pps) = blast(&sandbox)?;
                let after = run_stats(&mut dp, names::PROG_TC_EGRESS)?;
                clear(&mut dp, *setup)?;
                let (bare_cpu, bare_pps) = blast(&sandbox)?;
                let into = &mut samples[i];
                if matches!(setup, Setup::Shaper { .. }) {
                    into.prog_ns.push((after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64);
                }
                into.cpu_ns.push(cpu);
                into.pps.push(pps);
                into.added_ns.push(cpu - bare_cpu);
                samples[bare].cpu_ns.push(bare_cpu);
                samples[bare].pps.push(bare_pps);
            }
        }
        let args = ["-t", &TCP_SECONDS.to_string(), "-O", "1"];
        for _ in 0..TCP_ROUNDS {
            for (setup, into) in setups.iter().zip(samples.iter_mut()) {
                if !tcp_setups.contains(setup) {
                    continue;
                }
                prepare(&mut dp, *setup)?;
                let result = finish_client(spawn_client(&sandbox.a, Sandbox::ADDR_B4, TCP_PORT, &args)?);
                clear(&mut dp, *setup)?;
                into.tcp_bps.push(result?.received_bps);
            }
        }
        Ok(())
    })?;
    let fig = |s: Setup, f: fn(&Samples) -> &Vec<f64>, unit| {
        let i = setups.iter().position(|x| *x == s).unwrap_or(0);
        Figure::new(median(f(&samples[i]).clone()), unit)
    };
    let cpu = |s| fig(s, |x| &x.cpu_ns, Unit::Nanos);
    let pps = |s| fig(s, |x| &x.pps, Unit::PacketsPerSecond);
    let tcp = |s| fig(s, |x| &x.tcp_bps, Unit::BitsPerSecond);
    let prog = |s| fig(s, |x| &x.prog_ns, Unit::Nanos);
    const S: &str = "1. classifier vs tc u32";
    let base = Setup::Shaper { rules: BASE_RULES, flows: BASE_FLOWS };
    report.push(Row::new(
        S,
        format!(
            "sender CPU per {PAYLOAD} B UDP packet, whole path, {BASE_FLOWS} flows in the map (shaper's program alone: {} by bpf_stats)",
            prog(base).text()
        ),
        cpu(base),
        "no classifier",
        cpu(Setup::Bare),
    ));
    // What classifying adds to a packet: the sender's CPU above the same path
    // with no classifier, from adjacent blasts, median over the rounds.
    let added = |s| fig(s, |x| &x.added_ns, Unit::Nanos);
    for &n in &COUNTS {
        report.push(Row::new(
            S,
            format!("classifying a {PAYLOAD} B UDP packet, {n} connections (sender CPU above no classifier)"),
            added(Setup::Shaper { rules: BASE_RULES, flows: n }),
            &format!("u32, {n} filters"),
            added(Setup::U32 { filters: n }),
        ));
    }
    for &n in &COUNTS {
        let ours = Setup::Shaper { rules: BASE_RULES, flows: n };
        report.push(Row::new(
            S,
            format!("{PAYLOAD} B UDP packets/s, one sender, {n} connections"),
            pps(ours),
            &format!("u32, {n} filters"),
            pps(Setup::U32 { filters: n }),
        ));
    }
    report.push(Row::new(
        S,
        format!("one TCP stream, {BASE_FLOWS} connections (median of {TCP_ROUNDS} interleaved runs)"),
        tcp(base),
        "u32, 1000 filters",
        tcp(Setup::U32 { filters: 1000 }),
    ));
    report.push(Row::new(S, "one TCP stream, the same", tcp(base), "no classifier", tcp(Setup::Bare)));
    report.detail(
        "classify",
        json!(setups
            .iter()
            .zip(&samples)
            .map(|(s, x)| json!({ "setup": s.key(), "sender_cpu_ns_per_packet": x.cpu_ns, "packets_per_s": x.pps, "program_ns_per_packet": x.prog_ns, "added_ns_per_packet": x.added_ns, "tcp_bps": x.tcp_bps }))
            .collect::<Vec<_>>()),
    );
    Ok(Measured {
        u32_cpu: COUNTS.iter().map(|&n| (n, cpu(Setup::U32 { filters: n }).value)).collect(),
        u32_added: COUNTS.iter().map(|&n| (n, added(Setup::U32 { filters: n }).value)).collect(),
        shaper_rules_cpu: COUNTS
            .iter()
            .map(|&n| {
                let s = if n == BASE_RULES { base } else { Setup::Shaper { rules: n, flows: BASE_FLOWS } };
                (n, cpu(s).value)
            })
            .collect(),
    })
}
