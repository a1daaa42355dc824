//! End to end: `shaper reload --dry-run` and `shaper check --config F
//! --against-running` say what the reload then does (classes added, removed,
//! changed and how, live connections that move), and change nothing: the
//! HTB tree, the rule table, the settings and the flows' classes are the
//! same before and after.
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds and removes its own sandbox.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Sandbox},
};
use shaper_user::control::{
    explain::{ClassChange, Moves},
    Applied, DryRun,
};

fn config(sandbox: &Sandbox, classes: &str) -> String {
    format!("{}\n{classes}\n[daemon]\nscan_interval = \"1s\"\n", interface(sandbox))
}

const BEFORE: &str = "[[class]]\nname = \"web\"\negress = \"10mbit\"\nmatch = 'rport == 5201'\n\n\
                      [[class]]\nname = \"bulk\"\negress = \"5mbit\"\nmatch = 'rport == 5202'\n\n\
                      [[class]]\nname = \"old\"\negress = \"2mbit\"\nmatch = 'rport == 5203'\n";

/// `fast` comes first and takes web's port, web gets 20 Mbit/s, old goes.
const AFTER: &str = "[[class]]\nname = \"fast\"\negress = \"30mbit\"\nmatch = 'rport == 5201'\n\n\
                     [[class]]\nname = \"web\"\negress = \"20mbit\"\nmatch = 'rport == 5201'\n\n\
                     [[class]]\nname = \"bulk\"\negress = \"5mbit\"\nmatch = 'rport == 5202'\n";

/// What a dry run must leave as it was: the HTB tree and qdiscs (no
/// statistics), the rule table's banks, the settings (rule generation),
/// interfaces and class names in the kernel; and each flow's class and origin.
struct State {
    kernel: Vec<(String, String)>,
    flows: BTreeMap<String, String>,
}

fn state(sandbox: &Sandbox, daemon: &Daemon) -> State {
    let dev = sandbox.dev_a.as_str();
    let tc = |args: &[&str]| String::from_utf8_lossy(&sandbox.a.run("tc", args).unwrap().stdout).into_owned();
    let mut kernel = vec![
        ("tc class".to_string(), tc(&["class", "show", "dev", dev])),
        ("tc qdisc".to_string(), tc(&["qdisc", "show", "dev", dev])),
    ];
    for map in [
        "RULE_HEADS",
        "RULE_ENTRIES",
        "RULES",
        "RULE_LISTS",
        "RULE_BOUNDS",
        "SETTINGS",
        "IFACES",
        "CLASS_NAMES",
    ] {
        let dump = daemon.dump_map(map).unwrap();
        assert!(!dump.trim().is_empty(), "bpftool dumped nothing of {map}");
        kernel.push((map.to_string(), dump));
    }
    let flows =
        conns(daemon).iter().map(|c| (c.id.clone(), format!("{} {}", c.class, c.origin.as_str()))).collect();
    State { kernel, flows }
}

/// The kernel state is identical; flows that exist before and after (the
/// scan may drop a stale one, a neighbour solicitation may add one) kept
/// their class and origin.
fn assert_same(before: &State, after: &State, live: &[String]) {
    for ((what, a), (_, b)) in before.kernel.iter().zip(&after.kernel) {
        assert!(a == b, "the dry run changed {what}:\nbefore:\n{a}\nafter:\n{b}");
    }
    for (id, class) in &before.flows {
        if let Some(now) = after.flows.get(id) {
            assert_eq!(class, now, "the dry run moved flow {id}");
        }
    }
    for id in live {
        assert!(before.flows.contains_key(id) && after.flows.contains_key(id), "flow {id} is gone");
    }
}

fn shaper_json<T: serde::de::DeserializeOwned>(args: &[&str], daemon: &Daemon) -> T {
    let out = output(Command::new(SHAPER).args(args).arg("--json").arg("--socket").arg(&daemon.socket));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn reload_dry_run_lists_what_the_reload_then_does_and_changes_nothing() {
    require_root!();
    let sandbox = Sandbox::new("dryrun").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, BEFORE)).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let web = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", "12"]).unwrap();
    let bulk = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5202, &["-t", "12"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let live: Vec<String> =
        conns(&daemon).into_iter().filter(|c| c.class == "web" || c.class == "bulk").map(|c| c.id).collect();
    assert_eq!(live.len(), 4, "iperf3's control and data connections: {:#?}", conns(&daemon));

    std::fs::write(&daemon.config, config(&sandbox, AFTER)).unwrap();
    let other = daemon.dir().join("other.toml");
    std::fs::write(&other, config(&sandbox, AFTER)).unwrap();
    let before = state(&sandbox, &daemon);
    let dry: DryRun = shaper_json(&["reload", "--dry-run"], &daemon);
    let against: DryRun =
        shaper_json(&["check", "--config", other.to_str().unwrap(), "--against-running"], &daemon);
    let out = output(Command::new(SHAPER).args(["reload", "--dry-run", "--socket"]).arg(&daemon.socket));
    let after = state(&sandbox, &daemon);
    println!("{dry:#?}");
    assert_same(&before, &after, &live);

    assert_eq!(dry.config, daemon.config.display().to_string());
    assert_eq!(
        (&dry.changes.classes_added, &dry.changes.classes_removed, &dry.changes.classes_changed),
        (&vec!["fast".to_string()], &vec!["old".to_string()], &vec!["web".to_string()])
    );
    assert_eq!(
        dry.how,
        [ClassChange {
            class: "web".into(),
            how: vec!["egress rate 10 Mbit/s ceil 10 Mbit/s → rate 20 Mbit/s ceil 20 Mbit/s".into()]
        }]
    );
    assert_eq!(dry.moves, [Moves { from: "web".into(), to: "fast".into(), count: 2 }]);
    assert!(dry.flows >= live.len(), "{dry:#?}");
    assert_eq!(against.config, std::fs::canonicalize(&other).unwrap().display().to_string());
    assert_eq!((&against.changes, &against.how, &against.moves), (&dry.changes, &dry.how, &dry.moves));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("dry run of {}: nothing was changed; a reload would do this:\n", daemon.config.display()),
        "  classes added: fast\n".to_string(),
        "  classes removed: old\n".to_string(),
        "  class web changes: egress rate 10 Mbit/s ceil 10 Mbit/s → rate 20 Mbit/s ceil 20 Mbit/s\n"
            .to_string(),
        "    2 from web to fast\n".to_string(),
    ] {
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }

    // The reload itself reports the same changes, and the connections move.
    let applied: Applied = shaper_json(&["reload"], &daemon);
    println!("{applied:#?}");
    let (a, d) = (&applied.changes, &dry.changes);
    assert_eq!(
        (
            &a.classes_added,
            &a.classes_removed,
            &a.classes_changed,
            &a.interfaces_added,
            &a.interfaces_removed
        ),
        (
            &d.classes_added,
            &d.classes_removed,
            &d.classes_changed,
            &d.interfaces_added,
            &d.interfaces_removed
        )
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while conns(&daemon).iter().filter(|c| c.class == "fast" && c.tx_bytes > 100_000).count() < 1 {
        assert!(
            Instant::now() < deadline,
            "web's data connection did not move to fast: {:#?}",
            conns(&daemon)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(class(&classes(&daemon), "web").rate_bps, 20_000_000);
    let _ = finish_client(web);
    let _ = finish_client(bulk);
}

#[test]
fn a_dry_run_of_a_config_the_daemon_refuses_says_why_and_changes_nothing() {
    require_root!();
    let sandbox = Sandbox::new("dryrunbad").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, BEFORE)).unwrap();
    let bad = daemon.dir().join("bad.toml");
    std::fs::write(&bad, config(&sandbox, "[[class]]\nname = \"x\"\nmatch = 'rprot == 1'\n")).unwrap();
    let before = state(&sandbox, &daemon);
    let out = output(
        Command::new(SHAPER)
            .args(["check", "--config", bad.to_str().unwrap(), "--against-running", "--socket"])
            .arg(&daemon.socket),
    );
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()),
        (
            Some(1),
            format!(
                "shaper: the daemon refused: {}:7:10: unknown attribute \"rprot\"; did you mean \"rport\"?\n",
                bad.display()
            )
        )
    );
    assert_same(&before, &state(&sandbox, &daemon), &[]);
    // The daemon's own file is untouched and still in force.
    assert!(daemon.status().unwrap().last_reload.is_none());
}
