//! Connection limits (`max_connections`): 20 clients against a limit of 4,
//! each served 1 s, inbound (a server in the shaped namespace) and outbound
//! (clients in it), queue and reject, IPv4 and IPv6; a queue timeout; clients
//! gone while they wait or are served; `set --max-connections` under load; a
//! daemon killed and restarted while clients wait.
//!
//! The servers and clients are threads of this test, in the sandbox's
//! namespaces; the test process moves itself into the sandbox's cgroup for the
//! run (the daemon's sock_ops sees the sockets made there) and back at the end.
//!
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Netns, Sandbox},
};
use shaper_user::control::{connlimit::ConnLimitRow, SetClass};

mod common;

use common::*;

const PORT: u16 = 8080;
const CLIENTS: usize = 20;
const LIMIT: usize = 4;
const SERVICE: Duration = Duration::from_secs(1);
/// Between two clients' connects: their arrival order is well defined.
const STAGGER: Duration = Duration::from_millis(20);
/// Admissions this close together came in one turn of the daemon (which
/// admits oldest first); their handshakes may complete in any order.
const ORDER_SLACK: Duration = Duration::from_millis(10);

/// The test process inside the sandbox's cgroup until dropped (declare it
/// after the sandbox: the sandbox's cgroup kills what it still holds).
struct InCgroup {
    home: PathBuf,
}

impl InCgroup {
    fn enter(sandbox: &Sandbox) -> Self {
        let root = shaper_user::cgroups::v2_root().unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim_start_matches('/');
        let home = root.join(path);
        std::fs::write(sandbox.cgroup.dir().join("cgroup.procs"), "0").unwrap();
        Self { home }
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.home.join("cgroup.procs"), "0") {
            eprintln!("moving the test back to {}: {e}", self.home.display());
        }
    }
}

fn config(sandbox: &Sandbox, rule: &str, extra: &str) -> String {
    format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\ningress = \"1gbit\"\n\n\
         [[class]]\nname = \"api\"\nmatch = '{rule}'\nmax_connections = {LIMIT}\n{extra}",
        sandbox.dev_a
    )
}

/// What the server saw: (when accept() returned, the client's number) and
/// when each service ended, with the most connections served at once
/// (sampled every 10 ms, and at each accept).
#[derive(Default)]
struct Served {
    accepts: Vec<(Instant, u8)>,
    closes: Vec<Instant>,
    most: usize,
}

struct Server {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Served>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves each connection `service` (then closes it) on `addr` in `ns`.
    fn start(ns: &Netns, addr: SocketAddr, service: Duration) -> Self {
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Served::default())));
        let path = ns.path();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, v) = (Arc::clone(&stop), Arc::clone(&served));
        let thread = std::thread::spawn(move || {
            Netns::enter_path(&path).unwrap();
            let listener = TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let busy = Arc::new(AtomicUsize::new(0));
            let (b, sv, st) = (Arc::clone(&busy), Arc::clone(&v), Arc::clone(&s));
            let sampler = std::thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    let now = b.load(Ordering::SeqCst);
                    let mut served = sv.lock().unwrap();
                    served.most = served.most.max(now);
                    drop(served);
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let at = Instant::now();
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        let (b, v) = (Arc::clone(&busy), Arc::clone(&v));
                        std::thread::spawn(move || serve(conn, at, now, service, &b, &v));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            sampler.join().unwrap();
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self { stop, served, thread: Some(thread) }
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap()
    }
}

fn serve(
    mut conn: TcpStream,
    at: Instant,
    now: usize,
    service: Duration,
    busy: &AtomicUsize,
    v: &Mutex<Served>,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut who = [0u8; 1];
    let got = conn.read_exact(&mut who).is_ok();
    {
        let mut served = v.lock().unwrap();
        served.most = served.most.max(now);
        served.accepts.push((at, if got { who[0] } else { u8::MAX }));
    }
    // Served until its time is up, or until the client goes away (as a real
    // server closes when it reads the end of the stream).
    let until = at + service;
    let mut buf = [0u8; 64];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match conn.read(&mut buf) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    busy.fetch_sub(1, Ordering::SeqCst);
    v.lock().unwrap().closes.push(Instant::now());
    let _ = conn.write_all(b"bye");
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a client fared: connected (after how long, and when its service
/// ended) or refused (with what, after how long).
#[derive(Debug)]
enum Outcome {
    Served { waited: Duration },
    Failed { kind: ErrorKind, after: Duration },
}

/// `n` clients from `ns`, client `i` starting `i * STAGGER` after the first;
/// client `i` gives up after `give_up[i]` (if any) while it waits to connect.
fn clients(ns: &Netns, to: SocketAddr, n: usize, give_up: &[(usize, Duration)]) -> Vec<JoinHandle<Outcome>> {
    (0..n)
        .map(|i| {
            let path = ns.path();
            let limit = give_up.iter().find(|(c, _)| *c == i).map(|(_, d)| *d);
            std::thread::spawn(move || {
                Netns::enter_path(&path).unwrap();
                std::thread::sleep(STAGGER * i as u32);
                let start = Instant::now();
                let conn = match limit {
                    Some(d) => TcpStream::connect_timeout(&to, d),
                    None => TcpStream::connect(to),
                };
                match conn {
                    Ok(mut conn) => {
                        let waited = start.elapsed();
                        conn.write_all(&[i as u8]).unwrap();
                        let mut rest = Vec::new();
                        let _ = conn.read_to_end(&mut rest);
                        Outcome::Served { waited }
                    }
                    Err(e) => Outcome::Failed { kind: e.kind(), after: start.elapsed() },
                }
            })
        })
        .collect()
}

fn outcomes(handles: Vec<JoinHandle<Outcome>>) -> Vec<Outcome> {
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn limit_row(daemon: &Daemon) -> ConnLimitRow {
    let rows = classes(daemon);
    class(&rows, "api").connections.clone().unwrap_or_else(|| panic!("no connection counts in {rows:#?}"))
}

/// Waits until the class's counts satisfy `done` (up to 5 s); returns the last.
fn counts_until(daemon: &Daemon, done: impl Fn(&ConnLimitRow) -> bool) -> ConnLimitRow {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let row = limit_row(daemon);
        if done(&row) || Instant::now() > until {
            return row;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
}

/// The queue-mode targets on what the server saw: never more than LIMIT at
/// once; every client served in arrival order (90%); the latency from a
/// close to the next accept while clients wait. Returns (p50, p99) in ms.
fn assert_queue_targets(server: &Server, outcomes: &[Outcome]) -> (f64, f64) {
    for (i, o) in outcomes.iter().enumerate() {
        assert!(matches!(o, Outcome::Served { .. }), "client {i} was not served: {o:?}");
    }
    // The last of 20 waits for 4 rounds of 1 s service (plus admission delays).
    let longest = outcomes.iter().filter_map(|o| match o {
        Outcome::Served { waited } => Some(*waited),
        Outcome::Failed { .. } => None,
    });
    let longest = longest.max().unwrap_or_default();
    println!("longest wait of a client: {:.2} s", longest.as_secs_f64());
    assert!(longest < SERVICE * 5, "a client waited {longest:?}");
    let served = server.served();
    assert!(served.most <= LIMIT, "{} connections in service at once (limit {LIMIT})", served.most);
    assert_eq!(served.accepts.len(), CLIENTS);
    let order: Vec<u8> = served.accepts.iter().map(|(_, who)| *who).collect();
    println!("admission order: {order:?}");
    // In order: no client that arrived later got in before it. Connections
    // admitted in the same turn of the daemon complete their handshakes in
    // any order: within ORDER_SLACK of each other they count as together.
    let accepted = |who: u8| served.accepts.iter().find(|(_, w)| *w == who).map(|(at, _)| *at);
    let in_order = (0..CLIENTS as u8)
        .filter(|i| {
            let Some(mine) = accepted(*i) else { return false };
            (*i + 1..CLIENTS as u8).filter_map(accepted).all(|later| later + ORDER_SLACK >= mine)
        })
        .count();
    println!("in arrival order: {in_order} of {CLIENTS}");
    assert!(in_order * 10 >= CLIENTS * 9, "arrival order kept for {in_order} of {CLIENTS} admissions");
    // Each admission after the first LIMIT: from the last close before it.
    let mut gaps: Vec<f64> = served.accepts[LIMIT..]
        .iter()
        .filter_map(|(at, _)| {
            served.closes.iter().filter(|c| *c <= at).max().map(|c| (*at - *c).as_secs_f64() * 1e3)
        })
        .collect();
    gaps.sort_by(f64::total_cmp);
    assert_eq!(gaps.len(), CLIENTS - LIMIT, "an admission came before any close");
    let (p50, p99) = (percentile(&gaps, 50.0), percentile(&gaps, 99.0));
    println!(
        "slot freed → next admission: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        gaps[gaps.len() - 1]
    );
    assert!(p50 <= 50.0 && p99 <= 500.0, "admission latency p50 {p50:.1} ms, p99 {p99:.1} ms");
    (p50, p99)
}

fn addrs(v6: bool) -> (SocketAddr, SocketAddr) {
    let (a, b) = if v6 { (Sandbox::ADDR_A6, Sandbox::ADDR_B6) } else { (Sandbox::ADDR_A4, Sandbox::ADDR_B4) };
    let at = |ip: &str| -> SocketAddr {
        if v6 { format!("[{ip}]:{PORT}") } else { format!("{ip}:{PORT}") }.parse().unwrap()
    };
    (at(a), at(b))
}

/// 20 clients against a limit of 4 in queue mode: inbound (`inbound`: the
/// server in the shaped namespace) or outbound.
fn queue_run(label: &str, inbound: bool, v6: bool) {
    let sandbox = Sandbox::new(label).unwrap();
    let _in_cgroup = InCgroup::enter(&sandbox);
    let rule = if inbound { "lport == 8080" } else { "rport == 8080" };
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, rule, "")).unwrap();
    let (a, b) = addrs(v6);
    let (server_ns, server_addr, client_ns) =
        if inbound { (&sandbox.a, a, &sandbox.b) } else { (&sandbox.b, b, &sandbox.a) };
    let server = Server::start(server_ns, server_addr, SERVICE);
    let done = outcomes(clients(client_ns, server_addr, CLIENTS, &[]));
    assert_queue_targets(&server, &done);
    let row = counts_until(&daemon, |r| r.in_service == 0 && r.waiting == 0);
    println!("{}", row.summary());
    assert_eq!((row.in_service, row.waiting), (0, 0), "counts after the run: {row:?}");
    assert_eq!(row.admitted, CLIENTS as u64);
    assert_eq!(row.max_in_service, LIMIT as u64);
    assert!(row.max_waiting >= (CLIENTS - LIMIT - 4) as u64, "{row:?}");
    assert_eq!((row.rejected, row.timed_out), (0, 0));
    drop(server);
    drop(daemon);
}

#[test]
fn inbound_clients_wait_in_line_ipv4() {
    require_root!();
    queue_run("clin4", true, false);
}

#[test]
fn inbound_clients_wait_in_line_ipv6() {
    require_root!();
    queue_run("clin6", true, true);
}

#[test]
fn outbound_clients_wait_in_line_ipv4() {
    require_root!();
    queue_run("clout4", false, false);
}

#[test]
fn outbound_clients_wait_in_line_ipv6() {
    require_root!();
    queue_run("clout6", false, true);
}

/// Reject mode: the 16 over the limit are refused at once, ECONNREFUSED.
fn reject_run(label: &str, inbound: bool, v6: bool) {
    let sandbox = Sandbox::new(label).unwrap();
    let _in_cgroup = InCgroup::enter(&sandbox);
    let rule = if inbound { "lport == 8080" } else { "rport == 8080" };
    let daemon =
        Daemon::start(&sandbox, shaper(), &config(&sandbox, rule, "on_limit = \"reject\"\n")).unwrap();
    let (a, b) = addrs(v6);
    let (server_ns, server_addr, client_ns) =
        if inbound { (&sandbox.a, a, &sandbox.b) } else { (&sandbox.b, b, &sandbox.a) };
    let server = Server::start(server_ns, server_addr, SERVICE);
    let done = outcomes(clients(client_ns, server_addr, CLIENTS, &[]));
    let refused: Vec<Duration> = done
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed { kind: ErrorKind::ConnectionRefused, after } => Some(*after),
            _ => None,
        })
        .collect();
    let slowest = refused.iter().max().copied().unwrap_or_default();
    println!("{} refused, the slowest after {:.1} ms", refused.len(), slowest.as_secs_f64() * 1e3);
    assert_eq!(refused.len(), CLIENTS - LIMIT, "{done:?}");
    assert!(slowest <= Duration::from_millis(100), "a refusal took {slowest:?}");
    assert!(server.served().most <= LIMIT);
    let row = counts_until(&daemon, |r| r.in_service == 0);
    assert_eq!((row.in_service, row.waiting, row.rejected), (0, 0, (CLIENTS - LIMIT) as u64), "{row:?}");
}

#[test]
fn inbound_excess_is_refused_in_reject_mode_ipv4() {
    require_root!();
    reject_run("clrj4", true, false);
}

#[test]
fn outbound_excess_is_refused_in_reject_mode_ipv6() {
    require_root!();
    reject_run("clrj6", false, true);
}

/// queue_timeout = 2s with 1 s services: the ones still waiting after 2 s are
/// refused (ECONNREFUSED), not left hanging.
#[test]
fn the_ones_still_waiting_at_the_queue_timeout_are_refused() {
    require_root!();
    let sandbox = Sandbox::new("cltmo").unwrap();
    let _in_cgroup = InCgroup::enter(&sandbox);
    let daemon =
        Daemon::start(&sandbox, shaper(), &config(&sandbox, "lport == 8080", "queue_timeout = \"2s\"\n"))
            .unwrap();
    let (a, _) = addrs(false);
    let server = Server::start(&sandbox.a, a, SERVICE);
    let done = outcomes(clients(&sandbox.b, a, CLIENTS, &[]));
    let served = done.iter().filter(|o| matches!(o, Outcome::Served { .. })).count();
    let timed_out: Vec<Duration> = done
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed { kind: ErrorKind::ConnectionRefused, after } => Some(*after),
            _ => None,
        })
        .collect();
    println!("{served} served, {} refused at the timeout: {timed_out:?}", timed_out.len());
    assert_eq!(served + timed_out.len(), CLIENTS, "{done:?}");
    // 4 at once, then 4 more each second: 8 to 12 get in within 2 s.
    assert!((8..=12).contains(&served), "{served} served: {done:?}");
    assert!(
        timed_out.iter().all(|d| *d >= Duration::from_secs(2) && *d < Duration::from_millis(2500)),
        "{timed_out:?}"
    );
    drop(server);
    let row = counts_until(&daemon, |r| r.in_service == 0 && r.waiting == 0);
    assert_eq!((row.in_service, row.waiting), (0, 0), "{row:?}");
    assert_eq!(row.timed_out, timed_out.len() as u64);
}

/// Local clients that give up while they wait (their socket closes in
/// SYN_SENT, as when the process is killed) leave the line; the others move up.
#[test]
fn clients_gone_while_waiting_or_in_service_give_their_place_back() {
    require_root!();
    let sandbox = Sandbox::new("clgone").unwrap();
    let _in_cgroup = InCgroup::enter(&sandbox);
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "rport == 8080", "")).unwrap();
    let (_, b) = addrs(false);
    // A long service: nobody leaves service unless killed.
    let server = Server::start(&sandbox.b, b, Duration::from_secs(3));
    // Clients 4..8 give up after 500 ms of waiting; 8..10 wait on.
    let give_up: Vec<(usize, Duration)> = (4..8).map(|i| (i, Duration::from_millis(500))).collect();
    let handles = clients(&sandbox.a, b, 10, &give_up);
    std::thread::sleep(Duration::from_millis(1000));
    let row = limit_row(&daemon);
    println!("after 1 s: {}", row.summary());
    assert_eq!((row.in_service, row.waiting), (4, 2), "{row:?}");
    assert_eq!(row.abandoned, 4, "{row:?}");
    let done = outcomes(handles);
    let served = done.iter().filter(|o| matches!(o, Outcome::Served { .. })).count();
    assert_eq!(served, 6, "{done:?}");
    drop(server);
    let row = counts_until(&daemon, |r| r.in_service == 0 && r.waiting == 0);
    assert_eq!((row.in_service, row.waiting, row.admitted), (0, 0, 6), "{row:?}");
}

/// Raising the limit live admits waiting clients at once.
#[test]
fn raising_the_limit_admits_waiting_clients_at_once() {
    require_root!();
    let sandbox = Sandbox::new("clset").unwrap();
    let _in_cgroup = InCgroup::enter(&sandbox);
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "lport == 8080", "")).unwrap();
    let (a, _) = addrs(false);
    let server = Server::start(&sandbox.a, a, Duration::from_secs(3));
    let handles = clients(&sandbox.b, a, 8, &[]);
    let row = counts_until(&daemon, |r| r.waiting == 4);
    assert_eq!((row.in_service, row.waiting), (4, 4), "{row:?}");
    let raised = Instant::now();
    daemon.set(SetClass { class: "api".into(), max_connections: Some(8), ..SetClass::default() }).unwrap();
    let row = counts_until(&daemon, |r| r.in_service == 8);
    let took = raised.elapsed();
    println!("raised to 8: all in service after {:.0} ms", took.as_secs_f64() * 1e3);
    assert_eq!((row.in_service, row.waiting, row.max_connections), (8, 0, 8), "{row:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(outcomes(handles).iter().all(|o| matches!(o, Outcome::Served { .. })));
    drop(server);
}

/// A daemon killed (-9) while clients wait, then restarted: the line and the
/// counts were pinned; every client is served, none lost.
#[test]
fn a_daemon_killed_while_clients_wait_serves_them_after_its_restart() {
    require_root!();
    let sandbox = Sandbox::new("clkill").unwrap();
    let _in_cgroup = InCgroup::enter(&sandbox);
    let mut daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "lport == 8080", "")).unwrap();
    let (a, _) = addrs(false);
    let server = Server::start(&sandbox.a, a, SERVICE);
    let handles = clients(&sandbox.b, a, 12, &[]);
    let row = counts_until(&daemon, |r| r.waiting == 8);
    assert_eq!((row.in_service, row.waiting), (4, 8), "{row:?}");
    daemon.kill().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    daemon.restart().unwrap();
    let done = outcomes(handles);
    assert!(done.iter().all(|o| matches!(o, Outcome::Served { .. })), "{done:?}");
    assert!(server.served().most <= LIMIT, "{} at once", server.served().most);
    let row = counts_until(&daemon, |r| r.in_service == 0 && r.waiting == 0);
    assert_eq!((row.in_service, row.waiting, row.admitted), (0, 0, 12), "{row:?}");
}

/// Processes killed while they wait (their SYN_SENT socket closes) leave the
/// line; one killed while served gives its slot to the longest waiting.
#[test]
fn killed_clients_leave_the_line_or_give_their_slot_back() {
    require_root!();
    let sandbox = Sandbox::new("clkilled").unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "rport == 8080", "")).unwrap();
    let (_, b) = addrs(false);
    let server = Server::start(&sandbox.b, b, Duration::from_secs(30));
    // bash clients in the sandbox's cgroup: connect, say who they are, hold on.
    let mut procs: Vec<std::process::Child> = (0..6)
        .map(|i| {
            let script = format!("exec 3<>/dev/tcp/{}/{PORT} && printf '\\x{i:02x}' >&3 && sleep 60", b.ip());
            let child = sandbox.client("bash").unwrap().args(["-c", &script]).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            child
        })
        .collect();
    let row = counts_until(&daemon, |r| r.in_service == 4 && r.waiting == 2);
    assert_eq!((row.in_service, row.waiting), (4, 2), "{row:?}");
    // The last one, killed while it waits.
    procs[5].kill().unwrap();
    let row = counts_until(&daemon, |r| r.waiting == 1);
    assert_eq!((row.in_service, row.waiting, row.abandoned), (4, 1, 1), "{row:?}");
    // The first one, killed while it is served: the waiting one takes its slot.
    let killed = Instant::now();
    procs[0].kill().unwrap();
    let row = counts_until(&daemon, |r| r.waiting == 0 && r.admitted == 5);
    let took = killed.elapsed();
    println!(
        "killed in service: its slot went to the waiting client within {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!((row.in_service, row.waiting, row.admitted), (4, 0, 5), "{row:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(server.served().accepts.iter().any(|(_, who)| *who == 4), "client 4 was not served");
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    let row = counts_until(&daemon, |r| r.in_service == 0 && r.waiting == 0);
    assert_eq!((row.in_service, row.waiting), (0, 0), "{row:?}");
    assert!(server.served().most <= LIMIT);
}

/// The IFB deleted under the daemon: it builds a new one, and the new one
/// gets its gate (inbound connections are limited again).
#[test]
fn a_rebuilt_ifb_gets_its_gate_back() {
    require_root!();
    let sandbox = Sandbox::new("clifb").unwrap();
    let _in_cgroup = InCgroup::enter(&sandbox);
    let daemon = Daemon::start(&sandbox, shaper(), &config(&sandbox, "lport == 8080", "")).unwrap();
    let ifb = daemon.status().unwrap().interfaces[0].ifb.clone().unwrap();
    let index = |sandbox: &Sandbox| -> Option<String> {
        let out = sandbox.a.run("ip", &["-o", "link", "show", &ifb]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("UP").then(|| text.split(':').next().unwrap_or_default().to_string())
    };
    let before = index(&sandbox);
    sandbox.a.run("ip", &["link", "del", &ifb]).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while index(&sandbox).is_none_or(|i| Some(i) == before) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(index(&sandbox), before, "the IFB was not rebuilt");
    let (a, _) = addrs(false);
    let server = Server::start(&sandbox.a, a, SERVICE);
    let done = outcomes(clients(&sandbox.b, a, 8, &[]));
    assert!(done.iter().all(|o| matches!(o, Outcome::Served { .. })), "{done:?}");
    let most = server.served().most;
    println!("after the IFB was rebuilt: 8 clients served, at most {most} at once");
    assert!(most <= LIMIT, "{most} at once after the IFB was rebuilt");
    let row = counts_until(&daemon, |r| r.in_service == 0);
    assert_eq!((row.in_service, row.waiting, row.admitted), (0, 0, 8), "{row:?}");
}

/// With `per = "user"` the limit holds per user: two users' local clients,
/// three each, against `max_connections = 2`: two of each in service, one
/// of each waiting (the class's counts add them up).
#[test]
fn with_per_user_each_user_has_its_own_limit() {
    require_root!();
    let sandbox = Sandbox::new("clper").unwrap();
    let user = shaper_testkit::sandbox::TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    let text = format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\ningress = \"1gbit\"\n\n[[class]]\nname = \"api\"\n\
         egress = \"100mbit\"\ningress = \"100mbit\"\nmatch = 'rport == 8080'\nper = \"user\"\nmax_connections = 2\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &text).unwrap();
    let (_, b) = addrs(false);
    let server = Server::start(&sandbox.b, b, Duration::from_secs(30));
    let script = format!("exec 3<>/dev/tcp/{}/{PORT} && printf x >&3 && sleep 60", b.ip());
    let mut procs = Vec::new();
    for i in 0..6 {
        let mut cmd =
            if i % 2 == 0 { sandbox.client("bash") } else { sandbox.client_as(&user, "bash") }.unwrap();
        procs.push(cmd.args(["-c", &script]).spawn().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let row = counts_until(&daemon, |r| r.in_service == 4 && r.waiting == 2);
    let most = server.served().most;
    println!("per user, limit 2: {} (server: {most} at once)", row.summary());
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    assert_eq!((row.in_service, row.waiting, row.instances), (4, 2, 2), "{row:?}");
    assert!(row.summary().starts_with("4 in service in 2 instances (at most 2 each), 2 waiting"), "{row:?}");
    assert_eq!(most, 4);
    let row = counts_until(&daemon, |r| r.in_service == 0 && r.waiting == 0);
    assert_eq!((row.in_service, row.waiting), (0, 0), "{row:?}");
}
