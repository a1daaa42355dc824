//! Facts the daemon cannot read are unknown, not false: a flow keeps its
//! class when the process behind it can no longer be read.
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Sandbox},
};

mod common;

use common::*;

/// The class `conns` gives the flow to `remote`, once there is one.
fn class_of(daemon: &Daemon, remote: &str) -> Option<String> {
    classes_of(daemon, remote).into_iter().next()
}

/// Item 6: the process that made a socket exits and stays a zombie (its
/// parent, this test, does not reap it) while a child it forked keeps using
/// the socket. The zombie's /proc entry lives on with no arguments and no
/// executable: `args ~ "*shp-keep*"` is unknown for it, not false, and the
/// reconcile must not move the flow to the class of `not args ~ …`.
#[test]
fn a_flow_whose_process_can_no_longer_be_read_keeps_its_class() {
    require_root!();
    let sandbox = Sandbox::new("unknown").unwrap();
    let config = format!(
        "[daemon]\nscan_interval = \"500ms\"\n\n[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\n\
         [[class]]\nname = \"keep\"\negress = \"10mbit\"\nmatch = 'args ~ \"*shp-keep*\"'\n\n\
         [[class]]\nname = \"other\"\negress = \"20mbit\"\nmatch = 'not args ~ \"*shp-keep*\" and rport == 5555'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let remote = format!("{}:5555", Sandbox::ADDR_B4);
    // The parent opens the socket and sends; a forked child keeps sending on
    // it every 100 ms; the parent exits once told on its standard input.
    let script = format!(
        "exec 3>/dev/udp/{}/5555; echo -n x >&3; \
         (exec 0</dev/null; for i in $(seq 600); do echo -n x >&3 2>/dev/null; sleep 0.1; done) & \
         read -r line; exit 0",
        Sandbox::ADDR_B4
    );
    let mut parent = sandbox
        .client("bash")
        .unwrap()
        .args(["-c", &script, "shp-keep"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while class_of(&daemon, &remote).as_deref() != Some("keep") {
        assert!(
            Instant::now() < deadline,
            "the flow never reached its class: {:?}",
            class_of(&daemon, &remote)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The parent exits; this test does not reap it yet: a zombie.
    drop(parent.stdin.take());
    std::thread::sleep(Duration::from_millis(300));
    let zombie = std::fs::read_to_string(format!("/proc/{}/stat", parent.id())).unwrap_or_default();
    assert!(zombie.contains(") Z "), "the parent is not a zombie: {zombie}");
    // Several reconciles, each reading the zombie's /proc entry again.
    std::thread::sleep(Duration::from_secs(3));
    let class = class_of(&daemon, &remote);
    let conn = conns(&daemon).into_iter().find(|c| c.remote == remote);
    let _ = parent.wait();
    // The child goes with the sandbox's cgroup.
    assert_eq!(class.as_deref(), Some("keep"), "moved on facts that could not be read: {conn:#?}");
}
