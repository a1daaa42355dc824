//! The files the daemon makes outside its pins (pid file, log, control
//! socket): never opened through a symbolic link (the daemon runs as root: a
//! link planted at the path would make it write whatever the link names), and
//! told apart by device and inode, so that only what the daemon made is ever
//! removed.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::MetadataExt as _,
    path::Path,
};

/// Device and inode of a file.
pub type Identity = (u64, u64);

/// Opens `path` (read and write, or append) without following a final
/// symbolic link, creating it (mode 0644) if asked; refuses anything but a
/// regular file.
pub fn open_no_follow(path: &Path, create: bool, append: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .read(!append)
        .write(!append)
        .append(append)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// What `path` names now (a final link itself, not its target).
pub fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What an open file is.
pub fn identity_of(file: &File) -> Option<Identity> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Removes `path` if it still names the file `made` (nothing when `made` is
/// unknown, or another file took the path meanwhile).
pub fn remove_if_ours(path: &Path, made: Option<Identity>) {
    if made.is_some() && identity(path) == made {
        let _ = std::fs::remove_file(path);
    }
}
