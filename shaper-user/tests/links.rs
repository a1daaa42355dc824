//! End to end: devices that go away under a running shaper. The IFB set down
//! or deleted under a download (traffic passes unshaped within 1 s, counted,
//! and is shaped again once the daemon has restored the IFB); the shaped
//! interface deleted and created again with a new index (shaped again within
//! 2 s); an `optional` interface absent at start (shaped once it appears).
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{run_client, Daemon, IperfServer, Sandbox, Stream},
};

/// One interface, both directions shaped; `extra` goes into its table.
fn config(sandbox: &Sandbox, extra: &str) -> String {
    format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\ningress = \"1gbit\"\n{extra}\n\n\
         [[class]]\nname = \"up\"\negress = \"10mbit\"\nmatch = 'rport == 5201'\n\n\
         [[class]]\nname = \"down\"\ningress = \"10mbit\"\nmatch = 'lport == 5301 or rport == 5202'\n",
        sandbox.dev_a
    )
}

/// The classifier's count of packets that passed unshaped for want of an IFB.
fn ifb_errors(daemon: &Daemon) -> u64 {
    daemon.status().unwrap().errors.get("ifb_down").copied().unwrap_or(0)
}

/// Whether `dev` exists in namespace `a` and is up.
fn link_up(sandbox: &Sandbox, dev: &str) -> bool {
    sandbox.a.run("ip", &["-o", "link", "show", "dev", dev]).is_ok_and(|out| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_once('<')
            .and_then(|(_, f)| f.split_once('>'))
            .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
    })
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn downloads_pass_while_the_ifb_is_down_or_gone_and_are_shaped_again_once_it_is_back() {
    require_root!();
    let sandbox = Sandbox::new("ifbgone").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "")).unwrap();
    let ifb = daemon.status().unwrap().interfaces[0].ifb.clone().unwrap();
    // An inbound TCP stream into the 10 Mbit/s ingress class, offered at 200.
    let stream = Stream::start(&sandbox.a, Sandbox::ADDR_A4, 5301, &sandbox.b, 200.0 * MBIT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let shaped = stream.rate_over(2.0);
    println!("shaped: {:.2} Mbit/s", shaped / MBIT);
    assert_near("the download before", shaped, 10.0 * MBIT, 0.15);
    for (what, args) in [("set down", ["link", "set", &ifb, "down"]), ("deleted", ["link", "del", &ifb, ""])]
    {
        let errors_before = ifb_errors(&daemon);
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let t0 = Instant::now();
        sandbox.a.run("ip", &args).unwrap();
        // When the daemon had the IFB back (up; a new one when it was deleted).
        let mut restored = None;
        while t0.elapsed() < Duration::from_millis(2500) {
            if restored.is_none() && link_up(&sandbox, &ifb) {
                restored = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let gap = stream.longest_gap(t0, t0 + Duration::from_millis(2500));
        let unshaped = stream.rate(t0 + gap, t0 + gap + Duration::from_millis(300));
        let errors = ifb_errors(&daemon) - errors_before;
        println!(
            "IFB {what}: traffic stopped for {} ms, then {:.1} Mbit/s unshaped ({errors} packets counted)",
            gap.as_millis(),
            unshaped / MBIT
        );
        assert!(gap < Duration::from_secs(1), "IFB {what}: no traffic for {} ms", gap.as_millis());
        assert!(errors > 0, "IFB {what}: no packet counted as passing unshaped");
        let restored = restored.unwrap_or_else(|| {
            wait_for("the IFB back up", Duration::from_secs(5), || link_up(&sandbox, &ifb)) + t0.elapsed()
        });
        println!("IFB {what}: back up {} ms after", restored.as_millis());
        // TCP recovers from the losses of the switch back (a second at 200
        // Mbit/s queued into a 10 Mbit/s class) before it is measured.
        std::thread::sleep(Duration::from_secs(2));
        let rate = stream.rate_over(3.0);
        println!("IFB {what}: then {:.2} Mbit/s", rate / MBIT);
        assert_near(&format!("the download after the IFB was {what} and restored"), rate, 10.0 * MBIT, 0.15);
    }
    assert!(daemon.log_text().contains(&format!("{ifb} ")), "{}", daemon.log_text());
}

/// How long after the interface was created (by `create`) shaper's HTB root
/// and both classifiers were on it.
fn reattached_within(sandbox: &Sandbox, create: impl FnOnce()) -> Duration {
    let t0 = Instant::now();
    create();
    wait_for("shaper's tree and classifiers on the new interface", Duration::from_secs(5), || {
        let programs = sandbox.a.tc_programs(&sandbox.dev_a).unwrap_or_default();
        qdiscs(sandbox).contains("qdisc htb 1: root")
            && programs.iter().any(|p| p == "tc_egress")
            && programs.iter().any(|p| p == "tc_ingress")
    });
    t0.elapsed()
}

/// Upload and download through the sandbox interface, each in its 10 Mbit/s class.
fn assert_shaped(sandbox: &Sandbox, when: &str) {
    let _up = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _down = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let up = run_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", "4", "-O", "1"]).unwrap();
    let down = run_client(&sandbox.a, Sandbox::ADDR_B4, 5202, &["-t", "4", "-O", "1", "-R"]).unwrap();
    println!(
        "{when}: upload {:.2} Mbit/s, download {:.2} Mbit/s",
        up.received_bps / MBIT,
        down.received_bps / MBIT
    );
    assert_near(&format!("upload {when}"), up.received_bps, 10.0 * MBIT, 0.10);
    assert_near(&format!("download {when}"), down.received_bps, 10.0 * MBIT, 0.10);
}

#[test]
fn the_shaped_interface_deleted_and_created_again_is_shaped_again_within_2_s() {
    require_root!();
    let sandbox = Sandbox::new("relink").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "")).unwrap();
    let old = daemon.status().unwrap().interfaces[0].clone();
    sandbox.delete_link().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(daemon.status().is_ok(), "{}", daemon.log_text());
    let took = reattached_within(&sandbox, || sandbox.add_link().unwrap());
    println!("re-attached {} ms after the interface was created", took.as_millis());
    assert!(took < Duration::from_secs(2), "re-attached after {} ms", took.as_millis());
    sandbox.configure_link().unwrap();
    let now = daemon.status().unwrap().interfaces;
    assert_eq!(now.len(), 1, "{now:#?}");
    assert_ne!(now[0].ifindex, old.ifindex, "{now:#?}");
    let old_ifb = old.ifb.unwrap();
    let links =
        String::from_utf8_lossy(&sandbox.a.run("ip", &["-o", "link", "show"]).unwrap().stdout).into_owned();
    assert!(!links.contains(&format!("{old_ifb}:")), "the old IFB is still there: {links}");
    assert_shaped(&sandbox, "after the interface came back");
    let log = daemon.log_text();
    assert!(log.contains(&format!("{} went away", sandbox.dev_a)), "{log}");
}

#[test]
fn an_optional_interface_absent_at_start_is_shaped_once_it_appears() {
    require_root!();
    let sandbox = Sandbox::new("optional").unwrap();
    sandbox.delete_link().unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "optional = true")).unwrap();
    assert!(daemon.status().unwrap().interfaces.is_empty());
    let took = reattached_within(&sandbox, || sandbox.add_link().unwrap());
    println!("shaped {} ms after the interface was created", took.as_millis());
    assert!(took < Duration::from_secs(2), "shaped after {} ms", took.as_millis());
    sandbox.configure_link().unwrap();
    assert_shaped(&sandbox, "once the interface appeared");
    let log = daemon.log_text();
    assert!(log.contains(&format!("{} is absent", sandbox.dev_a)), "{log}");
}

#[test]
fn every_error_counter_is_shown_after_taking_over_pins_with_fewer_counters() {
    require_root!();
    let sandbox = Sandbox::new("errmap").unwrap();
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "")).unwrap();
    daemon.kill().unwrap();
    // The ERRORS map a daemon with one counter fewer (before `ifb_down`) pinned.
    let path = shaper_user::pins::Pins::new(&daemon.pins).map(shaper_common::names::MAP_ERRORS);
    std::fs::remove_file(&path).unwrap();
    let entries = (shaper_common::ERR_COUNT - 1).to_string();
    let path_text = path.to_string_lossy().into_owned();
    let create =
        ["map", "create", &path_text, "type", "percpu_array", "key", "4", "value", "8", "entries", &entries];
    shaper_testkit::sandbox::run("bpftool", &[&create[..], &["name", "ERRORS"]].concat()).unwrap();
    daemon.restart().unwrap();
    let errors = daemon.status().unwrap().errors;
    let names: Vec<&str> = errors.keys().map(String::as_str).collect();
    let mut expected = shaper_common::ERROR_NAMES.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "{}", daemon.log_text());
}
