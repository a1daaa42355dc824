//! Section 1b, connection-limit part: what the gate programs
//! (`tc_gate_egress` after the classifier, `tc_gate_ingress` on the IFB)
//! cost a packet of a class with `max_connections`, by BPF_PROG_TEST_RUN next
//! to the empty tc program: a data packet (what nearly every packet of such a
//! class is: parsed, not a SYN or RST, passed), and a SYN that takes a free
//! slot (its tuple recorded GRANTED in CONN_GATES, the class's counter
//! raised). The gates run only while some class has a limit.

use anyhow::{bail, Context as _, Result};
use shaper_common::{
    classid_of,
    connlimit::{ConnLimit, ON_LIMIT_QUEUE},
    names,
};
use shaper_testkit::{
    packets::Frame,
    testrun::{SkbIn, TestRunExt as _},
};
use shaper_user::datapath::Datapath;

use super::{
    ip, load_datapath, median,
    report::{Figure, Report, Row, Unit},
    MISS_SAMPLES, TEST_RUN_REPEAT,
};

const S: &str = "1b. classifier alone (BPF_PROG_TEST_RUN)";
/// The limited class (index into the bench's rules).
const CLASS: u16 = 1;
/// `TC_ACT_UNSPEC`: the gate lets the packet go on.
const PASS: i32 = -1;
/// Offset of the TCP flags byte in an Ethernet + IPv4 (no options) frame.
const TCP_FLAGS_AT: usize = 14 + 20 + 13;
const TCP_SYN: u8 = 0x02;

/// The gates' view of a packet on interface 1 in `CLASS`: on egress the
/// interface it crosses, on the IFB the one it arrived on.
fn skb(prog: &str) -> SkbIn {
    let priority = classid_of(u32::from(CLASS));
    if prog == names::PROG_TC_GATE_INGRESS {
        SkbIn { ifindex: 1, ingress_ifindex: 1, priority }
    } else {
        SkbIn { ifindex: 1, ingress_ifindex: 0, priority }
    }
}

pub fn run(report: &mut Report) -> Result<()> {
    // BPF_PROG_TEST_RUN runs the program as if on `lo` (ifindex 1).
    let mut dp = load_datapath(1, 0)?;
    let mut maps = dp.take_connlimit().context("the connection-limit maps")?;
    // A limit no run reaches: every SYN finds a free slot.
    maps.set_limit(CLASS, ConnLimit { max: u32::MAX, mode: ON_LIMIT_QUEUE })?;
    let gates = [(names::PROG_TC_GATE_EGRESS, "egress"), (names::PROG_TC_GATE_INGRESS, "ingress (IFB)")];
    for (prog, _) in gates {
        dp.load_program(prog)?;
    }
    let empty = "an empty tc program";
    let mut frame = Frame::tcp(ip("198.18.0.1"), 40_000, ip("198.18.0.2"), 8080);
    frame.payload = 1448;
    let data = frame.build();
    for (prog, hook) in gates {
        let (ours, base) = data_packet(&mut dp, prog, &data)?;
        report.push(Row::new(
            S,
            format!("connection-limit gate, {hook}: a data packet of a class with max_connections"),
            Figure::new(ours, Unit::Nanos),
            empty,
            Figure::new(base, Unit::Nanos),
        ));
    }
    for (n, (prog, hook)) in gates.into_iter().enumerate() {
        let (ours, base) = free_slot_syns(&mut dp, prog, 20_000 * n as u16)?;
        report.push(Row::new(
            S,
            format!("connection-limit gate, {hook}: a SYN that takes a free slot (recorded, counted)"),
            Figure::new(ours, Unit::Nanos),
            empty,
            Figure::new(base, Unit::Nanos),
        ));
    }
    // Every SYN of both runs took a slot: the measured path was the grant.
    let granted: u64 = maps.kernel_counts().iter().map(|(_, k)| k.granted_fast).sum();
    let recorded = maps.gates().len();
    if granted != 2 * u64::from(MISS_SAMPLES) || recorded != 2 * usize::from(MISS_SAMPLES) {
        bail!("{granted} slots granted, {recorded} connections recorded, for {} SYNs", 2 * MISS_SAMPLES);
    }
    Ok(())
}

/// Medians of 5 runs of `TEST_RUN_REPEAT` (ns per packet): the gate, the empty program.
fn data_packet(dp: &mut Datapath, prog: &'static str, frame: &[u8]) -> Result<(f64, f64)> {
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let gate = dp.test_run_skb(prog, frame, skb(prog), TEST_RUN_REPEAT)?;
        if gate.verdict != PASS {
            bail!("{prog} gave verdict {} to a data packet", gate.verdict);
        }
        ours.push(gate.duration.as_nanos() as f64);
        let empty = dp.test_run_skb(names::PROG_TC_PASSTHROUGH, frame, skb(prog), TEST_RUN_REPEAT)?;
        base.push(empty.duration.as_nanos() as f64);
    }
    Ok((median(ours), median(base)))
}

/// Means over `MISS_SAMPLES` SYNs of distinct connections (source ports from
/// `first_port`), one run each: the gate, the empty program.
fn free_slot_syns(dp: &mut Datapath, prog: &'static str, first_port: u16) -> Result<(f64, f64)> {
    let (mut ours, mut base) = (0f64, 0f64);
    for i in 0..MISS_SAMPLES {
        let mut syn = Frame::tcp(ip("198.18.0.2"), 1024 + first_port + i, ip("198.18.0.1"), 8080);
        syn.payload = 0;
        let mut bytes = syn.build();
        let Some(flags) = bytes.get_mut(TCP_FLAGS_AT) else { bail!("a frame without TCP flags") };
        *flags = TCP_SYN;
        let gate = dp.test_run_skb(prog, &bytes, skb(prog), 1)?;
        if gate.verdict != PASS {
            bail!("{prog} held a SYN with slots free (verdict {})", gate.verdict);
        }
        ours += gate.duration.as_nanos() as f64;
        base += dp.test_run_skb(names::PROG_TC_PASSTHROUGH, &bytes, skb(prog), 1)?.duration.as_nanos() as f64;
    }
    Ok((ours / f64::from(MISS_SAMPLES), base / f64::from(MISS_SAMPLES)))
}
