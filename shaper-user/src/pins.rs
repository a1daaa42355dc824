//! What shaper keeps in the BPF filesystem so that shaping outlives the daemon
//! (an upgrade, a crash, `kill -9`), and how a new daemon finds it again.
//!
//! ```text
//! <pin dir>/                     default /sys/fs/bpf/shaper
//!   v<PIN_LAYOUT>/
//!     maps/<MAP>                 flows, rules, counters, owner records, class names
//!     progs/<program>            the programs the links below run
//!     links/<program>-<ifindex>  the classifier on an interface (tcx link)
//!     links/<hook>               a socket hook on the cgroup
//!   owned/<ifindex>              what shaper made on an interface (see [`crate::owned`]);
//!                                outside the layout directories, which come and go with builds
//! ```
//!
//! The layout version changes whenever a pinned map's layout does, so a daemon
//! never reuses maps an incompatible build wrote: it takes over the links of an
//! older layout and removes that layout once its own programs are attached.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use shaper_common::PIN_LAYOUT;

/// Where bpffs is normally mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/shaper";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("mounting the BPF filesystem at {BPFFS}")]
    Mount(#[source] io::Error),
    #[error(
        "the pin directory {} is not on a BPF filesystem (mount one there, e.g. `mount -t bpf bpf DIR`)",
        .0.display()
    )]
    NotBpffs(PathBuf),
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the pinned map {} does not have the layout this shaper expects ({detail}); it was left by \
         an incompatible build. Stop that shaper (`shaper stop`) or remove the pin directory",
        path.display()
    )]
    Incompatible { path: PathBuf, detail: String },
}

fn statfs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

fn is_bpffs(path: &Path) -> bool {
    statfs_magic(path) == Some(BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf unless it is already there (most distributions
/// mount it at boot; some minimal systems do not).
fn ensure_mounted() -> Result<(), PinError> {
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(());
    }
    let target = CString::new(BPFFS).map_err(|e| PinError::Mount(io::Error::other(e)))?;
    let fstype = c"bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(PinError::Mount(io::Error::last_os_error()));
    }
    log::info!("mounted the BPF filesystem at {BPFFS}");
    Ok(())
}

/// The longest part of `path` that exists (`/` at worst).
fn nearest_existing(path: &Path) -> &Path {
    let mut existing = path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    existing
}

/// Where the pin directory is, as [`Pins::check`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinPlace {
    /// On a BPF filesystem.
    OnBpffs,
    /// Under /sys/fs/bpf, where nothing is mounted yet: the daemon mounts bpffs there.
    Unmounted,
}

/// The pin directory of one shaper.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
    dir: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf(), dir: root.join(format!("v{PIN_LAYOUT}")) }
    }

    /// The pin directory (`[daemon] pin_dir`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of this build's layout.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes sure the directory is on bpffs (mounting it at /sys/fs/bpf if
    /// that is where it goes and nothing is mounted there) and creates it.
    pub fn prepare(&self) -> Result<(), PinError> {
        if self.root.starts_with(BPFFS) {
            ensure_mounted()?;
        }
        if !is_bpffs(nearest_existing(&self.root)) {
            return Err(PinError::NotBpffs(self.root.clone()));
        }
        for sub in ["maps", "progs", "links"] {
            let path = self.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| PinError::Create { path, source })?;
        }
        Ok(())
    }

    /// Whether [`Pins::prepare`] would find the directory on a BPF
    /// filesystem, changing nothing (`shaper check`).
    pub fn check(&self) -> Result<PinPlace, PinError> {
        if self.root.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)) {
            return Ok(PinPlace::Unmounted);
        }
        if !is_bpffs(nearest_existing(&self.root)) {
            return Err(PinError::NotBpffs(self.root.clone()));
        }
        Ok(PinPlace::OnBpffs)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    /// The pin of the classifier `program` on interface `ifindex`.
    pub fn tc_link(&self, program: &str, ifindex: u32) -> PathBuf {
        self.dir.join("links").join(format!("{program}-{ifindex}"))
    }

    /// The pin of socket hook `program` on the cgroup.
    pub fn hook_link(&self, program: &str) -> PathBuf {
        self.dir.join("links").join(program)
    }

    /// The records of what shaper made on each interface ([`crate::owned`]).
    pub fn owned(&self) -> crate::owned::Records {
        crate::owned::Records::new(self.root.join("owned"))
    }

    /// Whether an earlier daemon left pinned maps here.
    pub fn has_state(&self) -> bool {
        self.map(shaper_common::names::MAP_IFACES).exists()
    }

    /// Directories of other layout versions under the pin directory.
    pub fn other_layouts(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p != &self.dir && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('v')))
            .collect()
    }

    /// Every pin file below the pin directory, relative to it, sorted.
    pub fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }

    /// Removes every pin and the directories (the pin directory too, when
    /// empty: records of what could not be removed keep it).
    pub fn remove_all(&self) {
        remove_layout(&self.dir);
        let _ = std::fs::remove_dir(self.root.join("owned"));
        let _ = std::fs::remove_dir(&self.root);
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            walk(base, &path, out);
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.display().to_string());
        }
    }
}

/// Unpins everything under a layout directory and removes it.
pub fn remove_layout(dir: &Path) {
    for sub in ["links", "progs", "maps"] {
        let path = dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&path) {
            for entry in entries.filter_map(Result::ok) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    log::warn!("unpinning {}: {e}", entry.path().display());
                }
            }
        }
        let _ = std::fs::remove_dir(&path);
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_laid_out_by_version_and_kind() {
        let pins = Pins::new(Path::new("/sys/fs/bpf/shaper"));
        let v = format!("/sys/fs/bpf/shaper/v{PIN_LAYOUT}");
        assert_eq!(pins.map("FLOWS"), Path::new(&v).join("maps/FLOWS"));
        assert_eq!(pins.tc_link("tc_egress", 7), Path::new(&v).join("links/tc_egress-7"));
        assert_eq!(pins.hook_link("connect4"), Path::new(&v).join("links/connect4"));
        assert_eq!(pins.prog("tc_ingress"), Path::new(&v).join("progs/tc_ingress"));
    }
}
