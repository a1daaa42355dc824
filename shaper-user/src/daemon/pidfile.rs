//! The pid file: written when the daemon starts, locked while it runs (so a
//! second daemon, or `shaper start`, knows one is running), removed when it
//! exits. Taking its lock is the first thing a daemon does: the one that holds
//! it owns the control socket path too.
//!
//! It is never opened through a symbolic link (the daemon runs as root: a link
//! planted at the path would make it truncate whatever the link names), must
//! be a regular file, and is removed at exit only if it is still the file this
//! daemon locked.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("shaper is already running (pid {pid}, pid file {})", path.display())]
    Running { pid: u32, path: PathBuf },
    #[error("the pid file {} is a symbolic link or not a regular file; not using it", path.display())]
    NotAFile { path: PathBuf },
    #[error("writing the pid file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The locked pid file of the running daemon; removed on drop.
pub struct PidFile {
    /// Held open for the lock.
    lock: File,
    path: PathBuf,
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The pid of the daemon holding the pid file at `path`, if one does.
pub fn running(path: &Path) -> Option<u32> {
    let mut file = crate::files::open_no_follow(path, false, false).ok()?;
    if try_lock(&file) {
        return None; // nobody holds it: a stale file
    }
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

impl PidFile {
    /// Creates and locks the pid file, or says which daemon holds it.
    pub fn create(path: &Path) -> Result<Self, PidFileError> {
        let io_err = |source| PidFileError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut file = crate::files::open_no_follow(path, true, false).map_err(|e| {
            // ELOOP: the path is a symbolic link.
            if e.raw_os_error() == Some(libc::ELOOP) || e.kind() == io::ErrorKind::InvalidInput {
                PidFileError::NotAFile { path: path.to_path_buf() }
            } else {
                io_err(e)
            }
        })?;
        if !try_lock(&file) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim().parse().unwrap_or(0);
            return Err(PidFileError::Running { pid, path: path.to_path_buf() });
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(Self { lock: file, path: path.to_path_buf() })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        crate::files::remove_if_ours(&self.path, crate::files::identity_of(&self.lock));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_is_told_who_runs() {
        let dir = std::env::temp_dir().join(format!("shaper-pidfile-{}", std::process::id()));
        let path = dir.join("shaper.pid");
        let first = PidFile::create(&path).unwrap();
        assert_eq!(running(&path), Some(std::process::id()));
        match PidFile::create(&path) {
            Err(PidFileError::Running { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Running, got {:?}", other.map(|_| ())),
        }
        drop(first);
        assert!(!path.exists());
        assert_eq!(running(&path), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symbolic_link_at_the_pid_file_is_refused_and_its_target_untouched() {
        let dir = std::env::temp_dir().join(format!("shaper-pidfile-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.join("shaper.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let result = PidFile::create(&path);
        assert!(matches!(result, Err(PidFileError::NotAFile { .. })), "{:?}", result.map(|_| ()));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pid_file_replaced_while_running_is_not_removed() {
        let dir = std::env::temp_dir().join(format!("shaper-pidfile-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("shaper.pid");
        let first = PidFile::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "4242\n").unwrap();
        drop(first);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
