//! Someone else's HTB is not shaper's: a root `htb 1:` that an admin made by
//! hand, even one with shaper's class layout, is refused with the foreign
//! qdisc error and left exactly as it was, at start, at a reload, at stop,
//! and when an install fails.
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::time::Duration;

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Netns, Sandbox},
};
use shaper_user::tc::{self, HtbClass, HtbLeaf, HtbPlan, LeafQueue};

mod common;

use common::*;

/// An admin's tree made with tc: root `1:`, `1:1` under it and two leaves,
/// the way shaper lays its own out, plus a class of the admin's own (`1:99`).
fn admins_tree(ns: &Netns, dev: &str) {
    let tc = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        ns.run("tc", &args).unwrap();
    };
    tc(&format!("qdisc add dev {dev} root handle 1: htb default 10"));
    tc(&format!("class add dev {dev} parent 1: classid 1:1 htb rate 100mbit"));
    tc(&format!("class add dev {dev} parent 1:1 classid 1:10 htb rate 20mbit ceil 100mbit"));
    tc(&format!("class add dev {dev} parent 1:1 classid 1:99 htb rate 1mbit ceil 2mbit"));
    tc(&format!("qdisc add dev {dev} parent 1:99 handle 99: bfifo limit 30000"));
}

/// `tc -s -d qdisc show` and `tc -s -d class show` of `dev`: every qdisc and
/// class with its parameters and counters.
fn tc_show(ns: &Netns, dev: &str) -> String {
    let qdiscs = ns.run("tc", &["-s", "-d", "qdisc", "show", "dev", dev]).unwrap();
    let classes = ns.run("tc", &["-s", "-d", "class", "show", "dev", dev]).unwrap();
    format!("{}{}", String::from_utf8_lossy(&qdiscs.stdout), String::from_utf8_lossy(&classes.stdout))
}

/// [`tc_show`] without the counters (the lines tc prints under each qdisc or
/// class: sent, rate, backlog, lended, tokens), which move with any packet
/// the kernel itself sends (IPv6 router solicitations, MLD reports).
fn without_counters(show: &str) -> String {
    show.lines()
        .filter(|l| {
            let l = l.trim_start();
            !["Sent ", "rate ", "backlog ", "lended:", "tokens:"].iter().any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts the tree on `dev` is `before` (its counters aside: see
/// [`without_counters`]), and says whether the counters moved too.
fn assert_untouched(ns: &Netns, dev: &str, before: &str, when: &str) {
    let now = tc_show(ns, dev);
    assert_eq!(without_counters(&now), without_counters(before), "{when}: the admin's tree changed");
    println!("{when}: the admin's tree is as it was (counters identical too: {})", now == before);
}

fn foreign_error(dev: &str) -> String {
    format!(
        "interface {dev} already has a root qdisc (htb 1:) that shaper did not create; shaper replaces the root \
         qdisc and could not put yours back exactly, so it leaves it alone. Remove it first (`tc qdisc del dev \
         {dev} root`) or shape another interface"
    )
}

fn config(dev: &str) -> String {
    format!(
        "[[interface]]\nname = \"{dev}\"\negress = \"100mbit\"\ningress = \"100mbit\"\n\n\
         [[class]]\nname = \"bulk\"\negress = \"10mbit\"\nmatch = 'rport == 5201'\n"
    )
}

#[test]
fn an_admins_htb_1_is_refused_at_start_and_left_as_it_was() {
    require_root!();
    let sandbox = Sandbox::new("ownstart").unwrap();
    admins_tree(&sandbox.a, &sandbox.dev_a);
    let before = tc_show(&sandbox.a, &sandbox.dev_a);
    assert!(before.contains("qdisc htb 1: root") && before.contains("class htb 1:99"), "{before}");

    let mut daemon = Daemon::spawn(&sandbox, shaper(), &config(&sandbox.dev_a), &[]).unwrap();
    let Ok(status) = daemon.wait(Duration::from_secs(30)) else {
        let now = tc_show(&sandbox.a, &sandbox.dev_a);
        panic!("shaper started on the admin's tree; the tree is now:\n{now}\nlog:\n{}", daemon.log_text());
    };
    let log = daemon.log_text();
    assert!(!status.success(), "shaper started on an admin's tree:\n{log}");
    assert!(log.contains(&foreign_error(&sandbox.dev_a)), "expected the foreign qdisc error in:\n{log}");
    assert_untouched(&sandbox.a, &sandbox.dev_a, &before, "after the refused start");
    assert!(attached_programs(&sandbox).is_empty());
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
}

#[test]
fn an_admins_htb_1_in_place_of_shapers_is_never_rewritten_or_removed() {
    require_root!();
    let sandbox = Sandbox::new("ownswap").unwrap();
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox.dev_a)).unwrap();
    // While shaper runs, an admin puts a tree of their own where shaper's was.
    sandbox.a.run("tc", &["qdisc", "del", "dev", &sandbox.dev_a, "root"]).unwrap();
    admins_tree(&sandbox.a, &sandbox.dev_a);
    let before = tc_show(&sandbox.a, &sandbox.dev_a);

    // A reload would rebuild shaper's tree: refused, the admin's stays.
    let err = daemon.reload().unwrap_err().to_string();
    assert!(err.contains(&foreign_error(&sandbox.dev_a)), "expected the foreign qdisc error in: {err}");
    assert_untouched(&sandbox.a, &sandbox.dev_a, &before, "after the refused reload");

    // Stopping removes shaper's part (classifier, IFB, pins) and nothing of the admin's.
    let exit = daemon.stop().unwrap();
    assert!(exit.success(), "{}", daemon.log_text());
    assert_untouched(&sandbox.a, &sandbox.dev_a, &before, "after stop");
    assert!(attached_programs(&sandbox).is_empty());
    assert!(daemon.pinned().is_empty(), "{:?}", daemon.pinned());
    let links = sandbox.a.run("ip", &["-o", "link", "show"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("shpifb"), "the IFB is left");
}

/// A tree of two leaves, as shaper would send it.
fn small_plan() -> HtbPlan {
    let class = |minor, rate_bps| HtbClass {
        minor,
        rate_bps,
        ceil_bps: 100_000_000,
        prio: 1,
        burst_bytes: 30_000,
        cburst_bytes: 30_000,
        quantum: 1514,
    };
    let leaf = |minor, rate| HtbLeaf {
        class: class(minor, rate),
        parent: 1,
        queue: LeafQueue::Bfifo { limit_bytes: 60_000 },
    };
    HtbPlan {
        default_minor: 0x10,
        root: class(1, 100_000_000),
        leaves: vec![leaf(0x10, 50_000_000), leaf(0x11, 50_000_000)],
    }
}

#[test]
fn a_failed_install_never_deletes_a_root_it_did_not_make() {
    require_root!();
    let sandbox = Sandbox::new("owninst").unwrap();
    admins_tree(&sandbox.a, &sandbox.dev_a);
    let before = tc_show(&sandbox.a, &sandbox.dev_a);
    // The kernel refuses shaper's qdisc `1:` (the admin's is there): the
    // install fails, and its cleanup must not take the admin's tree along.
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                sandbox.a.enter_current_thread().unwrap();
                let nl = tc::Netlink::open().unwrap();
                let link = tc::link_by_name(&nl, &sandbox.dev_a).unwrap().unwrap();
                tc::install_htb(&nl, link.index, &small_plan(), 0x4000_1234)
            })
            .join()
            .unwrap()
    });
    let err = result.expect_err("installing over the admin's root succeeded");
    println!("install refused: {}", shaper_user::error_chain(&err));
    assert_untouched(&sandbox.a, &sandbox.dev_a, &before, "after the failed install");
}
