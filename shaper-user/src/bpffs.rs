//! The BPF filesystem, where shaper pins what must outlive the daemon.

use std::{ffi::CString, io, path::Path};

pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
#[error("mounting the BPF filesystem at {BPFFS}")]
pub struct BpffsError(#[source] pub io::Error);

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts bpffs at /sys/fs/bpf unless it is already there (most distributions
/// mount it at boot; some minimal systems do not).
pub fn ensure_mounted() -> Result<(), BpffsError> {
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(());
    }
    let target = CString::new(BPFFS).map_err(|e| BpffsError(io::Error::other(e)))?;
    let fstype = c"bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(BpffsError(io::Error::last_os_error()));
    }
    log::info!("mounted the BPF filesystem at {BPFFS}");
    Ok(())
}
