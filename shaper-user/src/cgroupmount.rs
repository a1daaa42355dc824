//! The cgroup v2 hierarchy for the socket hooks, even where none is mounted in
//! the daemon's mount namespace: under `ip netns exec` (which remounts /sys),
//! in a container, on a host that mounts only cgroup v1.
//!
//! The unified hierarchy exists on every kernel shaper supports; only its
//! mount may be missing. Then shaper mounts it privately: a short-lived thread
//! unshares its filesystem attributes and mount namespace, makes every mount
//! private, mounts cgroup2 and opens its root. The open directory keeps that
//! mount alive after the thread (and its namespace) is gone, and is reached
//! through `/proc/self/fd/N`; nothing appears in any other mount namespace,
//! and nothing is left when the daemon exits.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use crate::cgroups::{self, CgroupError};

/// Where cgroup v2 is mounted on a standard system; a configured hook cgroup
/// under it is found in the private mount at the same relative path.
pub const STANDARD_ROOT: &str = "/sys/fs/cgroup";
/// Where hybrid systems (cgroup v1 controllers beside v2) mount cgroup v2.
pub const HYBRID_ROOT: &str = "/sys/fs/cgroup/unified";

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cgroup v2 is not mounted here, and mounting it privately failed: {step}")]
    Mount {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the hook cgroup {} is not under {STANDARD_ROOT}, and cgroup v2 is not mounted here \
         (shaper mounted it privately; give the cgroup's path under {STANDARD_ROOT} or {HYBRID_ROOT})",
        .0.display()
    )]
    Outside(PathBuf),
    #[error(transparent)]
    Cgroups(#[from] CgroupError),
}

/// The root of the cgroup v2 hierarchy as this daemon sees it.
#[derive(Debug)]
pub struct V2Root {
    path: PathBuf,
    /// The privately mounted root, held open for the daemon's lifetime.
    private: Option<File>,
}

impl V2Root {
    /// The path the hierarchy is read and attached through.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// shaper mounted the hierarchy itself (none was visible).
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// Where a configured cgroup directory (`[daemon] cgroup`, written as the
    /// host sees it) is reached from this daemon.
    pub fn locate(&self, configured: &Path) -> Result<PathBuf, MountError> {
        if !self.is_private() {
            return Ok(configured.to_path_buf());
        }
        let relative = [HYBRID_ROOT, STANDARD_ROOT]
            .iter()
            .find_map(|root| configured.strip_prefix(root).ok())
            .ok_or_else(|| MountError::Outside(configured.to_path_buf()))?;
        Ok(self.path.join(relative))
    }
}

/// The visible cgroup v2 mount, or a private one when there is none.
pub fn v2_root() -> Result<V2Root, MountError> {
    match cgroups::v2_root() {
        Ok(path) => Ok(V2Root { path, private: None }),
        Err(CgroupError::NotMounted) => {
            let dir = mount_private()?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
            Ok(V2Root { path, private: Some(dir) })
        }
        Err(e) => Err(e.into()),
    }
}

fn failed(step: &'static str) -> impl FnOnce(io::Error) -> MountError {
    move |source| MountError::Mount { step, source }
}

/// Mounts cgroup2 in a mount namespace of a thread of its own and returns its
/// open root directory.
fn mount_private() -> Result<File, MountError> {
    std::thread::Builder::new()
        .name("cgroup2-mount".into())
        .spawn(mount_in_own_namespace)
        .map_err(failed("starting a thread"))?
        .join()
        .map_err(|_| MountError::Mount {
            step: "the mount thread",
            source: io::Error::other("it panicked"),
        })?
}

fn check(rc: libc::c_int, step: &'static str) -> Result<(), MountError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(failed(step)(io::Error::last_os_error()))
    }
}

/// Runs on its own thread: the namespace changes stay with it.
fn mount_in_own_namespace() -> Result<File, MountError> {
    // SAFETY: unshare affects only this thread (CLONE_FS gives it its own root
    // and cwd first, which CLONE_NEWNS needs in a threaded process).
    check(unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) }, "unshare(CLONE_NEWNS)")?;
    let root = c"/";
    // SAFETY: valid C string; no source, type or data.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    check(rc, "making the mounts private")?;
    let target = mount_point();
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| failed("naming the mount point")(io::Error::other(e)))?;
    let fstype = c"cgroup2";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), c_target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    check(rc, "mount -t cgroup2")?;
    let dir = File::open(&target).map_err(failed("opening the mounted root"))?;
    log::info!("cgroup v2 was not mounted here: mounted it privately for the socket hooks");
    Ok(dir)
}

/// An existing directory to mount on, in the thread's private namespace.
fn mount_point() -> PathBuf {
    [STANDARD_ROOT, "/sys/fs", "/tmp", "/"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_cgroup_is_found_in_the_private_mount() {
        let visible = V2Root { path: PathBuf::from("/sys/fs/cgroup"), private: None };
        assert_eq!(visible.locate(Path::new("/sys/fs/cgroup/a/b")).unwrap(), Path::new("/sys/fs/cgroup/a/b"));
        let Ok(file) = File::open("/") else { return };
        let private = V2Root { path: PathBuf::from("/proc/self/fd/7"), private: Some(file) };
        assert_eq!(
            private.locate(Path::new("/sys/fs/cgroup/a/b")).unwrap(),
            Path::new("/proc/self/fd/7/a/b")
        );
        let hybrid = private.locate(Path::new("/sys/fs/cgroup/unified/a")).unwrap();
        assert_eq!(hybrid, Path::new("/proc/self/fd/7/a"));
        assert!(matches!(private.locate(Path::new("/srv/cg")), Err(MountError::Outside(_))));
    }
}
