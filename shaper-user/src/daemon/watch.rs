//! `[daemon] watch_config`: noticing that the config file changed. Editors
//! save by writing in place or by renaming a new file over the old one, so
//! the directory is watched (inotify) and events are filtered by file name.

use std::{
    ffi::{CString, OsString},
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

/// An inotify descriptor watching one file's directory.
pub struct ConfigWatch {
    fd: OwnedFd,
    name: OsString,
}

impl AsRawFd for ConfigWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl ConfigWatch {
    pub fn new(file: &Path) -> io::Result<Self> {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        // SAFETY: plain syscall; the descriptor is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE;
        // SAFETY: valid descriptor and C string.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, name })
    }

    /// Reads the pending events; true if one was about the config file.
    pub fn changed(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return hit;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name_len = event.len as usize;
                let name = buf.get(at + header..at + header + name_len).unwrap_or_default();
                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                if &name[..end] == self.name.as_encoded_bytes() {
                    hit = true;
                }
                at += header + name_len;
            }
        }
    }
}
