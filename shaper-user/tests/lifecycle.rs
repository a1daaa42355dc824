//! End to end: a shaper changed live and restarted under load. Reloads,
//! `set` and `move` while iperf3 runs; `kill -9` and a restart that takes the
//! pinned state over; `stop` and `stop --keep`; `start`; a hostile control
//! socket client.
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! daemon pins into a BPF filesystem of its own (see the kit's
//! `sandbox::Daemon`), never the host's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Sandbox},
};
use shaper_user::control::SetClass;

mod common;

use common::*;

fn config(dev: &str, bulk: &str, extra: &str) -> String {
    format!(
        r#"
[[interface]]
name = "{dev}"
egress = "1gbit"
ingress = "1gbit"

[[class]]
name = "bulk"
egress = "{bulk}"
match = 'rport == 5201'

[[class]]
name = "other"
egress = "30mbit"
{extra}"#
    )
}

/// Bytes HTB sent from class `classid` on the sandbox interface (read with tc,
/// so it works while no daemon runs).
fn tc_sent(sandbox: &Sandbox, classid: &str) -> u64 {
    let out =
        sandbox.a.run("tc", &["-s", "class", "show", "dev", &sandbox.dev_a, "classid", classid]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let sent = text.split("Sent ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok());
    sent.unwrap_or_else(|| panic!("no counters for {classid} in {text}"))
}

/// The rate of class `classid` over `secs` seconds from tc's counters, bits/s.
fn tc_rate(sandbox: &Sandbox, classid: &str, secs: f64) -> f64 {
    let (t0, b0) = (Instant::now(), tc_sent(sandbox, classid));
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (t1, b1) = (Instant::now(), tc_sent(sandbox, classid));
    (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
}

fn bytes_of(daemon: &Daemon, name: &str) -> u64 {
    class(&classes(daemon), name).bytes
}

#[test]
fn a_reload_changes_a_rate_under_load_and_a_bad_config_changes_nothing() {
    require_root!();
    let sandbox = Sandbox::new("reload").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox.dev_a, "10mbit", "")).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let client = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", "12"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = htb_rate(&daemon, "bulk", 2.0);
    let bytes_before = bytes_of(&daemon, "bulk");
    let htb_sent_before = class(&classes(&daemon), "bulk").sent_bytes;

    std::fs::write(&daemon.config, config(&sandbox.dev_a, "20mbit", "")).unwrap();
    let reloaded = daemon.reload().unwrap();
    assert_eq!(reloaded.changes.classes_changed, ["bulk"], "{reloaded:#?}");
    println!("reload applied in {} ms", reloaded.took_ms);
    std::thread::sleep(Duration::from_secs(1));
    let after = htb_rate(&daemon, "bulk", 2.0);

    // A typo: refused with its position; the 20 Mbit/s stay.
    let broken = config(&sandbox.dev_a, "5mbit", "").replace("match = 'rport", "match = 'rprot");
    std::fs::write(&daemon.config, broken).unwrap();
    let err = daemon.reload().unwrap_err().to_string();
    let expected = format!("{}:10:10: unknown attribute \"rprot\"", daemon.config.display());
    assert!(err.contains(&expected), "expected `{expected}` in: {err}");
    let kept = htb_rate(&daemon, "bulk", 2.0);
    let status = daemon.status().unwrap();
    assert_eq!(status.last_reload.as_ref().map(|r| r.ok), Some(false), "{status:#?}");

    let run = finish_client(client).unwrap();
    println!(
        "bulk: {:.2} Mbit/s, after the reload {:.2}, after the refused reload {:.2}; iperf3 {:.2} Mbit/s",
        before / MBIT,
        after / MBIT,
        kept / MBIT,
        run.received_bps / MBIT
    );
    assert_near("before the reload (10 Mbit/s)", before, 10.0 * MBIT, 0.10);
    assert_near("from 1 s after the reload (20 Mbit/s)", after, 20.0 * MBIT, 0.10);
    assert_near("after the refused reload (still 20 Mbit/s)", kept, 20.0 * MBIT, 0.10);
    // The same HTB class and the same counters: nothing was rebuilt.
    let rows = classes(&daemon);
    assert!(class(&rows, "bulk").sent_bytes > htb_sent_before + 2_000_000);
    assert!(bytes_of(&daemon, "bulk") > bytes_before + 2_000_000);
    assert_eq!(qdiscs(&sandbox).matches("qdisc htb 1: root").count(), 1);
}

#[test]
fn kill_9_under_load_keeps_shaping_and_a_restart_takes_it_over() {
    require_root!();
    let sandbox = Sandbox::new("kill").unwrap();
    let before_start = qdiscs(&sandbox);
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox.dev_a, "10mbit", "")).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let client = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", "14"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let classid = class(&classes(&daemon), "bulk").classid.clone();
    let (pins, tc_before, progs, links_before) =
        (daemon.pinned(), qdiscs(&sandbox), attached_programs(&sandbox), links(&sandbox));
    let bytes_before = bytes_of(&daemon, "bulk");
    let names_before: Vec<String> =
        classes(&daemon).iter().map(|r| format!("{} {}", r.name, r.direction)).collect();

    daemon.kill().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let down = tc_rate(&sandbox, &classid, 3.0);
    assert_eq!(attached_programs(&sandbox), progs, "the classifier went with the daemon");

    daemon.restart().unwrap();
    let status = daemon.status().unwrap();
    assert!(status.adopted, "{status:#?}");
    let after = htb_rate(&daemon, "bulk", 2.0);
    let rows = classes(&daemon);
    let names: Vec<String> = rows.iter().map(|r| format!("{} {}", r.name, r.direction)).collect();
    let run = finish_client(client).unwrap();
    println!(
        "bulk: {:.2} Mbit/s while no daemon ran, {:.2} after the restart; iperf3 {:.2} Mbit/s",
        down / MBIT,
        after / MBIT,
        run.received_bps / MBIT
    );
    assert_near("while the daemon was dead (10 Mbit/s)", down, 10.0 * MBIT, 0.10);
    assert_near("after the restart (10 Mbit/s)", after, 10.0 * MBIT, 0.10);
    assert_eq!(names, names_before, "the classes differ after the restart");
    assert!(names.len() >= 4, "{names:?}");
    assert!(bytes_of(&daemon, "bulk") > bytes_before, "the counters restarted from zero");
    assert_eq!(daemon.pinned(), pins, "the pins differ after the takeover");
    assert_eq!(qdiscs(&sandbox), tc_before, "the qdiscs differ after the takeover");
    assert_eq!(attached_programs(&sandbox), progs, "programs differ after the takeover");
    assert_eq!(links(&sandbox), links_before, "interfaces differ after the takeover");

    // And the full stop still removes everything.
    let exit = daemon.stop().unwrap();
    assert!(exit.success(), "{}", daemon.log_text());
    assert_eq!(qdiscs(&sandbox), before_start);
    assert!(attached_programs(&sandbox).is_empty());
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
    assert!(!links(&sandbox).iter().any(|l| l.starts_with("shpifb")));
}

#[test]
fn stop_restores_the_interface_and_stop_keep_hands_shaping_over() {
    require_root!();
    let sandbox = Sandbox::new("stop").unwrap();
    let (qdiscs_before, links_before) = (qdiscs(&sandbox), links(&sandbox));
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox.dev_a, "10mbit", "")).unwrap();
    let shaping = (qdiscs(&sandbox), attached_programs(&sandbox), daemon.pinned());
    assert!(shaping.0.contains("qdisc htb 1: root"), "{}", shaping.0);
    assert!(shaping.2.iter().any(|p| p.ends_with("maps/FLOWS")), "{:?}", shaping.2);

    let socket = daemon.socket.clone();
    let cli =
        |args: &[&str]| sandbox.a.command(SHAPER).args(args).arg("--socket").arg(&socket).output().unwrap();
    let out = cli(&["stop", "--keep"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("shaping left in place"));
    daemon.wait(Duration::from_secs(10)).unwrap();
    assert_eq!((qdiscs(&sandbox), attached_programs(&sandbox), daemon.pinned()), shaping);

    daemon.restart().unwrap();
    assert!(daemon.status().unwrap().adopted);
    let out = cli(&["stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("every interface restored"));
    daemon.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(qdiscs(&sandbox), qdiscs_before);
    assert_eq!(links(&sandbox), links_before);
    assert!(attached_programs(&sandbox).is_empty());
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
    assert!(!daemon.pins.exists(), "the pin directory is left");
    assert!(!daemon.socket.exists() && !daemon.pid_file.exists());
}

#[test]
fn start_returns_once_ready_and_refuses_a_second_start() {
    require_root!();
    let sandbox = Sandbox::new("start").unwrap();
    let before = qdiscs(&sandbox);
    let daemon = Daemon::prepare(&sandbox, shaper(), &config(&sandbox.dev_a, "10mbit", "")).unwrap();
    let start = || sandbox.a.command(SHAPER).arg("start").args(daemon.args()).output().unwrap();
    let out = start();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Ready means shaping: no polling needed.
    assert!(qdiscs(&sandbox).contains("qdisc htb 1: root"));
    let pid = daemon.status().unwrap().pid;
    assert_eq!(std::fs::read_to_string(&daemon.pid_file).unwrap().trim(), pid.to_string());
    let again = start();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains(&format!("shaper is already running (pid {pid})")), "{stderr}");

    let out = sandbox.a.command(SHAPER).arg("stop").arg("--socket").arg(&daemon.socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(qdiscs(&sandbox), before);
    assert!(!daemon.pid_file.exists());
}

#[test]
fn set_move_and_watched_edits_change_a_running_shaper() {
    require_root!();
    let sandbox = Sandbox::new("live").unwrap();
    let watched = config(&sandbox.dev_a, "5mbit", "")
        .replace("[[interface]]", "[daemon]\nwatch_config = true\n\n[[interface]]");
    let daemon = Daemon::start(&sandbox, shaper(), &watched).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let client = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", "14"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // set: 5 → 15 Mbit/s, reported as drift.
    let set = SetClass { class: "bulk".into(), egress: Some("15mbit".into()), ..SetClass::default() };
    daemon.set(set).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let set_rate = htb_rate(&daemon, "bulk", 2.0);
    let status = daemon.status().unwrap();
    assert_eq!(status.drift, ["bulk: egress 15 Mbit/s"], "{status:#?}");

    // move: the data connection (iperf3 also has an idle control connection
    // to the same port) into "other" (30 Mbit/s), pinned there.
    let conn = conns(&daemon)
        .into_iter()
        .filter(|c| c.remote == format!("{}:5201", Sandbox::ADDR_B4))
        .max_by_key(|c| c.tx_bytes)
        .unwrap();
    let id = conn.id;
    let moved = daemon.move_conn(&id[..6], "other").unwrap();
    assert_eq!((moved.id.as_str(), moved.class.as_str()), (id.as_str(), "other"), "{moved:#?}");
    std::thread::sleep(Duration::from_secs(1));
    let moved_rate = htb_rate(&daemon, "other", 2.0);
    let conn = conns(&daemon).into_iter().find(|c| c.id == id).unwrap();
    assert_eq!((conn.class.as_str(), conn.origin.as_str()), ("other", "pinned"), "{conn:#?}");

    // An edit of the watched file: a new class appears, drift is gone, the
    // pinned connection stays where it was put.
    let extra = "\n[[class]]\nname = \"extra\"\negress = \"1mbit\"\nmatch = 'rport == 9999'\n";
    std::fs::write(&daemon.config, watched.clone() + extra).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !classes(&daemon).iter().any(|r| r.name == "extra") {
        assert!(Instant::now() < deadline, "the edit was not picked up: {}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = daemon.status().unwrap();
    assert!(status.drift.is_empty(), "{status:#?}");
    let extra_id = class(&classes(&daemon), "extra").classid.clone();
    let tc_classes = || {
        let out = sandbox.a.run("tc", &["class", "show", "dev", &sandbox.dev_a]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(tc_classes().contains(&format!("class htb {extra_id} ")), "{}", tc_classes());
    let conn = conns(&daemon).into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(conn.class, "other");
    let run = finish_client(client).unwrap();
    println!(
        "bulk set to 15 Mbit/s: {:.2}; moved into other (30 Mbit/s): {:.2}; iperf3 {:.2} Mbit/s",
        set_rate / MBIT,
        moved_rate / MBIT,
        run.received_bps / MBIT
    );
    assert_near("after set (15 Mbit/s)", set_rate, 15.0 * MBIT, 0.10);
    assert_near("after move (30 Mbit/s)", moved_rate, 30.0 * MBIT, 0.10);

    // Bad requests are refused with a reason.
    let err = daemon.move_conn("ffffffff", "other").unwrap_err();
    assert!(err.to_string().contains("no connection"), "{err}");
    let bad = SetClass { class: "bulk".into(), egress: Some("10mbit:5mbit".into()), ..SetClass::default() };
    let err = daemon.set(bad).unwrap_err();
    assert!(err.to_string().contains("below the rate"), "{err}");
    // Removing the class again (an edit the watch picks up) takes its HTB class away.
    std::fs::write(&daemon.config, &watched).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while classes(&daemon).iter().any(|r| r.name == "extra") {
        assert!(Instant::now() < deadline, "the edit was not picked up: {}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tc_classes().contains(&format!("class htb {extra_id} ")), "{}", tc_classes());
    assert!(daemon.log_text().contains("classes removed: extra"), "{}", daemon.log_text());
}

#[test]
fn hostile_control_clients_get_errors_and_never_block_the_daemon() {
    require_root!();
    let sandbox = Sandbox::new("ctl").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox.dev_a, "10mbit", "")).unwrap();
    let connect = || {
        let s = UnixStream::connect(&daemon.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    };
    let reply = |s: &UnixStream| {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    // A silent client and one that stops half-way through a line, held open throughout.
    let silent = connect();
    let mut half = connect();
    half.write_all(br#"{"v":1,"cmd":"sta"#).unwrap();
    let held = Instant::now();

    let mut garbage = connect();
    garbage.write_all(b"\x00\xff not json at all\n").unwrap();
    assert!(reply(&garbage).contains("malformed request"));
    garbage.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    assert!(reply(&garbage).contains("\"ok\":true"), "the connection survives a bad line");
    garbage.write_all(b"{\"v\":9,\"cmd\":\"status\"}\n").unwrap();
    assert!(reply(&garbage).contains("unsupported protocol version 9"));

    let mut big = connect();
    let line = vec![b'x'; 10 * 1024 * 1024];
    // The daemon stops reading after 64 KiB: the rest may not get in.
    let _ = big.write_all(&line);
    assert!(reply(&big).contains("request longer than 65536 bytes"));

    // Meanwhile every other client is served at once.
    for _ in 0..20 {
        let t = Instant::now();
        daemon.status().unwrap();
        assert!(t.elapsed() < Duration::from_millis(500), "status took {:?}", t.elapsed());
    }

    // Not root: the socket is 0600, and a client that gets in anyway is refused
    // by uid. (The client binary is copied where user nobody may run it.)
    use std::os::unix::fs::PermissionsExt as _;
    let client = daemon.dir().join("shaper-client");
    std::fs::copy(SHAPER, &client).unwrap();
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |args: &[&str]| {
        sandbox
            .a
            .command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&client)
            .args(args)
            .arg("--socket")
            .arg(&daemon.socket)
            .output()
            .unwrap()
    };
    let out = nobody(&["status"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the shaper daemon") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = nobody(&["status"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the control socket is for root only"), "{stderr}");

    // The silent and the half-line clients are dropped after the idle timeout.
    for mut s in [silent, half] {
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        assert_eq!(n, 0, "expected the daemon to hang up");
    }
    let idle = held.elapsed();
    assert!(idle >= Duration::from_secs(9), "dropped after {idle:?}");
    daemon.status().unwrap();
}
