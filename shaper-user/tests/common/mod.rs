//! Helpers shared by the end-to-end test files.
#![allow(dead_code, reason = "each test file uses its own part")]

use std::path::Path;

use serde_json::Value;
use shaper_testkit::sandbox::{Daemon, Sandbox};
use shaper_user::control::Command;

pub const SHAPER: &str = env!("CARGO_BIN_EXE_shaper");
pub const MBIT: f64 = 1e6;

pub fn shaper() -> &'static Path {
    Path::new(SHAPER)
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

pub fn classes(daemon: &Daemon) -> Vec<Value> {
    daemon.call(Command::Classes).unwrap().as_array().cloned().unwrap()
}

pub fn class<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no class {name} in {rows:#?}"))
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
    let conns = daemon.call(Command::Conns).unwrap();
    conns
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["remote"] == remote)
        .map(|c| c["class"].as_str().unwrap().to_string())
        .collect()
}

/// Every row of `shaper conns`.
pub fn conns(daemon: &Daemon) -> Vec<Value> {
    daemon.call(Command::Conns).unwrap().as_array().cloned().unwrap()
}

/// The rate HTB sent class `name` at over the next `secs` seconds, bits/s (HTB's
/// own counter: independent of the classifier's).
pub fn htb_rate(daemon: &Daemon, name: &str, secs: f64) -> f64 {
    let sent = |rows: &[Value]| class(rows, name)["sent_bytes"].as_u64().unwrap();
    let (t0, b0) = (std::time::Instant::now(), sent(&classes(daemon)));
    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    let (t1, b1) = (std::time::Instant::now(), sent(&classes(daemon)));
    (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
}
