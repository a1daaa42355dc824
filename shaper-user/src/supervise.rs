//! `shaper start` and `shaper stop`: the daemon in the background, and waiting
//! until it really shapes, or really is gone.
//!
//! `start` speaks systemd's readiness protocol from the other side: it hands
//! the daemon a `NOTIFY_SOCKET` of its own and returns when `READY=1` arrives,
//! so "started" means the same under systemd (`Type=notify`) and without it.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::{net::UnixDatagram, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command as Process, Stdio},
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    control::{self, client::ClientError},
    daemon::{pidfile, RunOptions},
};

/// How long `start` waits for the daemon to be ready, and `stop` for it to exit.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("shaper is already running (pid {0})")]
    AlreadyRunning(u32),
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon exited ({status}) before it was ready:\n{log}")]
    Exited { status: String, log: String },
    #[error("the daemon (pid {pid}) was not ready after {}s; see {}", START_TIMEOUT.as_secs(), log.display())]
    NotReady { pid: u32, log: PathBuf },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the daemon (pid {0}) still runs {1}s after it was asked to stop")]
    StillRunning(u32, u64),
}

/// A daemon `start` launched.
pub struct Started {
    pub pid: u32,
    pub log: PathBuf,
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> SuperviseError {
    let action = action.into();
    move |source| SuperviseError::Io { action, source }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let Ok(file) = std::fs::File::open(path) else { return String::new() };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `shaper run` in the background (its own session, output appended to
/// `shaper.log` beside the pid file) and waits for it to be ready.
pub fn start(options: &RunOptions, config: &Config) -> Result<Started, SuperviseError> {
    if let Some(pid) = pidfile::running(&config.daemon.pid_file) {
        return Err(SuperviseError::AlreadyRunning(pid));
    }
    let dir = config.daemon.pid_file.parent().unwrap_or(Path::new("/run/shaper")).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let log = dir.join("shaper.log");
    // Never through a symbolic link: `start` runs as root.
    let log_file = pidfile::open_no_follow(&log, true, true)
        .map_err(io(format!("opening {} (not following symbolic links)", log.display())))?;
    let log_err = log_file.try_clone().map_err(io("duplicating the log descriptor"))?;
    let notify_path = dir.join(format!(".start-{}.notify", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify =
        UnixDatagram::bind(&notify_path).map_err(io(format!("binding {}", notify_path.display())))?;
    let cleanup = NotifyFile(notify_path.clone());
    notify.set_read_timeout(Some(Duration::from_millis(200))).map_err(io("setting a timeout"))?;
    let exe = std::env::current_exe().map_err(io("finding the shaper executable"))?;
    let mut cmd = Process::new(exe);
    cmd.arg("run").arg("--config").arg(&options.config_path);
    for (flag, value) in [
        ("--socket", &options.socket),
        ("--cgroup", &options.cgroup),
        ("--pin-dir", &options.pin_dir),
        ("--pid-file", &options.pid_file),
    ] {
        if let Some(v) = value {
            cmd.arg(flag).arg(v);
        }
    }
    cmd.env("NOTIFY_SOCKET", &notify_path).stdin(Stdio::null()).stdout(log_file).stderr(log_err);
    // SAFETY: setsid is async-signal-safe; the child leaves our session so
    // that it outlives the terminal `start` ran in.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io("starting shaper run"))?;
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = notify.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]);
            if message.lines().any(|l| l == "READY=1") {
                drop(cleanup);
                return Ok(Started { pid, log });
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SuperviseError::Exited { status: status.to_string(), log: tail(&log, 20) });
        }
        if Instant::now() > deadline {
            return Err(SuperviseError::NotReady { pid, log });
        }
    }
}

struct NotifyFile(PathBuf);

impl Drop for NotifyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Asks the daemon at `socket` to stop and waits until its process is gone.
/// Returns its pid.
pub fn stop(socket: &Path, keep: bool) -> Result<u32, SuperviseError> {
    let pid = control::client::stop(socket, keep)?.pid;
    let started = Instant::now();
    while pid != 0 && Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        if started.elapsed() > STOP_TIMEOUT {
            return Err(SuperviseError::StillRunning(pid, STOP_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
