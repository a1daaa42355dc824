//! The helpers of the connection-limit section (the bench binary run again
//! in a sandbox namespace): a server that serves each connection for a fixed
//! time and writes down when it took and ended each one, and a line of
//! clients that connect a few ms apart and write down how each fared. Times
//! are CLOCK_MONOTONIC ns, the same clock in every process and namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::helper::monotonic_ns;

/// What the server writes down: `accept NS ID`, `close NS`, `reset NS`.
type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, line: String) {
    if let Ok(mut lines) = log.lock() {
        lines.push(line);
    }
}

/// Serves each connection on `addr` for `service_ms` (reading what comes),
/// then closes it. `pool` > 0: that many threads take turns at accept(), so
/// at most `pool` are served and the rest wait in the listen backlog (what
/// a server limits itself with). `pool` = 0: a thread per connection, as
/// many at once as arrive; then `cap` > 0 resets a connection arriving while
/// `cap` are served. Until standard input closes; then prints the log and the
/// most connections served at once (sampled every 10 ms and at each accept).
pub fn serve(addr: &str, service_ms: &str, pool: &str, cap: &str) -> Result<()> {
    let listener = Arc::new(TcpListener::bind(addr.parse::<SocketAddr>()?).context("binding the server")?);
    let service = Duration::from_millis(service_ms.parse()?);
    let (pool, cap): (usize, usize) = (pool.parse()?, cap.parse()?);
    let log: Log = Arc::default();
    let busy = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (b, m) = (Arc::clone(&busy), Arc::clone(&most));
    std::thread::spawn(move || loop {
        m.fetch_max(b.load(Ordering::SeqCst), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(10));
    });
    let acceptors = if pool > 0 { pool } else { 1 };
    for _ in 0..acceptors {
        let (l, log, busy, most) =
            (Arc::clone(&listener), Arc::clone(&log), Arc::clone(&busy), Arc::clone(&most));
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let at = monotonic_ns();
                let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                if pool == 0 && cap > 0 && now > cap {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    reset(conn);
                    note(&log, format!("reset {at}"));
                    continue;
                }
                most.fetch_max(now, Ordering::SeqCst);
                let (log, busy) = (Arc::clone(&log), Arc::clone(&busy));
                let work = move || {
                    serve_one(conn, at, service, &log);
                    busy.fetch_sub(1, Ordering::SeqCst);
                };
                if pool > 0 {
                    work();
                } else {
                    std::thread::spawn(work);
                }
            }
        });
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    let mut out = std::io::stdout().lock();
    for line in log.lock().map(|l| l.clone()).unwrap_or_default() {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "most {}", most.load(Ordering::SeqCst))?;
    Ok(())
}

/// Closes `conn` with a RST (SO_LINGER 0): refused after all.
fn reset(conn: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket this function owns, with a valid struct.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn serve_one(mut conn: TcpStream, at: u64, service: Duration, log: &Log) {
    let mut id = [u8::MAX; 1];
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.read_exact(&mut id);
    note(log, format!("accept {at} {}", id[0]));
    let end = at + service.as_nanos() as u64;
    let mut buf = [0u8; 256];
    loop {
        let left = end.saturating_sub(monotonic_ns());
        if left == 0 || conn.set_read_timeout(Some(Duration::from_nanos(left))).is_err() {
            break;
        }
        if !conn.read(&mut buf).is_ok_and(|n| n > 0) {
            break;
        }
    }
    note(log, format!("close {}", monotonic_ns()));
}

/// `count` clients of `addr`, client `i` starting `i * stagger_ms` after the
/// first: each connects, sends its number and reads until the server closes.
/// Prints a line a client: `ID START_NS served END_NS` or `ID START_NS
/// failed ERROR_NS KIND` (the connect or the read refused or reset).
pub fn clients(addr: &str, count: &str, stagger_ms: &str) -> Result<()> {
    let to: SocketAddr = addr.parse()?;
    let stagger = Duration::from_millis(stagger_ms.parse()?);
    let threads: Vec<_> = (0..count.parse::<u8>()?)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(stagger * u32::from(i));
                let start = monotonic_ns();
                let fared = TcpStream::connect(to).and_then(|mut conn| {
                    conn.write_all(&[i])?;
                    let mut rest = Vec::new();
                    conn.read_to_end(&mut rest)
                });
                match fared {
                    Ok(_) => format!("{i} {start} served {}", monotonic_ns()),
                    Err(e) => format!("{i} {start} failed {} {:?}", monotonic_ns(), e.kind()),
                }
            })
        })
        .collect();
    for t in threads {
        println!("{}", t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?);
    }
    Ok(())
}
