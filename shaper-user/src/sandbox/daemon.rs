//! A `shaper run` process inside a sandbox namespace, stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use super::{Sandbox, SandboxError};
use crate::control::{self, Command};

/// A running daemon with its own directory (config, log, control socket).
pub struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// The run directory used for `tag`: /tmp/shaper-test-<tag>.
    pub fn dir_for(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shaper-test-{tag}"))
    }

    /// Writes `config` to a fresh run directory and starts `shaper run` in the
    /// sandbox's namespace `a`, with that directory's control socket and the
    /// socket hooks on the sandbox's cgroup. Waits until the daemon answers
    /// `status`; fails with its log if it exits first or takes longer than 30 s.
    pub fn start(sandbox: &Sandbox, shaper: &Path, config: &str) -> Result<Self, SandboxError> {
        let mut daemon = Self::spawn(sandbox, shaper, config, &[])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if control::client::call(&daemon.socket, Command::Status).is_ok() {
                return Ok(daemon);
            }
            if let Some(status) = daemon.try_wait()? {
                return Err(SandboxError::Daemon(format!(
                    "shaper run exited ({status}) before it was ready:\n{}",
                    daemon.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Daemon(format!(
                    "shaper run not ready after 30 s:\n{}",
                    daemon.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `shaper run` without waiting for it (for tests of start-up failures).
    pub fn spawn(
        sandbox: &Sandbox,
        shaper: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, SandboxError> {
        let (ns, tag) = (&sandbox.a, &sandbox.tag);
        let dir = Self::dir_for(tag);
        let file_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::File { action, path, source }
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(file_err("creating", &dir))?;
        let config_path = dir.join("shaper.toml");
        std::fs::write(&config_path, config).map_err(file_err("writing", &config_path))?;
        let socket = dir.join("shaper.sock");
        let log = dir.join("daemon.log");
        let log_file = std::fs::File::create(&log).map_err(file_err("creating", &log))?;
        // A mount namespace of its own: if the daemon has to mount bpffs, the
        // mount disappears with it instead of staying on the host.
        let mut cmd = ns.command("unshare");
        cmd.args(["--mount", "--propagation", "private", "--"])
            .arg(shaper)
            .arg("run")
            .arg("--cgroup")
            .arg(sandbox.cgroup.dir())
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|source| SandboxError::Spawn { command: format!("{} run", shaper.display()), source })?;
        Ok(Self { child: Some(child), dir, config: config_path, socket, log })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(|source| SandboxError::Spawn { command: "waiting for shaper run".into(), source }),
            None => Ok(None),
        }
    }

    /// Sends a control request and returns the result.
    pub fn call(&self, command: Command) -> Result<serde_json::Value, SandboxError> {
        control::client::call(&self.socket, command).map_err(|e| SandboxError::Daemon(crate::error_chain(&e)))
    }

    /// Waits for the process to exit on its own (e.g. after a start-up error).
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Daemon(format!("shaper run still running after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to 20 s for a clean exit.
    pub fn stop(&mut self) -> Result<ExitStatus, SandboxError> {
        let Some(child) = self.child.as_ref() else {
            return Err(SandboxError::Daemon("the daemon is not running".into()));
        };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        self.wait(Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() && self.stop().is_err() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
