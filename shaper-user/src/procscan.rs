//! The periodic /proc scan: which connected TCP/UDP sockets exist right now.
//!
//! The classifier decides new flows itself from their first packet; the scan
//! adopts connections that predate the daemon (so they are listed and counted
//! before they send again) and lets the daemon drop flow entries whose socket is
//! gone. It reads the network namespace the daemon runs in.

use std::time::{Duration, Instant};

use procfs::net::TcpState;
use shaper_common::{FlowKey, PROTO_TCP, PROTO_UDP};

use crate::flows;

#[derive(Debug, thiserror::Error)]
#[error("reading /proc/net/{table}")]
pub struct ScanError {
    pub table: &'static str,
    #[source]
    pub source: procfs::ProcError,
}

/// A connected socket of this network namespace.
#[derive(Clone, Debug)]
pub struct Socket {
    pub key: FlowKey,
    /// TCP state in lowercase ("established", "time_wait", …), "udp" for UDP.
    pub state: String,
    pub uid: u32,
    pub inode: u64,
}

/// Every socket with a remote end (listening and unconnected sockets have none).
pub fn connected_sockets() -> Result<Vec<Socket>, ScanError> {
    let err = |table| move |source| ScanError { table, source };
    let mut sockets = Vec::new();
    for entries in [procfs::net::tcp().map_err(err("tcp"))?, procfs::net::tcp6().map_err(err("tcp6"))?] {
        for e in entries {
            if e.state == TcpState::Listen || e.remote_address.port() == 0 {
                continue;
            }
            sockets.push(Socket {
                key: flows::key(PROTO_TCP, e.local_address, e.remote_address),
                state: tcp_state(&e.state).to_string(),
                uid: e.uid,
                inode: e.inode,
            });
        }
    }
    for entries in [procfs::net::udp().map_err(err("udp"))?, procfs::net::udp6().map_err(err("udp6"))?] {
        for e in entries {
            if e.remote_address.port() == 0 {
                continue;
            }
            sockets.push(Socket {
                key: flows::key(PROTO_UDP, e.local_address, e.remote_address),
                state: "udp".to_string(),
                uid: e.uid,
                inode: e.inode,
            });
        }
    }
    Ok(sockets)
}

/// A TCP state as `ss` spells it, in lowercase.
fn tcp_state(state: &TcpState) -> &'static str {
    match state {
        TcpState::Established => "established",
        TcpState::SynSent => "syn-sent",
        TcpState::SynRecv => "syn-recv",
        TcpState::FinWait1 => "fin-wait-1",
        TcpState::FinWait2 => "fin-wait-2",
        TcpState::TimeWait => "time-wait",
        TcpState::Close => "close",
        TcpState::CloseWait => "close-wait",
        TcpState::LastAck => "last-ack",
        TcpState::Listen => "listen",
        TcpState::Closing => "closing",
        TcpState::NewSynRecv => "new-syn-recv",
    }
}

/// What one reconcile pass did (its type travels in `status`, so it lives
/// with the control protocol).
pub use crate::control::ScanReport;

/// Monotonic clock in the time base of the classifier's `last_seen_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC_COARSE always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Times a pass for its report.
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Self {
        Self(Instant::now())
    }
    pub fn micros(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// A flow without a socket is stale once it has been idle this long.
pub fn stale_after(scan_interval: Duration) -> u64 {
    scan_interval.as_nanos().min(u64::MAX as u128) as u64
}
