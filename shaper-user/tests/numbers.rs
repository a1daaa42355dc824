//! Numbers a user hands a running shaper: `shaper set` holds guaranteed rates
//! to the interface capacity, as a config file is held.
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Sandbox},
};
use shaper_user::control::SetClass;

mod common;

use common::*;

#[test]
fn set_refuses_a_guaranteed_rate_above_the_capacity_and_changes_nothing() {
    require_root!();
    let sandbox = Sandbox::new("numbers").unwrap();
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"100mbit\"\n\n\
         [[class]]\nname = \"bulk\"\negress = \"10mbit\"\nmatch = 'rport == 5201'\n\n\
         [[class]]\nname = \"other\"\negress = \"30mbit\"\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let tc_classes = || {
        let out = sandbox.a.run("tc", &["class", "show", "dev", &sandbox.dev_a]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rates = |daemon: &Daemon| -> Vec<(String, u64, u64)> {
        classes(daemon).into_iter().map(|r| (r.name, r.rate_bps, r.ceil_bps)).collect()
    };
    let (tree_before, rates_before) = (tc_classes(), rates(&daemon));

    // 80 + 30 guaranteed on a 100 Mbit/s link: refused, with the reason.
    let set = SetClass { class: "bulk".into(), egress: Some("80mbit".into()), ..SetClass::default() };
    let err = daemon.set(set).unwrap_err().to_string();
    let expected = format!(
        "class \"bulk\": the classes on {} guarantee 110 Mbit/s of egress (bulk 80 Mbit/s + other 30 Mbit/s), more than its capacity of 100 Mbit/s",
        sandbox.dev_a
    );
    assert!(err.contains(&expected), "expected `{expected}` in: {err}");

    // Nothing changed: no drift, the same rates, the same HTB tree.
    let status = daemon.status().unwrap();
    assert!(status.drift.is_empty(), "{status:#?}");
    assert_eq!(rates(&daemon), rates_before);
    assert_eq!(tc_classes(), tree_before);

    // What fits still applies: 70 + 30.
    let set = SetClass { class: "bulk".into(), egress: Some("70mbit".into()), ..SetClass::default() };
    daemon.set(set).unwrap();
    assert_eq!(daemon.status().unwrap().drift, ["bulk: egress 70 Mbit/s"]);
}
