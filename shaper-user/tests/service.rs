//! The systemd unit's capability set (`CapabilityBoundingSet=` in
//! config/shaper.service) is the one the daemon needs: run with exactly that
//! set (`setpriv --bounding-set`, as systemd bounds a root service), it
//! shapes and classifies another user's connections by their executable
//! (which only reading that process's /proc entries can decide); without any
//! one of them, something named breaks.
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds and removes its own sandbox, cgroup, test user and programs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::{
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client_cmd, Daemon, IperfServer, Launcher, Programs, Sandbox, TestUser},
};
use shaper_user::control::{ConnRow, Origin};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/shaper.service");
/// The connection opened before the daemon (found by the /proc/*/fd walk) and the one opened after.
const BEFORE: u16 = 5201;
const AFTER: u16 = 5202;

/// The capabilities of the unit's `CapabilityBoundingSet=` line ("CAP_BPF", …).
fn unit_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{UNIT} has no CapabilityBoundingSet= line"));
    line.split_whitespace().map(str::to_string).collect()
}

/// `setpriv` bounding the daemon to `caps` (and nothing inherited), as
/// systemd's CapabilityBoundingSet= bounds a service that runs as root.
fn bounded_to(caps: &[String]) -> Launcher {
    let set: String =
        caps.iter().map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    Launcher::Wrapped(
        ["setpriv", "--bounding-set", &format!("-all{set}"), "--inh-caps", "-all", "--"]
            .map(String::from)
            .to_vec(),
    )
}

/// A sandbox, a user other than root, a copy of iperf3 called `capapp`
/// that rules name by its executable, and servers for both connections.
struct Scene {
    sandbox: Sandbox,
    user: TestUser,
    app: PathBuf,
    _programs: Programs,
    _servers: [IperfServer; 2],
}

impl Scene {
    fn new(label: &str) -> Self {
        let sandbox = Sandbox::new(label).unwrap();
        let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
        let programs = Programs::create(&sandbox.tag).unwrap();
        let app = programs.copy("iperf3", "capapp").unwrap();
        let servers =
            [BEFORE, AFTER].map(|port| IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, port).unwrap());
        Self { sandbox, user, app, _programs: programs, _servers: servers }
    }

    /// Egress and ingress shaped (an IFB), `capapp` in a 5 Mbit/s class by its
    /// exe; a class with a connection limit that no test connection meets.
    fn config(&self) -> String {
        format!(
            "[daemon]\nscan_interval = \"1s\"\n\n[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\
             ingress = \"1gbit\"\n\n[[class]]\nname = \"app\"\negress = \"5mbit\"\ningress = \"5mbit\"\n\
             match = 'exe == \"{}\"'\n\n[[class]]\nname = \"limited\"\nmatch = 'rport == 9'\n\
             max_connections = 100\n",
            self.sandbox.dev_a,
            self.app.display()
        )
    }

    /// `capapp` as the other user, sending to `port` for `secs`.
    fn client(&self, port: u16, secs: u32) -> Child {
        let cmd = self.sandbox.client_as(&self.user, self.app.to_str().unwrap()).unwrap();
        spawn_client_cmd(cmd, Sandbox::ADDR_B4, port, &["-t", &secs.to_string()]).unwrap()
    }

    fn daemon(&self, caps: &[String]) -> Result<Daemon, String> {
        let mut daemon =
            Daemon::spawn_with(&self.sandbox, shaper(), &self.config(), bounded_to(caps)).unwrap();
        match daemon.ready() {
            Ok(()) => Ok(daemon),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The data connection to `port` (the one that carried bytes), if `conns` shows it.
fn data_conn(daemon: &Daemon, port: u16) -> Option<ConnRow> {
    let suffix = format!(":{port}");
    conns(daemon).into_iter().filter(|c| c.remote.ends_with(&suffix)).max_by_key(|c| c.tx_bytes)
}

/// Waits up to 5 s for the connection to `port` to be in `class`; returns its row either way.
fn wait_for_class(daemon: &Daemon, port: u16, class: &str) -> Option<ConnRow> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = data_conn(daemon, port);
        if row.as_ref().is_some_and(|r| r.class == class) || Instant::now() > deadline {
            return row;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_the_unit_capabilities_the_daemon_shapes_and_reads_other_users_processes() {
    require_root!();
    let caps = unit_capabilities();
    println!("CapabilityBoundingSet={}", caps.join(" "));
    let scene = Scene::new("caps");
    // Opened before the daemon: no socket hook saw it, so only the walk of
    // /proc/*/fd (another user's) finds its process.
    let before = scene.client(BEFORE, 15);
    std::thread::sleep(Duration::from_millis(500));
    let daemon =
        scene.daemon(&caps).unwrap_or_else(|e| panic!("the daemon did not start with {caps:?}: {e}"));
    let status = daemon.status().unwrap();
    assert!(status.hooks_cgroup.is_some() && status.scan_only.is_none(), "{status:#?}");
    assert!(status.interfaces.iter().all(|i| i.ifb.is_some()), "no IFB: {status:#?}");

    let row = wait_for_class(&daemon, BEFORE, "app").expect("no connection to the first server");
    assert_eq!(
        (row.class.as_str(), row.user.as_deref(), row.origin),
        ("app", Some(scene.user.name.as_str()), Origin::Scan),
        "{row:#?}"
    );
    let rate = htb_rate(&daemon, "app", 2.0);
    println!("connection from before the daemon, other user, exe rule: {:.2} Mbit/s (HTB)", rate / MBIT);
    assert_near("the earlier connection in class app (5 Mbit/s)", rate, 5.0 * MBIT, 0.10);
    finish_client(before).unwrap();

    // Opened after: the kernel reports it, the daemon reads the process's exe.
    let after = finish_client(scene.client(AFTER, 4)).unwrap();
    println!("connection after the daemon, other user, exe rule: {:.2} Mbit/s", after.received_bps / MBIT);
    assert_near("the later connection in class app (5 Mbit/s)", after.received_bps, 5.0 * MBIT, 0.10);
    let row = data_conn(&daemon, AFTER).expect("no connection to the second server");
    assert_eq!(row.class, "app", "{row:#?}");
}

/// What breaks without each capability of the unit (the set is minimal).
#[derive(Debug, PartialEq)]
enum Breaks {
    /// The daemon does not start; its error contains this.
    Start(&'static str),
    /// It starts, but the later connection (its exe read when it opens) stays in the default class.
    ExeOfOthers,
    /// It starts, but the earlier connection (found through /proc/PID/fd) stays in the default class.
    FdWalkOfOthers,
}

fn expected(cap: &str) -> Breaks {
    match cap {
        "CAP_BPF" => Breaks::Start("failed to create map"),
        "CAP_PERFMON" => Breaks::Start("prohibited for !root"),
        "CAP_NET_ADMIN" => Breaks::Start("loading program tc_egress"),
        "CAP_SYS_PTRACE" => Breaks::ExeOfOthers,
        "CAP_DAC_READ_SEARCH" => Breaks::FdWalkOfOthers,
        // The scene's class `limited` has max_connections.
        "CAP_NET_RAW" => Breaks::Start("cannot open them (CAP_NET_RAW)"),
        other => panic!("the unit lists {other}: add to this test what breaks without it"),
    }
}

/// Runs the scene with `caps` and says what broke (None: nothing).
fn what_breaks(scene: &Scene, caps: &[String], start_marker: &'static str) -> Option<Breaks> {
    // Sends until it is stopped below (15 s at most: the daemon may take 8 s to start on a loaded machine).
    let before = scene.client(BEFORE, 15);
    std::thread::sleep(Duration::from_millis(500));
    let stop = |mut client: Child| {
        let _ = client.kill();
        let _ = client.wait();
    };
    let daemon = match scene.daemon(caps) {
        Ok(d) => d,
        Err(e) => {
            stop(before);
            assert!(
                !start_marker.is_empty() && e.contains(start_marker),
                "the daemon failed, but not as expected ({start_marker:?}): {e}"
            );
            return Some(Breaks::Start(start_marker));
        }
    };
    let earlier = wait_for_class(&daemon, BEFORE, "app").map(|r| r.class);
    stop(before);
    let _ = finish_client(scene.client(AFTER, 1));
    let later = data_conn(&daemon, AFTER).map(|r| r.class);
    println!("    earlier connection: {earlier:?}, later: {later:?}");
    match (earlier.as_deref(), later.as_deref()) {
        (Some("app"), Some("app")) => None,
        (_, Some("default")) => Some(Breaks::ExeOfOthers),
        (Some("default"), Some("app")) => Some(Breaks::FdWalkOfOthers),
        other => panic!("unexpected classes {other:?}"),
    }
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    require_root!();
    let caps = unit_capabilities();
    let scene = Scene::new("capmin");
    for cap in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        let want = expected(cap);
        let marker = match want {
            Breaks::Start(m) => m,
            _ => "",
        };
        let got = what_breaks(&scene, &fewer, marker);
        println!("without {cap}: {got:?}");
        assert_eq!(got, Some(want), "without {cap}");
    }
}
