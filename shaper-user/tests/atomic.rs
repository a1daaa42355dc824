//! End to end: a live change the kernel refuses half way applies not at all.
//!
//! The refusal is a real one: an admin hangs an HTB class of their own under
//! one of shaper's leaves, which makes that leaf an inner class, and HTB then
//! refuses to graft a queue on it (EINVAL). A change of that class's rate is
//! two messages, the class (accepted) and its queue (refused); a reload that
//! also changes and adds other classes has accepted messages on both sides of
//! the refused one.
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use common::*;
use shaper_common::names;
use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Sandbox, TcxPrograms},
};
use shaper_user::control::SetClass;

fn config(dev: &str, bulk: &str, other: &str, extra: &str) -> String {
    format!(
        r#"
[[interface]]
name = "{dev}"
egress = "1gbit"

[[class]]
name = "bulk"
egress = "{bulk}"
match = 'rport == 5201'

[[class]]
name = "other"
egress = "{other}"
match = 'rport == 5202'
{extra}"#
    )
}

/// What a live change may touch, read from the kernel and the daemon.
#[derive(PartialEq)]
struct Snapshot {
    /// `tc class show` and `tc qdisc show` of the shaped interface.
    tree: String,
    /// The rule table's generation and bank headers, the class names, the
    /// interface map, as bpftool dumps them.
    maps: Vec<(String, String)>,
    /// `shaper status`: classes, rule generation, drift; `shaper classes`:
    /// each class's limits.
    status: String,
}

/// Asserts `after` equals `before`, showing only what differs.
fn assert_unchanged(what: &str, before: &Snapshot, after: &Snapshot) {
    assert!(
        after.tree == before.tree,
        "{what} changed the tree:\nbefore:\n{}\nafter:\n{}",
        before.tree,
        after.tree
    );
    for ((name, b), (_, a)) in before.maps.iter().zip(&after.maps) {
        assert!(a == b, "{what} changed map {name}:\nbefore:\n{b}\nafter:\n{a}");
    }
    assert_eq!(after.status, before.status, "{what} changed status");
}

fn snapshot(sandbox: &Sandbox, daemon: &Daemon) -> Snapshot {
    snapshot_with(sandbox, daemon, &[])
}

/// [`snapshot`], with the trees of `others` too, and the ownership records.
fn snapshot_with(sandbox: &Sandbox, daemon: &Daemon, others: &[&str]) -> Snapshot {
    // The interface's tree and, when downloads are shaped, its IFB's.
    let mut devices = vec![sandbox.dev_a.clone()];
    devices.extend(others.iter().map(|d| d.to_string()));
    devices.extend(daemon.status().unwrap().interfaces.iter().filter_map(|i| i.ifb.clone()));
    let tc = |what: &str| {
        let mut text = String::new();
        for dev in &devices {
            let out = sandbox.a.run("tc", &[what, "show", "dev", dev]).unwrap();
            // Sorted: the kernel lists classes in the order of its hash
            // table, which a class added and taken back can regrow.
            let mut lines: Vec<String> =
                String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
            lines.sort();
            text += &format!("{dev}:\n{}\n", lines.join("\n"));
        }
        text
    };
    let maps = [
        names::MAP_SETTINGS,
        names::MAP_RULE_HEADS,
        names::MAP_CLASS_NAMES,
        names::MAP_IFACES,
        names::MAP_IFACE_TABLE,
    ]
    .iter()
    .map(|name| (name.to_string(), daemon.dump_map(name).unwrap()))
    .collect();
    let status = daemon.status().unwrap();
    let mut limits: Vec<String> = classes(daemon)
        .iter()
        .map(|r| {
            format!("{} {} {} {} {} {}", r.name, r.classid, r.direction, r.rate_bps, r.ceil_bps, r.priority)
        })
        .collect();
    limits.sort();
    let status = format!(
        "classes {} rule_nodes {} rules_gen {} drift {:?} interfaces {:?} limits {limits:?}",
        status.classes,
        status.rule_nodes,
        status.rules_gen,
        status.drift,
        status.interfaces.iter().map(|i| (&i.name, i.ifindex, i.egress_bps)).collect::<Vec<_>>(),
    );
    let mut records: Vec<String> = std::fs::read_dir(daemon.pins.join("owned"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    records.sort();
    Snapshot { tree: tc("class") + &tc("qdisc") + &records.join("\n"), maps, status }
}

#[test]
fn a_change_the_kernel_refuses_half_way_leaves_tree_maps_and_status_as_they_were() {
    require_root!();
    let sandbox = Sandbox::new("atomic").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox.dev_a, "10mbit", "20mbit", "")).unwrap();
    // The admin's class under shaper's leaf of "other".
    let other = class(&classes(&daemon), "other").classid.clone();
    sandbox
        .a
        .run(
            "tc",
            &[
                "class",
                "add",
                "dev",
                &sandbox.dev_a,
                "parent",
                &other,
                "classid",
                "1:99",
                "htb",
                "rate",
                "1mbit",
            ],
        )
        .unwrap();
    let before = snapshot(&sandbox, &daemon);

    // `shaper set`: the class change goes through, its queue is refused.
    let set = SetClass { class: "other".into(), egress: Some("25mbit".into()), ..SetClass::default() };
    let err = daemon.set(set).unwrap_err().to_string();
    println!("set refused: {err}");
    assert!(err.contains("Invalid argument"), "{err}");
    let after_set = snapshot(&sandbox, &daemon);
    assert_unchanged("a refused `shaper set`", &before, &after_set);

    // A reload: "bulk" changed (before the refusal), "other" changed
    // (refused), "extra" added (after it).
    let extra = "\n[[class]]\nname = \"extra\"\negress = \"5mbit\"\nmatch = 'rport == 5203'\n";
    std::fs::write(&daemon.config, config(&sandbox.dev_a, "15mbit", "25mbit", extra)).unwrap();
    let err = daemon.reload().unwrap_err().to_string();
    println!("reload refused: {err}");
    assert!(err.contains("Invalid argument"), "{err}");
    let after_reload = snapshot(&sandbox, &daemon);
    assert_unchanged("a refused reload", &before, &after_reload);
    let status = daemon.status().unwrap();
    assert_eq!(status.last_reload.as_ref().map(|r| r.ok), Some(false), "{status:#?}");

    // Once the admin's class is gone, the same reload applies whole.
    sandbox.a.run("tc", &["class", "del", "dev", &sandbox.dev_a, "classid", "1:99"]).unwrap();
    let applied = daemon.reload().unwrap();
    println!("{applied:#?}");
    let rows = classes(&daemon);
    assert_eq!(class(&rows, "bulk").rate_bps, 15_000_000);
    assert_eq!(class(&rows, "other").rate_bps, 25_000_000);
    assert_eq!(class(&rows, "extra").rate_bps, 5_000_000);
}

#[test]
fn a_refusal_in_the_ifb_tree_takes_back_what_the_interface_tree_accepted() {
    require_root!();
    let sandbox = Sandbox::new("atomicifb").unwrap();
    let with_ingress = |bulk: &str, down: &str| {
        config(
            &sandbox.dev_a,
            bulk,
            "20mbit",
            &format!("\n[[class]]\nname = \"down\"\ningress = \"{down}\"\nmatch = 'lport == 5301'\n"),
        )
        .replace("egress = \"1gbit\"", "egress = \"1gbit\"\ningress = \"1gbit\"")
    };
    let daemon = Daemon::start(&sandbox, shaper(), &with_ingress("10mbit", "10mbit")).unwrap();
    let ifb = daemon.status().unwrap().interfaces[0].ifb.clone().unwrap();
    let rows = classes(&daemon);
    let down = class_in(&rows, "down", shaper_user::control::Direction::Ingress).classid.clone();
    // The admin's class under shaper's leaf of "down", on the IFB.
    sandbox
        .a
        .run("tc", &["class", "add", "dev", &ifb, "parent", &down, "classid", "1:99", "htb", "rate", "1mbit"])
        .unwrap();
    let before = snapshot(&sandbox, &daemon);
    // "bulk" changes on the interface's tree (accepted), "down" on the IFB's (refused).
    std::fs::write(&daemon.config, with_ingress("15mbit", "12mbit")).unwrap();
    let err = daemon.reload().unwrap_err().to_string();
    println!("reload refused: {err}");
    assert!(err.contains("Invalid argument"), "{err}");
    assert_unchanged("a reload refused on the IFB", &before, &snapshot(&sandbox, &daemon));
}

#[test]
fn a_change_refused_when_the_classifier_attaches_is_taken_back_whole() {
    require_root!();
    let sandbox = Sandbox::new("atomicattach").unwrap();
    // A second interface whose tcx egress hook another tool has filled: the
    // kernel refuses shaper's classifier there (ERANGE), after its tree, its
    // interface entry and its ownership record were made.
    sandbox.a.run("ip", &["link", "add", "shp-c", "type", "veth", "peer", "name", "shp-d"]).unwrap();
    let filler = TcxPrograms::fill_egress(&sandbox.a, "shp-c").unwrap();
    println!("{} programs fill the egress hook of shp-c", filler.len());
    let one = config(&sandbox.dev_a, "10mbit", "20mbit", "");
    let daemon = Daemon::start(&sandbox, shaper(), &one).unwrap();
    let before = snapshot_with(&sandbox, &daemon, &["shp-c"]);
    let two =
        one.replacen("[[class]]", "[[interface]]\nname = \"shp-c\"\negress = \"100mbit\"\n\n[[class]]", 1);
    std::fs::write(&daemon.config, &two).unwrap();
    let err = daemon.reload().unwrap_err().to_string();
    println!("reload refused: {err}");
    assert!(err.contains("shp-c"), "{err}");
    assert_unchanged(
        "a reload refused at the attach",
        &before,
        &snapshot_with(&sandbox, &daemon, &["shp-c"]),
    );
    // With the other tool's programs gone, the same reload applies.
    drop(filler);
    daemon.reload().unwrap();
    assert!(daemon.status().unwrap().interfaces.iter().any(|i| i.name == "shp-c"));
}
