//! iperf3 servers and clients inside sandbox namespaces.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{Netns, SandboxError};

/// An `iperf3 -s` in a namespace, killed on drop.
pub struct IperfServer {
    child: Child,
    pub port: u16,
}

impl IperfServer {
    /// Starts a server bound to `addr`:`port` and waits until it listens.
    pub fn start(ns: &Netns, addr: &str, port: u16) -> Result<Self, SandboxError> {
        let mut cmd = ns.command("iperf3");
        cmd.args(["-B", addr]);
        Self::start_cmd(cmd, ns, port)
    }

    /// Starts a server through `cmd` (iperf3 or a copy, where and as whom the
    /// caller chose, with any extra arguments), in namespace `ns`, on `port`.
    pub fn start_cmd(mut cmd: Command, ns: &Netns, port: u16) -> Result<Self, SandboxError> {
        let child = cmd
            .args(["-s", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| SandboxError::Spawn { command: "iperf3 -s".into(), source })?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        loop {
            let out = ns.run("ss", &["-Hltn", &filter])?;
            if !out.stdout.is_empty() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Iperf(format!("server on port {port} did not start listening")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an iperf3 client run measured.
#[derive(Clone, Debug)]
pub struct IperfResult {
    /// Receiver-side throughput over the measured (non-omitted) seconds, bits/s.
    pub received_bps: f64,
    /// Sender-side throughput over the same seconds, bits/s.
    pub sent_bps: f64,
    /// Payload bytes the client sent over the whole run.
    pub sent_bytes: u64,
    /// Payload bytes the server received over the whole run.
    pub received_bytes: u64,
}

/// The parts of iperf3's `-J` report that the kit reads.
#[derive(Debug, Deserialize)]
struct Report {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    end: End,
}

/// TCP reports `sum_sent` and `sum_received`; UDP reports `sum` (the
/// receiver's view), and recent versions both.
#[derive(Debug, Default, Deserialize)]
struct End {
    sum_sent: Option<Sum>,
    sum_received: Option<Sum>,
    sum: Option<Sum>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
struct Sum {
    bits_per_second: f64,
    #[serde(default)]
    bytes: u64,
}

impl IperfResult {
    /// Reads iperf3's `-J` report.
    fn parse(json: &[u8]) -> Result<Self, String> {
        let report: Report = serde_json::from_slice(json).map_err(|e| format!("unreadable report ({e})"))?;
        if let Some(error) = report.error {
            return Err(error);
        }
        let end = report.end;
        let received = end.sum_received.or(end.sum).ok_or("report without a throughput")?;
        let sent = end.sum_sent.or(end.sum);
        Ok(Self {
            received_bps: received.bits_per_second,
            sent_bps: sent.map_or(0.0, |s| s.bits_per_second),
            sent_bytes: sent.map_or(0, |s| s.bytes),
            received_bytes: received.bytes,
        })
    }
}

/// Starts `iperf3 -c server -p port -J args…` in `ns` without waiting.
pub fn spawn_client(ns: &Netns, server: &str, port: u16, args: &[&str]) -> Result<Child, SandboxError> {
    spawn_client_cmd(ns.command("iperf3"), server, port, args)
}

/// Starts an iperf3 client through `cmd` (a command that runs iperf3, or a
/// copy of it under another name, where and as whom the caller chose).
pub fn spawn_client_cmd(
    mut cmd: Command,
    server: &str,
    port: u16,
    args: &[&str],
) -> Result<Child, SandboxError> {
    cmd.args(["-c", server, "-p", &port.to_string(), "-J"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SandboxError::Spawn { command: "iperf3 -c".into(), source })
}

/// Waits for a client started with [`spawn_client`] and reads its report.
pub fn finish_client(child: Child) -> Result<IperfResult, SandboxError> {
    let out = child
        .wait_with_output()
        .map_err(|source| SandboxError::Spawn { command: "iperf3 -c".into(), source })?;
    IperfResult::parse(&out.stdout).map_err(|e| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        SandboxError::Iperf(if stderr.trim().is_empty() { e } else { format!("{e}: {}", stderr.trim()) })
    })
}

/// Runs a client to completion.
pub fn run_client(ns: &Netns, server: &str, port: u16, args: &[&str]) -> Result<IperfResult, SandboxError> {
    finish_client(spawn_client(ns, server, port, args)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::IperfResult;

    #[test]
    fn reports_of_tcp_udp_and_errors_are_read() {
        // Trimmed from iperf 3.12's `-J` output.
        let tcp = br#"{"start":{},"end":{"streams":[],"sum_sent":{"bytes":2647654400,"bits_per_second":2.1e10,"retransmits":0},
            "sum_received":{"bytes":2646343680,"bits_per_second":2.0e10}}}"#;
        let r = IperfResult::parse(tcp).unwrap();
        assert_eq!((r.sent_bytes, r.received_bytes), (2_647_654_400, 2_646_343_680));
        assert_eq!((r.sent_bps, r.received_bps), (2.1e10, 2.0e10));
        let udp_old = br#"{"end":{"sum":{"bytes":1277952,"bits_per_second":10222685.7,"lost_packets":0}}}"#;
        let r = IperfResult::parse(udp_old).unwrap();
        assert_eq!((r.received_bytes, r.sent_bytes, r.received_bps), (1_277_952, 1_277_952, 10_222_685.7));
        let refused = br#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#;
        assert_eq!(
            IperfResult::parse(refused).unwrap_err(),
            "unable to connect to server: Connection refused"
        );
        assert!(IperfResult::parse(br#"{"end":{}}"#).unwrap_err().contains("without a throughput"));
        assert!(IperfResult::parse(b"").unwrap_err().contains("unreadable report"));
    }
}
