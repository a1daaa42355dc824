//! End to end: a port bound in another network namespace never gives its
//! owner to the connections this namespace's servers accept (issue 14, item 3).
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds and removes its own sandbox, namespaces, cgroup, programs and users.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::time::Duration;

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Netns, Programs, Sandbox, TestUser},
};
use shaper_user::control::ConnRow;

#[test]
fn a_bind_in_another_namespace_does_not_take_over_accepted_connections() {
    require_root!();
    let sandbox = Sandbox::new("nsbind").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let server = programs.copy("iperf3", "serverapp").unwrap();
    let thief = programs.copy("iperf3", "thiefapp").unwrap();
    let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    // The thief's own namespace, as `unshare -rn` would give it, with its
    // process in the cgroup the daemon's socket hooks watch.
    let elsewhere = Netns::create(&format!("shp-{}-c", sandbox.tag)).unwrap();
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\n\
         [[class]]\nname = \"served\"\negress = \"5mbit\"\nmatch = 'cmd == \"serverapp\"'\n\n\
         [[class]]\nname = \"stolen\"\negress = \"20mbit\"\nmatch = 'cmd == \"thiefapp\"'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // The real server (dual-stack, bound to ::) in the shaped namespace …
    let _server =
        IperfServer::start_cmd(sandbox.client(server.to_str().unwrap()).unwrap(), &sandbox.a, 5501).unwrap();
    // … then an unprivileged user binds the same port under another name, elsewhere.
    let mut cmd = elsewhere.command_as(thief.to_str().unwrap(), user.uid, user.gid);
    sandbox.cgroup.enter(&mut cmd).unwrap();
    let _thief = IperfServer::start_cmd(cmd, &elsewhere, 5501).unwrap();
    // A download from the real server, over IPv4: its sockets come from accept().
    let client = spawn_client(&sandbox.b, Sandbox::ADDR_A4, 5501, &["-t", "6", "-O", "2", "-R"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let rows = conns(&daemon);
    let served: Vec<&ConnRow> =
        rows.iter().filter(|c| c.local == format!("{}:5501", Sandbox::ADDR_A4)).collect();
    let result = finish_client(client).unwrap();
    println!("download from serverapp: {:.2} Mbit/s; {served:#?}", result.received_bps / MBIT);
    assert!(!served.is_empty(), "{rows:#?}");
    for conn in &served {
        // (The daemon names the owner once it has seen the socket: a short
        // connection may be gone before, and show none.)
        assert!(
            conn.class == "served" && conn.cmd.as_deref().is_none_or(|c| c == "serverapp"),
            "an accepted connection took the owner of a bind in another namespace: {conn:#?}"
        );
    }
    assert_near("a download from serverapp (5 Mbit/s)", result.received_bps, 5.0 * MBIT, 0.10);
}
