//! Teardown without a daemon: a start that fails part way removes exactly
//! what it made, and `shaper stop --force` takes shaping down after `kill -9`,
//! with a config that no longer loads and an interface gone, leaving what is
//! not shaper's.
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{process::Output, time::Duration};

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Sandbox},
};

mod common;

use common::*;

/// A second veth pair inside namespace `a` (`shp-c`, peer `shp-d`), up;
/// returns the ifindex of `shp-c`.
fn second_interface(sandbox: &Sandbox) -> u32 {
    sandbox.a.run("ip", &["link", "add", "shp-c", "type", "veth", "peer", "name", "shp-d"]).unwrap();
    for dev in ["shp-c", "shp-d"] {
        sandbox.a.run("ip", &["link", "set", dev, "up"]).unwrap();
    }
    ifindex(sandbox, "shp-c")
}

fn ifindex(sandbox: &Sandbox, dev: &str) -> u32 {
    let out = sandbox.a.run("ip", &["-o", "link", "show", dev]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("{text}"))
}

/// Every qdisc and interface in namespace `a`.
fn host_state(sandbox: &Sandbox) -> String {
    let qdiscs = sandbox.a.run("tc", &["qdisc", "show"]).unwrap();
    let links = sandbox.a.run("ip", &["-o", "link", "show"]).unwrap();
    let links: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        // "7: shp-c@shp-d: <flags> mtu … qdisc noqueue state UP …": index, name, qdisc, state.
        .map(|l| l.split(" link/").next().unwrap_or(l).to_string())
        .collect();
    format!("{}{}\n", String::from_utf8_lossy(&qdiscs.stdout), links.join("\n"))
}

fn config(devs: &[&str]) -> String {
    let mut text = String::new();
    for dev in devs {
        text.push_str(&format!(
            "[[interface]]\nname = \"{dev}\"\negress = \"1gbit\"\ningress = \"1gbit\"\n\n"
        ));
    }
    text + "[[class]]\nname = \"bulk\"\negress = \"10mbit\"\ningress = \"10mbit\"\nmatch = 'rport == 5201'\n"
}

/// `shaper stop --force` with the daemon's paths, in namespace `a`.
fn stop_force(sandbox: &Sandbox, daemon: &Daemon) -> Output {
    stop_force_in(&sandbox.a, daemon)
}

#[test]
fn a_start_that_fails_on_the_second_interface_removes_exactly_what_it_made() {
    require_root!();
    let sandbox = Sandbox::new("tdfail").unwrap();
    let second = second_interface(&sandbox);
    // The name shaper gives the second interface's IFB is taken by a device
    // shaper did not make: the start fails there, after the first interface
    // got its trees and IFB and the second its egress tree.
    let taken = format!("shpifb{second}");
    sandbox.a.run("ip", &["link", "add", &taken, "type", "ifb"]).unwrap();
    let before = host_state(&sandbox);

    let mut daemon = Daemon::spawn(&sandbox, shaper(), &config(&[&sandbox.dev_a, "shp-c"]), &[]).unwrap();
    let Ok(status) = daemon.wait(Duration::from_secs(30)) else {
        panic!("shaper started, taking {taken} for its own:\n{}", host_state(&sandbox));
    };
    let log = daemon.log_text();
    assert!(!status.success(), "{log}");
    let expected = format!("a device named {taken} exists that shaper did not create");
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert_eq!(host_state(&sandbox), before, "the host differs from before the start");
    assert!(attached_programs(&sandbox).is_empty());
    assert!(sandbox.cgroup.attached_programs().unwrap().is_empty());
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
    assert!(!daemon.pins.exists(), "the pin directory is left");
}

#[test]
fn stop_force_after_kill_9_a_broken_config_and_a_deleted_interface_removes_everything() {
    require_root!();
    let sandbox = Sandbox::new("tdforce").unwrap();
    let before = qdiscs(&sandbox);
    let second = second_interface(&sandbox);
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&[&sandbox.dev_a, "shp-c"])).unwrap();
    let first = ifindex(&sandbox, &sandbox.dev_a);
    let shaping = host_state(&sandbox);
    for ifb in [format!("shpifb{first}"), format!("shpifb{second}")] {
        assert!(shaping.contains(&ifb), "{shaping}");
    }
    assert!(!sandbox.cgroup.attached_programs().unwrap().is_empty());

    daemon.kill().unwrap();
    std::fs::write(&daemon.config, "[[interface]\nthis is not a config").unwrap();
    sandbox.a.run("ip", &["link", "del", "shp-c"]).unwrap();
    assert!(!attached_programs(&sandbox).is_empty(), "the classifier went with the daemon");

    // From another network namespace (where ifindex 2 is another device): refused, nothing touched.
    let (state, pinned) = (host_state(&sandbox), daemon.pinned());
    let out = stop_force_in(&sandbox.b, &daemon);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in another network namespace"));
    assert_eq!((host_state(&sandbox), daemon.pinned()), (state, pinned));

    let out = stop_force(&sandbox, &daemon);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for removed in [
        format!("HTB root 1: on {}", sandbox.dev_a),
        format!("IFB shpifb{first}"),
        format!("IFB shpifb{second}"),
        format!("classifier tc_ingress on {} (ifindex {first})", sandbox.dev_a),
        "socket hook connect4".to_string(),
    ] {
        assert!(stdout.contains(&removed), "`{removed}` not in the summary");
    }
    assert_eq!(qdiscs(&sandbox), before, "{} is not restored", sandbox.dev_a);
    assert!(attached_programs(&sandbox).is_empty());
    assert!(sandbox.cgroup.attached_programs().unwrap().is_empty(), "socket hooks left on the cgroup");
    assert!(!links(&sandbox).iter().any(|l| l.starts_with("shpifb")), "{:?}", links(&sandbox));
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
    assert!(!daemon.pins.exists(), "the pin directory is left");
}

#[test]
fn stop_force_with_nothing_to_do_says_so_and_leaves_an_admins_tree() {
    require_root!();
    let sandbox = Sandbox::new("tdnone").unwrap();
    let dev = &sandbox.dev_a;
    for cmd in [
        format!("qdisc add dev {dev} root handle 1: htb default 10"),
        format!("class add dev {dev} parent 1: classid 1:1 htb rate 100mbit"),
        format!("class add dev {dev} parent 1:1 classid 1:10 htb rate 20mbit"),
    ] {
        sandbox.a.run("tc", &cmd.split_whitespace().collect::<Vec<_>>()).unwrap();
    }
    let daemon = Daemon::prepare(&sandbox, shaper(), &config(&[dev])).unwrap();
    let before = host_state(&sandbox);
    let out = stop_force(&sandbox, &daemon);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no daemon running"), "{stdout}");
    assert!(stdout.contains("nothing of shaper's to remove"), "{stdout}");
    assert_eq!(host_state(&sandbox), before);
}

#[test]
fn a_takeover_that_fails_on_a_new_interface_removes_only_that_and_stop_force_the_rest() {
    require_root!();
    let sandbox = Sandbox::new("tdtake").unwrap();
    let before = host_state(&sandbox);
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&[&sandbox.dev_a])).unwrap();
    let (shaping, pinned) = (host_state(&sandbox), daemon.pinned());
    daemon.kill().unwrap();
    // The next daemon is also given shp-c, whose IFB name is taken.
    let second = second_interface(&sandbox);
    let taken = format!("shpifb{second}");
    sandbox.a.run("ip", &["link", "add", &taken, "type", "ifb"]).unwrap();
    let with_second = host_state(&sandbox);
    std::fs::write(&daemon.config, config(&[&sandbox.dev_a, "shp-c"])).unwrap();
    let err = daemon.restart().unwrap_err().to_string();
    assert!(err.contains(&format!("a device named {taken} exists that shaper did not create")), "{err}");
    // shp-c is as it was; shp-a is still shaped as the first daemon left it.
    assert_eq!(host_state(&sandbox), with_second);
    assert!(shaping.lines().all(|l| with_second.contains(l) || l.contains("shp-c")), "{shaping}");
    assert_eq!(daemon.pinned(), pinned, "the pinned state of the first daemon changed");

    let out = stop_force(&sandbox, &daemon);
    assert!(out.status.success());
    let after = host_state(&sandbox);
    let expected: Vec<&str> = before.lines().collect();
    let kept: Vec<&str> = after
        .lines()
        .filter(|l| !l.contains("shp-c") && !l.contains("shp-d") && !l.contains(&taken))
        .collect();
    assert_eq!(kept, expected, "shp-a is not restored");
    assert!(after.contains(&taken), "the device shaper did not make is gone");
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
}

#[test]
fn stop_force_stops_a_daemon_that_answers_first() {
    require_root!();
    let sandbox = Sandbox::new("tdlive").unwrap();
    let before = host_state(&sandbox);
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&[&sandbox.dev_a])).unwrap();
    let pid = daemon.status().unwrap().pid;
    let out = stop_force(&sandbox, &daemon);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("stopped the daemon (pid {pid})")), "{stdout}");
    assert!(stdout.contains("nothing of shaper's to remove"), "the daemon left something: {stdout}");
    daemon.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(host_state(&sandbox), before);
    assert!(daemon.pinned().is_empty());
}
