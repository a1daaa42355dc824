//! The bench binary, run again inside a sandbox namespace as a traffic helper:
//! servers that read connections to their end (counting what arrives), keep
//! them open, answer and close them, or swallow datagrams, and clients that
//! open many short connections (at a steady rate or back to back), hold many
//! long ones, or send datagrams as fast as they can while timing their own CPU.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{meter, waitline};

/// The first argument that makes the binary a helper.
pub const FLAG: &str = "--shaper-bench-helper";

/// Runs the helper if the command line asks for one.
pub fn run_if_requested() -> Option<Result<()>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == FLAG)?;
    let rest: Vec<&str> = args[at + 1..].iter().map(String::as_str).collect();
    Some(match rest.as_slice() {
        ["sink", port] => sink(port),
        ["keep", ports] => keep(ports),
        ["reply", ports, bytes] => reply(ports, bytes),
        ["connect", addr, port, count, bytes, ..] => connect(addr, port, count, bytes),
        ["fanout", addr, port, count, bytes, marker] => fanout(addr, port, count, bytes, marker),
        ["hold", name, addr, ports, count] => hold(name, addr, ports, count),
        ["count", port] => meter::count(port),
        ["fetch", addr, port, seconds] => meter::fetch(addr, port, seconds),
        ["source", port] => meter::source(port),
        ["stream", addr, port, seconds] => meter::stream(addr, port, seconds),
        ["udpcount", port] => meter::udp_count(port),
        ["udpsend", addr, port, rate, seconds, size] => meter::udp_send(addr, port, rate, seconds, size),
        ["udpsink", port] => udp_sink(port),
        ["blast", addr, port, sport, count, size] => blast(addr, port, sport, count, size),
        ["waitserve", addr, service_ms, pool, cap] => waitline::serve(addr, service_ms, pool, cap),
        ["waitclients", addr, count, stagger_ms] => waitline::clients(addr, count, stagger_ms),
        ["churn", name, addr, ports, rate, seconds, bytes] => churn(name, addr, ports, rate, seconds, bytes),
        _ => Err(anyhow::anyhow!("unknown helper command {rest:?}")),
    })
}

/// A helper process, killed on drop.
pub struct Helper(pub Child);

impl Helper {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        Ok(Self(cmd.spawn().context("starting a bench helper")?))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This binary (helpers are the bench binary run again).
pub fn exe() -> Result<String> {
    Ok(std::env::current_exe()?.to_string_lossy().into_owned())
}

/// Starts a server helper (`mode` and its arguments) in `ns` and waits until
/// it listens on `port`.
/// Processes named `name` in the sandbox's namespace `a` and cgroup that
/// hold `total` idle TCP connections to the servers on ports `first_port`,
/// `first_port + 1`, … (one process each, `holders` of them; a process may
/// have fewer than 20 000 files open here). Returns once every one is open.
pub fn hold_connections(
    sandbox: &shaper_testkit::sandbox::Sandbox,
    name: &str,
    first_port: u16,
    holders: u16,
    total: usize,
) -> Result<Vec<Helper>> {
    let opened = Instant::now();
    let mut out = Vec::new();
    for k in 0..holders {
        let (port, each) = ((first_port + k).to_string(), (total / usize::from(holders)).to_string());
        out.push(Helper::spawn(
            sandbox
                .client(&exe()?)?
                .args([FLAG, "hold", name, shaper_testkit::sandbox::Sandbox::ADDR_B4, &port, &each])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )?);
    }
    for holder in &mut out {
        let stdout = holder.0.stdout.take().context("no output from a holder")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("a holder did not open its connections");
        }
    }
    eprintln!("  {total} connections open in {:.1} s", opened.elapsed().as_secs_f64());
    Ok(out)
}

pub fn start_server(ns: &shaper_testkit::sandbox::Netns, args: &[&str], port: u16) -> Result<Helper> {
    let helper = Helper::spawn(ns.command(&exe()?).arg(FLAG).args(args).stdin(Stdio::null()))?;
    wait_listening(ns, port)?;
    Ok(helper)
}

/// Waits until something in `ns` listens on TCP `port`.
pub fn wait_listening(ns: &shaper_testkit::sandbox::Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns.run("ss", &["-Hltn", &format!("sport = :{port}")])?.stdout.is_empty() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Lets one process hold as many sockets as it may: up to fs.nr_open where
/// the hard limit can be raised, else up to the hard limit.
fn raise_open_files() -> Result<()> {
    let max = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit { rlim_cur: max, rlim_max: max };
    // SAFETY: plain getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            return Ok(());
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("reading RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("raising RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Names the calling thread (and the threads it starts afterwards): the
/// `cmd` the kernel records for the sockets they make.
fn set_name(name: &str) -> Result<()> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: PR_SET_NAME with a NUL-terminated string (the kernel copies at most 16 bytes).
    if unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) } != 0 {
        bail!("naming the process {name:?}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn ports(list: &str) -> Result<Vec<u16>> {
    let ports = list.split(',').map(str::parse::<u16>).collect::<Result<Vec<_>, _>>()?;
    if ports.is_empty() {
        bail!("no ports in {list:?}");
    }
    Ok(ports)
}

/// Listeners on each of the comma-separated `list` (IPv4 and IPv6).
fn listeners(list: &str) -> Result<Vec<TcpListener>> {
    ports(list)?
        .into_iter()
        .map(|p| TcpListener::bind(format!("[::]:{p}")).with_context(|| format!("listening on port {p}")))
        .collect()
}

/// Accepts connections on every port of `list` and keeps them open, unread.
fn keep(list: &str) -> Result<()> {
    raise_open_files()?;
    let threads: Vec<_> = listeners(list)?
        .into_iter()
        .map(|listener| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for conn in listener.incoming().flatten() {
                    kept.push(conn);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Accepts connections on every port of `list`, reads a request of `bytes`
/// from each and closes it first (as a web server does: its side keeps the
/// TIME_WAIT, the client's port is free again at once).
fn reply(list: &str, bytes: &str) -> Result<()> {
    raise_open_files()?;
    let bytes: usize = bytes.parse()?;
    let mut threads = Vec::new();
    for listener in listeners(list)? {
        let listener = Arc::new(listener);
        for _ in 0..2 {
            let listener = Arc::clone(&listener);
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; bytes.max(1)];
                for mut conn in listener.incoming().flatten() {
                    let _ = conn.read_exact(&mut buf);
                }
            }));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Accepts connections on `port` (IPv4 and IPv6) and reads each to its end.
fn sink(port: &str) -> Result<()> {
    let listener = TcpListener::bind(format!("[::]:{port}")).context("binding the sink")?;
    let mut buf = vec![0u8; 256 * 1024];
    for conn in listener.incoming() {
        let mut conn = conn.context("accepting")?;
        while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
    }
    Ok(())
}

/// Opens `count` connections one after the other, each sending `bytes` and
/// waiting for the server to close. The sockets come from a plain
/// `socket(AF_INET, SOCK_STREAM, 0)`, as older programs make them, so that
/// trickle (which only shapes sockets made that way) sees them too.
fn connect(addr: &str, port: &str, count: &str, bytes: &str) -> Result<()> {
    let (count, bytes): (usize, usize) = (count.parse()?, bytes.parse()?);
    let target = std::net::SocketAddrV4::new(addr.parse()?, port.parse()?);
    let payload = vec![0x5au8; bytes];
    let mut end = [0u8; 1];
    for _ in 0..count {
        let mut s = plain_connect(&target)?;
        s.write_all(&payload)?;
        s.shutdown(Shutdown::Write)?;
        let _ = s.read(&mut end);
    }
    Ok(())
}

fn plain_connect(target: &std::net::SocketAddrV4) -> Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2)/connect(2) with a sockaddr_in built here; the fd
    // is owned by the TcpStream from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: target.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*target.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), len) != 0 {
            bail!("connect to {target}: {}", std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Starts `count` processes one after the other, each making one connection
/// (each a process the daemon has not seen).
fn fanout(addr: &str, port: &str, count: &str, bytes: &str, marker: &str) -> Result<()> {
    let exe = std::env::current_exe()?;
    for _ in 0..count.parse::<usize>()? {
        let status = std::process::Command::new(&exe)
            .args([FLAG, "connect", addr, port, "1", bytes, marker])
            .status()?;
        if !status.success() {
            bail!("a fanned-out client failed ({status})");
        }
    }
    Ok(())
}

/// As process `name`, opens `count` connections spread over the
/// comma-separated `ports`, and keeps them until standard input closes;
/// prints "ready" once all are open.
fn hold(name: &str, addr: &str, list: &str, count: &str) -> Result<()> {
    raise_open_files()?;
    set_name(name)?;
    let count: usize = count.parse()?;
    let ports = ports(list)?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let port = ports[i % ports.len()];
        held.push(
            TcpStream::connect((addr, port)).with_context(|| format!("connection {i} to port {port}"))?,
        );
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).is_ok_and(|n| n > 0) {}
    drop(held);
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the calling thread, user and system, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Keeps the calling thread on one CPU: the first (`last` false) or the last.
/// The sender and the sink of a blast each get a CPU of their own, so the
/// sender's CPU time does not depend on where the scheduler put them.
fn pin_cpu(last: bool) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return Ok(());
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity get a valid set of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(if last { cpus - 1 } else { 0 }, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives datagrams on `port` and drops them.
fn udp_sink(port: &str) -> Result<()> {
    pin_cpu(false)?;
    let socket = UdpSocket::bind(format!("[::]:{port}")).context("binding the UDP sink")?;
    let mut buf = vec![0u8; 65_536];
    loop {
        socket.recv(&mut buf)?;
    }
}

/// Sends `count` datagrams of `size` bytes from `sport` to `addr`:`port` as
/// fast as the path takes them; prints "THREAD_CPU_NS WALL_NS SENT".
fn blast(addr: &str, port: &str, sport: &str, count: &str, size: &str) -> Result<()> {
    pin_cpu(true)?;
    let socket = UdpSocket::bind(("0.0.0.0", sport.parse::<u16>()?)).context("binding the sender")?;
    socket.connect((addr, port.parse::<u16>()?)).context("connecting the sender")?;
    let (count, payload): (u64, Vec<u8>) = (count.parse()?, vec![0x5a; size.parse()?]);
    let (cpu, wall) = (thread_cpu_ns(), Instant::now());
    let mut sent = 0u64;
    for _ in 0..count {
        // A full queue or an ICMP error turns into an error here: count what left.
        if socket.send(&payload).is_ok() {
            sent += 1;
        }
    }
    println!("{} {} {sent}", thread_cpu_ns() - cpu, wall.elapsed().as_nanos());
    Ok(())
}

/// As process `name`, opens `rate` connections a second for `seconds`, over
/// the comma-separated `ports` in turn, from 4 threads; each connection sends
/// a request of `bytes` and waits for the server to close. Prints "OPENED
/// FAILED LATE" (LATE: connections that started more than 100 ms behind
/// schedule).
fn churn(name: &str, addr: &str, list: &str, rate: &str, seconds: &str, bytes: &str) -> Result<()> {
    const THREADS: u64 = 4;
    set_name(name)?;
    let (rate, seconds): (u64, u64) = (rate.parse()?, seconds.parse()?);
    let ports = Arc::new(ports(list)?);
    let addr: std::net::IpAddr = addr.parse()?;
    let payload = Arc::new(vec![0x5au8; bytes.parse()?]);
    let start = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (ports, payload) = (Arc::clone(&ports), Arc::clone(&payload));
            std::thread::spawn(move || {
                let (mut opened, mut failed, mut late) = (0u64, 0u64, 0u64);
                let mut end = [0u8; 1];
                // This thread's share: connections t, t + THREADS, …
                let mut i = t;
                while i < rate * seconds {
                    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else if now - due > Duration::from_millis(100) {
                        late += 1;
                    }
                    let port = ports[(i as usize) % ports.len()];
                    let done = TcpStream::connect((addr, port)).and_then(|mut s| {
                        s.write_all(&payload)?;
                        // The server closes first; wait for its FIN.
                        while s.read(&mut end)? > 0 {}
                        Ok(())
                    });
                    match done {
                        Ok(()) => opened += 1,
                        Err(_) => failed += 1,
                    }
                    i += THREADS;
                }
                (opened, failed, late)
            })
        })
        .collect();
    let (mut opened, mut failed, mut late) = (0u64, 0u64, 0u64);
    for w in workers {
        let (o, f, l) = w.join().map_err(|_| anyhow::anyhow!("a churn thread panicked"))?;
        (opened, failed, late) = (opened + o, failed + f, late + l);
    }
    println!("{opened} {failed} {late}");
    Ok(())
}
