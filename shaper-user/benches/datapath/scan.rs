//! Section 5b: where a reconcile at 100 000 connections can get its facts.
//! 8 processes in the sandbox's cgroup (with the socket hooks attached) hold
//! 100 000 TCP connections; FLOWS holds an entry per connection plus 1% stale
//! ones. Side by side, in one run, each timed as the median of several passes
//! with its peak RSS growth (VmHWM reset through /proc/self/clear_refs):
//!
//! - the connected sockets: one NETLINK_SOCK_DIAG dump, against procscan's
//!   /proc/net/{tcp,tcp6,udp,udp6};
//! - the process behind each socket: the batched OWNERS dump (by cookie),
//!   against the readlink of every /proc/*/fd (`process::socket_holders`);
//! - FLOWS and OWNERS, batched against aya's per-entry walk;
//! - the whole join (sock_diag ⋈ OWNERS ⋈ cached process facts, flows without
//!   a socket) against today's sources (procscan + fd scan + facts per pid +
//!   the flow walk), rules and map writes left out of both;
//! - one process's facts: the cache (with and without its stat check) against
//!   `process::facts`.
//!
//! The bench's main thread enters the sandbox's namespace for the section
//! (/proc/net shows the namespace of a process's main thread) and returns to
//! the host's before anything is cleaned up.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use shaper_common::{FlowKey, FlowValue, Owner};
use shaper_testkit::sandbox::{Netns, Sandbox};
use shaper_user::{
    accounts::SystemAccounts,
    datapath::{Datapath, LoadOptions},
    proccache::{Freshness, ProcCache},
    process::{self, Needs},
    procnet,
    rules::pred::ProcessFacts,
    sockdiag::{DumpStats, SockDiag, Table},
};

use super::{
    helper::{self, start_server, Helper},
    median,
    report::{Figure, Report, Row, Unit},
};

const S: &str = "5b. reconcile sources, 100 000 connections";
const HELD: usize = 100_000;
/// A process may hold fewer than 20 000 files here: 8 of them share the load.
const HOLDERS: u16 = 8;
const HOLD_PORT: u16 = 5700;
const HOLDER: &str = "shp-scanhold";
const MAX_FLOWS: u32 = 262_144;
/// Flows without a socket, added to the held ones.
const STALE: usize = HELD / 100;
const RUNS: usize = 5;
/// Lookups per process in the per-lookup comparison of process facts.
const LOOKUPS: usize = 500;
const ALL: Needs = Needs { exe: true, args: true, ancestors: true };

/// The main thread inside a namespace until dropped.
struct MainThreadIn {
    host: File,
}

impl MainThreadIn {
    fn enter(ns: &Netns) -> Result<Self> {
        let host = File::open("/proc/thread-self/ns/net").context("opening this thread's namespace")?;
        ns.enter_current_thread()?;
        Ok(Self { host })
    }
}

impl Drop for MainThreadIn {
    fn drop(&mut self) {
        // SAFETY: setns on the namespace fd opened in `enter`; affects this thread only.
        if unsafe { libc::setns(self.host.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!("  could not return to the host namespace: {}", std::io::Error::last_os_error());
        }
    }
}

/// A field of /proc/self/status in kB, as bytes.
fn status_bytes(field: &str) -> Result<f64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?.trim_start_matches(':').split_whitespace().next()?.parse::<f64>().ok()
        })
        .map(|kb| kb * 1024.0)
        .ok_or_else(|| anyhow!("no {field} in /proc/self/status"))
}

/// Wall time and CPU time of this thread (medians, ms) and peak RSS growth
/// (largest, bytes) of `f` over `RUNS` passes.
struct Measured {
    ms: f64,
    cpu_ms: f64,
    rss: f64,
    count: usize,
    spread: (f64, f64),
}

/// CPU time of the calling thread, (user, system) in ms.
fn thread_cpu_ms() -> (f64, f64) {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    (ms(usage.ru_utime), ms(usage.ru_stime))
}

fn measure(what: &str, mut f: impl FnMut() -> Result<usize>) -> Result<Measured> {
    let (mut times, mut cpu, mut sys, mut peaks, mut count) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..RUNS {
        // Freed heap goes back to the kernel first, or an allocation would
        // reuse pages earlier sections left resident and show no growth.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        // "5" resets the peak RSS (VmHWM) to the current RSS.
        std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM")?;
        let base = status_bytes("VmRSS")?;
        let (start, cpu0) = (Instant::now(), thread_cpu_ms());
        count = f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        let cpu1 = thread_cpu_ms();
        cpu.push(cpu1.0 - cpu0.0 + cpu1.1 - cpu0.1);
        sys.push(cpu1.1 - cpu0.1);
        peaks.push(status_bytes("VmHWM")? - base);
    }
    let spread = times.iter().fold((f64::MAX, 0f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    let rss = peaks.iter().copied().fold(0.0, f64::max);
    let m = Measured { ms: median(times), cpu_ms: median(cpu), rss, count, spread };
    eprintln!(
        "  {what}: {:.1} ms (min {:.1}, max {:.1}; CPU {:.1} ms, {:.1} of it in the kernel), peak RSS +{:.1} MB, {count} items",
        m.ms,
        m.spread.0,
        m.spread.1,
        m.cpu_ms,
        median(sys),
        m.rss / 1e6
    );
    Ok(m)
}

/// Servers in `b` and 8 holder processes in `a` (in the sandbox's cgroup)
/// with `HELD` connections between them.
fn hold(sandbox: &Sandbox) -> Result<(Vec<Helper>, Vec<Helper>)> {
    let mut servers = Vec::new();
    for k in 0..HOLDERS {
        servers.push(start_server(&sandbox.b, &["keep", &(HOLD_PORT + k).to_string()], HOLD_PORT + k)?);
    }
    let holders = helper::hold_connections(sandbox, HOLDER, HOLD_PORT, HOLDERS, HELD)?;
    Ok((servers, holders))
}

/// One entry per held connection, plus `STALE` flows without a socket.
fn fill_flows(dp: &mut Datapath, diag: &mut SockDiag) -> Result<usize> {
    let mut keys = Vec::with_capacity(HELD + STALE);
    diag.dump(|s| keys.push(s.key))?;
    for i in 0..STALE {
        let mut key = keys.first().copied().unwrap_or_default();
        key.rport = 1;
        key.lport = i as u16;
        keys.push(key);
    }
    let value = FlowValue { last_seen_ns: shaper_user::clock::monotonic_coarse_ns(), ..FlowValue::default() };
    for key in &keys {
        dp.insert_flow(key, &value)?;
    }
    Ok(keys.len())
}

/// What the join found.
#[derive(Debug, Default)]
struct Joined {
    sockets: usize,
    /// Sockets without an owner record (made before the hooks): the fd scan's share.
    unowned: usize,
    processes: usize,
    stale: usize,
    /// ms spent: the owner records into a map, the sockets joined, the flows checked.
    phases: [f64; 3],
}

/// sock_diag ⋈ OWNERS ⋈ cached facts; flows without a socket.
fn join(
    dp: &Datapath,
    diag: &mut SockDiag,
    cache: &mut ProcCache,
    accounts: &SystemAccounts,
) -> Result<Joined> {
    let mut joined = Joined::default();
    let mut clock = Instant::now();
    let mut lap = |joined: &mut Joined, phase: usize| {
        joined.phases[phase] = clock.elapsed().as_secs_f64() * 1e3;
        clock = Instant::now();
    };
    let mut owners: HashMap<u64, Owner> = HashMap::new();
    dp.for_each_owner(|cookie, owner| {
        owners.insert(cookie, *owner);
    })?;
    lap(&mut joined, 0);
    let mut live: HashSet<FlowKey> = HashSet::new();
    let mut facts: HashMap<u32, ProcessFacts> = HashMap::new();
    diag.dump(|s| {
        joined.sockets += 1;
        live.insert(s.key);
        match owners.get(&s.cookie) {
            Some(owner) => {
                facts
                    .entry(owner.tgid)
                    .or_insert_with(|| cache.facts(owner.tgid, Some(owner), ALL, accounts, None));
            }
            None => joined.unowned += 1,
        }
    })?;
    joined.processes = facts.len();
    lap(&mut joined, 1);
    dp.for_each_flow(|key, _| {
        if !live.contains(key) {
            joined.stale += 1;
        }
    })?;
    lap(&mut joined, 2);
    Ok(joined)
}

/// A total order of flow keys, for sorting and binary search.
fn order(k: &FlowKey) -> (u8, u8, u16, u16, [u8; 16], [u8; 16]) {
    (k.family, k.proto, k.lport, k.rport, k.laddr, k.raddr)
}

/// The same join over sorted vectors instead of hash maps: less memory (no
/// empty slots), binary searches instead of hashing.
fn join_sorted(
    dp: &Datapath,
    diag: &mut SockDiag,
    cache: &mut ProcCache,
    accounts: &SystemAccounts,
) -> Result<Joined> {
    let mut joined = Joined::default();
    let mut clock = Instant::now();
    let mut lap = |joined: &mut Joined, phase: usize| {
        joined.phases[phase] = clock.elapsed().as_secs_f64() * 1e3;
        clock = Instant::now();
    };
    let mut owners: Vec<(u64, Owner)> = Vec::new();
    dp.for_each_owner(|cookie, owner| owners.push((cookie, *owner)))?;
    owners.sort_unstable_by_key(|(cookie, _)| *cookie);
    lap(&mut joined, 0);
    let mut keys: Vec<FlowKey> = Vec::new();
    let mut facts: HashMap<u32, ProcessFacts> = HashMap::new();
    diag.dump(|s| {
        keys.push(s.key);
        match owners.binary_search_by_key(&s.cookie, |(cookie, _)| *cookie) {
            Ok(at) => {
                let owner = &owners[at].1;
                facts
                    .entry(owner.tgid)
                    .or_insert_with(|| cache.facts(owner.tgid, Some(owner), ALL, accounts, None));
            }
            Err(_) => joined.unowned += 1,
        }
    })?;
    keys.sort_unstable_by_key(order);
    (joined.sockets, joined.processes) = (keys.len(), facts.len());
    lap(&mut joined, 1);
    dp.for_each_flow(|key, _| {
        if keys.binary_search_by_key(&order(key), order).is_err() {
            joined.stale += 1;
        }
    })?;
    lap(&mut joined, 2);
    Ok(joined)
}

/// Today's sources: /proc/net, the fd scan, facts per pid, the flow walk.
fn today(dp: &Datapath, accounts: &SystemAccounts) -> Result<Joined> {
    let sockets = procnet::connected_sockets()?;
    let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).filter(|i| *i != 0).collect();
    let holders = process::socket_holders(&inodes);
    let mut facts: HashMap<u32, ProcessFacts> = HashMap::new();
    let mut joined = Joined { sockets: sockets.len(), ..Joined::default() };
    for s in &sockets {
        match holders.get(&s.inode).and_then(|pids| pids.iter().min()) {
            Some(pid) => {
                facts.entry(*pid).or_insert_with(|| process::facts(*pid, None, ALL, accounts, None));
            }
            None => joined.unowned += 1,
        }
    }
    joined.processes = facts.len();
    let live: HashSet<FlowKey> = sockets.iter().map(|s| s.key).collect();
    joined.stale = dp.flows().iter().filter(|(k, _)| !live.contains(k)).count();
    Ok(joined)
}

/// Every measurement of the section, by name.
type Parts = BTreeMap<&'static str, Measured>;

pub fn run(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("bscan")?;
    let mut dp = Datapath::load(LoadOptions { max_flows: MAX_FLOWS, kernel_log_level: 0, pins: None })
        .context("loading the eBPF object (are you root?)")?;
    dp.attach_cgroup(sandbox.cgroup.dir())?;
    let (_servers, holders) = hold(&sandbox)?;
    let result = (|| {
        let inside = MainThreadIn::enter(&sandbox.a)?;
        let mut diag = SockDiag::open()?;
        let flows = fill_flows(&mut dp, &mut diag)?;
        eprintln!("  {flows} flows in the map");
        let parts = measure_parts(&dp, &mut diag)?;
        drop(inside);
        push_rows(report, &parts, flows);
        let facts = facts_per_lookup(report, &holders)?;
        let figures = |f: fn(&Measured) -> f64| -> serde_json::Map<String, serde_json::Value> {
            parts.iter().map(|(name, m)| (name.to_string(), json!(f(m)))).collect()
        };
        report.detail(
            "scan",
            json!({
                "held": HELD, "flows": flows, "runs": RUNS, "ms": figures(|m| m.ms),
                "cpu_ms": figures(|m| m.cpu_ms), "peak_rss_bytes": figures(|m| m.rss), "facts_us": facts,
            }),
        );
        Ok(())
    })();
    dp.detach_cgroup();
    result
}

/// Times every source, and the two joins, inside the sandbox's namespace.
fn measure_parts(dp: &Datapath, diag: &mut SockDiag) -> Result<Parts> {
    let mut parts = Parts::new();
    for table in Table::ALL {
        let name = format!("sock_diag, {table} only");
        measure(&name, || {
            let mut stats = DumpStats::default();
            diag.dump_table(table, &mut stats, &mut |_| {})?;
            Ok(stats.sockets)
        })?;
    }
    parts.insert("sock_diag", measure("sock_diag dump", || Ok(diag.dump(|_| {})?.sockets))?);
    parts.insert(
        "procscan",
        measure("procscan::connected_sockets", || Ok(procnet::connected_sockets()?.len()))?,
    );
    parts.insert("owners_batched", measure("OWNERS, batched", || Ok(dp.for_each_owner(|_, _| {})?.entries))?);
    parts.insert("owners_walk", measure("OWNERS, per entry", || Ok(dp.owners().len()))?);
    let inodes: HashSet<u64> = procnet::connected_sockets()?.iter().map(|s| s.inode).collect();
    parts.insert(
        "fd_scan",
        measure("fd scan (socket_holders)", || Ok(process::socket_holders(&inodes).len()))?,
    );
    parts.insert("flows_batched", measure("FLOWS, batched", || Ok(dp.for_each_flow(|_, _| {})?.entries))?);
    parts.insert("flows_walk", measure("FLOWS, per entry", || Ok(dp.flows().len()))?);
    let accounts = SystemAccounts::default();
    let mut cache = ProcCache::new(8192, Freshness::default());
    let (mut ours, mut theirs) = (Joined::default(), Joined::default());
    parts.insert(
        "join",
        measure("join", || {
            ours = join(dp, diag, &mut cache, &accounts)?;
            Ok(ours.sockets)
        })?,
    );
    parts.insert(
        "today",
        measure("today's sources", || {
            theirs = today(dp, &accounts)?;
            Ok(theirs.sockets)
        })?,
    );
    let mut sorted = Joined::default();
    parts.insert(
        "join_sorted",
        measure("join, sorted vectors", || {
            sorted = join_sorted(dp, diag, &mut cache, &accounts)?;
            Ok(sorted.sockets)
        })?,
    );
    eprintln!("  join: {ours:?}\n  join, sorted: {sorted:?}\n  today: {theirs:?}");
    let count = |name: &str| parts.get(name).map_or(0, |m| m.count);
    if ["sock_diag", "procscan", "owners_batched", "flows_batched"].iter().any(|n| count(n) < HELD)
        || count("owners_walk") != count("owners_batched")
    {
        bail!(
            "a source missed connections: {:?}",
            parts.iter().map(|(n, m)| (n, m.count)).collect::<Vec<_>>()
        );
    }
    for found in [&ours, &sorted] {
        if found.stale != STALE || found.unowned != 0 || found.processes != usize::from(HOLDERS) {
            bail!("a join found {found:?}; expected {STALE} stale flows and {HOLDERS} processes");
        }
    }
    Ok(parts)
}

/// The table rows: (what, ours, the peer, theirs, RSS rather than time).
fn push_rows(report: &mut Report, parts: &Parts, flows: usize) {
    let rows = [
        (
            format!("connected sockets ({HELD} TCP): one sock_diag dump"),
            "sock_diag",
            "/proc/net (procscan)",
            "procscan",
            false,
        ),
        (
            format!("the process of each socket: OWNERS dump, batched ({HELD} records)"),
            "owners_batched",
            "readlink of every /proc/*/fd",
            "fd_scan",
            false,
        ),
        (
            format!("FLOWS dump, {flows} entries, batched"),
            "flows_batched",
            "per entry (aya iter)",
            "flows_walk",
            false,
        ),
        (
            format!("OWNERS dump, {HELD} entries, batched"),
            "owners_batched",
            "per entry (aya iter)",
            "owners_walk",
            false,
        ),
        (
            "the join: sock_diag, OWNERS by cookie, cached facts per process, stale flows".to_string(),
            "join",
            "today: /proc/net, fd scan, facts per pid, flow walk",
            "today",
            false,
        ),
        (
            "peak RSS growth: sock_diag dump (streamed)".to_string(),
            "sock_diag",
            "procscan (a Vec of sockets)",
            "procscan",
            true,
        ),
        (
            "peak RSS growth: FLOWS, batched (streamed)".to_string(),
            "flows_batched",
            "per entry (a Vec)",
            "flows_walk",
            true,
        ),
        ("the join over sorted vectors".to_string(), "join_sorted", "today's sources", "today", false),
        ("peak RSS growth: the join".to_string(), "join", "today's sources", "today", true),
        (
            "peak RSS growth: the join over sorted vectors".to_string(),
            "join_sorted",
            "today's sources",
            "today",
            true,
        ),
    ];
    for (what, ours, peer, theirs, rss) in rows {
        let (Some(ours), Some(theirs)) = (parts.get(ours), parts.get(theirs)) else { continue };
        let figure = |m: &Measured| {
            if rss {
                Figure::new(m.rss, Unit::Bytes)
            } else {
                Figure::new(m.ms, Unit::Millis)
            }
        };
        report.push(Row::new(S, what, figure(ours), peer, figure(theirs)));
    }
}

/// One process's facts (exe, args, ancestors): the cache answering from its
/// entry, the cache with its stat check, and `process::facts`, in µs per lookup.
fn facts_per_lookup(report: &mut Report, holders: &[Helper]) -> Result<[f64; 3]> {
    let accounts = &SystemAccounts::default();
    let pids: Vec<u32> = holders.iter().map(|h| h.0.id()).collect();
    let per_lookup = |f: &mut dyn FnMut(u32) -> ProcessFacts| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..LOOKUPS {
            for pid in &pids {
                if f(*pid).cmd.as_deref() != Some(HOLDER) {
                    bail!("process {pid} is not a holder");
                }
            }
        }
        Ok(start.elapsed().as_secs_f64() * 1e6 / (LOOKUPS * pids.len()) as f64)
    };
    let mut hit =
        ProcCache::new(64, Freshness { check_every: Duration::from_secs(3600), ..Freshness::default() });
    let mut checked = ProcCache::new(64, Freshness { check_every: Duration::ZERO, ..Freshness::default() });
    let cached = per_lookup(&mut |pid| hit.facts(pid, None, ALL, accounts, None))?;
    let with_check = per_lookup(&mut |pid| checked.facts(pid, None, ALL, accounts, None))?;
    let uncached = per_lookup(&mut |pid| process::facts(pid, None, ALL, accounts, None))?;
    eprintln!("  facts per lookup: cached {cached:.2} µs, with its stat check {with_check:.1} µs, process::facts {uncached:.1} µs");
    let peer = "process::facts (reads /proc every time)";
    report.push(Row::new(
        S,
        "one process's facts (exe, args, ancestors), cached",
        Figure::new(cached, Unit::Micros),
        peer,
        Figure::new(uncached, Unit::Micros),
    ));
    report.push(Row::new(
        S,
        "one process's facts, cached, checked with a read of /proc/PID/stat",
        Figure::new(with_check, Unit::Micros),
        peer,
        Figure::new(uncached, Unit::Micros),
    ));
    Ok([cached, with_check, uncached])
}
