//! The config loader: any text gives a config or an error at a position in
//! the text, never a panic; an accepted config keeps the promises the rest of
//! the daemon relies on (rates in range, reservations within capacity), and
//! planning its HTB trees and compiling its rules must not fail either.

use std::path::Path;

use shaper_common::{Direction, MAX_CLASSES};
use shaper_user::{
    config::{self, ConfigError},
    plan, units,
};

use crate::{
    world::{self, World},
    Rng, Target,
};

pub struct Config {
    world: World,
}

impl Config {
    pub fn new() -> Self {
        Self { world: World::new() }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

pub const DICTIONARY: &[&str] = &[
    "[daemon]\n",
    "[[interface]]\n",
    "[[class]]\n",
    "name = ",
    "egress = ",
    "ingress = ",
    "default = ",
    "priority = ",
    "match = ",
    "interfaces = ",
    "scan_interval = ",
    "control_socket = ",
    "max_flows = ",
    "cgroup = ",
    "event_driven = ",
    "pin_dir = ",
    "pid_file = ",
    "watch_config = ",
    "{ rate = ",
    ", ceil = ",
    " }",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "\n",
    "=",
    "[",
    "]",
    "true",
    "mbit",
    "gbit",
    "kbit",
    "MB/s",
    "GiB/s",
    "bit",
    "ms",
    "h",
    "\"eth0\"",
    "\"default\"",
    "#",
    "\\u0000",
    "\\",
    "é",
    "\r\n",
];

fn rate(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => rng.pick(crate::rng::NUMBERS).to_string(),
        1 => format!("{}", rng.next_u64() >> rng.below(64)),
        _ => format!(
            "\"{}{}\"",
            rng.pick(&["0", "1", "2.5", "10", "100", "999", "1000000", "18446744073709551615", ".5", "1e3"]),
            rng.pick(&["mbit", "gbit", "kbit", "", "bit", "MB/s", "GiB/s", "Tbit", " mbit", "mbps"])
        ),
    }
}

fn limit(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!("{{ rate = {} }}", rate(rng)),
        1 => format!("{{ ceil = {} }}", rate(rng)),
        2 => format!("{{ rate = {}, ceil = {} }}", rate(rng), rate(rng)),
        _ => rate(rng),
    }
}

const IFACES: &[&str] = &["eth0", "eth1", "wg0", "veth-long-name-x", "a/b", ""];
const CLASSES: &[&str] = &["web", "bulk", "default", "ssh", "x y", ""];

/// A config built from the schema's parts, with values at the edges.
fn generate(rng: &mut Rng) -> String {
    let mut t = String::new();
    if rng.one_in(3) {
        t.push_str("[daemon]\n");
        for (key, values) in [
            ("scan_interval", &["\"5s\"", "\"10ms\"", "\"1.5s\"", "\"99999999999999999999h\"", "5"][..]),
            ("max_flows", &["1024", "1023", "16777217", "-1", "9223372036854775807"][..]),
            ("control_socket", &["\"/run/x.sock\"", "\"x\""][..]),
            ("event_driven", &["true", "1"][..]),
        ] {
            if rng.one_in(2) {
                t.push_str(&format!("{key} = {}\n", rng.pick(values)));
            }
        }
    }
    for _ in 0..1 + rng.below(3) {
        t.push_str(&format!("[[interface]]\nname = \"{}\"\negress = {}\n", rng.pick(IFACES), rate(rng)));
        if rng.one_in(2) {
            t.push_str(&format!("ingress = {}\n", rate(rng)));
        }
        if rng.one_in(3) {
            t.push_str(&format!("default = \"{}\"\n", rng.pick(CLASSES)));
        }
    }
    for _ in 0..rng.below(6) {
        t.push_str(&format!("[[class]]\nname = \"{}\"\n", rng.pick(CLASSES)));
        if rng.one_in(2) {
            t.push_str(&format!("egress = {}\n", limit(rng)));
        }
        if rng.one_in(3) {
            t.push_str(&format!("ingress = {}\n", limit(rng)));
        }
        if rng.one_in(3) {
            t.push_str(&format!("priority = {}\n", rng.pick(&["0", "7", "8", "-1", "256"])));
        }
        if rng.one_in(2) {
            t.push_str(&format!("match = '{}'\n", world::match_rule(rng, 1)));
        }
        if rng.one_in(4) {
            t.push_str(&format!("interfaces = [\"{}\"]\n", rng.pick(IFACES)));
        }
    }
    t
}

impl Target for Config {
    fn name(&self) -> &'static str {
        "config"
    }

    fn dictionary(&self) -> &'static [&'static str] {
        DICTIONARY
    }

    fn max_len(&self) -> usize {
        16 * 1024
    }

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        generate(rng).into_bytes()
    }

    fn run(&mut self, input: &[u8]) -> bool {
        let text = String::from_utf8_lossy(input);
        match config::parse(Path::new("fuzz.toml"), &text, &self.world.env()) {
            Ok(config) => {
                check_config(&config, &self.world);
                true
            }
            Err(e) => {
                check_error(&e, &text);
                false
            }
        }
    }
}

/// An error names a position inside the text.
fn check_error(e: &ConfigError, text: &str) {
    let ConfigError::At { pos, message, .. } = e else { panic!("parsing text gave {e:?}") };
    let lines = text.split('\n').count();
    assert!(pos.line >= 1 && pos.line <= lines, "error at line {} of {lines}: {e}", pos.line);
    assert!(pos.col >= 1, "error at column 0: {e}");
    assert!(!message.is_empty(), "an empty error message at {pos}");
    let _ = e.to_string();
}

/// What the daemon relies on in an accepted config.
fn check_config(c: &config::Config, world: &World) {
    assert!(c.classes.len() <= MAX_CLASSES as usize);
    assert_eq!(c.overbooked(), None, "an accepted config overbooks an interface");
    let in_range = |bps: u64| (1..=units::MAX_RATE_BPS).contains(&bps);
    for iface in &c.interfaces {
        assert!(in_range(iface.egress_bps) && iface.ingress_bps.is_none_or(in_range), "{iface:?}");
    }
    for class in &c.classes {
        for limit in [class.egress, class.ingress].into_iter().flatten() {
            assert!(limit.rate_bps.is_some() || limit.ceil_bps.is_some(), "{class:?}");
            assert!(limit.rate_bps.is_none_or(in_range) && limit.ceil_bps.is_none_or(in_range), "{class:?}");
            if let (Some(r), Some(ceil)) = (limit.rate_bps, limit.ceil_bps) {
                assert!(r <= ceil, "{class:?}");
            }
        }
    }
    let ids = c.class_ids_in_file_order();
    for iface in &c.interfaces {
        for direction in [Direction::Egress, Direction::Ingress] {
            let Some(p) = plan::plan(c, &ids, iface, direction, 1500) else { continue };
            for class in &p.classes {
                assert!(
                    class.rate_bps >= 1
                        && class.rate_bps <= class.ceil_bps
                        && class.ceil_bps <= p.capacity_bps,
                    "planned {class:?} on {} {direction:?} ({} bit/s)",
                    iface.name,
                    p.capacity_bps
                );
            }
            for leaf in &p.htb.leaves {
                assert!(
                    leaf.class.burst_bytes > 0 && leaf.class.cburst_bytes > 0 && leaf.class.quantum > 0,
                    "{leaf:?}"
                );
            }
        }
    }
    let _ = c.compile_rules(&ids, &world.tree);
}
