//! iperf3 servers and clients inside sandbox namespaces.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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
    /// Payload bytes the client sent over the whole run.
    pub sent_bytes: u64,
    /// Payload bytes the server received over the whole run.
    pub received_bytes: u64,
    pub json: serde_json::Value,
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
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        SandboxError::Iperf(format!("unreadable report ({e}): {}", String::from_utf8_lossy(&out.stderr)))
    })?;
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        return Err(SandboxError::Iperf(error.to_string()));
    }
    let end = &json["end"];
    // TCP reports sum_received; UDP reports sum (with the receiver's view).
    let received_bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .or_else(|| end["sum"]["bits_per_second"].as_f64())
        .ok_or_else(|| SandboxError::Iperf("report without a throughput".into()))?;
    let sent_bytes = end["sum_sent"]["bytes"].as_u64().or_else(|| end["sum"]["bytes"].as_u64()).unwrap_or(0);
    let received_bytes =
        end["sum_received"]["bytes"].as_u64().or_else(|| end["sum"]["bytes"].as_u64()).unwrap_or(0);
    Ok(IperfResult { received_bps, sent_bytes, received_bytes, json })
}

/// Runs a client to completion.
pub fn run_client(ns: &Netns, server: &str, port: u16, args: &[&str]) -> Result<IperfResult, SandboxError> {
    finish_client(spawn_client(ns, server, port, args)?)
}
