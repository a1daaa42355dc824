//! A throw-away cgroup v2 directory for a sandbox: the daemon's socket hooks
//! attach there (never to the host's root cgroup), and the test's clients run
//! inside it or in sub-cgroups of it.

use std::{
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use super::SandboxError;

/// A cgroup directory, removed (with its sub-cgroups, after killing what still
/// runs in them) on drop.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup v2 root>/shaper-test-<tag>`.
    pub fn create(tag: &str) -> Result<Self, SandboxError> {
        let root = shaper_user::cgroups::v2_root()
            .map_err(|e| SandboxError::Daemon(shaper_user::error_chain(&e)))?;
        Self::create_at(root.join(format!("shaper-test-{tag}")))
    }

    fn create_at(dir: PathBuf) -> Result<Self, SandboxError> {
        std::fs::create_dir(&dir).map_err(|source| SandboxError::File {
            action: "creating cgroup",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The directory (what `shaper run --cgroup` takes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's path as /proc/PID/cgroup writes it ("/shaper-test-…").
    pub fn path(&self) -> String {
        let root = shaper_user::cgroups::v2_root().unwrap_or_default();
        format!("/{}", self.dir.strip_prefix(&root).unwrap_or(&self.dir).display())
    }

    /// A sub-cgroup `name`, removed when dropped (or with this one).
    pub fn child(&self, name: &str) -> Result<Cgroup, SandboxError> {
        Self::create_at(self.dir.join(name))
    }

    /// Makes `cmd` start its process inside this cgroup.
    pub fn enter(&self, cmd: &mut Command) -> Result<(), SandboxError> {
        let procs = self.dir.join("cgroup.procs");
        let path = CString::new(procs.as_os_str().as_encoded_bytes())
            .map_err(|e| SandboxError::Daemon(format!("cgroup path {}: {e}", procs.display())))?;
        // SAFETY: the closure only makes async-signal-safe calls (open, write,
        // close) on a path prepared beforehand.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if rc != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    fn kill_and_remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::kill_and_remove(&entry.path());
                }
            }
        }
        for _ in 0..50 {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: plain kill(2) of a process left in the test's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            log::warn!("sandbox cleanup: removing cgroup {}: {e}", dir.display());
        }
    }

    /// Names of the BPF programs attached to this cgroup itself (not its
    /// parents), as `bpftool cgroup show` lists them.
    pub fn attached_programs(&self) -> Result<Vec<String>, SandboxError> {
        let dir = self.dir.to_string_lossy();
        let out = super::run("bpftool", &["cgroup", "show", &dir])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim_start().starts_with("ID"))
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.dir.exists() {
            Self::kill_and_remove(&self.dir);
        }
    }
}

/// A system user that exists for one test, deleted on drop.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn create(name: &str) -> Result<Self, SandboxError> {
        super::run(
            "useradd",
            &["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        )?;
        let out = super::run("id", &["-u", name])?;
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(u32::MAX);
        let out = super::run("id", &["-g", name])?;
        let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(u32::MAX);
        Ok(Self { name: name.to_string(), uid, gid })
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Err(e) = super::run("userdel", &[&self.name]) {
            log::warn!("sandbox cleanup: {e}");
        }
    }
}

/// A directory of programs for one test (copies of binaries under other names,
/// scripts), removed on drop.
#[derive(Debug)]
pub struct Programs {
    dir: PathBuf,
}

impl Programs {
    pub fn create(tag: &str) -> Result<Self, SandboxError> {
        let dir = std::env::temp_dir().join(format!("shaper-test-{tag}-bin"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| SandboxError::File {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        set_mode(&dir, 0o755)?;
        Ok(Self { dir })
    }

    /// Copies the program `original` (found on PATH) as `name`; returns its path.
    pub fn copy(&self, original: &str, name: &str) -> Result<PathBuf, SandboxError> {
        let out = super::run("sh", &["-c", &format!("command -v {original}")])?;
        let from = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let to = self.dir.join(name);
        std::fs::copy(&from, &to).map_err(|source| SandboxError::File {
            action: "copying to",
            path: to.clone(),
            source,
        })?;
        set_mode(&to, 0o755)?;
        Ok(to)
    }

    /// Writes an executable script `name`; returns its path.
    pub fn script(&self, name: &str, text: &str) -> Result<PathBuf, SandboxError> {
        let to = self.dir.join(name);
        std::fs::write(&to, text).map_err(|source| SandboxError::File {
            action: "writing",
            path: to.clone(),
            source,
        })?;
        set_mode(&to, 0o755)?;
        Ok(to)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SandboxError::File { action: "setting the mode of", path: path.to_path_buf(), source }
    })
}

impl Drop for Programs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
