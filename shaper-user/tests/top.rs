//! Current rates, `shaper top` and `shaper conns` at scale, end to end: a
//! daemon in a sandbox shaping real streams, read through the control socket
//! and through the `shaper` command (top in a real terminal, under tmux).
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds its own sandbox and tears it down on drop, failures included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::time::{Duration, Instant};

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Sandbox, Stream},
};
use shaper_user::control::Direction;

mod common;

use common::*;

/// Two classes on the sandbox interface: `slow` (8 Mbit/s) for port 7001,
/// `fast` (20 Mbit/s) for port 7002, the rest in `other`.
fn two_classes(sandbox: &Sandbox) -> String {
    format!(
        r#"{iface}default = "other"

[[class]]
name = "slow"
egress = "8mbit"
match = 'rport == 7001'

[[class]]
name = "fast"
egress = "20mbit"
match = 'rport == 7002'

[[class]]
name = "other"
egress = "100mbit"
"#,
        iface = interface(sandbox)
    )
}

/// Waits until the stream has run `warm` seconds, then returns the rate it
/// received over the next `secs`.
fn settled_rate(stream: &Stream, warm: f64, secs: f64) -> f64 {
    std::thread::sleep(Duration::from_secs_f64(warm));
    stream.rate_over(secs)
}

#[test]
fn current_rates_of_classes_and_flows_follow_a_shaped_stream() {
    require_root!();
    let sandbox = Sandbox::new("rate").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &two_classes(&sandbox)).unwrap();
    let stream = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 7001, &sandbox.a, 50.0 * MBIT).unwrap();
    let measured = settled_rate(&stream, 3.0, 2.0);
    let rows = classes(&daemon);
    let slow = class_in(&rows, "slow", Direction::Egress);
    println!(
        "stream received {:.2} Mbit/s; slow current {:.2} Mbit/s",
        measured / MBIT,
        slow.current_bps as f64 / MBIT
    );
    // The classifier counts frames with their headers: a little above the payload rate.
    assert_near("slow's current rate", slow.current_bps as f64, measured, 0.20);
    assert_eq!(class_in(&rows, "fast", Direction::Egress).current_bps, 0, "{rows:#?}");
    let flow = conns(&daemon).into_iter().find(|c| c.remote.ends_with(":7001")).unwrap();
    println!("flow {} current {:.2} Mbit/s, age {} s", flow.id, flow.tx_bps as f64 / MBIT, flow.age_s);
    assert_near("the flow's current rate", flow.tx_bps as f64, measured, 0.20);
    assert!(flow.age_s >= 3, "the flow runs for 5 s: {flow:#?}");
    drop(stream);
    // Stopped: within two samples the rate is 0 again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while class_in(&classes(&daemon), "slow", Direction::Egress).current_bps > 0 {
        assert!(Instant::now() < deadline, "slow's current rate never fell back to 0");
        std::thread::sleep(Duration::from_millis(200));
    }
}
