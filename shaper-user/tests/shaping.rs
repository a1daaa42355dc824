//! End to end: `shaper run` in one network namespace shapes real TCP traffic to
//! iperf3 servers in another, through the eBPF classifier and HTB.
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds its own sandbox (namespaces, veth pair, run directory and
//! control socket) and tears it down on drop, failures included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::time::Duration;

use shaper_testkit::{
    require_root,
    sandbox::{finish_client, run_client, spawn_client, Daemon, IperfServer, Sandbox},
};
use shaper_user::control::{ClassRow, ConnRow, Direction};

mod common;

use common::*;

#[test]
fn two_port_classes_are_capped_at_once() {
    require_root!();
    let sandbox = Sandbox::new("cap").unwrap();
    let config = format!(
        r#"
[[interface]]
name = "{dev}"
egress = "1gbit"

[[class]]
name = "slow"
egress = "5mbit"
match = 'rport == 5201'

[[class]]
name = "fast"
egress = "20mbit"
match = 'rport == 5202'
"#,
        dev = sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let args = ["-t", "8", "-O", "2"];
    let slow = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &args).unwrap();
    let fast = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5202, &args).unwrap();
    let (slow, fast) = (finish_client(slow).unwrap(), finish_client(fast).unwrap());
    println!("slow {:.2} Mbit/s, fast {:.2} Mbit/s", slow.received_bps / MBIT, fast.received_bps / MBIT);
    assert_near("slow class (5 Mbit/s cap)", slow.received_bps, 5.0 * MBIT, 0.10);
    assert_near("fast class (20 Mbit/s cap)", fast.received_bps, 20.0 * MBIT, 0.10);
    let rows = classes(&daemon);
    for name in ["slow", "fast"] {
        let row = class(&rows, name);
        assert!(row.bytes > 1_000_000, "{row:#?}");
        assert!(row.sent_bytes > 1_000_000, "{row:#?}");
    }
}

#[test]
fn cidr_and_port_range_rule_and_the_default_class() {
    require_root!();
    let sandbox = Sandbox::new("cidr").unwrap();
    let config = format!(
        r#"
[[interface]]
name = "{dev}"
egress = "1gbit"
default = "rest"

[[class]]
name = "lan"
egress = "8mbit"
match = 'raddr in 198.18.0.0/24 and rport in 6000..6010'

[[class]]
name = "rest"
egress = {{ rate = "1mbit", ceil = "3mbit" }}
"#,
        dev = sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _in_range = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 6005).unwrap();
    let _out_of_range = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 6011).unwrap();
    let _v6 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B6, 6006).unwrap();
    let args = ["-t", "6", "-O", "2"];
    let lan = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 6005, &args).unwrap();
    let rest = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 6011, &args).unwrap();
    // While the streams run, each connection is listed in its class.
    std::thread::sleep(Duration::from_secs(2));
    let lan_classes = classes_of(&daemon, &format!("{}:6005", Sandbox::ADDR_B4));
    let rest_classes = classes_of(&daemon, &format!("{}:6011", Sandbox::ADDR_B4));
    let (lan, rest) = (finish_client(lan).unwrap(), finish_client(rest).unwrap());
    assert_near("lan (CIDR + port range, 8 Mbit/s)", lan.received_bps, 8.0 * MBIT, 0.10);
    assert_near("port 6011 falls to the default class (3 Mbit/s ceil)", rest.received_bps, 3.0 * MBIT, 0.10);
    // iperf3 opens a control and a data connection per client.
    assert_eq!(lan_classes, ["lan", "lan"]);
    assert_eq!(rest_classes, ["rest", "rest"]);
    // The port matches but the address is IPv6, outside the IPv4 CIDR: default class.
    let v6 = spawn_client(&sandbox.a, Sandbox::ADDR_B6, 6006, &args).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let v6_classes = classes_of(&daemon, &format!("[{}]:6006", Sandbox::ADDR_B6));
    let v6 = finish_client(v6).unwrap();
    assert_near("IPv6 to a matching port takes the default (3 Mbit/s)", v6.received_bps, 3.0 * MBIT, 0.10);
    assert_eq!(v6_classes, ["rest", "rest"]);
}

#[test]
fn a_new_connection_is_in_its_class_from_the_first_packet() {
    require_root!();
    let sandbox = Sandbox::new("first").unwrap();
    let config = format!(
        r#"
[[interface]]
name = "{dev}"
egress = "1gbit"

[[class]]
name = "capped"
egress = "5mbit"
match = 'rport == 5301'
"#,
        dev = sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5301).unwrap();
    let before = classes(&daemon);
    let default_before = class(&before, "default").bytes;
    let htb_default_before = class(&before, "default").sent_bytes;
    // One second of traffic on connections opened after the daemon started.
    let run = run_client(&sandbox.a, Sandbox::ADDR_B4, 5301, &["-t", "1"]).unwrap();
    let rows = classes(&daemon);
    let capped = class(&rows, "capped");
    let (in_class, htb_sent) = (capped.bytes, capped.sent_bytes);
    let default_growth = class(&rows, "default").bytes - default_before;
    let htb_default_growth = class(&rows, "default").sent_bytes - htb_default_before;
    println!(
        "server received {} payload bytes; classifier counted {in_class} into the class, HTB sent {htb_sent} from it; \
         default grew by {default_growth} (HTB: {htb_default_growth})",
        run.received_bytes
    );
    // Every byte the server received went through the class: by the classifier's
    // count and by HTB's own (headers make both a little larger).
    assert!(
        in_class >= run.received_bytes,
        "classifier counted {in_class} of {} received",
        run.received_bytes
    );
    assert!(htb_sent >= run.received_bytes, "HTB sent {htb_sent} of {} received", run.received_bytes);
    // Nothing of it went through the default class (ARP/ND may add a few hundred bytes).
    assert!(default_growth < 2_000, "default class grew by {default_growth}");
    assert!(htb_default_growth < 2_000, "HTB default class grew by {htb_default_growth}");
    // And the first second was already capped: 5 Mbit/s is 625 kB, plus one burst.
    assert!(
        run.received_bytes < 800_000,
        "{} bytes arrived in the first second of a 5 Mbit/s class",
        run.received_bytes
    );
    assert!(run.received_bytes > 300_000, "only {} bytes arrived in one second", run.received_bytes);
}

#[test]
fn sigterm_restores_the_interface_exactly() {
    require_root!();
    let sandbox = Sandbox::new("term").unwrap();
    let before = qdiscs(&sandbox);
    assert!(attached_programs(&sandbox).is_empty());
    let config = format!(
        r#"
[[interface]]
name = "{dev}"
egress = "100mbit"

[[class]]
name = "web"
egress = "10mbit"
match = 'rport in [80, 443]'
"#,
        dev = sandbox.dev_a
    );
    let mut daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let during = qdiscs(&sandbox);
    assert!(during.contains("qdisc htb 1: root"), "{during}");
    assert!(!attached_programs(&sandbox).is_empty(), "classifier not attached");
    let status = daemon.stop().unwrap();
    assert!(status.success(), "shaper run exited with {status}: {}", daemon.log_text());
    assert_eq!(qdiscs(&sandbox), before, "qdiscs after SIGTERM differ from before");
    assert!(attached_programs(&sandbox).is_empty(), "classifier still attached after SIGTERM");
    assert!(!daemon.socket.exists(), "control socket left behind");
}

#[test]
fn a_bad_config_fails_with_its_position_and_attaches_nothing() {
    require_root!();
    let sandbox = Sandbox::new("bad").unwrap();
    let before = qdiscs(&sandbox);
    let config = format!(
        "[[interface]]\nname = \"{dev}\"\negress = \"100mbit\"\n\n[[class]]\nname = \"web\"\nmatch = 'rprot == 80'\n",
        dev = sandbox.dev_a
    );
    let mut daemon = Daemon::spawn(&sandbox, shaper(), &config, &[]).unwrap();
    let status = daemon.wait(Duration::from_secs(20)).unwrap();
    let log = daemon.log_text();
    assert!(!status.success(), "a bad config must fail: {log}");
    let expected = format!("{}:7:10: unknown attribute \"rprot\"", daemon.config.display());
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert_eq!(qdiscs(&sandbox), before);
    assert!(attached_programs(&sandbox).is_empty());
}

#[test]
fn a_foreign_root_qdisc_is_refused_and_left_alone() {
    require_root!();
    let sandbox = Sandbox::new("foreign").unwrap();
    sandbox
        .a
        .run(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                &sandbox.dev_a,
                "root",
                "handle",
                "5:",
                "tbf",
                "rate",
                "1mbit",
                "burst",
                "10k",
                "latency",
                "50ms",
            ],
        )
        .unwrap();
    let before = qdiscs(&sandbox);
    let config = format!("[[interface]]\nname = \"{}\"\negress = \"100mbit\"\n", sandbox.dev_a);
    let mut daemon = Daemon::spawn(&sandbox, shaper(), &config, &[]).unwrap();
    let status = daemon.wait(Duration::from_secs(20)).unwrap();
    let log = daemon.log_text();
    assert!(!status.success());
    assert!(log.contains("already has a root qdisc (tbf 5:)"), "{log}");
    assert_eq!(qdiscs(&sandbox), before);
    assert!(attached_programs(&sandbox).is_empty());
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    require_root!();
    let sandbox = Sandbox::new("twice").unwrap();
    let config = format!("[[interface]]\nname = \"{}\"\negress = \"100mbit\"\n", sandbox.dev_a);
    let first = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // A second daemon with the same socket (its run directory is the first one's).
    let out = sandbox
        .a
        .command(SHAPER)
        .args(["run", "--config"])
        .arg(&first.config)
        .arg("--socket")
        .arg(&first.socket)
        .arg("--pid-file")
        .arg(&first.pid_file)
        .arg("--pin-dir")
        .arg(&first.pins)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The pid-file lock is taken first: the second daemon stops there.
    assert!(stderr.contains("shaper is already running (pid "), "{stderr}");
    // With a pid file of its own, the live socket stops it.
    let out = sandbox
        .a
        .command(SHAPER)
        .args(["run", "--config"])
        .arg(&first.config)
        .arg("--socket")
        .arg(&first.socket)
        .arg("--pid-file")
        .arg(first.dir().join("other.pid"))
        .arg("--pin-dir")
        .arg(&first.pins)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another shaper daemon is already listening"), "{stderr}");
    // The first one still answers, on its own socket.
    first.status().unwrap();
}

#[test]
fn the_cli_prints_tables_and_the_documented_json() {
    require_root!();
    let sandbox = Sandbox::new("cli").unwrap();
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"100mbit\"\n\n[[class]]\nname = \"web\"\npriority = 2\negress = {{ rate = \"10mbit\", ceil = \"50mbit\" }}\nmatch = 'rport == 5401'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B6, 5401).unwrap();
    let client = spawn_client(&sandbox.a, Sandbox::ADDR_B6, 5401, &["-t", "3"]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let cli = |args: &[&str]| -> String {
        let out = sandbox.a.command(SHAPER).args(args).arg("--socket").arg(&daemon.socket).output().unwrap();
        assert!(out.status.success(), "shaper {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // Decoding into the protocol's rows checks every documented key and its
    // type (the counters `bytes`, `packets`, `drops` among them).
    let classes: Vec<ClassRow> = serde_json::from_str(&cli(&["classes", "--json"])).unwrap();
    let web = class(&classes, "web");
    assert_eq!(web.interface, sandbox.dev_a);
    assert_eq!(web.direction, Direction::Egress);
    assert_eq!(web.classid, "1:10");
    assert_eq!((web.rate_bps, web.ceil_bps), (10_000_000, 50_000_000));
    assert_eq!(web.priority, 2);
    assert_eq!(class(&classes, "default").classid, "1:11");
    let conns: Vec<ConnRow> = serde_json::from_str(&cli(&["conns", "--json"])).unwrap();
    let remote = format!("[{}]:5401", Sandbox::ADDR_B6);
    let data = conns.iter().find(|c| c.remote == remote && c.tx_bytes > 100_000);
    let Some(data) = data else {
        panic!("no data connection to {remote} in {conns:#?}; the client said {:?}", finish_client(client));
    };
    assert_eq!((data.proto.as_str(), data.class.as_str()), ("tcp", "web"));
    assert!(data.local.starts_with(&format!("[{}]:", Sandbox::ADDR_A6)), "{data:#?}");
    // Human output: aligned tables with human rates.
    let table = cli(&["classes"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("CLASS") && header.contains("CEIL"), "{table}");
    let web_line = lines.find(|l| l.starts_with("web ")).unwrap();
    assert!(web_line.contains("10 Mbit/s") && web_line.contains("50 Mbit/s"), "{table}");
    assert_eq!(web_line.find("1:10"), header.find("CLASSID"), "columns are aligned:\n{table}");
    let status = cli(&["status"]);
    assert!(
        status.contains(&format!("{} (ifindex", sandbox.dev_a)) && status.contains("classifier errors: none"),
        "{status}"
    );
    finish_client(client).unwrap();
}

#[test]
fn a_connection_opened_before_the_daemon_is_shaped_once_it_starts() {
    require_root!();
    let sandbox = Sandbox::new("before").unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5501).unwrap();
    // An unshaped transfer, paced at 50 Mbit/s so the far end is not the limit,
    // and long enough to outlast a daemon that takes seconds to load (verifier
    // time on a busy machine) plus the 4 s measured.
    let client = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5501, &["-t", "16", "-b", "50M"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\n[[class]]\nname = \"capped\"\negress = \"5mbit\"\nmatch = 'rport == 5501'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // Both of iperf3's connections (control and data) are listed in the class.
    assert_eq!(classes_of(&daemon, &format!("{}:5501", Sandbox::ADDR_B4)), ["capped", "capped"]);
    // And the running transfer is capped: HTB's own counter of the class, over 3 s.
    std::thread::sleep(Duration::from_secs(1));
    let sent = |rows: &[ClassRow]| class(rows, "capped").sent_bytes;
    let (t0, b0) = (std::time::Instant::now(), sent(&classes(&daemon)));
    std::thread::sleep(Duration::from_secs(3));
    let (t1, b1) = (std::time::Instant::now(), sent(&classes(&daemon)));
    let rate = (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64();
    assert_near("a transfer that predates the daemon", rate, 5.0 * MBIT, 0.10);
    let status = daemon.status().unwrap();
    assert!(status.last_scan.as_ref().map(|s| s.sockets) >= Some(2), "{status:#?}");
    finish_client(client).unwrap();
}
