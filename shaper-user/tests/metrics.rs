//! The metrics: `[daemon] metrics` serves Prometheus text (or OpenMetrics,
//! when asked) at /metrics over HTTP, `shaper metrics` prints the same, and
//! Debian's promtool accepts it; the numbers agree with `shaper classes`.
//!
//! The endpoint listens on the loopback of the sandbox's namespace `a` (a
//! fresh namespace: a port picked free there, never the host's 9464), and
//! the tests scrape it from a thread that entered that namespace.
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Netns, Sandbox},
};
use shaper_user::control::{ClassRow, Direction};

mod common;

use common::*;

/// Runs `f` on a thread inside namespace `ns` (sockets it makes stay there).
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                ns.enter_current_thread().unwrap();
                f()
            })
            .join()
            .unwrap()
    })
}

/// A port free on the loopback of `ns`.
fn free_port(ns: &Netns) -> u16 {
    in_ns(ns, || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// An HTTP response: status code, headers (names lowercased), body.
struct Response {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
    }
}

/// Sends `request` as is to `addr` in `ns` and reads the answer to the end.
fn http(ns: &Netns, addr: SocketAddr, request: &str) -> Response {
    let raw = in_ns(ns, || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        raw
    });
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.lines();
    let code = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response { code, headers, body: body.to_string() }
}

fn get(ns: &Netns, addr: SocketAddr, accept: Option<&str>) -> Response {
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    http(ns, addr, &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n"))
}

/// The value of the sample `line_start` (name and labels, as written).
fn value(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {line_start} in\n{text}"))
        .parse()
        .unwrap()
}

/// Likewise, for a counter.
fn sample(text: &str, line_start: &str) -> u64 {
    let v = value(text, line_start);
    assert!(v.fract() == 0.0 && v >= 0.0, "{line_start} {v} is not a count");
    v as u64
}

/// `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus, installed by `cargo xtask setup`)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// The families (`# TYPE` names) of an exposition.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().into())
        .collect()
}

fn metrics_config(sandbox: &Sandbox, port: u16) -> String {
    format!(
        r#"
[daemon]
metrics = "127.0.0.1:{port}"
scan_interval = "1s"

{iface}
[[class]]
name = "capped"
egress = "5mbit"
match = 'rport == 5401'
"#,
        iface = interface(sandbox)
    )
}

/// A sandbox and a daemon serving metrics on a free port of its loopback.
fn start(label: &str) -> (Sandbox, SocketAddr, Daemon) {
    let sandbox = Sandbox::new(label).unwrap();
    let port = free_port(&sandbox.a);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let daemon = Daemon::start(&sandbox, shaper(), &metrics_config(&sandbox, port)).unwrap();
    (sandbox, addr, daemon)
}

const CAPPED: &str = r#"{class="capped",interface="shp-a",direction="egress"}"#;

#[test]
fn a_scrape_during_a_shaped_stream_agrees_with_classes_and_passes_promtool() {
    require_root!();
    // Dropped in reverse: the daemon first, then the sandbox.
    let (sandbox, addr, daemon) = start("metr");
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5401).unwrap();
    let stream = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5401, &["-t", "9"]).unwrap();
    // The rate meter samples every second: let it see a few.
    std::thread::sleep(Duration::from_secs(4));

    let started = Instant::now();
    let scrape = get(&sandbox.a, addr, None);
    let took = started.elapsed();
    let out = output(Command::new(SHAPER).args(["classes", "--json", "--socket"]).arg(&daemon.socket));
    let rows: Vec<ClassRow> = serde_json::from_slice(&out.stdout).unwrap();
    println!("scrape: {} bytes in {took:?}\n{}", scrape.body.len(), scrape.body);
    assert_eq!(scrape.code, 200);
    assert_eq!(scrape.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(scrape.header("content-length"), scrape.body.len().to_string());

    // The class's counters, read a moment before `classes --json`: within
    // one refresh (a second at the class's 5 Mbit/s) below it. HTB's come
    // from the once-a-second rate sample (at most a second old, README), so
    // that second and the moment between the two reads.
    let between = started.elapsed().as_secs_f64();
    let row = class_in(&rows, "capped", Direction::Egress);
    let one_refresh = 5_000_000 / 8;
    let sample_and_between = (one_refresh as f64 * (1.0 + between) * 1.05) as u64;
    for (series, listed, allowed) in [
        ("shaper_class_bytes_total", row.bytes, one_refresh),
        ("shaper_class_sent_bytes_total", row.sent_bytes, sample_and_between),
    ] {
        let scraped = sample(&scrape.body, &format!("{series}{CAPPED}"));
        println!("{series}: scraped {scraped}, classes --json {listed} (allowed {allowed} apart)");
        assert!(scraped > 1_000_000, "{series}: {scraped} bytes after 4 s at 5 Mbit/s");
        assert!(scraped <= listed && listed - scraped <= allowed, "{series}: {scraped} vs {listed}");
    }
    let rate = value(&scrape.body, &format!("shaper_class_current_rate_bytes_per_second{CAPPED}"));
    let sent = value(&scrape.body, &format!("shaper_class_sent_rate_bytes_per_second{CAPPED}"));
    println!("current rate {:.2} Mbit/s, HTB sent {:.2} Mbit/s", rate * 8.0 / MBIT, sent * 8.0 / MBIT);
    assert_near("the current rate of the shaped stream", rate * 8.0, 5.0 * MBIT, 0.20);
    assert_near("the rate HTB sent the shaped stream at", sent * 8.0, 5.0 * MBIT, 0.20);
    assert_eq!(value(&scrape.body, &format!("shaper_class_rate_bytes_per_second{CAPPED}")), 625_000.0);
    assert_eq!(value(&scrape.body, &format!("shaper_class_ceil_bytes_per_second{CAPPED}")), 625_000.0);
    assert!(sample(&scrape.body, "shaper_flows") >= 2, "iperf3's control and data connections");
    assert!(sample(&scrape.body, "shaper_scan_duration_seconds_count") >= 3, "a scan a second");
    assert_eq!(sample(&scrape.body, "shaper_events_lost_total"), 0);
    assert!(scrape.body.contains("shaper_map_capacity{map=\"FLOWS\"} "));

    let (ok, said) = promtool(&scrape.body);
    assert!(ok && said.is_empty(), "promtool check metrics: {said}");

    // `shaper metrics` prints the same families, and promtool takes it too
    // (as node_exporter's textfile collector would).
    let cli = output(Command::new(SHAPER).args(["metrics", "--socket"]).arg(&daemon.socket));
    assert!(cli.status.success());
    let cli = String::from_utf8(cli.stdout).unwrap();
    assert_eq!(families(&cli), families(&scrape.body));
    let (ok, said) = promtool(&cli);
    assert!(ok && said.is_empty(), "promtool check metrics (shaper metrics): {said}");

    // OpenMetrics when asked, as Prometheus asks.
    let om = get(
        &sandbox.a,
        addr,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert_eq!(om.code, 200);
    assert_eq!(om.header("content-type"), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(om.body.ends_with("\n# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE shaper_class_bytes counter\n"));
    assert!(om.body.contains(&format!("shaper_class_bytes_total{CAPPED} ")));
    let cli_om =
        output(Command::new(SHAPER).args(["metrics", "--openmetrics", "--socket"]).arg(&daemon.socket));
    assert_eq!(families(&String::from_utf8(cli_om.stdout).unwrap()), families(&om.body));

    let measured = finish_client(stream).unwrap();
    println!("the stream: {:.2} Mbit/s", measured.received_bps / MBIT);
    assert_near("the stream itself", measured.received_bps, 5.0 * MBIT, 0.10);
}

#[test]
fn other_paths_methods_and_slow_or_bad_clients_get_their_answer_and_block_nothing() {
    require_root!();
    // Dropped in reverse: the daemon first, then the sandbox.
    let (sandbox, addr, daemon) = start("metb");
    assert_eq!(http(&sandbox.a, addr, "GET / HTTP/1.1\r\n\r\n").code, 404);
    assert_eq!(http(&sandbox.a, addr, "GET /metrics/x HTTP/1.1\r\n\r\n").code, 404);
    let post = http(&sandbox.a, addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((post.code, post.header("allow")), (405, "GET, HEAD"));
    assert_eq!(http(&sandbox.a, addr, "hello\r\n\r\n").code, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(16 * 1024));
    assert_eq!(http(&sandbox.a, addr, &huge).code, 431);
    let head = http(&sandbox.a, addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(head.code, 200);
    assert!(head.body.is_empty() && head.header("content-length").parse::<usize>().unwrap() > 1000);

    // Clients that connect and say nothing, or half a request: a scrape and
    // the control socket are answered at once all the same.
    let silent: Vec<TcpStream> = in_ns(&sandbox.a, || {
        let mut v: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /metr").unwrap();
        v.push(half);
        v
    });
    let started = Instant::now();
    let scrape = get(&sandbox.a, addr, None);
    daemon.status().unwrap();
    let took = started.elapsed();
    assert_eq!(scrape.code, 200);
    assert!(took < Duration::from_secs(1), "a scrape next to 5 silent clients took {took:?}");
    // The silent ones are dropped after 5 s, with a 408.
    let mut first = silent.into_iter().next().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_secs(4), "dropped after {:?}", started.elapsed());
}

#[test]
fn a_metrics_address_in_use_stops_the_start_before_anything_is_shaped() {
    require_root!();
    let sandbox = Sandbox::new("metu").unwrap();
    let taken = in_ns(&sandbox.a, || TcpListener::bind("127.0.0.1:0").unwrap());
    let port = taken.local_addr().unwrap().port();
    let mut daemon = Daemon::spawn(&sandbox, shaper(), &metrics_config(&sandbox, port), &[]).unwrap();
    let status = daemon.wait(Duration::from_secs(30)).unwrap();
    let log = daemon.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "shaper: cannot serve metrics on 127.0.0.1:{port} ([daemon] metrics): Address already in use (os error 98)"
        )),
        "{log}"
    );
    assert!(!qdiscs(&sandbox).contains("htb"), "{}", qdiscs(&sandbox));
    drop(taken);
}

#[test]
fn a_bad_metrics_address_in_the_config_is_refused_with_its_place() {
    /// Removes the test's directory, also when the test fails.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = TempDir(std::env::temp_dir().join(format!("shaper-metrics-config-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("shaper.toml");
    std::fs::write(
        &file,
        "[daemon]\nmetrics = \"localhost:9464\"\n[[interface]]\nname = \"lo\"\negress = \"1gbit\"\n",
    )
    .unwrap();
    let out = output(Command::new(SHAPER).arg("check").arg("--config").arg(&file));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:2:11: metrics must be an IP address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\" (got \"localhost:9464\")",
        file.display()
    );
    assert!(stderr.contains(&expected), "expected {expected:?} in {stderr:?}");
}
