//! The classifier in the kernel, driven with BPF_PROG_TEST_RUN on crafted frames:
//! parsing (IPv4, IPv6 with extension headers, fragments, truncation), the
//! rule-table walk, the flow cache and the per-class counters.
//!
//! Needs root (loads BPF programs; without it each test reports "skipped:
//! needs root"); attaches nothing to any interface.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::net::{IpAddr, SocketAddr};

use shaper_common::{classid_of, FlowKey, IfaceInfo, CLASS_DEFAULT, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use shaper_testkit::{packets::Frame, require_root, TestRunExt as _};
use shaper_user::{
    datapath::{Datapath, LoadOptions},
    rules::{
        compile::{self, Compiled, NoCgroups},
        first_match,
        pred::Facts,
        Pred, Rule, SystemEnv,
    },
};

/// ifindex of `lo`, which BPF_PROG_TEST_RUN uses as the packet's device by default.
const IFINDEX: u32 = 1;
const DEFAULT_CLASS: u16 = 3;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn datapath() -> Datapath {
    let mut dp = Datapath::load(LoadOptions { max_flows: 1024, kernel_log_level: 0, pins: None })
        .expect("load (are you root?)");
    dp.set_iface(IFACE_KEY, &iface_in_slot(0)).unwrap();
    dp
}

/// The test interface in counter slot `slot`, with classes 0 to 3.
fn iface_in_slot(slot: u32) -> IfaceInfo {
    let mut info = IfaceInfo::new(slot, DEFAULT_CLASS, 14);
    for class in 0..=3 {
        info.add_class(class);
    }
    info
}
const IFACE_KEY: u32 = IFINDEX;

fn parse(sources: &[&str]) -> Vec<Rule> {
    let env = SystemEnv::load();
    sources.iter().map(|s| Rule::parse(s, &env.env()).unwrap_or_else(|e| panic!("{s}: {e}"))).collect()
}

/// The table of `rules` (class, `match`), first match wins.
fn table(rules: &[(u16, &str)]) -> Compiled {
    let parsed = parse(&rules.iter().map(|(_, s)| *s).collect::<Vec<_>>());
    let list: Vec<(u16, &Pred)> = rules.iter().zip(&parsed).map(|((c, _), r)| (*c, &r.pred)).collect();
    compile::compile(&list, &NoCgroups).unwrap()
}

/// Class 0: rport 5201; class 1: raddr in fd00::/8; class 2: rport 6000..6010 (UDP too).
fn rules() -> Compiled {
    table(&[(0, "rport == 5201"), (1, "raddr in fd00::/8"), (2, "rport in 6000..6010")])
}

fn classify(dp: &mut Datapath, frame: &[u8]) -> u32 {
    dp.test_run(shaper_common::names::PROG_TC_EGRESS, frame, IFINDEX, 1).unwrap().priority
}

#[test]
fn frames_get_the_class_of_the_first_matching_rule() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let cases = [
        (Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201), 0),
        (Frame::tcp(ip("fd00::1"), 40000, ip("fd00::2"), 80), 1),
        // Rule order: port 5201 wins over the fd00::/8 prefix.
        (Frame::tcp(ip("fd00::1"), 40001, ip("fd00::2"), 5201), 0),
        (Frame::udp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 6005), 2),
        (Frame::udp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 6011), DEFAULT_CLASS as u32),
        (Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 80), DEFAULT_CLASS as u32),
        (Frame::tcp(ip("2001:db8::1"), 40000, ip("2001:db8::2"), 80), DEFAULT_CLASS as u32),
    ];
    for (frame, class) in cases {
        assert_eq!(classify(&mut dp, &frame.build()), classid_of(class), "{frame:?}");
    }
}

#[test]
fn ipv6_extension_headers_are_skipped_and_fragments_take_the_default() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let mut frame = Frame::tcp(ip("fd00::1"), 40000, ip("fd00::2"), 5201);
    // Hop-by-hop (8 bytes), destination options (16), routing (24), AH (12): all walked.
    frame.ipv6_ext = vec![(0, 8), (60, 16), (43, 24), (51, 12)];
    assert_eq!(classify(&mut dp, &frame.build()), classid_of(0));
    // More than the bounded number of extension headers: no ports found, default class.
    frame.ipv6_ext = vec![(60, 8); 7];
    assert_eq!(classify(&mut dp, &frame.build()), classid_of(DEFAULT_CLASS as u32));
    // A fragment header: later fragments carry no ports, so every fragment takes the default.
    frame.ipv6_ext = vec![(44, 8)];
    assert_eq!(classify(&mut dp, &frame.build()), classid_of(DEFAULT_CLASS as u32));
    let mut v4 = Frame::udp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 6005);
    v4.fragment = true;
    assert_eq!(classify(&mut dp, &v4.build()), classid_of(DEFAULT_CLASS as u32));
}

#[test]
fn truncated_and_non_ip_frames_pass_with_the_default_class() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let mut with_ext = Frame::tcp(ip("fd00::1"), 40000, ip("fd00::2"), 5201);
    with_ext.ipv6_ext = vec![(0, 8), (60, 16)];
    // (frame, length of its IP header, length of its transport header and payload)
    let frames = [
        (Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201), 20, 20),
        (Frame::udp(ip("fd00::1"), 40000, ip("fd00::2"), 6005), 40, 8),
        (with_ext, 40, 20),
    ];
    for (frame, ip_len, l4_len) in frames {
        let full = frame.build();
        // Every cut that loses a byte of the ports (or of an extension header)
        // leaves no flow key. BPF_PROG_TEST_RUN itself refuses frames shorter than
        // the IP header; those are covered by the raw-socket test on a live link.
        let ports_end = full.len() - frame.payload - l4_len + 4;
        for cut in 14 + ip_len..ports_end {
            let priority = dp
                .test_run(shaper_common::names::PROG_TC_EGRESS, &full[..cut], IFINDEX, 1)
                .unwrap_or_else(|e| panic!("cut {cut}: {e:?}"))
                .priority;
            assert_eq!(priority, classid_of(DEFAULT_CLASS as u32), "cut at {cut} of {}", full.len());
        }
        assert_ne!(classify(&mut dp, &full), classid_of(DEFAULT_CLASS as u32));
    }
    // Broken IPv4 headers: a header length below 20 bytes, a wrong version.
    let good = Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201).build();
    for (offset, byte) in [(14, 0x44u8), (14, 0x40), (14, 0x65)] {
        let mut bad = good.clone();
        bad[offset] = byte;
        assert_eq!(classify(&mut dp, &bad), classid_of(DEFAULT_CLASS as u32), "byte {byte:#x}");
    }
    // An IPv4 header length pointing past the end of the frame.
    let mut long_ihl = good.clone();
    long_ihl[14] = 0x4f;
    assert_eq!(classify(&mut dp, &long_ihl), classid_of(DEFAULT_CLASS as u32));
    // ARP: not IP.
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(classify(&mut dp, &arp), classid_of(DEFAULT_CLASS as u32));
}

#[test]
fn flows_are_cached_counted_and_re_evaluated_after_a_rule_swap() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let frame = Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201);
    let bytes = frame.build();
    for _ in 0..3 {
        assert_eq!(classify(&mut dp, &bytes), classid_of(0));
    }
    let key = FlowKey {
        family: FAMILY_V4,
        proto: PROTO_TCP,
        lport: 40000,
        rport: 5201,
        laddr: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ..FlowKey::default()
    };
    let flow = dp.flow(&key).expect("flow entry created on first packet");
    assert_eq!(flow.class, 0);
    assert_eq!(flow.tx_packets, 3);
    assert_eq!(flow.tx_bytes, 3 * bytes.len() as u64);
    let stats = dp.class_stats(0, 0).unwrap();
    assert_eq!((stats.tx_packets, stats.tx_bytes), (3, 3 * bytes.len() as u64));

    // New rules: everything to class 1. The cached flow follows on its next packet.
    let swap = table(&[(1, "true")]);
    dp.set_rules(&swap).unwrap();
    assert_eq!(classify(&mut dp, &bytes), classid_of(1));
    assert_eq!(dp.flow(&key).unwrap().class, 1);
    // Swap back (the other bank again).
    dp.set_rules(&rules()).unwrap();
    assert_eq!(classify(&mut dp, &bytes), classid_of(0));
}

#[test]
fn classes_missing_on_an_interface_fall_back_to_its_default() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let mut info = IfaceInfo::new(0, DEFAULT_CLASS, 14);
    info.add_class(u32::from(DEFAULT_CLASS)); // only the default class exists here
    dp.set_iface(IFINDEX, &info).unwrap();
    let frame = Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201).build();
    assert_eq!(classify(&mut dp, &frame), classid_of(DEFAULT_CLASS as u32));
    // The flow still records its rule class, so it is right again where the class exists.
    let flows = dp.flows();
    assert!(flows.iter().any(|(_, v)| v.class == 0), "{flows:?}");
    assert!(!flows.iter().any(|(_, v)| v.class == CLASS_DEFAULT));
}

#[test]
fn no_rules_loaded_means_default_class() {
    require_root!();
    let mut dp = datapath();
    let frame = Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201).build();
    assert_eq!(classify(&mut dp, &frame), classid_of(DEFAULT_CLASS as u32));
    assert_eq!(dp.errors().unwrap().iter().sum::<u64>(), 0);
}

/// A bare ACK (no payload) goes to the ACK leaf, ahead of every class's
/// queue; a data segment of the same connection goes to its class.
#[test]
fn bare_acks_go_to_the_ack_leaf_and_data_to_its_class() {
    require_root!();
    let mut dp = datapath();
    let (a, b) = (ip("198.18.0.1"), ip("198.18.0.2"));
    let ack_leaf = (shaper_common::HTB_MAJOR << 16) | shaper_common::HTB_ACK_MINOR;
    assert_eq!(classify(&mut dp, &Frame::bare_ack(a, 40000, b, 5201).build()), ack_leaf);
    assert_eq!(classify(&mut dp, &Frame::tcp(a, 40000, b, 5201).build()), classid_of(DEFAULT_CLASS as u32));
    // UDP has no ACKs: an empty datagram stays in its class.
    assert_eq!(classify(&mut dp, &Frame::udp(a, 40000, b, 5201).build()), classid_of(DEFAULT_CLASS as u32));
}

/// `TC_ACT_REDIRECT`, what `bpf_redirect` makes the ingress classifier return.
const TC_ACT_REDIRECT: i32 = 7;
/// `TC_ACT_UNSPEC`: pass, untouched.
const TC_ACT_UNSPEC: i32 = -1;

#[test]
fn ingress_packets_share_their_connections_flow_and_go_to_the_ifb() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let ingress = shaper_common::names::PROG_TC_INGRESS;
    let reply = Frame::tcp(ip("198.18.0.2"), 5201, ip("198.18.0.1"), 40000).build();
    // Ingress not shaped on this interface: passed untouched, no flow made.
    let run = dp.test_run(ingress, &reply, IFINDEX, 1).unwrap();
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert!(dp.flows().is_empty());
    let mut info = IfaceInfo::new(0, DEFAULT_CLASS, 14);
    for class in 0..=3 {
        info.add_class(class);
    }
    info.ifb_ifindex = 4242;
    dp.set_iface(IFINDEX, &info).unwrap();
    // The connection's first packet leaves; its reply, the tuple seen the other
    // way round, lands in the same flow and class, and is sent to the IFB.
    let request = Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201).build();
    assert_eq!(classify(&mut dp, &request), classid_of(0));
    let run = dp.test_run(ingress, &reply, IFINDEX, 1).unwrap();
    assert_eq!((run.priority, run.verdict), (classid_of(0), TC_ACT_REDIRECT));
    let flows = dp.flows();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let (_, flow) = flows[0];
    assert_eq!((flow.tx_packets, flow.rx_packets, flow.rx_bytes), (1, 1, reply.len() as u64));
    assert_eq!(dp.class_stats(0, 0).unwrap().rx_packets, 1);
    // A connection first seen arriving is classified from the tuple too, and
    // what the classifier cannot read goes to the default class, redirected all the same.
    let inbound = Frame::udp(ip("fd00::2"), 40000, ip("fd00::1"), 6005).build();
    assert_eq!(dp.test_run(ingress, &inbound, IFINDEX, 1).unwrap().priority, classid_of(1));
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let run = dp.test_run(ingress, &arp, IFINDEX, 1).unwrap();
    assert_eq!((run.priority, run.verdict), (classid_of(DEFAULT_CLASS as u32), TC_ACT_REDIRECT));
}

#[test]
fn arriving_packets_pass_and_are_counted_while_the_ifb_is_down() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let ingress = shaper_common::names::PROG_TC_INGRESS;
    let mut info = IfaceInfo::new(0, DEFAULT_CLASS, 14);
    for class in 0..=3 {
        info.add_class(class);
    }
    // The daemon saw the IFB go: never redirect there, pass and count.
    info.ifb_ifindex = shaper_common::IFB_DOWN;
    dp.set_iface(IFINDEX, &info).unwrap();
    let reply = Frame::tcp(ip("198.18.0.2"), 5201, ip("198.18.0.1"), 40000).build();
    let counted = |dp: &Datapath| dp.errors().unwrap()[shaper_common::ERR_IFB_DOWN as usize];
    let before = counted(&dp);
    for _ in 0..3 {
        assert_eq!(dp.test_run(ingress, &reply, IFINDEX, 1).unwrap().verdict, TC_ACT_UNSPEC);
    }
    assert_eq!(counted(&dp), before + 3);
    // The IFB restored: redirected again, no longer counted.
    info.ifb_ifindex = 4242;
    dp.set_iface(IFINDEX, &info).unwrap();
    assert_eq!(dp.test_run(ingress, &reply, IFINDEX, 1).unwrap().verdict, TC_ACT_REDIRECT);
    assert_eq!(counted(&dp), before + 3);
}

/// A pseudo-random rule of one of the shapes a large rule set has: exact and
/// nested addresses, ports shared by many rules, wide and overlapping ranges,
/// `not`, `or` across dimensions, a protocol test the index does not cover.
fn random_rule(next: &mut impl FnMut(u32) -> u32) -> String {
    let port = 5000 + next(8000);
    match next(8) {
        0 => format!("rport == {port}"),
        // Mostly narrow prefixes, a few wide ones holding them.
        1 if next(64) == 0 => format!("raddr in 198.18.{}.0/22", 4 * next(64)),
        1 => format!("raddr in 198.18.{}.{}/28", next(256), 16 * next(16)),
        2 => format!("raddr == 198.19.{}.{}", next(64), next(256)),
        3 => {
            let lo = 30_000 + next(30_000);
            format!("lport in {lo}..{}", lo + next(50))
        }
        4 => format!("raddr in fd00::{:x}:0/112 and rport in {port}..{}", next(64), port + next(50)),
        5 => format!("proto == \"udp\" and rport == {port}"),
        6 => format!("not raddr in 198.18.{}.0/24 and rport == {port}", next(256)),
        _ => format!("rport == {port} or laddr == 198.18.0.{}", 1 + next(200)),
    }
}

/// Sends 600 new flows through the classifier and checks each gets the class
/// of its first matching rule in `list` (`default` for none), and that the
/// daemon's engine on `compiled` agrees.
fn check_first_matches(
    dp: &mut Datapath,
    list: &[(u16, &Pred)],
    compiled: &Compiled,
    default: u16,
    next: &mut impl FnMut(u32) -> u32,
) {
    let (mut matched, mut unmatched) = (0, 0);
    for i in 0..600u32 {
        let v6 = next(4) == 0;
        let local: SocketAddr = if v6 {
            format!("[fd00::1]:{}", 30_000 + next(30_000)).parse().unwrap()
        } else {
            format!("198.18.0.{}:{}", 1 + next(200), 30_000 + next(30_000)).parse().unwrap()
        };
        let remote: SocketAddr = match (v6, next(3)) {
            (true, _) => format!("[fd00::{:x}:{}]:{}", next(64), next(9), 5000 + next(8500)).parse().unwrap(),
            (false, 0) => format!("198.19.{}.{}:{}", next(64), next(256), 5000 + next(8500)).parse().unwrap(),
            (false, _) => {
                format!("198.18.{}.{}:{}", next(256), 1 + next(250), 5000 + next(8500)).parse().unwrap()
            }
        };
        let proto = if next(3) == 0 { PROTO_UDP } else { PROTO_TCP };
        let frame = if proto == PROTO_UDP {
            Frame::udp(local.ip(), local.port(), remote.ip(), remote.port())
        } else {
            Frame::tcp(local.ip(), local.port(), remote.ip(), remote.port())
        };
        let key: FlowKey = shaper_user::flows::key(proto, local, remote);
        let expected = first_match(list, &Facts { key: &key, process: None });
        match expected {
            Some(_) => matched += 1,
            None => unmatched += 1,
        }
        let class = expected.unwrap_or(default);
        assert_eq!(classify(dp, &frame.build()), classid_of(u32::from(class)), "flow {i}: {key:?}");
        // The daemon's decision, on the same table, agrees.
        assert_eq!(compiled.decide(&key, None).class, expected.unwrap_or(CLASS_DEFAULT), "flow {i}");
    }
    assert!(matched > 200 && unmatched > 50, "matched {matched}, unmatched {unmatched}");
    assert_eq!(dp.errors().unwrap().iter().sum::<u64>(), 0);
}

#[test]
fn thousands_of_overlapping_rules_give_the_first_match_in_the_kernel() {
    require_root!();
    let mut seed = 0x51_7cc1_b727_220au64;
    let mut next = move |n: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % u64::from(n)) as u32
    };
    const DEFAULT: u16 = 1023;
    let mut dp = datapath();
    let mut info = IfaceInfo::new(0, DEFAULT, 14);
    for class in 0..1024 {
        info.add_class(class);
    }
    dp.set_iface(IFACE_KEY, &info).unwrap();
    // 5000 rules, then another 3000 written into both banks (over the first
    // set's bank, which only the entries that differ are written to).
    for (count, writes) in [(5000usize, 1), (3000, 2)] {
        let sources: Vec<String> = (0..count).map(|_| random_rule(&mut next)).collect();
        let parsed = parse(&sources.iter().map(String::as_str).collect::<Vec<_>>());
        // Classes are reused: thousands of rules give 1000 classes.
        let list: Vec<(u16, &Pred)> =
            parsed.iter().enumerate().map(|(i, r)| ((i % 1000) as u16, &r.pred)).collect();
        let compiled = compile::compile(&list, &NoCgroups).unwrap();
        assert!(
            compiled.index.residual < count / 20,
            "{} rules left out of the index",
            compiled.index.residual
        );
        for _ in 0..writes {
            dp.set_rules(&compiled).unwrap();
        }
        check_first_matches(&mut dp, &list, &compiled, DEFAULT, &mut next);
    }
}

#[test]
fn the_daemon_loads_only_the_programs_it_runs() {
    require_root!();
    use shaper_common::names;
    let mut dp = datapath();
    for name in [names::PROG_TC_EGRESS, names::PROG_TC_INGRESS] {
        assert!(dp.program(name).unwrap().fd().is_ok(), "{name} is not loaded");
    }
    // The benchmark's empty program stays out of the kernel until the kit loads it.
    assert!(dp.program(names::PROG_TC_PASSTHROUGH).unwrap().fd().is_err(), "the passthrough is loaded");
    dp.load_program(names::PROG_TC_PASSTHROUGH).unwrap();
    let frame = Frame::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.2"), 5201).build();
    assert_eq!(dp.test_run(names::PROG_TC_PASSTHROUGH, &frame, IFINDEX, 1).unwrap().verdict, TC_ACT_UNSPEC);
}

/// The metrics read an interface's class counters in one batched lookup:
/// they equal the counters read class by class, on the first interface slot
/// and on another (whose range starts past the first).
#[test]
fn an_interfaces_class_counters_read_at_once_equal_those_read_one_by_one() {
    require_root!();
    let mut dp = datapath();
    dp.set_rules(&rules()).unwrap();
    let frames = [
        (Frame::tcp(ip("198.18.0.1"), 41000, ip("198.18.0.2"), 5201).build(), 3),
        (Frame::tcp(ip("fd00::1"), 41000, ip("fd00::2"), 80).build(), 2),
        (Frame::udp(ip("198.18.0.1"), 41000, ip("198.18.0.2"), 6005).build(), 1),
        (Frame::udp(ip("198.18.0.1"), 41000, ip("198.18.0.2"), 7000).build(), 4),
    ];
    let send = |dp: &mut Datapath| {
        for (bytes, times) in &frames {
            for _ in 0..*times {
                classify(dp, bytes);
            }
        }
    };
    send(&mut dp);
    // The same interface, now in slot 2: its counters go to slot 2's range.
    dp.set_iface(IFACE_KEY, &iface_in_slot(2)).unwrap();
    send(&mut dp);
    send(&mut dp);
    for (slot, rounds) in [(0u32, 1u64), (1, 0), (2, 2)] {
        let all = dp.class_stats_of(slot).unwrap();
        assert_eq!(all.len(), shaper_common::MAX_CLASSES as usize);
        for (class, (_, times)) in (0u32..).zip(&frames) {
            let one = dp.class_stats(slot, class).unwrap();
            assert_eq!(all[class as usize], one, "slot {slot} class {class}");
            assert_eq!(one.tx_packets, times * rounds, "slot {slot} class {class}");
        }
        assert!(all[4..].iter().all(|s| *s == Default::default()), "slot {slot}: other classes counted");
    }
}
