//! Quotas end to end: real TCP traffic between two namespaces counted by the
//! classifier; a used-up quota throttles (across a `kill -9`, until its period
//! ends) or blocks (not one more byte, no new connection, the other classes
//! untouched); usage survives restarts and reboots in the state file.
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, IperfServer, Netns, Sandbox, Stream},
};
use shaper_user::control::{client, Direction, QuotaState, UsageRow};

mod common;

use common::*;

/// Where a sandbox's daemon keeps its state file (inside its run directory,
/// which goes with the daemon).
fn state_dir(sandbox: &Sandbox) -> PathBuf {
    Daemon::dir_for(&sandbox.tag).join("state")
}

fn usage(daemon: &Daemon, class: &str) -> UsageRow {
    let rows = client::usage(&daemon.socket).unwrap();
    rows.into_iter().find(|r| r.class == class).unwrap_or_else(|| panic!("no quota for {class}"))
}

/// Polls `usage` until the quota of `class` is in `state`; its row then.
fn wait_for_state(daemon: &Daemon, class: &str, state: QuotaState, within: Duration) -> UsageRow {
    let deadline = Instant::now() + within;
    loop {
        let row = usage(daemon, class);
        if row.state == state {
            return row;
        }
        assert!(Instant::now() < deadline, "{class} not {state:?} after {within:?}: {row:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_close(what: &str, measured: u64, expected: u64, tolerance: f64) {
    let ratio = measured as f64 / expected as f64;
    assert!(
        (1.0 - tolerance..=1.0 + tolerance).contains(&ratio),
        "{what}: {measured} bytes, expected {expected} ±{:.0}% (ratio {ratio:.4})",
        tolerance * 100.0
    );
}

/// Bytes the receiver had when its rate fell below `bps` (over the next
/// half second) for the first time.
fn knee(stream: &Stream, bps: f64) -> u64 {
    let log = stream.arrivals();
    let window = Duration::from_millis(500);
    for (i, (t, bytes)) in log.iter().enumerate() {
        let later = log[i..].iter().take_while(|(u, _)| u.duration_since(*t) <= window).last();
        let last = log.last().map_or(*t, |(u, _)| *u);
        if last.duration_since(*t) < window {
            break;
        }
        if later.is_some_and(|(_, b)| (b - bytes) as f64 * 8.0 < bps * window.as_secs_f64()) {
            return *bytes;
        }
    }
    panic!("the receiver's rate never fell below {bps} bit/s");
}

/// Waits until the current `period_s`-second period (counted from the Unix
/// epoch, as the daemon does) has just begun.
fn wait_for_period_start(period_s: u64) {
    loop {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let into = now.as_millis() as u64 % (period_s * 1000);
        if (300..1500).contains(&into) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP connection from namespace `ns` to `addr:port`, with a 2 s timeout.
fn connect(ns: &Netns, addr: &str, port: u16) -> std::io::Result<()> {
    let (path, addr) = (ns.path(), format!("{addr}:{port}"));
    std::thread::spawn(move || {
        Netns::enter_path(&path).map_err(std::io::Error::other)?;
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).map(drop)
    })
    .join()
    .unwrap()
}

/// A config with the sandbox's interface, a state directory of its own, and `classes`.
fn config(sandbox: &Sandbox, classes: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"{}\"\n\n[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\n{classes}",
        state_dir(sandbox).display(),
        sandbox.dev_a
    )
}

/// A bash line that connects to the far end's `port` (and fails as connect() does).
fn bash_connect(port: u16) -> String {
    format!("exec 3<>/dev/tcp/{}/{port}", Sandbox::ADDR_B4)
}

#[test]
fn a_used_up_quota_throttles_across_a_crash_until_its_period_ends() {
    require_root!();
    let sandbox = Sandbox::new("qthr").unwrap();
    let period = 30;
    let config = config(
        &sandbox,
        &format!(
            r#"
[[class]]
name = "bulk"
egress = "50mbit"
match = 'rport in 5301..5309'
quota = {{ bytes = "20MB", period = "{period}s", direction = "egress", then = "1mbit" }}
"#
        ),
    );
    let mut daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    wait_for_period_start(period);
    let started = Instant::now();
    let stream = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5301, &sandbox.a, 200.0 * MBIT).unwrap();
    let at_switch = wait_for_state(&daemon, "bulk", QuotaState::Throttled, Duration::from_secs(10));
    println!("throttled after {:?}: {at_switch:?}", started.elapsed());
    // TCP settles to the new rate (the leaf's queue shrank with it) before the measurement.
    std::thread::sleep(Duration::from_secs(1));
    let held = stream.rate_over(4.0);
    let received = knee(&stream, 5.0 * MBIT);
    println!("received at the switch: {received} bytes; then {:.3} Mbit/s", held / MBIT);
    assert_close("bytes received when the rate fell", received, 20_000_000, 0.05);
    assert_near("throttled rate", held, MBIT, 0.10);
    // What the CLI prints is the protocol's result.
    let out = output(Command::new(SHAPER).args(["usage", "--json", "--socket"]).arg(&daemon.socket));
    let rows: Vec<UsageRow> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows.iter().map(|r| (r.class.as_str(), r.state)).collect::<Vec<_>>(),
        [("bulk", QuotaState::Throttled)]
    );
    let row = class_in(&classes(&daemon), "bulk", Direction::Egress).clone();
    assert_eq!((row.rate_bps, row.ceil_bps, row.quota), (1_000_000, 1_000_000, Some(QuotaState::Throttled)));
    // A reload (the file unchanged) keeps the throttle: it is part of the limits in force.
    daemon.reload().unwrap();
    let row = class_in(&classes(&daemon), "bulk", Direction::Egress).clone();
    assert_eq!((row.rate_bps, row.ceil_bps), (1_000_000, 1_000_000));
    // kill -9 and a new daemon: the pinned counters keep the usage, and the
    // throttle holds. The stream stops first (its receiver's close resets the
    // connection), so the usage stands still meanwhile.
    drop(stream);
    std::thread::sleep(Duration::from_millis(500));
    let before = usage(&daemon, "bulk");
    daemon.kill().unwrap();
    daemon.restart().unwrap();
    let after = usage(&daemon, "bulk");
    assert_close("usage across kill -9", after.used_bytes, before.used_bytes, 0.01);
    assert_eq!(after.state, QuotaState::Throttled);
    let stream = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5302, &sandbox.a, 200.0 * MBIT).unwrap();
    assert_near("throttled rate after the restart", stream.rate_over(3.0), MBIT, 0.10);
    // The next period: usage from zero and the class's own 50 Mbit/s.
    let next = wait_for_state(&daemon, "bulk", QuotaState::Ok, Duration::from_secs(period + 5));
    assert!(next.period_start >= before.period_end, "{next:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let restored = stream.rate_over(1.5);
    println!("after the rollover: {:.1} Mbit/s", restored / MBIT);
    assert!(restored > 40.0 * MBIT, "after the rollover: {:.1} Mbit/s", restored / MBIT);
}

#[test]
fn a_blocking_quota_lets_not_one_more_byte_through() {
    require_root!();
    let sandbox = Sandbox::new("qblk").unwrap();
    let config = config(
        &sandbox,
        r#"
[[class]]
name = "capped"
egress = "50mbit"
match = 'rport in 5401..5409'
quota = { bytes = "5MB", period = "day", direction = "egress", then = "block" }

[[class]]
name = "other"
egress = "20mbit"
match = 'rport == 5410'
"#,
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5403).unwrap();
    let capped = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5401, &sandbox.a, 200.0 * MBIT).unwrap();
    let other = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5410, &sandbox.a, 200.0 * MBIT).unwrap();
    let blocked = wait_for_state(&daemon, "capped", QuotaState::Blocked, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let received = capped.bytes();
    let other_rate = other.rate_over(2.5);
    assert_eq!(capped.bytes(), received, "bytes of the blocked class arrived after the block");
    assert!(received <= 5_000_000, "received {received} bytes of a 5 MB quota");
    assert!(received > 4_500_000, "received only {received} bytes of a 5 MB quota");
    let row = usage(&daemon, "capped");
    assert!(row.used_bytes <= 5_000_000 && row.dropped_bytes > 0, "{blocked:#?} {row:#?}");
    assert_near("the other class", other_rate, 20.0 * MBIT, 0.10);
    // A new connection of the class: the connect hook refuses it (EPERM) for
    // a process under the daemon's cgroup; elsewhere its packets go nowhere.
    let refused = output(sandbox.client("bash").unwrap().args(["-c", &bash_connect(5403)]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Operation not permitted"), "{refused:?}");
    assert!(
        connect(&sandbox.a, Sandbox::ADDR_B4, 5403).is_err(),
        "a new connection of a blocked class went through"
    );
    // The other class still takes new connections (its receiver still listens).
    connect(&sandbox.a, Sandbox::ADDR_B4, 5410).unwrap();
    // `usage reset` lifts the block.
    let out = output(Command::new(SHAPER).args(["usage", "reset", "capped", "--socket"]).arg(&daemon.socket));
    assert!(out.status.success());
    assert_eq!(usage(&daemon, "capped").state, QuotaState::Ok);
    connect(&sandbox.a, Sandbox::ADDR_B4, 5403).unwrap();
    let allowed = output(sandbox.client("bash").unwrap().args(["-c", &bash_connect(5403)]));
    assert!(allowed.status.success());
}

/// The state file's saved usage of the first quota, if it is there.
fn saved_bytes(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("quota.json")).ok()?;
    let saved: serde_json::Value = serde_json::from_str(&text).ok()?;
    saved["quotas"][0]["egress_bytes"].as_u64()
}

#[test]
fn usage_survives_restarts_and_reboots_and_a_corrupt_state_file_is_moved_aside() {
    require_root!();
    let sandbox = Sandbox::new("qsta").unwrap();
    let state = state_dir(&sandbox);
    let config = config(
        &sandbox,
        r#"
[[class]]
name = "metered"
egress = "20mbit"
match = 'rport == 5501'
quota = { bytes = "2MB", direction = "egress", then = "report" }
"#,
    );
    let mut daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let stream = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5501, &sandbox.a, 200.0 * MBIT).unwrap();
    wait_for_state(&daemon, "metered", QuotaState::Reported, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    std::thread::sleep(Duration::from_millis(300));
    let used = usage(&daemon, "metered").used_bytes;
    assert!(used > 2_000_000, "{used}");
    // Within 10 s (and a check) the file has it.
    let deadline = Instant::now() + Duration::from_secs(12);
    while saved_bytes(&state) != Some(used) {
        assert!(Instant::now() < deadline, "the state file says {:?}, not {used}", saved_bytes(&state));
        std::thread::sleep(Duration::from_millis(200));
    }
    // A stop removes the pins; the file brings the usage back.
    daemon.stop().unwrap();
    daemon.restart().unwrap();
    let row = usage(&daemon, "metered");
    assert_close("usage across a restart", row.used_bytes, used, 0.01);
    assert_eq!(row.state, QuotaState::Reported);
    // A reboot: the daemon dies, its pins and qdiscs go (stop --force), it starts again.
    daemon.kill().unwrap();
    let out = stop_force_in(&sandbox.a, &daemon);
    assert!(out.status.success());
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
    daemon.restart().unwrap();
    assert_close("usage across a reboot", usage(&daemon, "metered").used_bytes, used, 0.01);
    // A corrupt file is moved aside; the daemon starts and counts from zero.
    daemon.stop().unwrap();
    std::fs::write(state.join("quota.json"), "{\"version\": 1, \"quotas\": [{\"cla").unwrap();
    daemon.restart().unwrap();
    let row = usage(&daemon, "metered");
    assert_eq!((row.used_bytes, row.state), (0, QuotaState::Ok));
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("quota.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(daemon.log_text().contains("is not a quota state file"), "{}", daemon.log_text());
}

#[test]
fn with_per_a_used_up_instance_is_blocked_alone() {
    require_root!();
    let sandbox = Sandbox::new("qper").unwrap();
    let config = config(
        &sandbox,
        r#"
[[class]]
name = "conns"
egress = "20mbit"
match = 'rport in 5301..5309'
per = "connection"
quota = { bytes = "8MB", period = "1h", direction = "egress", then = "block" }
"#,
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // Two connections, each an instance with its own 8 MB: the first at the
    // class's 20 Mbit/s uses it up in about 3.2 s, the second at 4 Mbit/s would take 16 s.
    let fast = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5301, &sandbox.a, 200.0 * MBIT).unwrap();
    let slow = Stream::start(&sandbox.b, Sandbox::ADDR_B4, 5302, &sandbox.a, 4.0 * MBIT).unwrap();
    let instances = || -> Vec<UsageRow> {
        client::usage(&daemon.socket).unwrap().into_iter().filter(|r| r.instance.is_some()).collect()
    };
    let started = Instant::now();
    while !instances().iter().any(|r| r.state == QuotaState::Blocked) {
        assert!(started.elapsed() < Duration::from_secs(10), "none blocked after 10 s: {:#?}", instances());
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("one connection blocked after {:.1} s", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(500));
    let (at_block, from) = (fast.bytes(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (after, to) = (fast.bytes(), Instant::now());
    let slow_rate = slow.rate(from, to);
    println!("blocked connection: {at_block} then {after} bytes; the other: {:.2} Mbit/s", slow_rate / MBIT);
    assert!(at_block <= 8_000_000, "{at_block} bytes arrived past an 8 MB quota");
    assert_eq!(after, at_block, "bytes arrived after the block");
    assert_near("the other connection of the class", slow_rate, 4.0 * MBIT, 0.10);
    let rows = instances();
    let states: Vec<_> = rows.iter().map(|r| r.state).collect();
    assert_eq!(states.iter().filter(|s| **s == QuotaState::Blocked).count(), 1, "{rows:#?}");
    assert_eq!(states.iter().filter(|s| **s == QuotaState::Ok).count(), 1, "{rows:#?}");
    assert!(rows.iter().any(|r| r.state == QuotaState::Blocked && r.dropped_bytes > 0), "{rows:#?}");
}
