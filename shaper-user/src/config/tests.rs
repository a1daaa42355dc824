//! Every config error, with its message and position.

use std::{path::Path, time::Duration};

use super::*;
use crate::services::Services;

fn services() -> Services {
    Services::parse("ssh 22/tcp\ndomain 53/tcp\ndomain 53/udp\nhttp 80/tcp\n")
}

fn parse(path: &Path, text: &str, services: &Services) -> Result<Config, ConfigError> {
    let accounts = crate::accounts::StaticAccounts::new(&[("root", 0), ("backup", 34)], &[("root", 0)]);
    super::parse(path, text, &Env { services, accounts: &accounts })
}

/// Parses one interface and a class `a` whose remaining lines are `class`
/// (the unit tests of the class attributes' modules), the error as text.
pub(super) fn parse_class(class: &str) -> Result<Config, String> {
    const HEAD: &str = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n[[class]]\nname = \"a\"\n";
    let env = crate::rules::SystemEnv::default();
    super::parse(Path::new("t.toml"), &format!("{HEAD}{class}"), &env.env()).map_err(|e| e.to_string())
}

fn ok(text: &str) -> Config {
    parse(Path::new("t.toml"), text, &services()).unwrap_or_else(|e| panic!("{e}"))
}

/// The error as printed: "t.toml:LINE:COL: message".
fn err(text: &str) -> String {
    parse(Path::new("t.toml"), text, &services()).unwrap_err().to_string()
}

const IFACE: &str = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n";

#[test]
fn the_issue_example_is_valid_and_means_what_it_says() {
    let c = ok(r#"
[daemon]
scan_interval = "5s"
control_socket = "/run/shaper/shaper.sock"

[[interface]]
name = "eth0"
egress = "100mbit"
ingress = "500mbit"
default = "default"

[[class]]
name = "web"
priority = 1
egress = { rate = "10mbit", ceil = "50mbit" }
ingress = "20mbit"
match = 'rport in [80, 443] and raddr in 198.18.0.0/15'
"#);
    assert_eq!(c.daemon.scan_interval, Duration::from_secs(5));
    assert_eq!(c.daemon.control_socket, Path::new("/run/shaper/shaper.sock"));
    let eth0 = &c.interfaces[0];
    assert_eq!((eth0.egress_bps, eth0.ingress_bps), (100_000_000, Some(500_000_000)));
    let web = c.class("web").unwrap();
    assert_eq!(web.priority, 1);
    assert_eq!(web.egress, Some(Limit { rate_bps: Some(10_000_000), ceil_bps: Some(50_000_000) }));
    assert_eq!(web.ingress, Some(Limit { rate_bps: Some(20_000_000), ceil_bps: Some(20_000_000) }));
    assert_eq!(web.rule.as_ref().unwrap().to_string(), "rport in [80, 443] and raddr in 198.18.0.0/15");
    // "default" is not defined, so it is created, unlimited, and is eth0's default.
    let default = c.class("default").unwrap();
    assert!(default.implicit);
    assert_eq!((default.egress, default.priority), (None, 4));
    assert_eq!(eth0.default_class, "default");
}

#[test]
fn defaults_when_keys_are_absent() {
    let c = ok(IFACE);
    assert_eq!(c.daemon.scan_interval, DEFAULT_SCAN_INTERVAL);
    assert_eq!(c.daemon.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
    assert_eq!(c.daemon.max_flows, shaper_common::DEFAULT_MAX_FLOWS);
    assert_eq!(c.interfaces[0].ingress_bps, None);
    assert_eq!(c.classes.len(), 1);
    assert_eq!(c.classes[0].name, "default");
}

#[test]
fn classes_are_global_unless_restricted() {
    let c = ok(r#"
[[interface]]
name = "eth0"
egress = "100mbit"
[[interface]]
name = "eth1"
egress = "1gbit"
default = "bulk"
[[class]]
name = "web"
match = 'rport == 80'
interfaces = ["eth0"]
[[class]]
name = "bulk"
"#);
    let on = |i: usize| c.classes_on(&c.interfaces[i]).map(|c| c.name.as_str()).collect::<Vec<_>>();
    assert_eq!(on(0), ["web", "bulk", "default"]);
    assert_eq!(on(1), ["bulk", "default"]);
    assert_eq!(c.interfaces[1].default_class, "bulk");
}

#[test]
fn the_default_class_can_be_defined_explicitly() {
    let c = ok(&format!("{IFACE}[[class]]\nname = \"default\"\negress = \"5mbit\"\npriority = 6\n"));
    assert_eq!(c.classes.len(), 1);
    assert!(!c.classes[0].implicit);
    assert_eq!(c.classes[0].priority, 6);
}

#[test]
fn syntax_errors_and_unknown_keys_have_positions() {
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\negres = \"100mbit\"\n"),
        "t.toml:3:1: unknown field `egres`, expected one of `name`, `egress`, `ingress`, `default`, `optional`"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\nrate = \"1mbit\"\n")).split(',').next().unwrap(),
        "t.toml:6:1: unknown field `rate`"
    );
    assert_eq!(
        err("[daemon]\nscan = \"5s\"\n").split(',').next().unwrap(),
        "t.toml:2:1: unknown field `scan`"
    );
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\n").split(':').take(3).collect::<Vec<_>>().join(":"),
        "t.toml:1:1"
    );
    assert!(
        err("[[interface]]\nname = \"eth0\"\n").ends_with("missing field `egress`"),
        "{}",
        err("[[interface]]\nname = \"eth0\"\n")
    );
    assert_eq!(err("[[interface]\n"), "t.toml:1:12: invalid table header; expected `.`, `]]`");
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\negress = {{ rate = \"1mbit\", cell = \"2mbit\" }}\n")),
        "t.toml:6:28: unknown field `cell`, expected `rate` or `ceil`"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\negress = true\n")),
        "t.toml:6:10: invalid type: boolean `true`, expected a rate such as \"10mbit\" (rate = ceil) or a table { rate = \"10mbit\", ceil = \"50mbit\" }"
    );
}

#[test]
fn rate_and_duration_errors_point_at_the_value() {
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\negress = \"100 megabits\"\n"),
        "t.toml:3:10: invalid rate \"100 megabits\": unknown unit \"megabits\" (bits/s: kbit, mbit, gbit, kbps, mbps, gbps, Kbit/s, Mbit/s; bytes/s: KB/s, MB/s, GB/s, KiB/s, MiB/s)"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\negress = {{ ceil = \"fast\" }}\n")),
        "t.toml:6:19: invalid rate \"fast\": expected a number and a unit such as \"10mbit\", \"500kbit\", \"2MB/s\" or \"1gbit\""
    );
    assert_eq!(
        err(&format!("[daemon]\nscan_interval = \"5\"\n{IFACE}")),
        "t.toml:2:17: invalid duration \"5\": expected a number and a unit such as \"500ms\", \"5s\", \"2m\" or \"1h\""
    );
    assert_eq!(
        err(&format!("[daemon]\nscan_interval = \"10ms\"\n{IFACE}")),
        "t.toml:2:17: scan_interval must be at least 100ms"
    );
    assert_eq!(
        err(&format!("[daemon]\ncontrol_socket = \"shaper.sock\"\n{IFACE}")),
        "t.toml:2:18: control_socket must be an absolute path"
    );
    assert_eq!(
        err(&format!("[daemon]\nmax_flows = 10\n{IFACE}")),
        "t.toml:2:13: max_flows must be between 1024 and 16777216"
    );
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\negress = \"0mbit\"\n"),
        "t.toml:3:10: the egress capacity of eth0 must be above zero"
    );
}

#[test]
fn class_errors() {
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\negress = {{ rate = \"20mbit\", ceil = \"10mbit\" }}\n")),
        "t.toml:6:10: class \"a\": egress rate 20 Mbit/s is above its ceil 10 Mbit/s; the ceil is the most a class may use"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\n[[class]]\nname = \"a\"\n")),
        "t.toml:7:8: duplicate class name \"a\" (first defined on line 5)"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\npriority = 9\n")),
        "t.toml:6:12: priority must be 0 (served first) to 7 (last), not 9"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"my class\"\n")),
        "t.toml:5:8: class names must be non-empty, without spaces"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\negress = {{}}\n")),
        "t.toml:6:10: class \"a\": egress needs a rate, a ceil, or both"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\ninterfaces = [\"eth9\"]\n")),
        "t.toml:6:15: no [[interface]] named \"eth9\""
    );
}

#[test]
fn interface_errors() {
    assert_eq!(
        err("[daemon]\n"),
        "t.toml:1:1: no [[interface]]: name at least one interface to shape, e.g. [[interface]] with \
         name = \"eth0\" and egress = \"100mbit\""
    );
    assert_eq!(
        err(&format!("{IFACE}{IFACE}")),
        "t.toml:5:8: interface \"eth0\" is listed twice (first on line 2)"
    );
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\ndefault = \"bulk\"\n"),
        "t.toml:4:11: unknown default class \"bulk\" (classes: none are defined)"
    );
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\ndefault = \"bluk\"\n[[class]]\nname = \"bulk\"\n"),
        "t.toml:4:11: unknown default class \"bluk\" (classes: bulk)"
    );
    assert_eq!(
        err("[[interface]]\nname = \"averyveryverylongname\"\negress = \"1mbit\"\n"),
        "t.toml:2:8: \"averyveryverylongname\" is not a valid interface name (1 to 15 characters, no '/' or spaces)"
    );
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\ndefault = \"web\"\n[[interface]]\nname = \"eth1\"\negress = \"1gbit\"\n[[class]]\nname = \"web\"\ninterfaces = [\"eth1\"]\n"),
        "t.toml:4:11: default class \"web\" is not on interface eth0 (its `interfaces` on line 8 leave it out)"
    );
}

#[test]
fn guaranteed_rates_must_fit_the_capacity() {
    let text = format!(
        "{IFACE}[[class]]\nname = \"a\"\negress = \"60mbit\"\n[[class]]\nname = \"b\"\negress = {{ rate = \"50mbit\" }}\n"
    );
    assert_eq!(
        err(&text),
        "t.toml:3:10: the classes on eth0 guarantee 110 Mbit/s of egress (a 60 Mbit/s + b 50 Mbit/s), more than its capacity of 100 Mbit/s"
    );
    // Ceilings may add up to more than the capacity: that is what borrowing is for.
    ok(&format!("{IFACE}[[class]]\nname = \"a\"\negress = {{ ceil = \"100mbit\" }}\n[[class]]\nname = \"b\"\negress = {{ ceil = \"100mbit\" }}\n"));
    // Ingress is checked against the ingress capacity, when there is one.
    let ingress = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\ningress = \"10mbit\"\n[[class]]\nname = \"a\"\ningress = \"20mbit\"\n";
    assert!(
        err(ingress).starts_with("t.toml:4:11: the classes on eth0 guarantee 20 Mbit/s of ingress"),
        "{}",
        err(ingress)
    );
}

#[test]
fn match_errors_point_into_the_rule() {
    let text = format!("{IFACE}\n[[class]]\nname = \"web\"\nmatch = 'rprot == 80'\n");
    assert_eq!(err(&text), "t.toml:7:10: unknown attribute \"rprot\"; did you mean \"rport\"?");
    let text = format!("{IFACE}[[class]]\nname = \"web\"\nmatch = 'rport == 80 and raddr in 10.0.0.1/8'\n");
    assert_eq!(err(&text), "t.toml:6:35: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?");
    // A multi-line literal string: positions follow the lines.
    let text = format!("{IFACE}[[class]]\nname = \"web\"\nmatch = '''\nrport == 80 or\n  user == \"x\"'''\n");
    assert_eq!(err(&text), "t.toml:8:11: unknown user \"x\" (not in the user database)");
    // A basic string with an escape: the position is the string's start.
    let text = format!("{IFACE}[[class]]\nname = \"web\"\nmatch = \"service == \\\"nope\\\"\"\n");
    assert_eq!(err(&text), "t.toml:6:9: unknown service \"nope\" (not in /etc/services)");
}

#[test]
fn rules_compile_in_file_order() {
    let c = ok(&format!(
        "{IFACE}[[class]]\nname = \"a\"\nmatch = 'rport == 1'\n[[class]]\nname = \"quiet\"\n[[class]]\nname = \"b\"\nmatch = 'rport in 1..2'\n"
    ));
    let ids = c.class_ids_in_file_order();
    let compiled = c.compile_rules(&ids, &crate::rules::compile::NoCgroups).unwrap();
    let key = |port| {
        crate::flows::key(
            6,
            "198.18.0.1:5000".parse().unwrap(),
            format!("198.18.0.2:{port}").parse().unwrap(),
        )
    };
    use shaper_common::{target_class, CLASS_DEFAULT, TARGET_DEFAULT};
    let eval = |port| match compiled.decide(&key(port), None).class {
        CLASS_DEFAULT => TARGET_DEFAULT,
        class => target_class(class),
    };
    assert_eq!(eval(1), target_class(ids.index("a").unwrap()));
    assert_eq!(eval(2), target_class(ids.index("b").unwrap()));
    assert_eq!(eval(3), shaper_common::TARGET_DEFAULT);
}

#[test]
fn missing_interfaces_on_the_host_are_reported_at_their_name() {
    let c = ok(&format!("# a comment\n{IFACE}"));
    let e = c.check_interfaces_exist(|n| n == "lo").unwrap_err();
    assert_eq!(e.to_string(), "t.toml:3:8: interface \"eth0\" does not exist (in this network namespace)");
    assert!(c.check_interfaces_exist(|n| n == "eth0").is_ok());
    let optional = ok(&IFACE.replace("egress =", "optional = true\negress ="));
    assert!(optional.interfaces[0].optional);
    assert!(optional.check_interfaces_exist(|_| false).is_ok());
    assert!(!c.interfaces[0].optional);
}

#[test]
fn the_example_configs_in_the_repository_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    for name in ["shaper.toml", "demo.toml"] {
        let path = root.join(name);
        let c = load(&path, &crate::rules::SystemEnv::load().env()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.classes.is_empty(), "{name}");
    }
}

#[test]
fn daemon_paths_must_be_absolute() {
    assert_eq!(
        err(&format!("[daemon]\npin_dir = \"bpf/shaper\"\n{IFACE}")),
        "t.toml:2:11: pin_dir must be an absolute path on a BPF filesystem"
    );
    let c = ok(&format!("[daemon]\nwatch_config = true\npid_file = \"/run/x.pid\"\n{IFACE}"));
    assert!(c.daemon.watch_config);
    assert_eq!(c.daemon.pid_file, Path::new("/run/x.pid"));
}

#[test]
fn bare_integer_rates_are_held_to_the_range_of_written_ones() {
    // A bare integer is bits/s, and as bounded as "10mbit": TOML's largest
    // integer is far above any rate HTB can take.
    assert_eq!(
        err("[[interface]]\nname = \"eth0\"\negress = 9223372036854775807\n"),
        "t.toml:3:10: invalid rate \"9223372036854775807\": too large"
    );
    assert_eq!(
        err(&format!("{IFACE}[[class]]\nname = \"a\"\negress = {{ ceil = 1000000000000000 }}\n")),
        "t.toml:6:19: invalid rate \"1000000000000000\": too large"
    );
    // The largest accepted, written either way.
    let c = ok("[[interface]]\nname = \"eth0\"\negress = 999999999999999\ningress = \"999999999999999\"\n");
    assert_eq!(
        (c.interfaces[0].egress_bps, c.interfaces[0].ingress_bps),
        (999_999_999_999_999, Some(999_999_999_999_999))
    );
}

#[test]
fn guaranteed_rates_that_overflow_when_summed_are_an_error_not_a_panic() {
    // Each rate alone fits in 64 bits; their sum does not: debug builds
    // panicked adding them, release builds wrapped to 2.55e18, which "fit"
    // the 9e18 capacity.
    let huge = "7000000000000000000";
    let mut text = "[[interface]]\nname = \"eth0\"\negress = 9000000000000000000\n".to_string();
    for name in ["a", "b", "c"] {
        text.push_str(&format!("[[class]]\nname = \"{name}\"\negress = {huge}\n"));
    }
    assert_eq!(err(&text), format!("t.toml:6:10: invalid rate \"{huge}\": too large"));
}

#[test]
fn reservations_are_summed_with_checked_arithmetic() {
    // Rates no file can give (`shaper set` and the validator share this check).
    let mut c = ok(&format!(
        "{IFACE}[[class]]\nname = \"a\"\negress = \"10mbit\"\n[[class]]\nname = \"b\"\negress = \"10mbit\"\n"
    ));
    assert_eq!(c.overbooked(), None);
    for class in &mut c.classes[..2] {
        class.egress = Some(Limit { rate_bps: Some(u64::MAX / 2 + 1), ceil_bps: None });
    }
    assert_eq!(
        c.overbooked().map(|o| o.to_string()).as_deref(),
        Some("the classes on eth0 guarantee more than 18446744074 Gbit/s of egress (a 9223372037 Gbit/s + b 9223372037 Gbit/s), more than its capacity of 100 Mbit/s")
    );
}

#[test]
fn toml_errors_without_a_message_still_say_what_is_wrong() {
    // Found by the config fuzz target: toml reports a control character in a
    // comment with an empty message, which printed as "t.toml:4:4: ".
    assert_eq!(err(&format!("{IFACE}# a\u{7f}b\n")), "t.toml:4:4: invalid character '\\u{7f}' (U+007F)");
}

#[test]
fn the_metrics_address_is_off_by_default_and_checked_where_written() {
    assert_eq!(ok(IFACE).daemon.metrics, None);
    let c = ok(&format!("[daemon]\nmetrics = \"127.0.0.1:9464\"\n{IFACE}"));
    assert_eq!(c.daemon.metrics, Some("127.0.0.1:9464".parse().unwrap()));
    let c = ok(&format!("[daemon]\nmetrics = \"[::1]:19464\"\n{IFACE}"));
    assert_eq!(c.daemon.metrics, Some("[::1]:19464".parse().unwrap()));
    let expected = "metrics must be an IP address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\"";
    assert_eq!(
        err(&format!("[daemon]\nmetrics = \"localhost:9464\"\n{IFACE}")),
        format!("t.toml:2:11: {expected} (got \"localhost:9464\")")
    );
    assert_eq!(
        err(&format!("[daemon]\nscan_interval = \"5s\"\nmetrics = \"127.0.0.1\"\n{IFACE}")),
        format!("t.toml:3:11: {expected} (got \"127.0.0.1\")")
    );
    assert_eq!(
        err(&format!("[daemon]\nmetrics = \"0.0.0.0:0\"\n{IFACE}")),
        format!("t.toml:2:11: {expected}, with a port other than 0")
    );
    assert!(err(&format!("[daemon]\nmetrics = 9464\n{IFACE}")).starts_with("t.toml:2:11: invalid type"));
}
