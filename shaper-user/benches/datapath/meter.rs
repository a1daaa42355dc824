//! Measuring what is delivered, at the receiver, over time: helpers that
//! count received bytes and print "MONOTONIC_NS TOTAL_BYTES" every 10 ms, the
//! senders they count for (a TCP stream, a TCP source to download from, a
//! paced UDP sender), and the parent's side that reads the lines and
//! computes a steady rate. Applications' own reports (iperf3's) are a poor
//! instrument at low rates: they count bytes the sender buffered, seconds of
//! traffic at 1 Mbit/s.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::helper::{monotonic_ns, Helper};

/// linux/udp.h: the segment size for UDP GSO.
const UDP_SEGMENT: libc::c_int = 103;
/// Datagrams per UDP GSO send.
const GSO_SEGMENTS: usize = 32;

/// Prints "MONOTONIC_NS TOTAL" every 10 ms for as long as the process lives.
fn print_totals(total: Arc<AtomicU64>) {
    std::thread::spawn(move || loop {
        println!("{} {}", monotonic_ns(), total.load(Ordering::Relaxed));
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(10));
    });
}

/// Reads `conn` to its end, adding what arrives to `total`.
fn drain(mut conn: TcpStream, total: &AtomicU64) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// TCP server: reads every connection on `port` to its end and counts.
pub fn count(port: &str) -> Result<()> {
    let listener = TcpListener::bind(format!("[::]:{port}")).context("binding the counter")?;
    let total = Arc::new(AtomicU64::new(0));
    print_totals(Arc::clone(&total));
    for conn in listener.incoming() {
        let total = Arc::clone(&total);
        let conn = conn.context("accepting")?;
        std::thread::spawn(move || drain(conn, &total));
    }
    Ok(())
}

/// TCP client: downloads from `addr`:`port` for `seconds` and counts.
pub fn fetch(addr: &str, port: &str, seconds: &str) -> Result<()> {
    let conn = TcpStream::connect((addr, port.parse::<u16>()?)).context("connecting to the source")?;
    let total = Arc::new(AtomicU64::new(0));
    print_totals(Arc::clone(&total));
    let seconds: f64 = seconds.parse()?;
    conn.set_read_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut conn = conn;
    while start.elapsed().as_secs_f64() < seconds {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("downloading"),
        }
    }
    // The last totals line is printed before exit.
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}

/// TCP server: writes to every connection on `port` as fast as it takes it.
pub fn source(port: &str) -> Result<()> {
    let listener = TcpListener::bind(format!("[::]:{port}")).context("binding the source")?;
    for conn in listener.incoming() {
        let mut conn = conn.context("accepting")?;
        std::thread::spawn(move || {
            let chunk = vec![0x5au8; 64 * 1024];
            while conn.write_all(&chunk).is_ok() {}
        });
    }
    Ok(())
}

/// TCP client: sends to `addr`:`port` as fast as it can for `seconds`.
pub fn stream(addr: &str, port: &str, seconds: &str) -> Result<()> {
    let mut conn = TcpStream::connect((addr, port.parse::<u16>()?)).context("connecting to the counter")?;
    let seconds: f64 = seconds.parse()?;
    conn.set_write_timeout(Some(Duration::from_millis(100)))?;
    let chunk = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        match conn.write(&chunk) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("streaming"),
        }
    }
    // Close with a reset: what is still buffered (seconds of traffic at low
    // rates) would otherwise go on flowing after the run.
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a valid struct on our own socket.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    Ok(())
}

/// UDP server: counts the payload bytes of datagrams arriving on `port`.
pub fn udp_count(port: &str) -> Result<()> {
    let socket = UdpSocket::bind(format!("[::]:{port}")).context("binding the UDP counter")?;
    let total = Arc::new(AtomicU64::new(0));
    print_totals(Arc::clone(&total));
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = socket.recv(&mut buf)?;
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// UDP client: sends `size`-byte datagrams to `addr`:`port` at `rate` bits/s
/// of payload for `seconds`, in GSO batches (one send carries up to 32
/// datagrams, as QUIC stacks send), paced every millisecond.
pub fn udp_send(addr: &str, port: &str, rate: &str, seconds: &str, size: &str) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the UDP sender")?;
    socket.connect((addr, port.parse::<u16>()?)).context("connecting the UDP sender")?;
    let size: usize = size.parse()?;
    let segment = size as libc::c_int;
    // SAFETY: setsockopt with a valid int option on our own socket.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&segment as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("UDP_SEGMENT: {}", std::io::Error::last_os_error());
    }
    let (rate, seconds): (f64, f64) = (rate.parse()?, seconds.parse()?);
    let batch = vec![0x5au8; size * GSO_SEGMENTS];
    let start = Instant::now();
    let mut sent = 0f64;
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= seconds {
            return Ok(());
        }
        let due = rate / 8.0 * elapsed;
        while sent < due {
            let datagrams = (((due - sent) / size as f64).ceil() as usize).clamp(1, GSO_SEGMENTS);
            // A full queue is an error here: the datagrams are lost, as on a link.
            let _ = socket.send(&batch[..datagrams * size]);
            sent += (datagrams * size) as f64;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The parent's side: reads a counting helper's lines on a thread.
pub struct Meter {
    helper: Helper,
    reader: Option<JoinHandle<Vec<(u64, u64)>>>,
}

impl Meter {
    /// Takes a helper started with its stdout piped.
    pub fn new(mut child: Child) -> Result<Self> {
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("the counter's output is not piped"))?;
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let mut f = l.split_whitespace().map(str::parse::<u64>);
                    Some((f.next()?.ok()?, f.next()?.ok()?))
                })
                .collect()
        });
        Ok(Self { helper: Helper(child), reader: Some(reader) })
    }

    pub fn spawn(cmd: &mut std::process::Command) -> Result<Self> {
        Self::new(cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().context("starting a counter")?)
    }

    /// Stops the helper and returns its samples (monotonic ns, total bytes).
    pub fn finish(mut self) -> Vec<(u64, u64)> {
        let _ = self.helper.0.kill();
        let _ = self.helper.0.wait();
        self.reader.take().and_then(|r| r.join().ok()).unwrap_or_default()
    }
}

/// Payload bits per second between `from_ns` and `to_ns` (monotonic): the
/// least-squares slope of the running total over the samples in that window.
/// (At 1 Mbit/s bytes arrive in steps of up to 64 KiB, half a second apart; a
/// difference of two samples would be off by a step, the slope is not.)
pub fn rate_between(samples: &[(u64, u64)], from_ns: u64, to_ns: u64) -> f64 {
    let inside: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= from_ns && *t <= to_ns)
        .map(|&(t, b)| ((t - from_ns) as f64 / 1e9, b as f64))
        .collect();
    let n = inside.len() as f64;
    if inside.len() < 2 {
        return f64::NAN;
    }
    let (mt, mb) = (inside.iter().map(|p| p.0).sum::<f64>() / n, inside.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = inside.iter().map(|(t, b)| (t - mt) * (b - mb)).sum();
    let var: f64 = inside.iter().map(|(t, _)| (t - mt) * (t - mt)).sum();
    if var > 0.0 {
        cov / var * 8.0
    } else {
        f64::NAN
    }
}
