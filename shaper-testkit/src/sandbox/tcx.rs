//! Programs another tool hangs on an interface's tcx hook, for tests of what
//! shaper does when the kernel refuses it a place there: a tcx hook holds at
//! most 63 programs (`bpf_mprog`), and the next attach fails with ERANGE.

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

use super::{Netns, SandboxError};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_EGRESS: u32 = 47;

/// Do-nothing programs attached to a device's tcx egress hook; detached on drop.
pub struct TcxPrograms {
    links: Vec<OwnedFd>,
}

/// bpf(2) with an attribute block of zeroes but for `fields` (offset, bytes).
fn bpf(cmd: libc::c_long, fields: &[(usize, &[u8])]) -> std::io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    for (at, bytes) in fields {
        attr[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    // SAFETY: a valid attribute block of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Loads `r0 = -1 (TC_ACT_UNSPEC); exit` as a tc program of its own.
fn load_passthrough() -> std::io::Result<OwnedFd> {
    // mov64 r0, -1; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    bpf(
        BPF_PROG_LOAD,
        &[
            (0, &BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes()),
            (4, &2u32.to_ne_bytes()),
            (8, &(insns.as_ptr() as u64).to_ne_bytes()),
            (16, &(license.as_ptr() as u64).to_ne_bytes()),
        ],
    )
}

impl TcxPrograms {
    /// Attaches do-nothing programs to `dev`'s tcx egress hook in namespace
    /// `ns` until the kernel refuses another.
    pub fn fill_egress(ns: &Netns, dev: &str) -> Result<Self, SandboxError> {
        let (path, shown, dev) = (ns.path(), dev.to_string(), dev.to_string());
        let err = |e: std::io::Error| SandboxError::Daemon(format!("tcx programs on {shown}: {e}"));
        let links = std::thread::spawn(move || -> Result<Vec<OwnedFd>, std::io::Error> {
            Netns::enter_path(&path).map_err(std::io::Error::other)?;
            let name = std::ffi::CString::new(dev).map_err(std::io::Error::other)?;
            // SAFETY: a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut links = Vec::new();
            while links.len() < 1000 {
                let prog = load_passthrough()?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&prog) as u32;
                let link = bpf(
                    BPF_LINK_CREATE,
                    &[
                        (0, &fd.to_ne_bytes()),
                        (4, &ifindex.to_ne_bytes()),
                        (8, &BPF_TCX_EGRESS.to_ne_bytes()),
                    ],
                );
                match link {
                    Ok(link) => links.push(link),
                    Err(e) if e.raw_os_error() == Some(libc::ERANGE) => return Ok(links),
                    Err(e) => return Err(e),
                }
            }
            Err(std::io::Error::other("the hook took 1000 programs"))
        })
        .join()
        .map_err(|_| SandboxError::Daemon("tcx thread panicked".into()))?
        .map_err(err)?;
        Ok(Self { links })
    }

    /// How many programs hang on the hook.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}
