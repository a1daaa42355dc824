//! A TCP stream between two sandbox namespaces whose receiver logs when each
//! byte arrived: for measuring how long traffic stopped (the longest gap
//! between arrivals) and its rate over any stretch of time.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Netns, SandboxError};

/// (arrival time, bytes received so far), one entry per read.
type Arrivals = Arc<Mutex<Vec<(Instant, u64)>>>;

/// A running stream; stopped on drop.
pub struct Stream {
    arrivals: Arrivals,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |e| SandboxError::Daemon(format!("stream: {what}: {e}"))
}

impl Stream {
    /// Listens on `addr:port` in `receiver`, connects from `sender` and sends
    /// as fast as the path takes, at most `max_bps` (a bounded load).
    pub fn start(
        receiver: &Netns,
        addr: &str,
        port: u16,
        sender: &Netns,
        max_bps: f64,
    ) -> Result<Self, SandboxError> {
        let arrivals: Arrivals = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let receive = {
            let (ns, addr, arrivals, stop) =
                (receiver.path(), addr.to_string(), arrivals.clone(), stop.clone());
            std::thread::spawn(move || {
                let bound = Netns::enter_path(&ns).and_then(|()| {
                    TcpListener::bind((addr.as_str(), port)).map_err(io_err("binding the receiver"))
                });
                let listener = match bound {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Some(conn) = accept(&listener, &stop) {
                    receive(conn, &arrivals, &stop);
                }
            })
        };
        ready_rx.recv().map_err(|_| SandboxError::Daemon("stream: the receiver died".into()))??;
        let send = {
            let (ns, addr, stop) = (sender.path(), addr.to_string(), stop.clone());
            std::thread::spawn(move || {
                let conn = Netns::enter_path(&ns)
                    .and_then(|()| TcpStream::connect((addr.as_str(), port)).map_err(io_err("connecting")));
                if let Ok(conn) = conn {
                    send(conn, max_bps, &stop);
                }
            })
        };
        Ok(Self { arrivals, stop, threads: vec![receive, send] })
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.log().last().map_or(0, |(_, b)| *b)
    }

    /// Every read so far: (arrival time, bytes received until then).
    pub fn arrivals(&self) -> Vec<(Instant, u64)> {
        self.log().clone()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, u64)>> {
        self.arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The longest time between `from` and `to` in which nothing arrived.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let log = self.log();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for (t, _) in log.iter().filter(|(t, _)| *t > from && *t <= to) {
            gap = gap.max(t.duration_since(last));
            last = *t;
        }
        gap.max(to.saturating_duration_since(last))
    }

    /// The receiver's rate between `from` and `to` (payload), bits/s.
    pub fn rate(&self, from: Instant, to: Instant) -> f64 {
        let log = self.log();
        let at = |t: Instant| log.iter().take_while(|(a, _)| *a <= t).last().map_or(0, |(_, b)| *b);
        (at(to) - at(from)) as f64 * 8.0 / to.duration_since(from).as_secs_f64()
    }

    /// The rate over the last `secs` seconds (waiting that long first).
    pub fn rate_over(&self, secs: f64) -> f64 {
        let from = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        self.rate(from, Instant::now())
    }
}

/// The sender's connection, unless the stream is stopped first.
fn accept(listener: &TcpListener, stop: &AtomicBool) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => return conn.set_nonblocking(false).ok().map(|()| conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return None,
        }
    }
    None
}

fn receive(mut conn: TcpStream, arrivals: &Arrivals, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                total += n as u64;
                arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((Instant::now(), total));
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn send(mut conn: TcpStream, max_bps: f64, stop: &AtomicBool) {
    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
    let chunk = vec![0x5au8; 16 * 1024];
    // When the next write is due; never more than 50 ms of credit, so a path
    // that opens up after a stall is not flooded with the backlog.
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next = next.max(Instant::now() - Duration::from_millis(50));
        match conn.write(&chunk) {
            Ok(n) => next += Duration::from_secs_f64(n as f64 * 8.0 / max_bps),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
