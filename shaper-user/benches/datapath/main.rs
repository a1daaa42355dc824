//! `cargo xtask bench`: shaper measured side by side with what a user would
//! pick instead, on the same veth pairs in the same run (these machines are
//! shared and noisy, so only ratios measured together mean much). Prints a
//! table, writes it as JSON (bench/results.json) and draws per-class
//! throughput over time (bench/throughput.png).
//!
//! | section     | file        | shaper vs                                                  |
//! |-------------|-------------|------------------------------------------------------------|
//! | classify    | classify.rs | a `tc u32` chain (one filter per connection), no classifier |
//! | testrun     | main.rs     | an empty tc program (BPF_PROG_TEST_RUN, per-packet cost)    |
//! | ingress     | ingress.rs  | an empty program on the ingress hook; the bare pair         |
//! | rates       | rates.rs    | the configured rate (1 Mbit/s … 1 Gbit/s, both directions)  |
//! | timeline    | rates.rs    | (the plot: classes over time, a rate changed live)          |
//! | newconn     | newconn.rs  | the pyshaper model (30 s scan), trickle                     |
//! | rules       | rules.rs    | 10 rules (10, 1 000, 10 000); the linear walk; a u32 chain  |
//! | churn       | churn.rs    | the pyshaper model under the same churn; before the churn  |
//! | scan        | scan.rs     | /proc/net, the fd scan, per-entry map walks, uncached facts |
//! | apply       | apply.rs    | `tc -batch`, one `tc` per command (classic scripts)         |
//! | quota       | quota.rs    | bytes past a quota (10, 100, 1000 Mbit/s) vs the allowance  |
//! | instances   | instances.rs| the rate connections were opened at (per = "connection")   |
//! | metrics     | metrics.rs  | a scrape of 1 000 classes vs `classes` over the socket      |
//! | testrun     | gatecost.rs | the connection-limit gates vs an empty tc program           |
//! | connlimit   | connlimit.rs| a server serving 4 at a time; one resetting the excess      |
//!
//! `cargo xtask bench NAME…` runs the sections whose name contains a word.
//! Needs root. Everything runs in throw-away network namespaces.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{anyhow, Context as _, Result};
use shaper_common::{names, FlowKey, FlowValue, IfaceInfo, ORIGIN_KERNEL, PROTO_TCP};
use shaper_testkit::{
    packets::Frame,
    sandbox::{Daemon, Netns},
    TestRunExt as _,
};
use shaper_user::{
    config,
    control::Command,
    datapath::{Datapath, LoadOptions},
    rules::{compile::NoCgroups, SystemEnv},
};

mod apply;
mod churn;
mod classify;
mod connlimit;
mod gatecost;
mod helper;
mod ingress;
mod instances;
mod meter;
mod metrics;
mod newconn;
mod plot;
mod process;
mod quota;
mod rates;
mod report;
mod rules;
mod scan;
mod waitline;

use report::{Figure, Report, Row, Unit};

const SHAPER: &str = env!("CARGO_BIN_EXE_shaper");
const FLOW_COUNTS: [usize; 3] = [1, 10_000, 100_000];
const TEST_RUN_REPEAT: u32 = 100_000;
const MISS_SAMPLES: u16 = 10_000;

/// A realistic rule set: what the classifier walks on a miss.
const RULES: &str = r#"
[[interface]]
name = "shp-a"
egress = "100gbit"
[[class]]
name = "interactive"
match = 'proto == "tcp" and rport in [22, 53] or proto == "udp" and rport == 53'
[[class]]
name = "web"
match = 'rport in [80, 443, 8080..8090] and raddr not in 10.0.0.0/8'
[[class]]
name = "v6"
match = 'raddr in fd00::/8 and lport > 1024'
[[class]]
name = "lan"
match = 'raddr in 198.18.0.0/15 and rport in 5000..5999'
[[class]]
name = "bulk"
match = 'rport in [873, 6881..6889] or laddr == 198.19.0.1'
"#;

/// Which sections `cargo xtask bench -- NAME…` runs (all without names).
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// `count` distinct flows that are not `except`.
fn fill_flows(dp: &mut Datapath, count: usize, except: &FlowKey) -> Result<()> {
    for key in dp.flows().into_iter().map(|(k, _)| k) {
        dp.remove_flow(&key)?;
    }
    let value =
        FlowValue { class: 0, origin: ORIGIN_KERNEL, rules_gen: dp.rules_gen(), ..FlowValue::default() };
    let mut n = 0usize;
    let mut i = 0u32;
    while n < count {
        let key = shaper_testkit::packets::synthetic_flow(i);
        i += 1;
        if key == *except {
            continue;
        }
        dp.insert_flow(&key, &value)?;
        n += 1;
    }
    Ok(())
}

/// The datapath with the bench's rules, interface `ifindex` registered (its
/// ingress redirected to `ifb` unless 0).
fn load_datapath(ifindex: u32, ifb: u32) -> Result<Datapath> {
    let conf = config::parse(Path::new("bench.toml"), RULES, &SystemEnv::load().env())?;
    let mut dp = Datapath::load(LoadOptions { max_flows: 131_072, kernel_log_level: 0, pins: None })
        .context("loading the eBPF object (are you root?)")?;
    // The baseline: the daemon does not load it.
    dp.load_program(names::PROG_TC_PASSTHROUGH)?;
    dp.set_rules(&conf.compile_rules(&conf.class_ids_in_file_order(), &NoCgroups)?)?;
    let mut info = IfaceInfo::new(0, 0, 14);
    info.ifb_ifindex = ifb;
    for class in 0..conf.classes.len() as u32 {
        info.add_class(class);
    }
    dp.set_iface(ifindex, &info)?;
    Ok(dp)
}

/// The classifier's own cost on a built frame (BPF_PROG_TEST_RUN): the
/// flow-map hit (every packet after the first) and the miss (a new flow:
/// rule walk, owner lookup and insert), with 1, 10 000 and 100 000 flows in
/// the map, next to an empty tc program.
///
/// Where a known flow's packet goes, in ns above the empty program (~27 ns):
/// variants of the classifier that leave out one ingredient each, every run
/// of 100 000 packets interleaved with one of the empty program, medians of
/// 31 rounds; the old object (before the interface table, the cached clock
/// and the in-place key) loaded side by side in the same run. The same at
/// 1 and at 100 000 flows.
///
/// | ingredient                                         |   before |      now |
/// |----------------------------------------------------|---------:|---------:|
/// | FLOWS lookup (LRU hash, 40-byte key)               |       33 |       32 |
/// | interface: IFACES hash → IFACE_TABLE array         |       25 |        4 |
/// | clock: a helper call → a per-CPU reading per jiffy |       11 |        1 |
/// | parsing the headers, building the key              |      ~20 |        6 |
/// | SETTINGS, CLASS_STATS, two atomic adds, priority   |  ≤3 each |  ≤3 each |
/// | the whole program                                  |       94 |       46 |
///
/// The atomics cost nothing measurable here (one CPU, a hot line). The FLOWS
/// lookup is what is left: hashing and comparing the 40-byte key.
fn test_run_cost(report: &mut Report) -> Result<()> {
    const S: &str = "1b. classifier alone (BPF_PROG_TEST_RUN)";
    // BPF_PROG_TEST_RUN runs the program as if on `lo` (ifindex 1).
    let mut dp = load_datapath(1, 0)?;
    let mut frame = Frame::tcp(ip("198.18.0.1"), 40_000, ip("198.18.0.2"), 5201);
    frame.payload = 1448;
    let bytes = frame.build();
    let key = shaper_user::flows::key(PROTO_TCP, "198.18.0.1:40000".parse()?, "198.18.0.2:5201".parse()?);
    let empty = "an empty tc program";
    for &count in &FLOW_COUNTS {
        fill_flows(&mut dp, count.saturating_sub(1), &key)?;
        // The measured flow exists: every run is a hit.
        dp.test_run(names::PROG_TC_EGRESS, &bytes, 1, 1)?;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let run = |dp: &mut Datapath, prog| -> Result<f64> {
                Ok(dp.test_run(prog, &bytes, 1, TEST_RUN_REPEAT)?.duration.as_nanos() as f64)
            };
            ours.push(run(&mut dp, names::PROG_TC_EGRESS)?);
            base.push(run(&mut dp, names::PROG_TC_PASSTHROUGH)?);
        }
        report.push(Row::new(
            S,
            format!("a packet of a known flow, {count} flows in the map"),
            Figure::new(median(ours), Unit::Nanos),
            empty,
            Figure::new(median(base), Unit::Nanos),
        ));
    }
    // New flows: one run per distinct frame, so each is a miss.
    for &count in &FLOW_COUNTS {
        fill_flows(&mut dp, count, &key)?;
        let (mut ours, mut base) = (0f64, 0f64);
        for i in 0..MISS_SAMPLES {
            let mut f = frame.clone();
            f.sport = 1024 + i;
            let b = f.build();
            ours += dp.test_run(names::PROG_TC_EGRESS, &b, 1, 1)?.duration.as_nanos() as f64;
            base += dp.test_run(names::PROG_TC_PASSTHROUGH, &b, 1, 1)?.duration.as_nanos() as f64;
        }
        report.push(Row::new(
            S,
            format!("a new flow's first packet (5 rules, owner lookup, insert), {count} flows in the map"),
            Figure::new(ours / f64::from(MISS_SAMPLES), Unit::Nanos),
            empty,
            Figure::new(base / f64::from(MISS_SAMPLES), Unit::Nanos),
        ));
    }
    Ok(())
}

/// Runs `f` on a thread that entered `ns` (sockets it opens, netlink and
/// interface names included, belong to that namespace).
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                ns.enter_current_thread()?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("benchmark thread panicked"))?
    })
}

/// (run time, runs) of a program so far.
fn run_stats(dp: &mut Datapath, name: &'static str) -> Result<(u64, u64)> {
    let info = dp.program(name)?.info()?;
    Ok((info.run_time().as_nanos() as u64, info.run_count()))
}

/// A control request to `daemon`, its result read as `T`.
fn call<T: serde::de::DeserializeOwned>(daemon: &Daemon, command: Command) -> Result<T> {
    Ok(daemon.request(command)?)
}

/// Where results go: bench/ at the top of the workspace.
fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).join("bench")
}

fn main() -> Result<()> {
    if let Some(result) = helper::run_if_requested() {
        return result;
    }
    if !shaper_testkit::is_root() {
        anyhow::bail!("the benchmarks need root: run `sudo -E cargo xtask bench`");
    }
    // `cargo bench` passes --bench; other words select sections by name.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let started = Instant::now();
    let mut report = Report::default();
    let mut classified: Option<classify::Measured> = None;
    let mut failed = Vec::new();
    let names = [
        "classify",
        "testrun",
        "ingress",
        "rates",
        "timeline",
        "newconn",
        "rules",
        "churn",
        "scan",
        "apply",
        "quota",
        "instances",
        "metrics",
        "connlimit",
    ];
    let selected: Vec<&str> = names.into_iter().filter(|n| wanted(n)).collect();
    for &name in &selected {
        eprintln!("bench: {name} …");
        let t = Instant::now();
        let result = match name {
            "classify" => classify::run(&mut report).map(|m| classified = Some(m)),
            "testrun" => test_run_cost(&mut report).and_then(|()| gatecost::run(&mut report)),
            "ingress" => ingress::run(&mut report),
            "rates" => rates::accuracy(&mut report),
            "timeline" => rates::timeline(&mut report),
            "newconn" => newconn::run(&mut report).and_then(|()| process::decisions(&mut report)),
            "rules" => rules::run(&mut report, classified.as_ref()),
            "churn" => churn::run(&mut report),
            "scan" => scan::run(&mut report),
            "apply" => apply::run(&mut report),
            "quota" => quota::run(&mut report),
            "instances" => instances::run(&mut report),
            "metrics" => metrics::run(&mut report),
            "connlimit" => connlimit::run(&mut report),
            _ => Ok(()),
        };
        let took = t.elapsed().as_secs_f64();
        report.timings.push((name, took));
        match result {
            Ok(()) => eprintln!("bench: {name}: {took:.0} s"),
            Err(e) => {
                eprintln!("bench: {name} failed: {e:#}");
                failed.push(name);
            }
        }
    }
    let total = started.elapsed().as_secs_f64();
    println!("\n{}", report.render());
    println!("total {total:.0} s");
    // A run of some sections only does not overwrite the full record.
    let stem = if selected.len() == names.len() {
        "results".to_string()
    } else {
        format!("partial-{}", selected.join("-"))
    };
    let dir = out_dir();
    let json = dir.join(format!("{stem}.json"));
    report.write_json(&json, total)?;
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, report.markdown()).with_context(|| format!("writing {}", md.display()))?;
    println!("wrote {} and {}", json.display(), md.display());
    if !report.series.is_empty() {
        let png =
            dir.join(if stem == "results" { "throughput.png".to_string() } else { format!("{stem}.png") });
        plot::draw(
            &png,
            "shaper: per-class egress rate on a 100 Mbit/s link",
            &report.series,
            &report.events,
        )?;
        println!("wrote {}", png.display());
    }
    if !failed.is_empty() {
        anyhow::bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}
