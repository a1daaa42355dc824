//! Helpers shared by the end-to-end test files.
#![allow(dead_code, reason = "each test file uses its own part")]

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use shaper_testkit::sandbox::{Daemon, Netns, Sandbox};
use shaper_user::control::{ClassRow, ConnRow, Direction};

pub const SHAPER: &str = env!("CARGO_BIN_EXE_shaper");
pub const MBIT: f64 = 1e6;

pub fn shaper() -> &'static Path {
    Path::new(SHAPER)
}

/// Runs `cmd` with stdin closed, prints its exit status and output (shown
/// when the test fails) and returns them.
pub fn output(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    println!(
        "{cmd:?}: {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `shaper stop --force` with the daemon's paths, in namespace `ns`.
pub fn stop_force_in(ns: &Netns, daemon: &Daemon) -> Output {
    output(
        ns.command(SHAPER)
            .args(["stop", "--force", "--config"])
            .arg(&daemon.config)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--pin-dir")
            .arg(&daemon.pins)
            .arg("--pid-file")
            .arg(&daemon.pid_file),
    )
}

/// The sandbox's interface at 1 Gbit/s egress (its classes' rates decide).
pub fn interface(sandbox: &Sandbox) -> String {
    format!("[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n", sandbox.dev_a)
}

/// Asserts `measured` is within ±`tolerance` (fraction) of `expected`.
pub fn assert_near(what: &str, measured: f64, expected: f64, tolerance: f64) {
    let ratio = measured / expected;
    assert!(
        (1.0 - tolerance..=1.0 + tolerance).contains(&ratio),
        "{what}: measured {:.2} Mbit/s, expected {:.2} Mbit/s ±{:.0}% (ratio {ratio:.3})",
        measured / MBIT,
        expected / MBIT,
        tolerance * 100.0
    );
}

pub fn classes(daemon: &Daemon) -> Vec<ClassRow> {
    daemon.classes().unwrap()
}

pub fn class<'a>(rows: &'a [ClassRow], name: &str) -> &'a ClassRow {
    rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no class {name} in {rows:#?}"))
}

/// The row of class `name` in `direction`.
pub fn class_in<'a>(rows: &'a [ClassRow], name: &str, direction: Direction) -> &'a ClassRow {
    rows.iter()
        .find(|r| r.name == name && r.direction == direction)
        .unwrap_or_else(|| panic!("no class {name} ({direction}) in {rows:#?}"))
}

/// Names of the interfaces in the sandbox's namespace `a`.
pub fn links(sandbox: &Sandbox) -> Vec<String> {
    let out = sandbox.a.run("ip", &["-o", "link", "show"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect()
}

pub fn qdiscs(sandbox: &Sandbox) -> String {
    let out = sandbox.a.run("tc", &["qdisc", "show", "dev", &sandbox.dev_a]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Programs attached to the sandbox interface (tcx links and tc filters), as the kernel reports them.
pub fn attached_programs(sandbox: &Sandbox) -> Vec<String> {
    sandbox.a.tc_programs(&sandbox.dev_a).unwrap()
}

/// The classes `shaper conns` gives the flows to `remote`.
pub fn classes_of(daemon: &Daemon, remote: &str) -> Vec<String> {
    conns(daemon).into_iter().filter(|c| c.remote == remote).map(|c| c.class).collect()
}

/// Every row of `shaper conns`.
pub fn conns(daemon: &Daemon) -> Vec<ConnRow> {
    daemon.conns().unwrap()
}

/// The rate HTB sent class `name` at over the next `secs` seconds, bits/s (HTB's
/// own counter: independent of the classifier's).
pub fn htb_rate(daemon: &Daemon, name: &str, secs: f64) -> f64 {
    let sent = |rows: &[ClassRow]| class(rows, name).sent_bytes;
    let (t0, b0) = (std::time::Instant::now(), sent(&classes(daemon)));
    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    let (t1, b1) = (std::time::Instant::now(), sent(&classes(daemon)));
    (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
}
