//! A `shaper run` process inside a sandbox namespace, stopped on drop.
//!
//! Each daemon pins into a BPF filesystem of its own, mounted in its run
//! directory (never the host's /sys/fs/bpf), which goes when the daemon value
//! is dropped: whatever a test leaves pinned dies with that mount.

use std::{
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde::de::DeserializeOwned;
use shaper_user::control::{client, Applied, ClassRow, Command, ConnRow, Moved, SetClass, Status};

use super::{
    bpffs::{mount_bpffs, unmount},
    Sandbox, SandboxError,
};

/// How `shaper run` is started in the sandbox's namespace `a`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Launcher {
    /// nsenter into the namespace, in a private mount namespace of its own
    /// (the host's mounts stay visible, cgroup v2 included).
    #[default]
    Private,
    /// `ip netns exec`, which remounts /sys: no cgroup v2 is visible.
    IpNetnsExec,
    /// Like `Private`, under a wrapper command (e.g. `setpriv …` to drop a
    /// capability); the wrapper's arguments end where `shaper run` begins.
    Wrapped(Vec<String>),
}

/// A running daemon with its own directory (config, log, control socket, pins).
pub struct Daemon {
    child: Option<Child>,
    launcher: Launcher,
    dir: PathBuf,
    shaper: PathBuf,
    ns: String,
    cgroup: PathBuf,
    bpffs: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The pin directory (`--pin-dir`).
    pub pins: PathBuf,
    pub pid_file: PathBuf,
}

impl Daemon {
    /// The run directory used for `tag`: `/tmp/shaper-test-<tag>`.
    pub fn dir_for(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shaper-test-{tag}"))
    }

    /// Writes `config` to a fresh run directory and starts `shaper run` in the
    /// sandbox's namespace `a`, with that directory's control socket and the
    /// socket hooks on the sandbox's cgroup. Waits until the daemon answers
    /// `status`; fails with its log if it exits first or takes longer than 30 s.
    pub fn start(sandbox: &Sandbox, shaper: &Path, config: &str) -> Result<Self, SandboxError> {
        let mut daemon = Self::spawn(sandbox, shaper, config, &[])?;
        daemon.wait_ready()?;
        Ok(daemon)
    }

    /// Starts `shaper run` without waiting for it (for tests of start-up failures).
    pub fn spawn(
        sandbox: &Sandbox,
        shaper: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, SandboxError> {
        let mut daemon = Self::prepare(sandbox, shaper, config)?;
        daemon.launch(env)?;
        Ok(daemon)
    }

    /// Starts `shaper run` through `launcher` without waiting for it.
    pub fn spawn_with(
        sandbox: &Sandbox,
        shaper: &Path,
        config: &str,
        launcher: Launcher,
    ) -> Result<Self, SandboxError> {
        let mut daemon = Self::prepare(sandbox, shaper, config)?;
        daemon.launcher = launcher;
        daemon.launch(&[])?;
        Ok(daemon)
    }

    /// Waits until the daemon answers `status` (after [`Daemon::spawn_with`]).
    pub fn ready(&mut self) -> Result<(), SandboxError> {
        self.wait_ready()
    }

    /// The run directory, its BPF filesystem and config, without a daemon
    /// (for `shaper start`, which launches its own). A daemon that the pid file
    /// names is stopped on drop all the same.
    pub fn prepare(sandbox: &Sandbox, shaper: &Path, config: &str) -> Result<Self, SandboxError> {
        let (ns, tag) = (&sandbox.a, &sandbox.tag);
        let dir = Self::dir_for(tag);
        let file_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::File { action, path, source }
        };
        let bpffs = dir.join("bpf");
        unmount(&bpffs);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&bpffs).map_err(file_err("creating", &bpffs))?;
        mount_bpffs(&bpffs).map_err(file_err("mounting a BPF filesystem at", &bpffs))?;
        let config_path = dir.join("shaper.toml");
        std::fs::write(&config_path, config).map_err(file_err("writing", &config_path))?;
        let daemon = Self {
            child: None,
            launcher: Launcher::default(),
            shaper: shaper.to_path_buf(),
            ns: ns.name().to_string(),
            cgroup: sandbox.cgroup.dir().to_path_buf(),
            socket: dir.join("shaper.sock"),
            log: dir.join("daemon.log"),
            pins: bpffs.join("shaper"),
            pid_file: dir.join("shaper.pid"),
            bpffs,
            config: config_path,
            dir,
        };
        Ok(daemon)
    }

    /// Starts `shaper run` through `launcher` for a daemon made by
    /// [`Daemon::prepare`] (whose `config` a test may have pointed elsewhere,
    /// e.g. into a ConfigMap volume); waits until it answers.
    pub fn start_prepared(&mut self, launcher: Launcher) -> Result<(), SandboxError> {
        if self.child.is_some() {
            return Err(SandboxError::Daemon("the daemon is already running".into()));
        }
        self.launcher = launcher;
        self.launch(&[])?;
        self.wait_ready()
    }

    /// Starts `shaper run` again in the same directory (same config, socket
    /// and pins), after [`Daemon::kill`] or [`Daemon::stop`]; waits until it answers.
    pub fn restart(&mut self) -> Result<(), SandboxError> {
        self.restart_with(&[])
    }

    /// [`Daemon::restart`] with `env` added to the daemon's environment; also
    /// the first start of a directory made by [`Daemon::prepare`] (whose log
    /// file a test may create first, to know it).
    pub fn restart_with(&mut self, env: &[(&str, &str)]) -> Result<(), SandboxError> {
        if self.child.is_some() {
            return Err(SandboxError::Daemon("the daemon is still running".into()));
        }
        self.launch(env)?;
        self.wait_ready()
    }

    fn launch(&mut self, env: &[(&str, &str)]) -> Result<(), SandboxError> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| SandboxError::File { action: "opening", path: self.log.clone(), source })?;
        // A mount namespace of its own: if the daemon has to mount bpffs, the
        // mount disappears with it instead of staying on the host.
        let mut cmd = match &self.launcher {
            Launcher::IpNetnsExec => {
                let mut cmd = std::process::Command::new("ip");
                cmd.args(["netns", "exec", &self.ns]);
                cmd
            }
            Launcher::Private | Launcher::Wrapped(_) => {
                let mut cmd = std::process::Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", self.ns)).arg("--").arg("unshare");
                cmd.args(["--mount", "--propagation", "private", "--"]);
                if let Launcher::Wrapped(wrapper) = &self.launcher {
                    cmd.args(wrapper);
                }
                cmd
            }
        };
        cmd.arg(&self.shaper)
            .arg("run")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pins)
            .arg("--pid-file")
            .arg(&self.pid_file);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            command: format!("{} run", self.shaper.display()),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client::status(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Err(SandboxError::Daemon(format!(
                    "shaper run exited ({status}) before it was ready:\n{}",
                    self.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Daemon(format!(
                    "shaper run not ready after 30 s:\n{}",
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's pid (of `unshare`, which execs into `shaper run`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the daemon dies without a chance to clean up, as in a crash.
    pub fn kill(&mut self) -> Result<(), SandboxError> {
        let Some(mut child) = self.child.take() else {
            return Err(SandboxError::Daemon("the daemon is not running".into()));
        };
        let _ = child.kill();
        child
            .wait()
            .map_err(|source| SandboxError::Spawn { command: "waiting for shaper run".into(), source })?;
        Ok(())
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

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The arguments that give a `shaper run`/`start` this daemon's paths.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        for (flag, value) in [
            ("--config", &self.config),
            ("--socket", &self.socket),
            ("--cgroup", &self.cgroup),
            ("--pin-dir", &self.pins),
            ("--pid-file", &self.pid_file),
        ] {
            out.push(flag.into());
            out.push(value.into());
        }
        out
    }

    /// The contents of the pinned map `name` (see `shaper_common::names`), as
    /// `bpftool map dump` prints them: for comparing the maps before and after.
    pub fn dump_map(&self, name: &str) -> Result<String, SandboxError> {
        let path = shaper_user::pins::Pins::new(&self.pins).map(name);
        let path = path.to_string_lossy();
        let out = super::run("bpftool", &["map", "dump", "pinned", &path])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every file pinned below the pin directory (see `pins::Pins::tree`).
    pub fn pinned(&self) -> Vec<String> {
        shaper_user::pins::Pins::new(&self.pins).tree()
    }

    /// Sends a control request; its result decoded as `T` (prefer the typed
    /// calls below, which pair each request with its result type).
    pub fn request<T: DeserializeOwned>(&self, command: Command) -> Result<T, SandboxError> {
        Ok(client::request(&self.socket, command)?)
    }

    /// `shaper status`.
    pub fn status(&self) -> Result<Status, SandboxError> {
        Ok(client::status(&self.socket)?)
    }

    /// `shaper classes`.
    pub fn classes(&self) -> Result<Vec<ClassRow>, SandboxError> {
        Ok(client::classes(&self.socket)?)
    }

    /// `shaper conns`.
    pub fn conns(&self) -> Result<Vec<ConnRow>, SandboxError> {
        Ok(client::conns(&self.socket)?)
    }

    /// `shaper reload`.
    pub fn reload(&self) -> Result<Applied, SandboxError> {
        Ok(client::reload(&self.socket)?)
    }

    /// `shaper set`.
    pub fn set(&self, set: SetClass) -> Result<Applied, SandboxError> {
        Ok(client::set(&self.socket, set)?)
    }

    /// `shaper move CONN CLASS`.
    pub fn move_conn(&self, conn: &str, class: &str) -> Result<Moved, SandboxError> {
        Ok(client::move_conn(&self.socket, conn, class)?)
    }

    /// Waits for the process to exit on its own (after a start-up error, or
    /// `shaper stop`).
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
        // A daemon `shaper start` launched.
        if let Some(pid) = shaper_user::daemon::pidfile::running(&self.pid_file) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while shaper_user::daemon::pidfile::running(&self.pid_file).is_some() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is still pinned (a test that ended with a killed daemon)
        // goes with the mount.
        unmount(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
