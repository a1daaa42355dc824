//! End to end: rules on the program, user, arguments, ancestry and cgroup
//! behind a connection, with real programs started in the sandbox's cgroup
//! (where the daemon's socket hooks are attached).
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

use std::time::Duration;

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{
        finish_client, spawn_client, spawn_client_cmd, Daemon, IperfServer, Programs, Sandbox, TestUser,
    },
};
use shaper_user::control::{ConnRow, Origin};

/// A reconcile every second: the flows the kernel decides are not reported
/// to the daemon (only provisional verdicts are), so `conns` learns who is
/// behind them at the next reconcile.
const SCAN_1S: &str = "\n[daemon]\nscan_interval = \"1s\"\n";

/// iperf3's connections to `port`: (control, data), the data connection being
/// the one that carried the bytes.
fn iperf_conns(daemon: &Daemon, port: u16) -> (ConnRow, ConnRow) {
    let rows = conns(daemon);
    let mut mine: Vec<ConnRow> =
        rows.iter().filter(|c| c.remote.ends_with(&format!(":{port}"))).cloned().collect();
    mine.sort_by_key(|c| c.tx_bytes);
    match <[ConnRow; 2]>::try_from(mine) {
        Ok([control, data]) => (control, data),
        Err(other) => panic!("expected two connections to port {port}, found {other:#?}"),
    }
}

fn data_conn(daemon: &Daemon, port: u16) -> ConnRow {
    iperf_conns(daemon, port).1
}

#[test]
fn two_copies_of_one_program_are_shaped_by_name() {
    require_root!();
    let sandbox = Sandbox::new("names").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let bulk = programs.copy("iperf3", "bulkapp").unwrap();
    let fast = programs.copy("iperf3", "fastapp").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"bulk\"\negress = \"5mbit\"\nmatch = 'cmd == \"bulkapp\"'\n\n\
         [[class]]\nname = \"fast\"\negress = \"20mbit\"\nmatch = 'cmd == \"fastapp\"'\n{SCAN_1S}",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let args = ["-t", "8", "-O", "2"];
    let b = spawn_client_cmd(sandbox.client(bulk.to_str().unwrap()).unwrap(), Sandbox::ADDR_B4, 5201, &args)
        .unwrap();
    let f = spawn_client_cmd(sandbox.client(fast.to_str().unwrap()).unwrap(), Sandbox::ADDR_B4, 5202, &args)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (bulk_conn, fast_conn) = (data_conn(&daemon, 5201), data_conn(&daemon, 5202));
    let (b, f) = (finish_client(b).unwrap(), finish_client(f).unwrap());
    println!("bulkapp {:.2} Mbit/s, fastapp {:.2} Mbit/s", b.received_bps / MBIT, f.received_bps / MBIT);
    assert_near("bulkapp (cmd rule, 5 Mbit/s)", b.received_bps, 5.0 * MBIT, 0.10);
    assert_near("fastapp (cmd rule, 20 Mbit/s)", f.received_bps, 20.0 * MBIT, 0.10);
    // The kernel decided from the first packet; conns shows who is behind each flow.
    for (conn, cmd, class) in [(&bulk_conn, "bulkapp", "bulk"), (&fast_conn, "fastapp", "fast")] {
        assert_eq!((conn.cmd.as_deref(), conn.class.as_str()), (Some(cmd), class), "{conn:#?}");
        assert_eq!(conn.origin, Origin::Kernel, "{conn:#?}");
        assert_eq!(conn.user.as_deref(), Some("root"), "{conn:#?}");
        assert!(conn.pid.is_some_and(|p| p > 1), "{conn:#?}");
        assert_eq!(conn.rule.as_deref(), Some(format!("cmd == \"{cmd}\"").as_str()), "{conn:#?}");
    }
}

#[test]
fn a_client_run_as_another_user_is_matched_by_user() {
    require_root!();
    let sandbox = Sandbox::new("user").unwrap();
    let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    let config = format!(
        "{}\ndefault = \"others\"\n\n[[class]]\nname = \"theirs\"\negress = \"5mbit\"\nmatch = 'user == \"{}\"'\n\n\
         [[class]]\nname = \"others\"\negress = \"20mbit\"\n{SCAN_1S}",
        interface(&sandbox),
        user.name
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let args = ["-t", "8", "-O", "2"];
    let theirs =
        spawn_client_cmd(sandbox.client_as(&user, "iperf3").unwrap(), Sandbox::ADDR_B4, 5201, &args).unwrap();
    let root = spawn_client_cmd(sandbox.client("iperf3").unwrap(), Sandbox::ADDR_B4, 5202, &args).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let conn = data_conn(&daemon, 5201);
    let (theirs, root) = (finish_client(theirs).unwrap(), finish_client(root).unwrap());
    assert_near(&format!("user {} (5 Mbit/s)", user.name), theirs.received_bps, 5.0 * MBIT, 0.10);
    assert_near("root's client, the default class (20 Mbit/s)", root.received_bps, 20.0 * MBIT, 0.10);
    assert_eq!(
        (conn.user.as_deref(), conn.class.as_str()),
        (Some(user.name.as_str()), "theirs"),
        "{conn:#?}"
    );
}

#[test]
fn args_and_ancestor_rules_are_decided_by_the_daemon_within_milliseconds() {
    require_root!();
    let sandbox = Sandbox::new("args").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    // A launcher script that runs the client as its child (not exec).
    let launcher = programs.script("launcher.sh", "#!/bin/sh\niperf3 \"$@\"\nexit $?\n").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"titled\"\negress = \"5mbit\"\nmatch = 'args ~ \"shp-args-*\"'\n\n\
         [[class]]\nname = \"launched\"\negress = \"8mbit\"\nmatch = 'ancestor == \"launcher.sh\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let titled = spawn_client_cmd(
        sandbox.client("iperf3").unwrap(),
        Sandbox::ADDR_B4,
        5201,
        &["-t", "8", "-O", "2", "-T", "shp-args-1"],
    )
    .unwrap();
    let launched = spawn_client_cmd(
        sandbox.client(launcher.to_str().unwrap()).unwrap(),
        Sandbox::ADDR_B4,
        5202,
        &["-t", "8", "-O", "2"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (titled_conns, launched_conns) = (iperf_conns(&daemon, 5201), iperf_conns(&daemon, 5202));
    let status = daemon.status().unwrap();
    let (titled, launched) = (finish_client(titled).unwrap(), finish_client(launched).unwrap());
    assert_near("iperf3 -T shp-args-1 (args rule, 5 Mbit/s)", titled.received_bps, 5.0 * MBIT, 0.10);
    assert_near(
        "iperf3 under launcher.sh (ancestor rule, 8 Mbit/s)",
        launched.received_bps,
        8.0 * MBIT,
        0.10,
    );
    for ((control, data), class) in [(&titled_conns, "titled"), (&launched_conns, "launched")] {
        // A process's first connection waits for the daemon, which reads /proc;
        // it ran in its provisional class until then: report it.
        assert_eq!((control.class.as_str(), control.origin.as_str()), (class, "daemon"), "{control:#?}");
        let (us, bytes) = (control.decided_us.unwrap(), control.provisional_bytes.unwrap());
        println!(
            "{class}: first connection decided after {us} µs, {bytes} bytes sent in the provisional class"
        );
        assert!(bytes < 64 * 1024, "{bytes} bytes ran in the provisional class: {control:#?}");
        // The data connection follows within a millisecond or so: decided by
        // the kernel from the daemon's answers if they were there already,
        // else by the daemon; in its class either way.
        assert_eq!(data.class, class, "{data:#?}");
    }
    let decisions = &status.decisions;
    println!("daemon decisions: {decisions:#?}");
    assert!(decisions.provisional >= 2, "{status:#?}");
}

#[test]
fn every_byte_of_a_kernel_decided_connection_is_in_its_class() {
    require_root!();
    let sandbox = Sandbox::new("first3").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let bulk = programs.copy("iperf3", "bulkapp").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"bulk\"\negress = \"5mbit\"\nmatch = 'cmd == \"bulkapp\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B6, 5201).unwrap();
    let before = classes(&daemon);
    let default_before = class(&before, "default").sent_bytes;
    let run = finish_client(
        spawn_client_cmd(
            sandbox.client(bulk.to_str().unwrap()).unwrap(),
            Sandbox::ADDR_B6,
            5201,
            &["-t", "1"],
        )
        .unwrap(),
    )
    .unwrap();
    let rows = classes(&daemon);
    let (in_class, htb_sent) = (class(&rows, "bulk").bytes, class(&rows, "bulk").sent_bytes);
    let default_growth = class(&rows, "default").sent_bytes - default_before;
    println!(
        "received {}; classifier counted {in_class}, HTB sent {htb_sent}; default grew {default_growth}",
        run.received_bytes
    );
    assert!(in_class >= run.received_bytes && htb_sent >= run.received_bytes);
    assert!(default_growth < 2_000, "the default class grew by {default_growth} bytes");
    let conn = data_conn(&daemon, 5201);
    assert_eq!((conn.origin.as_str(), conn.class.as_str()), ("kernel", "bulk"), "{conn:#?}");
}

#[test]
fn a_connection_opened_before_the_daemon_started_is_shaped_after_the_first_scan() {
    require_root!();
    let sandbox = Sandbox::new("pre3").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let bulk = programs.copy("iperf3", "bulkapp").unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let client = spawn_client_cmd(
        sandbox.client(bulk.to_str().unwrap()).unwrap(),
        Sandbox::ADDR_B4,
        5201,
        &["-t", "16", "-b", "50M"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Its sockets have no owner record: the hooks were not there when they were made.
    let config = format!(
        "{}\n[[class]]\nname = \"bulk\"\negress = \"5mbit\"\nmatch = 'cmd == \"bulkapp\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let conn = data_conn(&daemon, 5201);
    assert_eq!((conn.class.as_str(), conn.cmd.as_deref()), ("bulk", Some("bulkapp")), "{conn:#?}");
    assert_near("a transfer that predates the daemon", htb_rate(&daemon, "bulk", 3.0), 5.0 * MBIT, 0.10);
    finish_client(client).unwrap();
}

#[test]
fn cgroup_and_unit_rules_are_decided_in_the_kernel() {
    require_root!();
    let sandbox = Sandbox::new("cgrp").unwrap();
    let unit = sandbox.cgroup.child("shp-bulk.service").unwrap();
    let plain = sandbox.cgroup.child("fast").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"unit\"\negress = \"5mbit\"\nmatch = 'unit == \"shp-bulk.service\"'\n\n\
         [[class]]\nname = \"path\"\negress = \"20mbit\"\nmatch = 'cgroup == \"{}/fast\"'\n",
        interface(&sandbox),
        sandbox.cgroup.path()
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B6, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B6, 5202).unwrap();
    let args = ["-t", "8", "-O", "2"];
    let u =
        spawn_client_cmd(sandbox.client_in(&unit, "iperf3").unwrap(), Sandbox::ADDR_B6, 5201, &args).unwrap();
    let p = spawn_client_cmd(sandbox.client_in(&plain, "iperf3").unwrap(), Sandbox::ADDR_B6, 5202, &args)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let unit_conn = data_conn(&daemon, 5201);
    let (u, p) = (finish_client(u).unwrap(), finish_client(p).unwrap());
    assert_near("a process in shp-bulk.service (unit rule, 5 Mbit/s)", u.received_bps, 5.0 * MBIT, 0.10);
    assert_near("a process in …/fast (cgroup rule, 20 Mbit/s)", p.received_bps, 20.0 * MBIT, 0.10);
    assert_eq!(unit_conn.origin, Origin::Kernel, "{unit_conn:#?}");
}

#[test]
fn unconnected_udp_over_ipv6_is_matched_by_program() {
    require_root!();
    let sandbox = Sandbox::new("udp3").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    // Datagrams with sendto() on an unconnected socket, 1 MB in all.
    let sender = programs
        .script(
            "udpsender",
            &format!(
                "#!/usr/bin/python3\nimport socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
                 for i in range(1000):\n    s.sendto(b'x' * 1000, ('{}', 5353))\n",
                Sandbox::ADDR_B6
            ),
        )
        .unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"udp\"\negress = \"100mbit\"\nmatch = 'proto == \"udp\" and cmd == \"udpsender\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let before = classes(&daemon);
    let status = sandbox.client(sender.to_str().unwrap()).unwrap().status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    let rows = classes(&daemon);
    let grew = |name: &str| class(&rows, name).bytes - class(&before, name).bytes;
    println!("udp class +{} bytes, default +{} bytes", grew("udp"), grew("default"));
    // 1000 datagrams of 1000 bytes plus headers, all in the class.
    assert!(grew("udp") >= 1_000_000, "udp class grew by {}", grew("udp"));
    assert!(grew("default") < 2_000, "default class grew by {}", grew("default"));
}

#[test]
fn later_connections_of_a_process_are_decided_in_the_kernel_from_the_daemons_answers() {
    require_root!();
    let sandbox = Sandbox::new("cache").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    // Five connections, a tenth of a second apart; the argument is what the rule tests.
    let client = programs
        .script(
            "connector",
            &format!(
                "#!/usr/bin/python3\nimport socket, sys, time\nfor i in range(5):\n    \
                 s = socket.create_connection(('{}', 5201))\n    s.close()\n    time.sleep(0.1)\n",
                Sandbox::ADDR_B4
            ),
        )
        .unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"tagged\"\negress = \"5mbit\"\nmatch = 'args ~ \"shp-cache-tag\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let status = sandbox.client(client.to_str().unwrap()).unwrap().arg("shp-cache-tag").status().unwrap();
    assert!(status.success());
    let mut mine: Vec<ConnRow> =
        conns(&daemon).into_iter().filter(|c| c.remote == format!("{}:5201", Sandbox::ADDR_B4)).collect();
    mine.sort_by_key(|c| c.local.rsplit(':').next().unwrap_or("").parse::<u32>().unwrap_or(0));
    assert_eq!(mine.len(), 5, "{mine:#?}");
    let origins: Vec<&str> = mine.iter().map(|c| c.origin.as_str()).collect();
    assert!(mine.iter().all(|c| c.class == "tagged"), "{mine:#?}");
    // The first waited for the daemon; the others did not.
    assert_eq!(origins.iter().filter(|o| **o == "daemon").count(), 1, "{mine:#?}");
    assert_eq!(origins.iter().filter(|o| **o == "kernel").count(), 4, "{mine:#?}");
}

#[test]
fn connections_accepted_by_a_server_inherit_its_owner() {
    require_root!();
    let sandbox = Sandbox::new("accept").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let server = programs.copy("iperf3", "serverapp").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"served\"\negress = \"5mbit\"\nmatch = 'cmd == \"serverapp\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // A dual-stack server (bound to ::) in the shaped namespace, sending (-R)
    // to a client on the far side over IPv4: its sockets come from accept().
    let _server =
        IperfServer::start_cmd(sandbox.client(server.to_str().unwrap()).unwrap(), &sandbox.a, 5501).unwrap();
    let client = spawn_client(&sandbox.b, Sandbox::ADDR_A4, 5501, &["-t", "8", "-O", "2", "-R"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let rows = conns(&daemon);
    let served: Vec<&ConnRow> =
        rows.iter().filter(|c| c.local == format!("{}:5501", Sandbox::ADDR_A4)).collect();
    let result = finish_client(client).unwrap();
    assert_near(
        "a download from serverapp (cmd rule on the listener, 5 Mbit/s)",
        result.received_bps,
        5.0 * MBIT,
        0.10,
    );
    assert!(!served.is_empty(), "{rows:#?}");
    for conn in served {
        assert_eq!((conn.class.as_str(), conn.origin.as_str()), ("served", "kernel"), "{conn:#?}");
    }
}

#[test]
fn a_socket_kept_across_exec_is_reclassed_by_the_scan() {
    require_root!();
    let sandbox = Sandbox::new("exec").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    // The far end reads whatever comes.
    let sink = programs
        .script(
            "sink",
            "#!/usr/bin/python3\nimport socket\nl = socket.create_server(('::', 5601), family=socket.AF_INET6, dualstack_ipv6=True)\n\
             c, _ = l.accept()\nwhile c.recv(65536):\n    pass\n",
        )
        .unwrap();
    // bash makes and connects the socket, waits, then becomes `execd`, which sends on it.
    let execd = programs
        .script(
            "execd",
            "#!/usr/bin/python3\nimport socket, time\ns = socket.socket(fileno=3)\nend = time.time() + 8\n\
             while time.time() < end:\n    s.send(b'x' * 65536)\n",
        )
        .unwrap();
    let config = format!(
        "[daemon]\nscan_interval = \"1s\"\n\n{}\n[[class]]\nname = \"execd\"\negress = \"5mbit\"\nmatch = 'cmd == \"execd\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let mut sink = sandbox.b.command(sink.to_str().unwrap()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let script = format!("exec 3<>/dev/tcp/{}/5601; sleep 1; exec {}", Sandbox::ADDR_B4, execd.display());
    let mut client = sandbox.client("bash").unwrap().args(["-c", &script]).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let rate = htb_rate(&daemon, "execd", 3.0);
    let status = daemon.status().unwrap();
    let _ = client.wait();
    let _ = sink.kill();
    let _ = sink.wait();
    assert_near("a socket bash made, used by execd after exec", rate, 5.0 * MBIT, 0.10);
    let corrected = status.last_scan.as_ref().map_or(0, |s| s.corrected);
    let conn = data_conn_to(&daemon, 5601);
    println!("scan corrected {corrected} flows; {conn:#?}");
    assert_eq!(
        (conn.cmd.as_deref(), conn.class.as_str(), conn.origin.as_str()),
        (Some("execd"), "execd", "scan"),
        "{conn:#?}"
    );
}

fn data_conn_to(daemon: &Daemon, port: u16) -> ConnRow {
    conns(daemon)
        .into_iter()
        .find(|c| c.remote.ends_with(&format!(":{port}")))
        .unwrap_or_else(|| panic!("no connection to port {port}"))
}
