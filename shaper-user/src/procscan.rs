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
    pub state: SockState,
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
                state: tcp_state(&e.state),
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
                state: SockState::Udp,
                uid: e.uid,
                inode: e.inode,
            });
        }
    }
    Ok(sockets)
}

/// A socket's state: TCP's states as `ss` names them, "udp" for a UDP
/// socket, and "gone" for a flow whose socket no longer exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SockState {
    Established,
    SynSent,
    SynRecv,
    #[serde(rename = "fin-wait-1")]
    FinWait1,
    #[serde(rename = "fin-wait-2")]
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Udp,
    Gone,
}

impl SockState {
    /// The name as `ss` prints it ("established", "time-wait", …).
    pub fn as_str(self) -> &'static str {
        match self {
            SockState::Established => "established",
            SockState::SynSent => "syn-sent",
            SockState::SynRecv => "syn-recv",
            SockState::FinWait1 => "fin-wait-1",
            SockState::FinWait2 => "fin-wait-2",
            SockState::TimeWait => "time-wait",
            SockState::Close => "close",
            SockState::CloseWait => "close-wait",
            SockState::LastAck => "last-ack",
            SockState::Listen => "listen",
            SockState::Closing => "closing",
            SockState::NewSynRecv => "new-syn-recv",
            SockState::Udp => "udp",
            SockState::Gone => "gone",
        }
    }
}

impl std::fmt::Display for SockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn tcp_state(state: &TcpState) -> SockState {
    match state {
        TcpState::Established => SockState::Established,
        TcpState::SynSent => SockState::SynSent,
        TcpState::SynRecv => SockState::SynRecv,
        TcpState::FinWait1 => SockState::FinWait1,
        TcpState::FinWait2 => SockState::FinWait2,
        TcpState::TimeWait => SockState::TimeWait,
        TcpState::Close => SockState::Close,
        TcpState::CloseWait => SockState::CloseWait,
        TcpState::LastAck => SockState::LastAck,
        TcpState::Listen => SockState::Listen,
        TcpState::Closing => SockState::Closing,
        TcpState::NewSynRecv => SockState::NewSynRecv,
    }
}

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

#[cfg(test)]
mod tests {
    use super::SockState;

    #[test]
    fn states_are_named_as_ss_names_them_on_the_wire_too() {
        for state in [SockState::FinWait1, SockState::TimeWait, SockState::NewSynRecv, SockState::Gone] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<SockState>(&json).unwrap(), state);
        }
    }
}
