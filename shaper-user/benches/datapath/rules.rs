//! Section 4: rule-set scale. 10, 100 and 1 000 rules, in the kernel table
//! and in the daemon:
//! - a new flow's first packet walks the kernel table (BPF_PROG_TEST_RUN,
//!   one run per distinct flow), next to a u32 chain of the same length, which
//!   every packet walks (live, from section 1);
//! - later packets of a known flow (live, from section 1);
//! - the daemon's per-flow decision with process facts (its own code, timed
//!   in this process), next to the same at 10 rules.

use std::{hint::black_box, path::Path, time::Instant};

use anyhow::{Context as _, Result};
use serde_json::json;
use shaper_common::{names, IfaceInfo, PROTO_TCP};
use shaper_user::{
    config,
    datapath::{Datapath, LoadOptions},
    packets::Frame,
    rules::{
        self,
        compile::NoCgroups,
        pred::{Facts, ProcessFacts},
        SystemEnv,
    },
};

use super::{
    classify::{self, Measured},
    ip,
    report::{Figure, Report, Row, Unit},
};

const SAMPLES: u16 = 10_000;
const USER_FLOWS: usize = 20_000;

/// `n` classes with a rule each, as a site might write them: ports, addresses,
/// programs and users; the measured flow matches none of them (the whole walk).
fn config_text(n: usize) -> String {
    let mut text = String::from("[[interface]]\nname = \"shp-a\"\negress = \"100gbit\"\n");
    for i in 0..n {
        let rule = match i % 4 {
            0 => format!("proto == \"tcp\" and rport == {}", 10_000 + i),
            1 => format!("raddr in 10.{}.{}.0/24 and lport > 1024", i / 256 % 256, i % 256),
            2 => format!("cmd == \"prog{i}\" and rport in 20000..20999"),
            _ => format!("exe == \"/usr/bin/tool{i}\" or args ~ \"*--job={i}*\""),
        };
        text.push_str(&format!("[[class]]\nname = \"r{i}\"\nmatch = '{rule}'\n"));
    }
    text
}

/// Mean BPF_PROG_TEST_RUN time of a flow's first packet with `n` rules loaded.
fn first_packet_ns(n: usize) -> Result<f64> {
    let conf = config::parse(Path::new("bench.toml"), &config_text(n), &SystemEnv::load().env())?;
    let mut dp = Datapath::load(LoadOptions { max_flows: 131_072, kernel_log_level: 0, pins: None })
        .context("loading the eBPF object (are you root?)")?;
    dp.set_rules(&conf.compile_rules(&NoCgroups)?)?;
    let mut info = IfaceInfo::new(0, 0, 14);
    for class in 0..conf.classes.len() as u32 {
        info.add_class(class);
    }
    // BPF_PROG_TEST_RUN runs the program as if on `lo` (ifindex 1).
    dp.set_iface(1, &info)?;
    let mut frame = Frame::tcp(ip("198.18.0.1"), 40_000, ip("198.18.0.2"), 5201);
    frame.payload = 1448;
    let mut total = 0f64;
    for i in 0..SAMPLES {
        let mut f = frame.clone();
        f.sport = 1024 + i;
        total += dp.test_run(names::PROG_TC_EGRESS, &f.build(), 1, 1)?.duration.as_nanos() as f64;
    }
    Ok(total / f64::from(SAMPLES))
}

/// Mean time of the daemon's decision for one flow with `n` rules (ns).
fn userspace_ns(n: usize) -> Result<f64> {
    let conf = config::parse(Path::new("bench.toml"), &config_text(n), &SystemEnv::load().env())?;
    let rules: Vec<(u16, &rules::Pred)> =
        conf.classes.iter().filter_map(|c| c.rule.as_ref().map(|r| (c.index, &r.pred))).collect();
    let process = ProcessFacts {
        pid: 4242,
        uid: 1000,
        gid: 1000,
        user: Some("alice".into()),
        group: Some("alice".into()),
        cmd: "rsync".into(),
        exe: Some("/usr/bin/rsync".into()),
        args: Some(vec!["rsync".into(), "-a".into(), "/home/alice/".into(), "backup:/srv/alice/".into()]),
        cgroup: Some("/user.slice/user-1000.slice/session-3.scope".into()),
        ancestors: Some(vec!["bash".into(), "sshd".into(), "systemd".into()]),
    };
    let remote: std::net::SocketAddr = "198.18.0.2:873".parse()?;
    let keys = (0..USER_FLOWS)
        .map(|i| {
            let local = format!("198.18.0.1:{}", 30_000 + i % 30_000).parse()?;
            Ok(shaper_user::flows::key(PROTO_TCP, local, remote))
        })
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let mut matched = 0usize;
    for key in &keys {
        matched += usize::from(
            rules::first_match(&rules, black_box(&Facts { key, process: Some(&process) })).is_some(),
        );
    }
    let ns = start.elapsed().as_nanos() as f64 / USER_FLOWS as f64;
    anyhow::ensure!(matched == 0, "the measured flows were meant to match no rule");
    Ok(ns)
}

pub fn run(report: &mut Report, live: Option<&Measured>) -> Result<()> {
    const S: &str = "4. rule-set scale";
    let mut kernel = Vec::new();
    let mut user = Vec::new();
    for &n in &classify::COUNTS {
        kernel.push((n, first_packet_ns(n)?));
        user.push((n, userspace_ns(n)?));
    }
    for &(n, ns) in &kernel {
        // u32 walks its chain for every packet: what the chain adds over no classifier.
        let peer =
            live.and_then(|m| m.u32_added.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)).unwrap_or(f64::NAN);
        report.push(Row::new(
            S,
            format!("a new flow's first packet, {n} rules walked (BPF_PROG_TEST_RUN); u32: every packet, sender CPU over none"),
            Figure::new(ns, Unit::Nanos),
            &format!("u32, {n} filters"),
            Figure::new(peer, Unit::Nanos),
        ));
    }
    if let Some(m) = live {
        for &(n, cpu) in &m.shaper_rules_cpu {
            let peer = m.u32_cpu.iter().find(|(k, _)| *k == n).map_or(f64::NAN, |(_, v)| *v);
            report.push(Row::new(
                S,
                format!("sender CPU per 64 B UDP packet of a known flow, {n} rules"),
                Figure::new(cpu, Unit::Nanos),
                &format!("u32, {n} filters"),
                Figure::new(peer, Unit::Nanos),
            ));
        }
    }
    let base = user.first().map_or(f64::NAN, |u| u.1);
    for &(n, ns) in &user {
        report.push(Row::new(
            S,
            format!(
                "the daemon's decision for one flow with process facts, {n} rules (no match: the whole list)"
            ),
            Figure::new(ns, Unit::Nanos),
            &format!("shaper, {} rules", classify::COUNTS[0]),
            Figure::new(base, Unit::Nanos),
        ));
    }
    report.detail("rules", json!({ "first_packet_ns": kernel, "daemon_decision_ns": user }));
    Ok(())
}
