//! Section 8: the metrics endpoint. A daemon with 1 000 classes, each with
//! a rule, on the sandbox veth serves `[daemon] metrics` on the loopback of
//! its namespace; a scrape (HTTP GET /metrics, as Prometheus does it, from
//! connect to the last byte) is timed, next to `shaper classes` over the
//! control socket (the same class rows, as JSON) and `shaper metrics` over
//! the control socket; and the daemon's own CPU time per scrape.
//!
//! `SHAPER_BASELINE=/path/to/an/older/shaper cargo xtask bench metrics`
//! measures that binary too, in turns with this build (this, the older,
//! this, the older), and puts the two side by side.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use shaper_testkit::sandbox::{Daemon, Sandbox};
use shaper_user::control::{client, ClassRow};

use super::{
    in_netns, median,
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

const S: &str = "8. metrics";
const CLASSES: usize = 1000;
const ROUNDS: usize = 50;

fn config_text(dev: &str, port: u16) -> String {
    let mut text = format!(
        "[daemon]\nmetrics = \"127.0.0.1:{port}\"\n[[interface]]\nname = \"{dev}\"\negress = \"10gbit\"\n"
    );
    for i in 0..CLASSES {
        text.push_str(&format!(
            "[[class]]\nname = \"c{i}\"\negress = {{ rate = \"1mbit\", ceil = \"100mbit\" }}\nmatch = 'rport == {}'\n",
            10_000 + i
        ));
    }
    text
}

/// One scrape: its wall time in ms and the body.
fn scrape(addr: SocketAddr) -> Result<(f64, String)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let took = start.elapsed().as_secs_f64() * 1e3;
    let text = String::from_utf8(raw)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok((took, body.to_string())),
        _ => bail!("the scrape got {:?}", text.lines().next()),
    }
}

/// CPU time process `pid` has used (user and system), ms.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("/proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("/proc/PID/stat")?.parse::<f64>()?) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) * 1e3 / hz)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// What the scrapes of one daemon (or several, in turns) measured.
#[derive(Default)]
struct Measured {
    http_ms: Vec<f64>,
    /// The daemon's CPU per scrape, one figure per daemon.
    cpu_ms: Vec<f64>,
    control_ms: Vec<f64>,
    classes_ms: Vec<f64>,
    bytes: usize,
    rows: usize,
}

impl Measured {
    fn add(&mut self, other: Measured) {
        self.http_ms.extend(other.http_ms);
        self.cpu_ms.extend(other.cpu_ms);
        self.control_ms.extend(other.control_ms);
        self.classes_ms.extend(other.classes_ms);
        (self.bytes, self.rows) = (other.bytes, other.rows);
    }

    fn cpu_per_scrape(&self) -> f64 {
        self.cpu_ms.iter().sum::<f64>() / self.cpu_ms.len().max(1) as f64
    }
}

/// Starts `binary` with 1 000 classes on the sandbox and times its scrapes.
fn measure(sandbox: &Sandbox, binary: &Path) -> Result<Measured> {
    let port = in_netns(&sandbox.a, || Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let daemon = Daemon::start(sandbox, binary, &config_text(&sandbox.dev_a, port))?;
    // The rate meters have run; the first scrape warms the caches.
    std::thread::sleep(Duration::from_secs(2));
    let (_, body) = in_netns(&sandbox.a, || scrape(addr))?;
    let rows = body.lines().filter(|l| l.starts_with("shaper_class_info{")).count();
    // The classes and the implicit default.
    if rows != CLASSES + 1 {
        bail!("a scrape shows {rows} classes, expected {}", CLASSES + 1);
    }
    // The daemon's own CPU time (user and system) per scrape: what this
    // shared, loaded machine's wait for a core leaves out.
    let pid = daemon.pid().context("the daemon's pid")?;
    let idle_start = (cpu_ms(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let idle_per_ms = (cpu_ms(pid)? - idle_start.0) / (idle_start.1.elapsed().as_secs_f64() * 1e3);
    let busy_start = (cpu_ms(pid)?, Instant::now());
    // One thread in the namespace makes every scrape, a few ms apart.
    let http_ms = in_netns(&sandbox.a, || {
        (0..ROUNDS)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                scrape(addr).map(|(ms, _)| ms)
            })
            .collect::<Result<Vec<f64>>>()
    })?;
    let busy = cpu_ms(pid)? - busy_start.0 - idle_per_ms * busy_start.1.elapsed().as_secs_f64() * 1e3;
    let (mut control_ms, mut classes_ms) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        control_ms.push(timed(|| Ok(client::metrics(&daemon.socket, false)?))?);
        classes_ms.push(timed(|| Ok(client::classes(&daemon.socket)?))?);
    }
    let listed: Vec<ClassRow> = client::classes(&daemon.socket).context("shaper classes")?;
    Ok(Measured {
        http_ms,
        cpu_ms: vec![busy / ROUNDS as f64],
        control_ms,
        classes_ms,
        bytes: body.len(),
        rows: listed.len(),
    })
}

pub fn run(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("bmetr")?;
    let baseline = std::env::var_os("SHAPER_BASELINE").map(PathBuf::from);
    let (mut ours, mut before) = (Measured::default(), Measured::default());
    match &baseline {
        None => ours = measure(&sandbox, Path::new(SHAPER))?,
        // In turns, so that the machine's load falls on both alike.
        Some(older) => {
            for _ in 0..2 {
                ours.add(measure(&sandbox, Path::new(SHAPER))?);
                before.add(measure(&sandbox, older)?);
            }
        }
    }
    let ms = |v: f64| Figure::new(v, Unit::Millis);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let what = format!("a scrape of {CLASSES} classes ({} kB of text)", ours.bytes / 1000);
    let http =
        format!("{what} over HTTP, median of {} (max {:.1} ms)", ours.http_ms.len(), max(&ours.http_ms));
    let cpu = format!("{what}: the daemon's CPU time per scrape (user + system, less its idle)");
    let control = format!("{what} with `shaper metrics` (the control socket)");
    let classes = median(ours.classes_ms.clone());
    if let Some(older) = &baseline {
        let shown = format!("before ({}, max {:.1} ms)", older.display(), max(&before.http_ms));
        report.push(Row::new(
            S,
            http,
            ms(median(ours.http_ms.clone())),
            &shown,
            ms(median(before.http_ms.clone())),
        ));
        report.push(Row::new(S, cpu, ms(ours.cpu_per_scrape()), "before", ms(before.cpu_per_scrape())));
        report.push(Row::new(
            S,
            control,
            ms(median(ours.control_ms.clone())),
            "before",
            ms(median(before.control_ms.clone())),
        ));
        report.push(Row::new(
            S,
            "`classes` over the control socket",
            ms(classes),
            "before",
            ms(median(before.classes_ms.clone())),
        ));
    } else {
        let peer = "`classes` over the control socket";
        report.push(Row::new(S, http, ms(median(ours.http_ms.clone())), peer, ms(classes)));
        report.push(Row::new(S, cpu, ms(ours.cpu_per_scrape()), &format!("{peer} (wall)"), ms(classes)));
        report.push(Row::new(S, control, ms(median(ours.control_ms.clone())), peer, ms(classes)));
    }
    report.detail(
        "metrics",
        json!({ "classes": ours.rows, "bytes": ours.bytes, "http_ms": ours.http_ms, "cpu_ms_per_scrape": ours.cpu_ms,
                "control_ms": ours.control_ms, "classes_ms": ours.classes_ms,
                "baseline": baseline.map(|b| json!({ "binary": b.display().to_string(), "http_ms": before.http_ms,
                    "cpu_ms_per_scrape": before.cpu_ms, "control_ms": before.control_ms, "classes_ms": before.classes_ms })) }),
    );
    Ok(())
}
