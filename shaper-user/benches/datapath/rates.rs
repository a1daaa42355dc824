//! Section 2: rate accuracy, and the timeline the plot draws.
//!
//! Classes at 1, 10, 100 and 1 000 Mbit/s, one per rate and direction; one
//! rate at a time, an upload and a download at once (TCP, then UDP offered
//! at 1.2 times the rate). One rate at a time because two cores
//! carrying gigabit streams starve the small classes' senders (all eight
//! TCP streams at once cost the 10 and 100 Mbit/s classes 7%). The delivered
//! rate is counted at the receiver (meter.rs) over the steady part of each
//! run, from 1.5 s after the start, and turned into frames on the wire (what
//! HTB's rate counts).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use shaper_testkit::sandbox::{finish_client, spawn_client, Daemon, IperfServer, Netns, Sandbox};
use shaper_user::control::{ClassRow, Command, SetClass};

use super::{
    call,
    helper::{self, exe, monotonic_ns, Helper},
    median,
    meter::{rate_between, Meter},
    report::{Event, Figure, Report, Row, Series, Unit},
    SHAPER,
};

const RATES_MBIT: [u64; 4] = [1, 10, 100, 1000];
const SECONDS: u64 = 5;
/// The steady part of a run: from WARMUP after the start to 300 ms before its end.
const WARMUP_NS: u64 = 1_500_000_000;
const ROUNDS: usize = 2;
/// UDP datagram payload: 1442-byte frames over IPv4.
const UDP_LEN: u64 = 1400;
/// Ports of class i: TCP upload, TCP download, UDP upload (far side), UDP download (near side).
const TCP_UP: u16 = 5210;
const TCP_DOWN: u16 = 5220;
const UDP_UP: u16 = 5230;
const UDP_DOWN: u16 = 5240;

/// Frames on the wire per byte of payload (Ethernet + IPv4 + TCP with timestamps, or + UDP).
fn wire_factor(udp: bool) -> f64 {
    if udp {
        (UDP_LEN + 8 + 20 + 14) as f64 / UDP_LEN as f64
    } else {
        1514.0 / 1448.0
    }
}

/// A helper command in `ns` (counters get their output piped by [`Meter`]).
fn helper_cmd(ns: &Netns, args: &[String]) -> Result<std::process::Command> {
    let mut cmd = ns.command(&exe()?);
    cmd.arg(helper::FLAG).args(args);
    Ok(cmd)
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// (rate, ingress, udp)
type Case = (u64, bool, bool);
/// What a counter printed: (monotonic ns, total bytes).
type Samples = Vec<(u64, u64)>;

pub fn accuracy(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("brates")?;
    let mut config =
        format!("[[interface]]\nname = \"{}\"\negress = \"10gbit\"\ningress = \"10gbit\"\n", sandbox.dev_a);
    for (i, mbit) in RATES_MBIT.iter().enumerate() {
        let i = i as u16;
        // A class per direction: a download's ACKs leave through the egress
        // side of its class, and must not queue behind an upload's data.
        config.push_str(&format!(
            "[[class]]\nname = \"up{mbit}\"\negress = \"{mbit}mbit\"\nmatch = 'rport in [{}, {}]'\n\
             [[class]]\nname = \"down{mbit}\"\ningress = \"{mbit}mbit\"\nmatch = 'rport == {} or lport == {}'\n",
            TCP_UP + i,
            UDP_UP + i,
            TCP_DOWN + i,
            UDP_DOWN + i
        ));
    }
    let _daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config)?;
    let (a, b, addr_a, addr_b) = (&sandbox.a, &sandbox.b, Sandbox::ADDR_A4, Sandbox::ADDR_B4);
    // Long-lived counters (TCP uploads and both UDP directions) and the download source.
    let mut meters: Vec<(Case, Meter)> = Vec::new();
    let mut servers = Vec::new();
    for (i, &mbit) in RATES_MBIT.iter().enumerate() {
        let i = i as u16;
        meters.push(((mbit, false, false), Meter::spawn(&mut helper_cmd(b, &[s("count"), s(TCP_UP + i)])?)?));
        meters
            .push(((mbit, false, true), Meter::spawn(&mut helper_cmd(b, &[s("udpcount"), s(UDP_UP + i)])?)?));
        meters.push((
            (mbit, true, true),
            Meter::spawn(&mut helper_cmd(a, &[s("udpcount"), s(UDP_DOWN + i)])?)?,
        ));
        servers.push(helper::start_server(b, &["source", &s(TCP_DOWN + i)], TCP_DOWN + i)?);
    }
    // The counters are up once they listen (UDP ones have no listen state:
    // they bind at once, like the TCP ones).
    for i in 0..RATES_MBIT.len() as u16 {
        helper::wait_listening(b, TCP_UP + i)?;
    }
    // (case, window) of every run; downloads' own meters.
    let mut windows: Vec<(Case, u64, u64)> = Vec::new();
    let mut downloads: Vec<(Case, Samples, u64, u64)> = Vec::new();
    // Consecutive runs use other classes: what one leaves queued (up to a
    // second at 1 Mbit/s) never runs into the next.
    for _ in 0..ROUNDS {
        for udp in [false, true] {
            for (i, &mbit) in RATES_MBIT.iter().enumerate() {
                let i = i as u16;
                let start = monotonic_ns();
                let mut clients = Vec::new();
                let mut fetch = None;
                if udp {
                    let offered = s(mbit * 1_000_000 * 12 / 10);
                    let up =
                        [s("udpsend"), s(addr_b), s(UDP_UP + i), offered.clone(), s(SECONDS), s(UDP_LEN)];
                    let down = [s("udpsend"), s(addr_a), s(UDP_DOWN + i), offered, s(SECONDS), s(UDP_LEN)];
                    clients.push(Helper::spawn(sandbox.client(&exe()?)?.arg(helper::FLAG).args(up))?);
                    clients.push(Helper::spawn(&mut helper_cmd(b, &down)?)?);
                } else {
                    let up = [s("stream"), s(addr_b), s(TCP_UP + i), s(SECONDS)];
                    clients.push(Helper::spawn(sandbox.client(&exe()?)?.arg(helper::FLAG).args(up))?);
                    let down = [s("fetch"), s(addr_b), s(TCP_DOWN + i), s(SECONDS)];
                    let mut cmd = sandbox.client(&exe()?)?;
                    cmd.arg(helper::FLAG).args(down);
                    fetch = Some(Meter::spawn(&mut cmd)?);
                }
                for mut c in clients {
                    let status = c.0.wait().context("waiting for a sender")?;
                    if !status.success() {
                        bail!("a {} sender failed ({status})", if udp { "UDP" } else { "TCP" });
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
                let (from, to) = (start + WARMUP_NS, start + SECONDS * 1_000_000_000 - 300_000_000);
                windows.push(((mbit, false, udp), from, to));
                match fetch {
                    Some(meter) => downloads.push(((mbit, true, false), meter.finish(), from, to)),
                    None => windows.push(((mbit, true, true), from, to)),
                }
            }
        }
    }
    let samples: Vec<(Case, Samples)> = meters.into_iter().map(|(c, m)| (c, m.finish())).collect();
    // (case) → delivered wire rates, one per round.
    let mut results: Vec<(Case, Vec<f64>)> = Vec::new();
    let mut add = |case: Case, payload_bps: f64| {
        let wire = payload_bps * wire_factor(case.2);
        match results.iter_mut().find(|(c, _)| *c == case) {
            Some((_, v)) => v.push(wire),
            None => results.push((case, vec![wire])),
        }
    };
    for (case, from, to) in windows {
        if let Some((_, samples)) = samples.iter().find(|(c, _)| *c == case) {
            add(case, rate_between(samples, from, to));
        }
    }
    for (case, samples, from, to) in downloads {
        add(case, rate_between(&samples, from, to));
    }
    const S: &str = "2. rate accuracy";
    for udp in [false, true] {
        for ingress in [false, true] {
            for &mbit in &RATES_MBIT {
                let runs = results
                    .iter()
                    .find(|(c, _)| *c == (mbit, ingress, udp))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                report.push(Row::new(
                    S,
                    format!(
                        "{} {} class, {}, delivered (frames on the wire, median of {ROUNDS})",
                        if udp { "UDP (offered at 1.2x)" } else { "TCP" },
                        if ingress { "ingress" } else { "egress" },
                        if mbit >= 1000 {
                            format!("{} Gbit/s", mbit / 1000)
                        } else {
                            format!("{mbit} Mbit/s")
                        }
                    ),
                    Figure::new(median(runs), Unit::BitsPerSecond),
                    "configured",
                    Figure::new((mbit * 1_000_000) as f64, Unit::BitsPerSecond),
                ));
            }
        }
    }
    report.detail(
        "rates",
        json!(results.iter().map(|((mbit, ingress, udp), v)| json!({ "mbit": mbit, "ingress": ingress, "udp": udp, "wire_bps": v })).collect::<Vec<_>>()),
    );
    drop(servers);
    Ok(())
}

const TIMELINE_SECONDS: f64 = 14.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Three classes under a 100 Mbit/s link, streams starting one after the other
/// and one rate changed live: each class's rate, sampled from HTB's counters.
pub fn timeline(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("btime")?;
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"100mbit\"\n\
         [[class]]\nname = \"interactive\"\negress = {{ rate = \"10mbit\", ceil = \"20mbit\" }}\npriority = 0\nmatch = 'rport == 5231'\n\
         [[class]]\nname = \"web\"\negress = {{ rate = \"40mbit\", ceil = \"100mbit\" }}\npriority = 2\nmatch = 'rport == 5232'\n\
         [[class]]\nname = \"bulk\"\negress = {{ rate = \"10mbit\", ceil = \"100mbit\" }}\npriority = 7\nmatch = 'rport == 5233'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config)?;
    let _servers = [5231u16, 5232, 5233]
        .iter()
        .map(|&p| IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, p))
        .collect::<Result<Vec<_>, _>>()?;
    let names = ["interactive", "web", "bulk"];
    // (start at, port, seconds, extra iperf3 arguments)
    let plan: [(f64, u16, f64, &[&str]); 3] = [
        (0.5, 5233, TIMELINE_SECONDS - 1.0, &[]),
        (3.0, 5232, TIMELINE_SECONDS - 3.5, &[]),
        (6.0, 5231, TIMELINE_SECONDS - 6.5, &["-u", "-b", "30M"]),
    ];
    let set_at = 9.5;
    let mut events: Vec<Event> = vec![
        Event { at: 0.5, label: "bulk starts".into() },
        Event { at: 3.0, label: "web starts".into() },
        Event { at: 6.0, label: "interactive (UDP 30M) starts".into() },
        Event { at: set_at, label: "shaper set web 20mbit:40mbit".into() },
    ];
    let classes = |daemon: &Daemon| -> Result<Vec<ClassRow>> { call(daemon, Command::Classes) };
    let sent = |rows: &[ClassRow], name: &str| {
        rows.iter()
            .find(|r| r.name == name && r.direction == shaper_common::Direction::Egress)
            .map_or(0, |r| r.sent_bytes)
    };
    let start = Instant::now();
    let mut clients = Vec::new();
    let mut series: Vec<Series> =
        names.iter().map(|n| Series { name: n.to_string(), points: Vec::new() }).collect();
    let mut last = (start, classes(&daemon)?);
    let mut next_client = 0;
    let mut set_done = false;
    let mut set_took = None;
    while start.elapsed().as_secs_f64() < TIMELINE_SECONDS {
        std::thread::sleep(SAMPLE_EVERY);
        let t = start.elapsed().as_secs_f64();
        while next_client < plan.len() && plan[next_client].0 <= t {
            let (_, port, secs, extra) = plan[next_client];
            let mut args = vec!["-t".to_string(), format!("{secs:.0}")];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            clients.push(spawn_client(&sandbox.a, Sandbox::ADDR_B4, port, &args)?);
            next_client += 1;
        }
        if !set_done && t >= set_at {
            let begun = Instant::now();
            daemon.set(SetClass {
                class: "web".into(),
                egress: Some("20mbit:40mbit".into()),
                ..SetClass::default()
            })?;
            set_took = Some(begun.elapsed());
            set_done = true;
        }
        let now = (Instant::now(), classes(&daemon)?);
        let dt = now.0.duration_since(last.0).as_secs_f64();
        let mid = (last.0.duration_since(start).as_secs_f64() + t) / 2.0;
        for (s, name) in series.iter_mut().zip(names) {
            let bytes = sent(&now.1, name).saturating_sub(sent(&last.1, name));
            s.points.push((mid, bytes as f64 * 8.0 / dt));
        }
        last = now;
    }
    for client in clients {
        if let Err(e) = finish_client(client) {
            bail!("a timeline stream failed: {e}");
        }
    }
    if let Some(took) = set_took {
        events[3].label = format!("shaper set web 20mbit:40mbit ({:.0} ms)", took.as_secs_f64() * 1e3);
    }
    report.series = series;
    report.events = events;
    Ok(())
}
