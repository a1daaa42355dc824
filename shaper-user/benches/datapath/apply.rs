//! Section 6: applying configuration. A running daemon goes from one class
//! to 1 000 classes, each with a rule (`shaper reload`), then one class's rate
//! changes live (`shaper set`); both timed as the user sees them, from the
//! command's start to its exit. The peers build the same HTB tree and leaf
//! queues with one u32 filter per class (what the rules do): `tc -batch`,
//! and one `tc` process per command, as pyshaper and classic shell scripts
//! ran it; the rate change is one `tc class change`.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use shaper_testkit::sandbox::{Daemon, Sandbox};
use shaper_user::{
    config,
    control::{ClassRow, Command as Request},
    plan,
    rules::SystemEnv,
    tc,
};

use super::{
    call, in_netns, median,
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

const S: &str = "6. config apply";
const CLASSES: usize = 1000;
const SET_ROUNDS: usize = 5;
const BATCH_ROUNDS: usize = 3;
/// The class whose rate changes.
const CHANGED: usize = 500;

fn config_text(dev: &str, classes: usize) -> String {
    let mut text = format!("[[interface]]\nname = \"{dev}\"\negress = \"10gbit\"\n");
    for i in 0..classes {
        text.push_str(&format!(
            "[[class]]\nname = \"c{i}\"\negress = {{ rate = \"1mbit\", ceil = \"100mbit\" }}\nmatch = 'rport == {}'\n",
            10_000 + i
        ));
    }
    text
}

/// Runs the `shaper` CLI against `daemon` and returns its wall time in ms.
fn cli(daemon: &Daemon, args: &[&str]) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new(SHAPER)
        .args(args)
        .arg("--socket")
        .arg(&daemon.socket)
        .stdin(Stdio::null())
        .output()
        .context("running shaper")?;
    let took = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!("shaper {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(took)
}

/// The tc commands that build the same tree as `plan`, a u32 filter per class.
fn tc_commands(dev: &str, plan: &tc::HtbPlan) -> Vec<String> {
    let mut out = vec![format!("qdisc add dev {dev} root handle 1: htb default {:x}", plan.default_minor)];
    let class = |c: &tc::HtbClass, parent: &str| {
        format!(
            "class add dev {dev} parent {parent} classid 1:{:x} htb rate {}bit ceil {}bit burst {}b cburst {}b quantum {} prio {}",
            c.minor, c.rate_bps, c.ceil_bps, c.burst_bytes, c.cburst_bytes, c.quantum, c.prio
        )
    };
    out.push(class(&plan.root, "1:"));
    for (i, leaf) in plan.leaves.iter().enumerate() {
        out.push(class(&leaf.class, &format!("1:{:x}", leaf.parent)));
        let Some(queue) = leaf.queue.tc_spec() else { continue };
        out.push(format!(
            "qdisc add dev {dev} parent 1:{:x} handle {:x}: {}",
            leaf.class.minor, leaf.class.minor, queue
        ));
        if i < CLASSES {
            out.push(format!(
                "filter add dev {dev} parent 1: protocol ip prio 1 u32 match ip dport {} 0xffff flowid 1:{:x}",
                10_000 + i,
                leaf.class.minor
            ));
        }
    }
    out
}

/// Runs `lines` through one `tc -batch` in namespace `a`.
fn tc_batch(sandbox: &Sandbox, lines: &[String]) -> Result<()> {
    let file = std::env::temp_dir().join(format!("shaper-bench-{}-{}.tc", sandbox.tag, std::process::id()));
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let result = sandbox.a.run("tc", &["-batch", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    result?;
    Ok(())
}

/// Times `f` and checks that the tree it built has `expected` HTB classes.
fn timed_build(sandbox: &Sandbox, expected: usize, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    let took = start.elapsed().as_secs_f64() * 1e3;
    let out = sandbox.a.run("tc", &["class", "show", "dev", &sandbox.dev_a])?;
    let classes = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("class htb")).count();
    if classes != expected {
        bail!("built {classes} HTB classes, expected {expected}");
    }
    sandbox.a.run("tc", &["qdisc", "del", "dev", &sandbox.dev_a, "root"])?;
    Ok(took)
}

pub fn run(report: &mut Report) -> Result<()> {
    // shaper: reload from one class to 1000, then `set` one rate, on a live daemon.
    let sandbox = Sandbox::new("bapply")?;
    let daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config_text(&sandbox.dev_a, 1))?;
    std::fs::write(&daemon.config, config_text(&sandbox.dev_a, CLASSES)).context("writing the config")?;
    let reload_ms = cli(&daemon, &["reload"])?;
    let rows: Vec<ClassRow> = call(&daemon, Request::Classes)?;
    // The classes and the implicit default.
    if rows.len() != CLASSES + 1 {
        bail!("after the reload the daemon has {} classes, expected {}", rows.len(), CLASSES + 1);
    }
    let changed = format!("c{CHANGED}");
    let mut set_ms = Vec::new();
    for round in 0..SET_ROUNDS {
        let ceil = 50 + round;
        set_ms.push(cli(&daemon, &["set", &changed, "--egress", &format!("2mbit:{ceil}mbit")])?);
        let out = sandbox.a.run("tc", &["class", "show", "dev", &sandbox.dev_a])?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.lines().any(|l| l.contains(&format!("ceil {ceil}Mbit"))) {
            bail!("after `shaper set` no HTB class has ceil {ceil}Mbit");
        }
    }
    drop(daemon);

    // The peers, on the same interface, with the same tree the daemon built.
    let conf = config::parse(
        Path::new("bench.toml"),
        &config_text(&sandbox.dev_a, CLASSES),
        &SystemEnv::load().env(),
    )?;
    let iface = conf.interfaces.first().ok_or_else(|| anyhow!("no interface"))?;
    let plan = plan::plan(&conf, &conf.class_ids_in_file_order(), iface, plan::Direction::Egress, 1500)
        .ok_or_else(|| anyhow!("no plan"))?;
    let expected = plan.htb.leaves.len() + 1;
    let commands = tc_commands(&sandbox.dev_a, &plan.htb);
    let tree: Vec<String> = commands.iter().filter(|c| !c.starts_with("filter")).cloned().collect();
    let (mut batch_ms, mut tree_ms, mut netlink_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BATCH_ROUNDS {
        batch_ms.push(timed_build(&sandbox, expected, || tc_batch(&sandbox, &commands))?);
        tree_ms.push(timed_build(&sandbox, expected, || tc_batch(&sandbox, &tree))?);
        // shaper's own netlink batch (the tree alone, without the daemon around it).
        netlink_ms.push(timed_build(&sandbox, expected, || {
            in_netns(&sandbox.a, || {
                let nl = tc::Netlink::open()?;
                let link =
                    tc::link_by_name(&nl, &sandbox.dev_a)?.ok_or_else(|| anyhow!("no {}", sandbox.dev_a))?;
                Ok(tc::install_htb(
                    &nl,
                    link.index,
                    &plan.htb,
                    shaper_user::owned::Record::new(link.index, "").tag,
                )?)
            })
        })?);
    }
    // One process per command, once: it takes seconds.
    let each_ms = timed_build(&sandbox, expected, || {
        for line in &commands {
            let args: Vec<&str> = line.split_whitespace().collect();
            sandbox.a.run("tc", &args)?;
        }
        Ok(())
    })?;
    // One rate changed with tc, in the same tree.
    let leaf = plan.htb.leaves.get(CHANGED).ok_or_else(|| anyhow!("no leaf {CHANGED}"))?;
    tc_batch(&sandbox, &commands)?;
    let classid = format!("1:{:x}", leaf.class.minor);
    let mut change_ms = Vec::new();
    for round in 0..SET_ROUNDS {
        let ceil = format!("{}mbit", 50 + round);
        let args = ["class", "change", "dev", &sandbox.dev_a, "parent", "1:1", "classid", &classid, "htb"];
        let start = Instant::now();
        sandbox.a.run("tc", &[&args[..], &["rate", "2mbit", "ceil", &ceil]].concat())?;
        change_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    sandbox.a.run("tc", &["qdisc", "del", "dev", &sandbox.dev_a, "root"])?;

    let ms = |v: f64| Figure::new(v, Unit::Millis);
    let (set, batch, change) = (median(set_ms.clone()), median(batch_ms.clone()), median(change_ms.clone()));
    let what = format!("{CLASSES} classes with a rule each created on a live host");
    report.push(Row::new(
        S,
        format!("{what} (`shaper reload`)"),
        ms(reload_ms),
        "tc -batch, u32 filters",
        ms(batch),
    ));
    report.push(Row::new(S, format!("{what}, the same"), ms(reload_ms), "one tc per command", ms(each_ms)));
    report.push(Row::new(
        S,
        format!("one class's rate changed live among {CLASSES} (`shaper set`, median of {SET_ROUNDS})"),
        ms(set),
        "tc class change",
        ms(change),
    ));
    report.push(Row::new(
        S,
        format!("the HTB tree of {CLASSES} classes + queues alone: shaper's netlink batch"),
        ms(median(netlink_ms.clone())),
        "tc -batch (no filters)",
        ms(median(tree_ms.clone())),
    ));
    report.detail(
        "apply",
        json!({ "reload_ms": reload_ms, "set_ms": set_ms, "tc_batch_ms": batch_ms, "tc_batch_tree_ms": tree_ms, "netlink_ms": netlink_ms,
                "tc_each_ms": each_ms, "tc_change_ms": change_ms }),
    );
    Ok(())
}
