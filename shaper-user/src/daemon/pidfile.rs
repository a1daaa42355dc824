//! The pid file: written when the daemon starts, locked while it runs (so a
//! second daemon, or `shaper start`, knows one is running), removed when it
//! exits.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("shaper is already running (pid {pid}, pid file {})", path.display())]
    Running { pid: u32, path: PathBuf },
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
    _lock: File,
    path: PathBuf,
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The pid of the daemon holding the pid file at `path`, if one does.
pub fn running(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        if !try_lock(&file) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim().parse().unwrap_or(0);
            return Err(PidFileError::Running { pid, path: path.to_path_buf() });
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(Self { _lock: file, path: path.to_path_buf() })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
}
