//! Real OpenSSH servers inside test namespaces, for the deploy tests: each
//! with its own host key and config in the test's directory, listening only
//! on one address, accepting the keys of one authorized_keys file; killed
//! on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Netns, SandboxError};

/// Debian's sshd; `cargo xtask setup` installs openssh-server.
pub const SSHD: &str = "/usr/sbin/sshd";
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// sshd's privilege separation directory, compiled in (on a host the
/// package's service makes it at boot).
const PRIVSEP_DIR: &str = "/run/sshd";

/// How many test sshds run, and whether they made [`PRIVSEP_DIR`] (then the
/// last one to stop removes it).
static PRIVSEP: Mutex<(usize, bool)> = Mutex::new((0, false));

/// A running `sshd -D`.
pub struct Sshd {
    child: Option<Child>,
    /// The server's files: sshd_config, host key, pid file, log.
    pub dir: PathBuf,
    pub addr: String,
}

fn file_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::File { action, path, source }
}

/// Makes an ed25519 key pair without a passphrase: `path` and `path.pub`.
pub fn keygen(path: &Path) -> Result<(), SandboxError> {
    let shown = path.to_string_lossy();
    super::run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "shaper-test", "-f", &shown])?;
    Ok(())
}

impl Sshd {
    /// Starts sshd in `ns` on `addr` port 22, with its files in `dir`
    /// (created), and waits until it listens.
    pub fn start(ns: &Netns, addr: &str, dir: &Path, authorized_keys: &Path) -> Result<Self, SandboxError> {
        std::fs::create_dir_all(dir).map_err(file_err("creating", dir))?;
        keygen(&dir.join("host_key"))?;
        let config = dir.join("sshd_config");
        std::fs::write(&config, Self::config(addr, dir, authorized_keys))
            .map_err(file_err("writing", &config))?;
        privsep_enter()?;
        let log = dir.join("sshd.log");
        let child = ns
            .command(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(source) => {
                privsep_leave();
                return Err(SandboxError::Spawn {
                    command: format!("{SSHD} -D -f {}", config.display()),
                    source,
                });
            }
        };
        let mut sshd = Self { child: Some(child), dir: dir.to_path_buf(), addr: addr.to_string() };
        sshd.wait_listening(ns)?;
        Ok(sshd)
    }

    fn config(addr: &str, dir: &Path, authorized_keys: &Path) -> String {
        format!(
            "ListenAddress {addr}:22\nHostKey {dir}/host_key\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             Subsystem sftp {SFTP_SERVER}\n",
            dir = dir.display(),
            keys = authorized_keys.display(),
        )
    }

    fn wait_listening(&mut self, ns: &Netns) -> Result<(), SandboxError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("src = {} and sport = :22", self.addr);
        loop {
            if !ns.run("ss", &["-Hltn", &filter])?.stdout.is_empty() {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
                return Err(SandboxError::Daemon(format!("sshd on {} is not listening:\n{log}", self.addr)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log (`-E`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            privsep_leave();
        }
    }
}

fn privsep_enter() -> Result<(), SandboxError> {
    let mut state = PRIVSEP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = Path::new(PRIVSEP_DIR);
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt as _;
        // Owned by root and writable by nobody else, or sshd refuses it.
        std::fs::DirBuilder::new().mode(0o755).create(dir).map_err(file_err("creating", dir))?;
        state.1 = true;
    }
    state.0 += 1;
    Ok(())
}

fn privsep_leave() {
    let mut state = PRIVSEP.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    state.0 = state.0.saturating_sub(1);
    if state.0 == 0 && state.1 {
        let _ = std::fs::remove_dir(PRIVSEP_DIR);
        state.1 = false;
    }
}
