//! Section 4: rule-set scale. 10, 1 000 and 10 000 rules, in the kernel and
//! in the daemon, each next to the figure with 10 rules:
//! - a new flow's first packet (BPF_PROG_TEST_RUN, one run per distinct
//!   flow) when no rule matches (the worst case for a linear walk) and when
//!   the last rule does; the same table walked linearly, for reference;
//! - the daemon's decision for a flow of a process it has seen (no match,
//!   last rule), its first decision for a new process (whose userspace tests
//!   it evaluates once), and the predicate-by-predicate decision it made
//!   before the shared engine, for reference;
//! - later packets of a known flow (live, from section 1).
//!
//! A config holds at most 1 024 classes, one `match` each; the engine does not
//! tie rules to classes, so the rule sets here are compiled through the
//! library, rule `i` giving class `i % 1000`.

use std::{hint::black_box, time::Instant};

use anyhow::{Context as _, Result};
use serde_json::json;
use shaper_common::{names, FlowKey, IfaceInfo, CLASS_DEFAULT, PROTO_TCP};
use shaper_testkit::{packets::Frame, TestRunExt as _};
use shaper_user::{
    datapath::{Datapath, LoadOptions},
    rules::{
        compile::{self, Compiled, Mode, NoCgroups},
        first_match,
        pred::{Facts, ProcessFacts},
        Pred, Rule, SystemEnv,
    },
};

use super::{
    classify::Measured,
    ip, median,
    report::{Figure, Report, Row, Unit},
};

const SCALES: [usize; 3] = [10, 1000, 10_000];
const SAMPLES: u16 = 10_000;
const LINEAR_SAMPLES: u16 = 1000;
/// Each figure is the median of this many rounds.
const ROUNDS: u8 = 3;
const USER_FLOWS: usize = 20_000;
const NEW_PROCESSES: u32 = 200;
/// The measured flows' remote port: no rule has it.
const MISS_PORT: u16 = 5201;
/// The last rule's port.
const LAST_PORT: u16 = 5202;

/// Rule `i` of `n`, as a site might write them: ports, addresses, programs and
/// users, exe and args; the last matches `LAST_PORT`.
fn rule_text(i: usize, n: usize) -> String {
    if i + 1 == n {
        return format!("rport == {LAST_PORT} and raddr == 198.18.0.2");
    }
    match i % 5 {
        0 => format!("proto == \"tcp\" and rport == {}", 10_000 + i),
        1 => format!("raddr in 10.{}.{}.0/24 and lport > 1024", i / 256 % 256, i % 256),
        2 => format!("cmd == \"prog{i}\" and rport in 20000..20999"),
        3 => format!("uid == {} and rport in 30000..30999", 2000 + i),
        _ => format!("exe == \"/usr/bin/tool{i}\" or args ~ \"*--job={i}*\""),
    }
}

/// `n` parsed rules, class `i % 1000` each.
fn rule_set(n: usize) -> Result<Vec<(u16, Rule)>> {
    let env = SystemEnv::load();
    (0..n)
        .map(|i| {
            let rule = Rule::parse(&rule_text(i, n), &env.env()).context("a bench rule")?;
            Ok(((i % 1000) as u16, rule))
        })
        .collect()
}

fn preds(rules: &[(u16, Rule)]) -> Vec<(u16, &Pred)> {
    rules.iter().map(|(c, r)| (*c, &r.pred)).collect()
}

/// The datapath with `table` loaded and `lo` registered with every class.
fn datapath(table: &Compiled) -> Result<Datapath> {
    let mut dp = Datapath::load(LoadOptions { max_flows: 131_072, kernel_log_level: 0, pins: None })
        .context("loading the eBPF object (are you root?)")?;
    dp.set_rules(table)?;
    let mut info = IfaceInfo::new(0, 1023, 14);
    for class in 0..1024 {
        info.add_class(class);
    }
    // BPF_PROG_TEST_RUN runs the program as if on `lo` (ifindex 1).
    dp.set_iface(1, &info)?;
    Ok(dp)
}

/// Mean BPF_PROG_TEST_RUN time of the first packet of `samples` new flows to
/// `port`, from local address 198.18.`net`.x (distinct per measurement).
fn first_packet_ns(dp: &mut Datapath, port: u16, samples: u16, net: u8) -> Result<f64> {
    let mut frame = Frame::tcp(ip(&format!("198.18.{net}.1")), 40_000, ip("198.18.0.2"), port);
    frame.payload = 1448;
    let mut total = 0f64;
    for i in 0..samples {
        frame.sport = 1024 + i;
        total += dp.test_run(names::PROG_TC_EGRESS, &frame.build(), 1, 1)?.duration.as_nanos() as f64;
    }
    Ok(total / f64::from(samples))
}

/// Kernel figures for `n` rules: (no match, last rule, linear walk, no match).
fn kernel(n: usize, rules: &[(u16, Rule)], net: &mut u8) -> Result<(f64, f64, f64)> {
    let table = compile::compile(&preds(rules), &NoCgroups)?;
    let mut indexed = datapath(&table)?;
    let mut linear = datapath(&table.clone().with_mode(Mode::Linear))?;
    let (mut miss, mut last, mut walk) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = || {
        *net = net.wrapping_add(1);
        *net
    };
    // Warm-up, untimed.
    first_packet_ns(&mut indexed, MISS_PORT, SAMPLES / 10, next())?;
    first_packet_ns(&mut linear, MISS_PORT, LINEAR_SAMPLES / 10, next())?;
    for _ in 0..ROUNDS {
        miss.push(first_packet_ns(&mut indexed, MISS_PORT, SAMPLES, next())?);
        last.push(first_packet_ns(&mut indexed, LAST_PORT, SAMPLES, next())?);
        walk.push(first_packet_ns(&mut linear, MISS_PORT, LINEAR_SAMPLES, next())?);
    }
    eprintln!("bench: rules: kernel, {n} rules: {miss:.0?} / {last:.0?} / linear {walk:.0?} ns");
    Ok((median(miss), median(last), median(walk)))
}

fn process(pid: u32) -> ProcessFacts {
    ProcessFacts {
        pid,
        uid: Some(1000),
        gid: Some(1000),
        user: Some("alice".into()),
        group: Some("alice".into()),
        cmd: Some("rsync".into()),
        exe: Some("/usr/bin/rsync".into()),
        args: Some(vec!["rsync".into(), "-a".into(), "/home/alice/".into(), "backup:/srv/alice/".into()]),
        cgroup: Some("/user.slice/user-1000.slice/session-3.scope".into()),
        ancestors: Some(vec!["bash".into(), "sshd".into(), "systemd".into()]),
    }
}

fn keys(port: u16) -> Result<Vec<FlowKey>> {
    let remote = format!("198.18.0.2:{port}").parse()?;
    (0..USER_FLOWS)
        .map(|i| {
            let local = format!("198.18.0.1:{}", 30_000 + i % 30_000).parse()?;
            Ok(shaper_user::flows::key(PROTO_TCP, local, remote))
        })
        .collect()
}

/// Mean ns of `decide` over `keys`, the median of `ROUNDS` passes (after a
/// tenth of them untimed, to warm up), checking what it decided.
fn per_flow(keys: &[FlowKey], expect: Option<u16>, decide: impl Fn(&FlowKey) -> Option<u16>) -> Result<f64> {
    for key in &keys[..keys.len() / 10] {
        black_box(decide(black_box(key)));
    }
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut wrong = 0usize;
        for key in keys {
            wrong += usize::from(decide(black_box(key)) != expect);
        }
        rounds.push(start.elapsed().as_nanos() as f64 / keys.len() as f64);
        anyhow::ensure!(wrong == 0, "{wrong} flows decided otherwise than meant");
    }
    Ok(median(rounds))
}

/// Daemon figures for `n` rules (ns): known process, no match and last rule;
/// a new process's first decision; the predicate-by-predicate decision.
fn daemon(n: usize, rules: &[(u16, Rule)]) -> Result<[f64; 4]> {
    let list = preds(rules);
    let table = compile::compile(&list, &NoCgroups)?;
    let last_class = Some(((n - 1) % 1000) as u16);
    let known = process(4242);
    let decide = |key: &FlowKey, p: &ProcessFacts| {
        Some(table.decide(key, Some(p)).class).filter(|c| *c != CLASS_DEFAULT)
    };
    let (misses, lasts) = (keys(MISS_PORT)?, keys(LAST_PORT)?);
    let miss = per_flow(&misses, None, |k| decide(k, &known))?;
    let last = per_flow(&lasts, last_class, |k| decide(k, &known))?;
    let processes: Vec<ProcessFacts> = (0..NEW_PROCESSES).map(|i| process(100_000 + i)).collect();
    let start = Instant::now();
    for (key, p) in misses.iter().zip(&processes) {
        anyhow::ensure!(decide(black_box(key), p).is_none(), "a new process's flow matched");
    }
    let new_process = start.elapsed().as_nanos() as f64 / f64::from(NEW_PROCESSES);
    let before = per_flow(&misses[..USER_FLOWS / 10], None, |k| {
        first_match(&list, &Facts { key: k, process: Some(&known) })
    })?;
    eprintln!("bench: rules: daemon, {n} rules: {miss:.0} / {last:.0} / new {new_process:.0} / before {before:.0} ns");
    Ok([miss, last, new_process, before])
}

pub fn run(report: &mut Report, live: Option<&Measured>) -> Result<()> {
    const S: &str = "4. rule-set scale";
    let (mut kernel_rows, mut daemon_rows) = (Vec::new(), Vec::new());
    let mut net = 0u8;
    for &n in &SCALES {
        let rules = rule_set(n)?;
        kernel_rows.push((n, kernel(n, &rules, &mut net)?));
        daemon_rows.push((n, daemon(n, &rules)?));
    }
    let ns = |v: f64| Figure::new(v, Unit::Nanos);
    let base = SCALES[0];
    let at_base = format!("{base} rules");
    if let Some(&(_, (miss10, last10, _))) = kernel_rows.first() {
        for &(n, (miss, last, walk)) in &kernel_rows {
            report.push(Row::new(
                S,
                format!("a new flow's first packet, {n} rules, none matches (BPF_PROG_TEST_RUN)"),
                ns(miss),
                &at_base,
                ns(miss10),
            ));
            report.push(Row::new(
                S,
                format!("a new flow's first packet, {n} rules, the last matches"),
                ns(last),
                &at_base,
                ns(last10),
            ));
            report.push(Row::new(
                S,
                format!("the same, none matches, the {n} rules walked one by one (linear reference)"),
                ns(walk),
                &format!("indexed, {n} rules"),
                ns(miss),
            ));
        }
    }
    if let Some(m) = live {
        // u32 walks its chain for every packet: what the chain adds over no classifier.
        for &(n, added) in &m.u32_added {
            if let Some(&(_, (miss, _, _))) = kernel_rows.iter().find(|(k, _)| *k == n) {
                report.push(Row::new(
                    S,
                    format!("a new flow's first packet, {n} rules; u32: every packet, sender CPU over none"),
                    ns(miss),
                    &format!("u32, {n} filters"),
                    ns(added),
                ));
            }
        }
        for &(n, cpu) in &m.shaper_rules_cpu {
            let peer = m.u32_cpu.iter().find(|(k, _)| *k == n).map_or(f64::NAN, |(_, v)| *v);
            report.push(Row::new(
                S,
                format!("sender CPU per 64 B UDP packet of a known flow, {n} rules"),
                ns(cpu),
                &format!("u32, {n} filters"),
                ns(peer),
            ));
        }
    }
    if let Some(&(_, [miss10, last10, new10, _])) = daemon_rows.first() {
        for &(n, [miss, last, new_process, before]) in &daemon_rows {
            report.push(Row::new(
                S,
                format!("the daemon's decision for a flow of a known process, {n} rules, none matches"),
                ns(miss),
                &at_base,
                ns(miss10),
            ));
            report.push(Row::new(
                S,
                format!("the daemon's decision for a flow of a known process, {n} rules, the last matches"),
                ns(last),
                &at_base,
                ns(last10),
            ));
            report.push(Row::new(
                S,
                format!(
                    "the daemon's first decision for a new process (its exe/args tests evaluated), {n} rules"
                ),
                ns(new_process),
                &at_base,
                ns(new10),
            ));
            report.push(Row::new(S, format!("the daemon's decision before the shared engine (predicate by predicate), {n} rules, none matches"), ns(before), &format!("now, {n} rules"), ns(miss)));
        }
    }
    report.detail("rules", json!({ "kernel_ns": kernel_rows, "daemon_ns": daemon_rows }));
    Ok(())
}
