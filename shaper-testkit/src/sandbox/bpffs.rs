//! BPF filesystems of a test's own, mounted in its directory (never the
//! host's /sys/fs/bpf): whatever a test leaves pinned there dies with the mount.

use std::path::{Path, PathBuf};

use super::SandboxError;

pub(super) fn mount_bpffs(at: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let fstype = c"bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn unmount(at: &Path) {
    if let Ok(c) = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A BPF filesystem mounted at a directory (created if needed), unmounted on drop.
#[derive(Debug)]
pub struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    pub fn mount(path: &Path) -> Result<Self, SandboxError> {
        let file_err = |action| {
            let path = path.to_path_buf();
            move |source| SandboxError::File { action, path, source }
        };
        std::fs::create_dir_all(path).map_err(file_err("creating"))?;
        mount_bpffs(path).map_err(file_err("mounting a BPF filesystem at"))?;
        Ok(Self { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}
