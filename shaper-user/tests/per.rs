//! End to end: limits per user, program or connection (`per`, `total`,
//! `instance_idle`), with real traffic from programs started in the
//! sandbox's cgroup as test users or under other names.
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds and removes its own sandbox, cgroups, program copies and users.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client_cmd, Daemon, IperfServer, Programs, Sandbox, TestUser},
};
use shaper_user::control::{client, ClassRow, Direction, QuotaState, UsageRow};

const SCAN: &str = "\n[daemon]\nscan_interval = \"500ms\"\n";

/// Runs one iperf3 client per command at once (to ports 5201, 5202, …) for 8
/// seconds; returns each one's received rate, and the class rows seen midway.
fn run_at_once(commands: Vec<Command>, daemon: &Daemon) -> (Vec<f64>, Vec<ClassRow>) {
    let args = ["-t", "8", "-O", "2"];
    let clients: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(i, cmd)| spawn_client_cmd(cmd, Sandbox::ADDR_B4, 5201 + i as u16, &args).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let rows = classes(daemon);
    let rates = clients.into_iter().map(|c| finish_client(c).unwrap().received_bps).collect();
    (rates, rows)
}

/// The instance keys `classes` shows for class `name` (egress).
fn instance_keys(rows: &[ClassRow], name: &str) -> Vec<String> {
    class_in(rows, name, Direction::Egress).instances.iter().map(|i| i.key.clone()).collect()
}

fn per_class(per: &str, extra: &str) -> String {
    format!(
        "\n[[class]]\nname = \"each\"\negress = \"5mbit\"\nmatch = 'rport in [5201, 5202]'\nper = \"{per}\"\n{extra}"
    )
}

#[test]
fn each_user_gets_the_class_rate_and_total_caps_them_together() {
    require_root!();
    let sandbox = Sandbox::new("peru").unwrap();
    let users = [
        TestUser::create(&format!("shp-{}a", sandbox.tag)).unwrap(),
        TestUser::create(&format!("shp-{}b", sandbox.tag)).unwrap(),
    ];
    let config = format!("{}{}{SCAN}", interface(&sandbox), per_class("user", ""));
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let commands = || users.iter().map(|u| sandbox.client_as(u, "iperf3").unwrap()).collect();
    let (rates, rows) = run_at_once(commands(), &daemon);
    println!("per user, 5mbit each: {:.2} and {:.2} Mbit/s", rates[0] / MBIT, rates[1] / MBIT);
    for (user, rate) in users.iter().zip(&rates) {
        assert_near(&format!("user {} (5 Mbit/s of its own)", user.name), *rate, 5.0 * MBIT, 0.10);
    }
    let mut expected: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    expected.sort();
    assert_eq!(instance_keys(&rows, "each"), expected, "{rows:#?}");
    // The same class with a total: both users together at 6 Mbit/s, applied live.
    std::fs::write(
        &daemon.config,
        format!("{}{}{SCAN}", interface(&sandbox), per_class("user", "total = \"6mbit\"\n")),
    )
    .unwrap();
    daemon.reload().unwrap();
    let (rates, _) = run_at_once(commands(), &daemon);
    println!("per user, total 6mbit: {:.2} and {:.2} Mbit/s", rates[0] / MBIT, rates[1] / MBIT);
    assert_near("both users together under total = 6mbit", rates[0] + rates[1], 6.0 * MBIT, 0.10);
    assert_near("each user's share of the total", rates[0], 3.0 * MBIT, 0.20);
    let status = daemon.status().unwrap();
    assert_eq!((status.instances.live, status.instances.capped), (2, 0), "{status:#?}");
}

#[test]
fn each_program_gets_the_class_rate() {
    require_root!();
    let sandbox = Sandbox::new("perp").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let names = ["shpone", "shptwo"];
    let paths: Vec<_> = names.iter().map(|n| programs.copy("iperf3", n).unwrap()).collect();
    let config = format!("{}{}{SCAN}", interface(&sandbox), per_class("program", ""));
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let commands = paths.iter().map(|p| sandbox.client(p.to_str().unwrap()).unwrap()).collect();
    let (rates, rows) = run_at_once(commands, &daemon);
    println!("per program, 5mbit each: {:.2} and {:.2} Mbit/s", rates[0] / MBIT, rates[1] / MBIT);
    for (name, rate) in names.iter().zip(&rates) {
        assert_near(&format!("program {name} (5 Mbit/s of its own)"), *rate, 5.0 * MBIT, 0.10);
    }
    assert_eq!(instance_keys(&rows, "each"), names, "{rows:#?}");
}

#[test]
fn an_idle_instance_loses_its_leaf() {
    require_root!();
    let sandbox = Sandbox::new("peri").unwrap();
    let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    let config = format!("{}{}{SCAN}", interface(&sandbox), per_class("user", "instance_idle = \"2s\"\n"));
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let run =
        spawn_client_cmd(sandbox.client_as(&user, "iperf3").unwrap(), Sandbox::ADDR_B4, 5201, &["-t", "2"]);
    let result = finish_client(run.unwrap()).unwrap();
    assert_near("the user's transfer", result.received_bps, 5.0 * MBIT, 0.15);
    let leaf = class_in(&classes(&daemon), "each", Direction::Egress).instances[0].classid.clone();
    let htb = |s: &Sandbox| {
        String::from_utf8_lossy(&s.a.run("tc", &["class", "show", "dev", &s.dev_a]).unwrap().stdout)
            .into_owned()
    };
    assert!(htb(&sandbox).contains(&format!("class htb {leaf} ")), "{}", htb(&sandbox));
    let started = Instant::now();
    while daemon.status().unwrap().instances.live > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still live after 10 s: {:#?}",
            daemon.status().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("removed {:.1} s after the transfer ended (instance_idle 2s)", started.elapsed().as_secs_f64());
    assert!(started.elapsed() >= Duration::from_secs(1), "removed before it was idle");
    assert_eq!(daemon.status().unwrap().instances.removed, 1);
    assert!(instance_keys(&classes(&daemon), "each").is_empty());
    assert!(!htb(&sandbox).contains(&format!("class htb {leaf} ")), "{}", htb(&sandbox));
}

#[test]
fn a_flood_of_connections_stops_at_the_cap_and_is_counted() {
    require_root!();
    let sandbox = Sandbox::new("perf").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"each\"\negress = \"5mbit\"\nmatch = 'rport == 9'\nper = \"connection\"\n{SCAN}",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // 1 200 UDP sockets, each bound to a port of its own and sending one
    // datagram: 1 200 connections, 1 024 allowed.
    let flood = "import socket\nfor i in range(1200):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
                 s.bind(('198.18.0.1', 20000 + i))\n    s.sendto(b'x', ('198.18.0.2', 9))\n    s.close()\n";
    let out = output(sandbox.client("python3").unwrap().args(["-c", flood]));
    assert!(out.status.success());
    let started = Instant::now();
    let counted = loop {
        let s = daemon.status().unwrap();
        if s.instances.live + s.instances.capped >= 1200 || started.elapsed() > Duration::from_secs(20) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("after the flood: {:?}", counted.instances);
    assert_eq!(counted.instances.live, 1024, "{:#?}", counted.instances);
    assert_eq!(counted.instances.capped, 1200 - 1024, "{:#?}", counted.instances);
    assert_eq!(counted.instances.failed, 0);
    assert_eq!(class_in(&classes(&daemon), "each", Direction::Egress).instances.len(), 1024);
}

/// The download's receive rate (iperf3 -R: the far end sends) over 8 s on
/// `port`, and the upload's next to it if `upload` names a port.
fn download_next_to(sandbox: &Sandbox, port: u16, upload: Option<u16>) -> (f64, Option<f64>) {
    let args = ["-t", "8", "-O", "2"];
    let up = upload
        .map(|p| spawn_client_cmd(sandbox.client("iperf3").unwrap(), Sandbox::ADDR_B4, p, &args).unwrap());
    let down = spawn_client_cmd(
        sandbox.client("iperf3").unwrap(),
        Sandbox::ADDR_B4,
        port,
        &["-t", "8", "-O", "2", "-R"],
    )
    .unwrap();
    let down = finish_client(down).unwrap().received_bps;
    (down, up.map(|u| finish_client(u).unwrap().received_bps))
}

#[test]
fn a_download_keeps_its_share_next_to_a_saturating_upload_in_its_class() {
    require_root!();
    let sandbox = Sandbox::new("pera").unwrap();
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\ningress = \"1gbit\"\n\n\
         [[class]]\nname = \"both\"\negress = \"1mbit\"\ningress = \"1mbit\"\nmatch = 'rport in [5201, 5202]'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let (alone, _) = download_next_to(&sandbox, 5202, None);
    let (beside, upload) = download_next_to(&sandbox, 5202, Some(5201));
    let upload = upload.unwrap();
    println!(
        "download alone {:.3} Mbit/s, next to the upload {:.3} Mbit/s ({:.2} of its share); upload {:.3} Mbit/s",
        alone / MBIT,
        beside / MBIT,
        beside / alone,
        upload / MBIT
    );
    assert_near("the download alone in its 1 Mbit/s class", alone, 0.95 * MBIT, 0.15);
    assert!(beside >= 0.8 * alone, "the download got {:.2} of its share next to the upload", beside / alone);
    assert_near("the upload next to it", upload, 0.95 * MBIT, 0.10);
    let rows = classes(&daemon);
    assert!(class_in(&rows, "both", Direction::Ingress).bytes > 0);
}

/// The quota row of instance `instance` of class `class`, by `shaper usage --json`.
fn usage_of(daemon: &Daemon, class: &str, instance: &str) -> UsageRow {
    usage_row(daemon, class, instance)
        .unwrap_or_else(|rows| panic!("no quota for {class} ({instance}): {rows:#?}"))
}

/// The quota row of an instance, or all rows when it has none (yet).
fn usage_row(daemon: &Daemon, class: &str, instance: &str) -> Result<UsageRow, Vec<UsageRow>> {
    let out = output(Command::new(SHAPER).args(["usage", "--json", "--socket"]).arg(&daemon.socket));
    let rows: Vec<UsageRow> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter().find(|r| r.class == class && r.instance.as_deref() == Some(instance)).cloned().ok_or(rows)
}

/// Polls until instance `instance` of class `class` is throttled (its row then).
fn wait_throttled(daemon: &Daemon, class: &str, instance: &str, within: Duration) -> UsageRow {
    let started = Instant::now();
    loop {
        match usage_row(daemon, class, instance) {
            Ok(row) if row.state == QuotaState::Throttled => return row,
            row => assert!(started.elapsed() < within, "{instance} not throttled after {within:?}: {row:#?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn each_user_has_its_own_quota() {
    require_root!();
    let sandbox = Sandbox::new("perq").unwrap();
    let users = [
        TestUser::create(&format!("shp-{}a", sandbox.tag)).unwrap(),
        TestUser::create(&format!("shp-{}b", sandbox.tag)).unwrap(),
    ];
    let (a, b) = (&users[0].name, &users[1].name);
    let quota = "quota = { bytes = \"24MB\", period = \"1h\", direction = \"egress\", then = \"1mbit\" }\n";
    let state_dir = Daemon::dir_for(&sandbox.tag).join("state");
    let config = format!(
        "{}\n[[class]]\nname = \"each\"\negress = \"20mbit\"\nmatch = 'rport in [5201, 5202]'\nper = \"user\"\n\
         {quota}{SCAN}state_dir = \"{}\"\n",
        interface(&sandbox),
        state_dir.display()
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    // User A alone uses up its 24 MB (about 10 s at 20 Mbit/s).
    let client = |user, port, secs: &str| {
        spawn_client_cmd(
            sandbox.client_as(user, "iperf3").unwrap(),
            Sandbox::ADDR_B4,
            port,
            &["-t", secs, "-O", "2"],
        )
        .unwrap()
    };
    let alone = client(&users[0], 5201, "10");
    let started = Instant::now();
    let row = wait_throttled(&daemon, "each", a, Duration::from_secs(20));
    println!("{a} throttled after {:.1} s at {} bytes", started.elapsed().as_secs_f64(), row.used_bytes);
    finish_client(alone).unwrap();
    // Now both at once: A held to 1 Mbit/s, B at its 20 Mbit/s (B's 8 s stay under its quota).
    let (rate_a, rate_b) = (client(&users[0], 5201, "6"), client(&users[1], 5202, "6"));
    std::thread::sleep(Duration::from_secs(4));
    let rows = classes(&daemon);
    let (rate_a, rate_b) =
        (finish_client(rate_a).unwrap().received_bps, finish_client(rate_b).unwrap().received_bps);
    println!("after A's quota: A {:.2} Mbit/s, B {:.2} Mbit/s", rate_a / MBIT, rate_b / MBIT);
    assert_near(&format!("user {a}, throttled"), rate_a, MBIT, 0.10);
    assert_near(&format!("user {b}, its quota not used up"), rate_b, 20.0 * MBIT, 0.10);
    let leaves = &class_in(&rows, "each", Direction::Egress).instances;
    let leaf = |name: &str| leaves.iter().find(|i| i.key == name).map(|i| (i.rate_bps, i.ceil_bps));
    assert_eq!(
        (leaf(a), leaf(b)),
        (Some((1_000_000, 1_000_000)), Some((20_000_000, 20_000_000))),
        "{leaves:#?}"
    );
    let (row_a, row_b) = (usage_of(&daemon, "each", a), usage_of(&daemon, "each", b));
    assert_eq!((row_a.state, row_b.state), (QuotaState::Throttled, QuotaState::Ok), "{row_a:#?} {row_b:#?}");
    assert!(row_b.used_bytes > 8_000_000 && row_b.used_bytes < 24_000_000, "{row_b:#?}");
    // The class row is the total of both, and never acts.
    let total = client::usage(&daemon.socket).unwrap().into_iter().find(|r| r.instance.is_none()).unwrap();
    assert_eq!(total.state, QuotaState::Ok, "{total:#?}");
    assert!(total.used_bytes >= row_a.used_bytes + row_b.used_bytes, "{total:#?}");
    // `usage reset CLASS INSTANCE` lifts A's throttle, and only A's usage starts over.
    let out =
        output(Command::new(SHAPER).args(["usage", "reset", "each", a, "--socket"]).arg(&daemon.socket));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (row_a, again_b) = (usage_of(&daemon, "each", a), usage_of(&daemon, "each", b));
    assert_eq!((row_a.state, row_a.used_bytes), (QuotaState::Ok, 0), "{row_a:#?}");
    assert_eq!(again_b.used_bytes, row_b.used_bytes);
    let leaves = class_in(&classes(&daemon), "each", Direction::Egress).instances.clone();
    assert!(leaves.iter().all(|i| i.rate_bps == 20_000_000), "{leaves:#?}");
}

#[test]
fn an_instance_keeps_its_used_up_quota_across_its_idle_removal() {
    require_root!();
    let sandbox = Sandbox::new("perk").unwrap();
    let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    let state_dir = Daemon::dir_for(&sandbox.tag).join("state");
    let config = format!(
        "{}{}{SCAN}state_dir = \"{}\"\n",
        interface(&sandbox),
        per_class(
            "user",
            "instance_idle = \"2s\"\n\
             quota = { bytes = \"4MB\", period = \"1h\", direction = \"egress\", then = \"1mbit\" }\n"
        ),
        state_dir.display()
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    // 5 Mbit/s for 8 s: 5 MB, past the 4 MB quota.
    let run = |secs: &str| {
        let cmd = sandbox.client_as(&user, "iperf3").unwrap();
        finish_client(spawn_client_cmd(cmd, Sandbox::ADDR_B4, 5201, &["-t", secs, "-O", "1"]).unwrap())
            .unwrap()
    };
    run("8");
    let used = usage_of(&daemon, "each", &user.name);
    assert_eq!(used.state, QuotaState::Throttled, "{used:#?}");
    let started = Instant::now();
    while daemon.status().unwrap().instances.live > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the idle instance is still live after 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle = usage_of(&daemon, "each", &user.name);
    println!("idle and without a leaf: {} bytes, {:?}", idle.used_bytes, idle.state);
    assert_eq!((idle.state, idle.used_bytes >= used.used_bytes), (QuotaState::Throttled, true), "{idle:#?}");
    // Back in the same period: a new leaf, held at once.
    let again = run("4").received_bps;
    println!("back after its idle removal: {:.2} Mbit/s", again / MBIT);
    assert_near("the returning user, still throttled", again, MBIT, 0.10);
    assert_eq!(daemon.status().unwrap().instances.created, 2);
}

#[test]
fn a_reload_takes_per_away_and_gives_it_back() {
    require_root!();
    let sandbox = Sandbox::new("perr").unwrap();
    let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    let with_per = format!("{}{}{SCAN}", interface(&sandbox), per_class("user", ""));
    let daemon = Daemon::start(&sandbox, shaper(), &with_per).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let run = |what: &str| {
        let client = spawn_client_cmd(
            sandbox.client_as(&user, "iperf3").unwrap(),
            Sandbox::ADDR_B4,
            5201,
            &["-t", "3"],
        );
        let rate = finish_client(client.unwrap()).unwrap().received_bps;
        assert_near(what, rate, 5.0 * MBIT, 0.15);
    };
    let htb = || {
        String::from_utf8_lossy(
            &sandbox.a.run("tc", &["class", "show", "dev", &sandbox.dev_a]).unwrap().stdout,
        )
        .into_owned()
    };
    run("with per");
    assert_eq!(daemon.status().unwrap().instances.live, 1);
    // The class becomes one leaf again: its instances and shared leaf go first.
    let without = with_per.replace("per = \"user\"\n", "");
    std::fs::write(&daemon.config, &without).unwrap();
    daemon.reload().unwrap();
    let (status, tree) = (daemon.status().unwrap(), htb());
    assert_eq!((status.instances.live, status.instances.removed), (0, 1), "{status:#?}");
    assert!(!tree.contains("class htb 1:800 ") && !tree.contains("class htb 1:1000 "), "{tree}");
    run("without per");
    std::fs::write(&daemon.config, &with_per).unwrap();
    daemon.reload().unwrap();
    run("with per again");
    assert_eq!(daemon.status().unwrap().instances.live, 1);
    assert!(htb().contains("class htb 1:800 "), "{}", htb());
}

#[test]
fn a_quota_added_by_a_reload_counts_for_the_instances_already_there() {
    require_root!();
    let sandbox = Sandbox::new("perz").unwrap();
    let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    let state_dir = Daemon::dir_for(&sandbox.tag).join("state");
    let config = |extra: &str| {
        format!(
            "{}{}{SCAN}state_dir = \"{}\"\n",
            interface(&sandbox),
            per_class("user", extra),
            state_dir.display()
        )
    };
    let daemon = Daemon::start(&sandbox, shaper(), &config("")).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let cmd = sandbox.client_as(&user, "iperf3").unwrap();
    let run = spawn_client_cmd(cmd, Sandbox::ADDR_B4, 5201, &["-t", "8"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.status().unwrap().instances.live, 1);
    let quota = "quota = { bytes = \"2MB\", period = \"1h\", direction = \"egress\", then = \"1mbit\" }\n";
    std::fs::write(&daemon.config, config(quota)).unwrap();
    daemon.reload().unwrap();
    let started = Instant::now();
    let row = wait_throttled(&daemon, "each", &user.name, Duration::from_secs(6));
    println!(
        "throttled {:.1} s after the reload at {} bytes",
        started.elapsed().as_secs_f64(),
        row.used_bytes
    );
    assert_eq!(daemon.status().unwrap().instances.created, 1, "the instance kept its leaf");
    let leaf = class_in(&classes(&daemon), "each", Direction::Egress).instances[0].clone();
    assert_eq!((leaf.rate_bps, leaf.ceil_bps), (1_000_000, 1_000_000), "{leaf:#?}");
    finish_client(run).unwrap();
}
