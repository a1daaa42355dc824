//! End to end, on hosts that do not make things easy: programs that name their
//! threads, daemons started where no cgroup v2 is mounted.
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds and removes its own sandbox, cgroups and program copies.
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
    sandbox::{finish_client, spawn_client_cmd, Daemon, IperfServer, Launcher, Programs, Sandbox},
};
use shaper_user::control::{ConnRow, Origin};

/// The row of the flow to `remote`, once `shaper conns` shows it (5 s at most).
fn conn_to(daemon: &Daemon, remote: &str) -> ConnRow {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(row) = conns(daemon).into_iter().find(|c| c.remote == remote) {
            return row;
        }
        assert!(Instant::now() < deadline, "no connection to {remote} in {:#?}", conns(daemon));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Python program called `threadapp` whose socket is made by a thread that
/// names itself "Socket Thread" (prctl PR_SET_NAME, as browsers and Go
/// runtimes do): it sends a datagram every 50 ms to ADDR:PORT for SECONDS.
const THREADAPP: &str = r#"#!/usr/bin/python3
import ctypes, socket, sys, threading, time
def work():
    ctypes.CDLL(None).prctl(15, b"Socket Thread", 0, 0, 0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((sys.argv[1], int(sys.argv[2])))
    end = time.time() + float(sys.argv[3])
    while time.time() < end:
        try:
            s.send(b"x" * 200)
        except OSError:
            pass
        time.sleep(0.05)
t = threading.Thread(target=work)
t.start()
t.join()
"#;

#[test]
fn a_connection_made_by_a_named_thread_belongs_to_its_process() {
    require_root!();
    let sandbox = Sandbox::new("thread").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let app = programs.script("threadapp", THREADAPP).unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"app\"\negress = \"5mbit\"\nmatch = 'cmd == \"threadapp\"'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let mut cmd = sandbox.client(app.to_str().unwrap()).unwrap();
    let mut child = cmd.args([Sandbox::ADDR_B4, "7007", "4"]).spawn().unwrap();
    let row = conn_to(&daemon, &format!("{}:7007", Sandbox::ADDR_B4));
    let _ = child.wait();
    println!("{row:#?}");
    // The kernel decided it, from the first packet, by the process's name.
    assert_eq!((row.class.as_str(), row.origin), ("app", Origin::Kernel), "{row:#?}");
    assert_eq!(row.rule.as_deref(), Some("cmd == \"threadapp\""), "{row:#?}");
}

/// `ip netns exec` remounts /sys, so no cgroup v2 is visible to the daemon.
/// It mounts the hierarchy privately and process rules are still decided in
/// the kernel from the first packet: a `cmd` rule holds a program at its
/// rate for the whole transfer, where a /proc scan every 30 s would have let
/// it run unshaped.
#[test]
fn under_ip_netns_exec_process_rules_still_hold_from_the_first_packet() {
    require_root!();
    let sandbox = Sandbox::new("nscg").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let slow = programs.copy("iperf3", "slowapp").unwrap();
    let config = format!(
        "{}\n[daemon]\nscan_interval = \"30s\"\n\n[[class]]\nname = \"slow\"\negress = \"3mbit\"\n\
         match = 'cmd == \"slowapp\"'\n",
        interface(&sandbox)
    );
    let mut daemon = Daemon::spawn_with(&sandbox, shaper(), &config, Launcher::IpNetnsExec).unwrap();
    daemon.ready().unwrap();
    let status = daemon.status().unwrap();
    assert_eq!(status.scan_only, None, "{status:#?}");
    assert_eq!(status.hooks_cgroup.as_deref(), Some(sandbox.cgroup.dir().to_str().unwrap()), "{status:#?}");
    assert!(daemon.log_text().contains("mounted it privately"), "{}", daemon.log_text());
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let client = spawn_client_cmd(
        sandbox.client(slow.to_str().unwrap()).unwrap(),
        Sandbox::ADDR_B4,
        5201,
        &["-t", "6"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rows: Vec<ConnRow> =
        conns(&daemon).into_iter().filter(|c| c.remote.ends_with(":5201") && c.tx_bytes > 100_000).collect();
    let result = finish_client(client).unwrap();
    println!("slowapp under ip netns exec: {:.2} Mbit/s", result.received_bps / MBIT);
    // No -O: the first seconds count too; a flow that ran unshaped at first
    // would pull the average far above 3 Mbit/s.
    assert_near("slowapp (cmd rule, 3 Mbit/s, whole transfer)", result.received_bps, 3.0 * MBIT, 0.15);
    assert!(
        rows.iter().any(|r| r.class == "slow" && r.origin == Origin::Kernel),
        "the data connection was not decided by the kernel: {rows:#?}"
    );
}

/// Where cgroup v2 cannot be had at all (here: the daemon lacks
/// CAP_SYS_ADMIN, so it can neither see nor mount it), the daemon refuses to
/// start unless the config accepts scan-only matching, and then says so.
#[test]
fn without_cgroup_v2_the_daemon_refuses_unless_scan_only_is_accepted() {
    require_root!();
    let sandbox = Sandbox::new("nocg").unwrap();
    let class = "\n[[class]]\nname = \"app\"\negress = \"5mbit\"\nmatch = 'cmd == \"someapp\"'\n";
    let no_sys_admin = || {
        Launcher::Wrapped(
            ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin", "--"]
                .map(String::from)
                .to_vec(),
        )
    };
    // Hide cgroup v2 as `ip netns exec` does, then lose the right to mount it.
    let hide = |launcher: Launcher| match launcher {
        Launcher::Wrapped(mut w) => {
            let mut all: Vec<String> = [
                "sh",
                "-c",
                "umount -l /sys/fs/cgroup 2>/dev/null; umount -l /sys/fs/cgroup 2>/dev/null; exec \"$@\"",
                "sh",
            ]
            .map(String::from)
            .to_vec();
            all.append(&mut w);
            Launcher::Wrapped(all)
        }
        other => other,
    };
    let config = format!("{}{class}", interface(&sandbox));
    let mut refused = Daemon::spawn_with(&sandbox, shaper(), &config, hide(no_sys_admin())).unwrap();
    let status = refused.wait(Duration::from_secs(30)).unwrap();
    let log = refused.log_text();
    assert!(!status.success(), "the daemon started without cgroup v2: {log}");
    assert!(log.contains("set `event_driven = false` under [daemon]"), "{log}");
    assert!(log.contains("mounting it privately failed"), "{log}");
    drop(refused);

    let config = format!("{}\n[daemon]\nevent_driven = false\n{class}", interface(&sandbox));
    let mut accepted = Daemon::spawn_with(&sandbox, shaper(), &config, hide(no_sys_admin())).unwrap();
    accepted.ready().unwrap();
    let status = accepted.status().unwrap();
    assert_eq!(status.hooks_cgroup, None, "{status:#?}");
    assert_eq!(status.scan_only.as_deref(), Some("event_driven = false in the config"), "{status:#?}");
}
