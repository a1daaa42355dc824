//! `cargo xtask bench`: what the classifier costs, measured side by side with a
//! do-nothing tc program in the same run (these machines are shared and noisy,
//! so only ratios measured together mean much).
//!
//! 1. Per-packet cost with BPF_PROG_TEST_RUN on a built frame: the flow-map hit
//!    (every packet after the first) and the miss (a new flow: rule walk and
//!    insert), with 1, 10 000 and 100 000 flows in the map.
//! 2. Per-packet cost on live traffic (kernel bpf_stats: run_time_ns / run_cnt)
//!    with iperf3 between two namespaces, same flow-map sizes.
//! 3. One-stream TCP throughput through `shaper run` (classifier + HTB, class
//!    ceil above the link speed) as a ratio of the bare veth pair: medians of
//!    interleaved runs.
//! 4. The delivered rate of a 5 Gbit/s class (where tc's default bursts lose a
//!    quarter of it) as a ratio of the configured rate.
//! 5. Applying an HTB tree of 1 000 classes: shaper's netlink batch vs `tc -batch`.
//! 6. The ingress path (ingress.rs): the ingress classifier's cost on live
//!    downloads next to an empty program, and one download through the IFB
//!    and its HTB tree next to the bare pair (and to an IFB left at the
//!    kernel's default queue length).
//! 7. Process matching (process.rs): bytes that run in the wrong class while
//!    1 000 short connections start, for a kernel-decided and a daemon-decided
//!    rule, next to the pyshaper model (no events, a 30 s scan); how soon the
//!    daemon decides; and the /proc scan with 10 000 sockets next to `ss -tunap`.
//!
//! Needs root. Everything runs in throw-away network namespaces.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Stdio,
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use shaper_common::{names, FlowKey, FlowValue, IfaceInfo, FAMILY_V4, ORIGIN_KERNEL, PROTO_TCP};
use shaper_user::{
    config,
    datapath::{Datapath, LoadOptions},
    packets::Frame,
    plan,
    rules::{compile::NoCgroups, SystemEnv},
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Netns, Sandbox},
    table::Table,
    tc,
    units::format_rate,
};

mod helper;
mod ingress;
mod process;

const SHAPER: &str = env!("CARGO_BIN_EXE_shaper");
const FLOW_COUNTS: [usize; 3] = [1, 10_000, 100_000];
const TEST_RUN_REPEAT: u32 = 200_000;
const MISS_SAMPLES: u16 = 20_000;
const LIVE_SECONDS: u32 = 2;
const LIVE_ROUNDS: usize = 3;
const THROUGHPUT_RUNS: usize = 5;
const THROUGHPUT_SECONDS: u32 = 4;
const RATE_CLASS_BPS: u64 = 5_000_000_000;
const RATE_RUNS: usize = 3;
const APPLY_CLASSES: usize = 1000;
const APPLY_ROUNDS: usize = 3;

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

/// One part of the benchmark: appends its rows.
type Section = fn(&mut Vec<Row>) -> Result<()>;

struct Row {
    what: String,
    shaper: String,
    baseline: String,
    ratio: String,
}

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

fn ns(v: f64) -> String {
    format!("{v:.1} ns")
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
        let mut key = FlowKey {
            family: FAMILY_V4,
            proto: PROTO_TCP,
            lport: 10_000 + (i % 50_000) as u16,
            rport: 443,
            ..FlowKey::default()
        };
        key.laddr[..4].copy_from_slice(&[198, 19, 0, 1]);
        key.raddr[..4].copy_from_slice(&[198, 19, (i >> 16) as u8 + 1, (i >> 8) as u8]);
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
    dp.set_rules(&conf.compile_rules(&NoCgroups)?.nodes)?;
    let mut info = IfaceInfo::new(0, 0, 14);
    info.ifb_ifindex = ifb;
    for class in 0..conf.classes.len() as u32 {
        info.add_class(class);
    }
    dp.set_iface(ifindex, &info)?;
    Ok(dp)
}

/// Section 1: BPF_PROG_TEST_RUN.
fn test_run_cost(rows: &mut Vec<Row>) -> Result<()> {
    // BPF_PROG_TEST_RUN runs the program as if on `lo` (ifindex 1).
    let mut dp = load_datapath(1, 0)?;
    let mut frame = Frame::tcp(ip("198.18.0.1"), 40_000, ip("198.18.0.2"), 5201);
    frame.payload = 1448;
    let bytes = frame.build();
    let key = shaper_user::flows::key(PROTO_TCP, "198.18.0.1:40000".parse()?, "198.18.0.2:5201".parse()?);
    for &count in &FLOW_COUNTS {
        fill_flows(&mut dp, count.saturating_sub(1), &key)?;
        // The measured flow exists: every run is a hit.
        dp.test_run(names::PROG_TC_EGRESS, &bytes, 1, 1)?;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            ours.push(
                dp.test_run(names::PROG_TC_EGRESS, &bytes, 1, TEST_RUN_REPEAT)?.duration.as_nanos() as f64
            );
            base.push(
                dp.test_run(names::PROG_TC_PASSTHROUGH, &bytes, 1, TEST_RUN_REPEAT)?.duration.as_nanos()
                    as f64,
            );
        }
        let (o, b) = (median(ours), median(base));
        rows.push(Row {
            what: format!("per packet, known flow, {count} flows in map (BPF_PROG_TEST_RUN)"),
            shaper: ns(o),
            baseline: ns(b),
            ratio: format!("{:.2}", o / b),
        });
    }
    // New flows: one run per distinct frame, so each is a miss (rule walk + insert).
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
        let (o, b) = (ours / f64::from(MISS_SAMPLES), base / f64::from(MISS_SAMPLES));
        rows.push(Row {
            what: format!(
                "per packet, new flow (rules + insert), {count} flows in map (BPF_PROG_TEST_RUN, 1 run)"
            ),
            shaper: ns(o),
            baseline: ns(b),
            ratio: format!("{:.2}", o / b),
        });
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

/// Section 2: kernel accounting on live traffic.
fn live_cost(rows: &mut Vec<Row>) -> Result<()> {
    let sandbox = Sandbox::new("bcost")?;
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201)?;
    let results = in_netns(&sandbox.a, || {
        let nl = tc::Netlink::open()?;
        let link = tc::link_by_name(&nl, &sandbox.dev_a)?.ok_or_else(|| anyhow!("no {}", sandbox.dev_a))?;
        let mut dp = load_datapath(link.index, 0)?;
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf_stats")?;
        let mut out = Vec::new();
        let key = FlowKey::default();
        for &count in &FLOW_COUNTS {
            fill_flows(&mut dp, count.saturating_sub(1), &key)?;
            let (mut ours, mut base) = (Vec::new(), Vec::new());
            for _ in 0..LIVE_ROUNDS {
                for (name, into) in
                    [(names::PROG_TC_EGRESS, &mut ours), (names::PROG_TC_PASSTHROUGH, &mut base)]
                {
                    dp.attach(name, &sandbox.dev_a, 0, plan::Direction::Egress)?;
                    let before = run_stats(&mut dp, name)?;
                    let client =
                        spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", &LIVE_SECONDS.to_string()])?;
                    finish_client(client)?;
                    let after = run_stats(&mut dp, name)?;
                    dp.detach(&sandbox.dev_a)?;
                    let runs = after.1.saturating_sub(before.1).max(1);
                    into.push(after.0.saturating_sub(before.0) as f64 / runs as f64);
                }
            }
            out.push((count, median(ours), median(base)));
        }
        Ok(out)
    })?;
    for (count, o, b) in results {
        rows.push(Row {
            what: format!("per packet, live TCP, {count} flows in map (bpf_stats run_time/run_cnt)"),
            shaper: ns(o),
            baseline: ns(b),
            ratio: format!("{:.2}", o / b),
        });
    }
    Ok(())
}

/// Section 3: one TCP stream, shaper (classifier + HTB) vs the bare pair.
fn throughput(rows: &mut Vec<Row>) -> Result<()> {
    let bare = Sandbox::new("bbare")?;
    let shaped = Sandbox::new("bshape")?;
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"100gbit\"\n[[class]]\nname = \"all\"\negress = {{ rate = \"50gbit\", ceil = \"100gbit\" }}\nmatch = 'rport == 5201'\n",
        shaped.dev_a
    );
    let _daemon = Daemon::start(&shaped, Path::new(SHAPER), &config)?;
    let _s1 = IperfServer::start(&bare.b, Sandbox::ADDR_B4, 5201)?;
    let _s2 = IperfServer::start(&shaped.b, Sandbox::ADDR_B4, 5201)?;
    let args = ["-t", &THROUGHPUT_SECONDS.to_string(), "-O", "1"];
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..THROUGHPUT_RUNS {
        base.push(finish_client(spawn_client(&bare.a, Sandbox::ADDR_B4, 5201, &args)?)?.received_bps);
        ours.push(finish_client(spawn_client(&shaped.a, Sandbox::ADDR_B4, 5201, &args)?)?.received_bps);
    }
    let (o, b) = (median(ours.clone()), median(base.clone()));
    let show = |v: &[f64]| v.iter().map(|x| format!("{:.1}", x / 1e9)).collect::<Vec<_>>().join(" ");
    println!("throughput runs (Gbit/s): shaper [{}], bare [{}]", show(&ours), show(&base));
    rows.push(Row {
        what: format!(
            "one TCP stream, classifier + HTB vs bare veth (median of {THROUGHPUT_RUNS} interleaved runs)"
        ),
        shaper: format_rate(o as u64),
        baseline: format_rate(b as u64),
        ratio: format!("{:.2}", o / b),
    });
    Ok(())
}

/// Section 4: a class far above tc's comfort zone delivers what it promises.
fn rate_accuracy(rows: &mut Vec<Row>) -> Result<()> {
    let sandbox = Sandbox::new("brate")?;
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"100gbit\"\n[[class]]\nname = \"five\"\negress = \"{RATE_CLASS_BPS}\"\nmatch = 'rport == 5201'\n",
        sandbox.dev_a
    );
    let _daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config)?;
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201)?;
    let args = ["-t", &THROUGHPUT_SECONDS.to_string(), "-O", "1"];
    let mut runs = Vec::new();
    for _ in 0..RATE_RUNS {
        // iperf3 reports payload; HTB's rate counts frames (1514 bytes per 1448 of payload).
        let payload = finish_client(spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &args)?)?.received_bps;
        runs.push(payload * 1514.0 / 1448.0);
    }
    let measured = median(runs);
    rows.push(Row {
        what: format!(
            "rate of a {} class, one TCP stream, frames on the wire (median of {RATE_RUNS})",
            format_rate(RATE_CLASS_BPS)
        ),
        shaper: format_rate(measured as u64),
        baseline: format_rate(RATE_CLASS_BPS),
        ratio: format!("{:.3}", measured / RATE_CLASS_BPS as f64),
    });
    Ok(())
}

/// The `tc -batch` commands that build the same tree as `plan`.
fn tc_batch(dev: &str, plan: &tc::HtbPlan) -> String {
    let mut out = format!("qdisc add dev {dev} root handle 1: htb default {:x}\n", plan.default_minor);
    let class = |c: &tc::HtbClass, parent: &str| {
        format!(
            "class add dev {dev} parent {parent} classid 1:{:x} htb rate {}bit ceil {}bit burst {}b cburst {}b quantum {} prio {}\n",
            c.minor, c.rate_bps, c.ceil_bps, c.burst_bytes, c.cburst_bytes, c.quantum, c.prio
        )
    };
    out.push_str(&class(&plan.root, "1:"));
    for leaf in &plan.leaves {
        out.push_str(&class(&leaf.class, "1:1"));
        let tc::LeafQueue::Bfifo { limit_bytes } = leaf.queue;
        out.push_str(&format!(
            "qdisc add dev {dev} parent 1:{:x} handle {:x}: bfifo limit {limit_bytes}\n",
            leaf.class.minor, leaf.class.minor
        ));
    }
    out
}

/// Section 5: building an HTB tree of 1 000 classes.
fn apply(rows: &mut Vec<Row>) -> Result<()> {
    let sandbox = Sandbox::new("bapply")?;
    let mut text = format!("[[interface]]\nname = \"{}\"\negress = \"10gbit\"\n", sandbox.dev_a);
    for i in 0..APPLY_CLASSES {
        text.push_str(&format!(
            "[[class]]\nname = \"c{i}\"\negress = {{ rate = \"1mbit\", ceil = \"100mbit\" }}\n"
        ));
    }
    let conf = config::parse(Path::new("bench.toml"), &text, &SystemEnv::default().env())?;
    let iface = conf.interfaces.first().ok_or_else(|| anyhow!("no interface"))?;
    let plan = plan::plan(&conf, iface, plan::Direction::Egress, 1500).ok_or_else(|| anyhow!("no plan"))?;
    let batch_file = std::env::temp_dir().join(format!("shaper-bench-{}.tc", sandbox.tag));
    std::fs::write(&batch_file, tc_batch(&sandbox.dev_a, &plan.htb))?;
    // The leaves (the implicit default included) and the root class.
    let expected = plan.htb.leaves.len() + 1;
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let result = in_netns(&sandbox.a, || {
        let nl = tc::Netlink::open()?;
        let link = tc::link_by_name(&nl, &sandbox.dev_a)?.ok_or_else(|| anyhow!("no {}", sandbox.dev_a))?;
        for _ in 0..APPLY_ROUNDS {
            let start = Instant::now();
            tc::install_htb(&nl, link.index, &plan.htb)?;
            ours.push(start.elapsed().as_secs_f64());
            let classes = tc::class_stats(&nl, link.index)?.len();
            if classes != expected {
                bail!("shaper built {classes} classes, expected {expected}");
            }
            tc::remove_root_qdisc(&nl, link.index)?;
            let start = Instant::now();
            let status = sandbox
                .a
                .command("tc")
                .arg("-batch")
                .arg(&batch_file)
                .stdout(Stdio::null())
                .status()
                .context("running tc -batch")?;
            base.push(start.elapsed().as_secs_f64());
            if !status.success() {
                bail!("tc -batch failed ({status})");
            }
            let classes = tc::class_stats(&nl, link.index)?.len();
            if classes != expected {
                bail!("tc -batch built {classes} classes, expected {expected}");
            }
            tc::remove_root_qdisc(&nl, link.index)?;
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&batch_file);
    result?;
    let (o, b) = (median(ours), median(base));
    rows.push(Row {
        what: format!("apply an HTB tree of {APPLY_CLASSES} classes + queues (netlink batch vs tc -batch)"),
        shaper: format!("{:.1} ms", o * 1e3),
        baseline: format!("{:.1} ms", b * 1e3),
        ratio: format!("{:.2}", o / b),
    });
    Ok(())
}

fn main() -> Result<()> {
    if let Some(result) = helper::run_if_requested() {
        return result;
    }
    // `cargo bench` passes --bench; other words select sections by name.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let started = Instant::now();
    let mut rows = Vec::new();
    let sections: [(&str, Section); 9] = [
        ("classifier cost, BPF_PROG_TEST_RUN", test_run_cost),
        ("classifier cost, live traffic", live_cost),
        ("throughput", throughput),
        ("rate accuracy", rate_accuracy),
        ("applying 1000 classes", apply),
        ("ingress cost", ingress::cost),
        ("ingress throughput", ingress::throughput),
        ("process decisions", process::decisions),
        ("process scan", process::scan),
    ];
    for (name, section) in sections.into_iter().filter(|(name, _)| wanted(name)) {
        eprintln!("bench: {name} …");
        let t = Instant::now();
        section(&mut rows).with_context(|| format!("benchmark section \"{name}\""))?;
        eprintln!("bench: {name}: {:.0} s", t.elapsed().as_secs_f64());
    }
    let mut table = Table::new(&[("MEASURED", false), ("SHAPER", true), ("BASELINE", true), ("RATIO", true)]);
    for r in rows {
        table.row(vec![r.what, r.shaper, r.baseline, r.ratio]);
    }
    println!(
        "\nbaseline: a do-nothing tc program (cost rows), the bare veth pair (throughput), the configured \
         rate (rate), tc -batch (apply), as each row says (process rows)"
    );
    print!("{}", table.render());
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
