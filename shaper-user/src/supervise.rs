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

impl SuperviseError {
    /// Whether no daemon answered (see [`ClientError::is_unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SuperviseError::Client(e) if e.is_unreachable())
    }
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
    let log_file = crate::files::open_no_follow(&log, true, true)
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

/// Where a daemon keeps its control socket, pid file and pins (for `stop
/// --force`, and the control socket for the clients).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonPaths {
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub pin_dir: PathBuf,
}

impl DaemonPaths {
    /// Each path from `given` (the command line) if set, else from the
    /// `[daemon]` table of `config`, else the default. The config file is read
    /// as plain TOML, so one that no longer loads (a bad rule, a missing
    /// interface) still gives its paths; one that is not TOML at all gives
    /// none, and the second value says why.
    pub fn resolve(config: Option<&Path>, given: [Option<PathBuf>; 3]) -> (Self, Option<String>) {
        let (table, why) = match config.map(daemon_table) {
            None => (None, None),
            Some(Ok(table)) => (table, None),
            Some(Err(e)) => (None, Some(crate::error_chain(&e))),
        };
        (Self::pick(table.as_ref(), given), why)
    }

    /// Each path from the `[daemon]` table of `config`, else the default,
    /// read as [`DaemonPaths::resolve`] reads it; a file that cannot be read
    /// or is not TOML is an error.
    pub fn from_config(config: &Path) -> Result<Self, PathsError> {
        Ok(Self::pick(daemon_table(config)?.as_ref(), [None, None, None]))
    }

    fn pick(table: Option<&toml::Table>, given: [Option<PathBuf>; 3]) -> Self {
        let pick = |given: Option<PathBuf>, key: &str, default: &str| {
            given
                .or_else(|| table?.get(key)?.as_str().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let [socket, pid_file, pin_dir] = given;
        Self {
            socket: pick(socket, "control_socket", crate::config::DEFAULT_CONTROL_SOCKET),
            pid_file: pick(pid_file, "pid_file", crate::config::DEFAULT_PID_FILE),
            pin_dir: pick(pin_dir, "pin_dir", crate::pins::DEFAULT_PIN_DIR),
        }
    }
}

/// Why a config file gives no `[daemon]` paths.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not TOML ({message}); its [daemon] paths are unknown", path.display())]
    NotToml { path: PathBuf, message: String },
}

/// The `[daemon]` table of the config at `path`, read as plain TOML (`None`: it has none).
fn daemon_table(path: &Path) -> Result<Option<toml::Table>, PathsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| PathsError::Read { path: path.to_path_buf(), source })?;
    let table = text.parse::<toml::Table>().map_err(|e| PathsError::NotToml {
        path: path.to_path_buf(),
        message: e.message().replace('\n', " "),
    })?;
    Ok(table.get("daemon").and_then(|d| d.as_table()).cloned())
}

/// What `stop --force` found running before it took shaping down.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// No daemon.
    Nothing,
    /// A daemon that answered, stopped as `shaper stop` stops it (pid).
    Stopped(u32),
    /// A daemon that held the pid file but did not answer, killed (pid).
    Killed(u32),
}

/// The daemon part of `stop --force`: a daemon that answers at `socket` is
/// asked to stop (it restores everything itself); one that holds `pid_file`
/// but does not answer is killed, so that nothing holds the pinned state
/// while it is removed.
pub fn stop_any(socket: &Path, pid_file: &Path) -> Result<Found, SuperviseError> {
    match stop(socket, false) {
        Ok(pid) => return Ok(Found::Stopped(pid)),
        Err(e) => log::debug!("no daemon answered: {}", crate::error_chain(&e)),
    }
    let Some(pid) = pidfile::running(pid_file) else { return Ok(Found::Nothing) };
    // SAFETY: plain kill(2); the pid holds the daemon's pid-file lock.
    if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
        return Err(SuperviseError::Io {
            action: format!("killing the daemon (pid {pid})"),
            source: std::io::Error::last_os_error(),
        });
    }
    let started = Instant::now();
    while pidfile::running(pid_file).is_some() {
        if started.elapsed() > STOP_TIMEOUT {
            return Err(SuperviseError::StillRunning(pid, STOP_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Found::Killed(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file in the temp directory, removed on drop.
    struct Temp(PathBuf);

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn config(text: &str) -> Temp {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shaper-paths-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Temp(path)
    }

    #[test]
    fn paths_come_from_the_flags_then_the_daemon_table_then_the_defaults() {
        let file = config(
            "[daemon]\npin_dir = \"/sys/fs/bpf/other\"\npid_file = \"/run/x.pid\"\n\n[[class]]\nname = \"a\"\nmatch = 'rprot == 1'\n",
        );
        let given = [Some(PathBuf::from("/tmp/s.sock")), None, None];
        let (paths, why) = DaemonPaths::resolve(Some(&file.0), given);
        assert_eq!(why, None);
        assert_eq!(paths.socket, Path::new("/tmp/s.sock"));
        assert_eq!(paths.pid_file, Path::new("/run/x.pid"));
        assert_eq!(paths.pin_dir, Path::new("/sys/fs/bpf/other"));
        let (paths, why) = DaemonPaths::resolve(None, [None, None, None]);
        assert_eq!((paths.pin_dir.to_str(), why), (Some(crate::pins::DEFAULT_PIN_DIR), None));
    }

    #[test]
    fn a_file_that_is_not_toml_gives_the_defaults_and_says_why() {
        let file = config("this is [not toml");
        let (paths, why) = DaemonPaths::resolve(Some(&file.0), [None, None, Some(PathBuf::from("/p"))]);
        assert_eq!(paths.pin_dir, Path::new("/p"));
        assert_eq!(paths.socket, Path::new(crate::config::DEFAULT_CONTROL_SOCKET));
        assert!(why.is_some_and(|w| w.contains("is not TOML")));
    }
}
