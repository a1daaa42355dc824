//! A ConfigMap volume as the kubelet writes it, for testing `watch_config`.
//!
//! The kubelet's atomic writer keeps each version of the files in a
//! directory of its own, `..TIMESTAMP`; `..data` is a symbolic link to the
//! current one, and each file name is a link into `..data`:
//!
//! ```text
//! VOLUME/shaper.toml -> ..data/shaper.toml
//! VOLUME/..data      -> ..2026_01_01_10_00_00.123456789
//! VOLUME/..2026_01_01_10_00_00.123456789/shaper.toml
//! ```
//!
//! An update writes a new timestamped directory, points `..data_tmp` at it,
//! renames `..data_tmp` over `..data` (the atomic step), adds links for new
//! file names, and deletes the previous directory.

use std::{
    io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// A volume directory, removed on drop.
pub struct ConfigMapVolume {
    dir: PathBuf,
    writes: u32,
}

impl ConfigMapVolume {
    /// An empty volume at `dir` (whatever was there is removed first).
    pub fn new(dir: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf(), writes: 0 })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a file of the volume is read, as a pod sees it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The timestamped directory `..data` points at now.
    pub fn current(&self) -> io::Result<PathBuf> {
        Ok(self.dir.join(std::fs::read_link(self.dir.join(DATA))?))
    }

    /// Writes a new version of the files, step by step as the kubelet does.
    pub fn write(&mut self, files: &[(&str, &str)]) -> io::Result<()> {
        let old = std::fs::read_link(self.dir.join(DATA)).ok();
        self.writes += 1;
        let stamp = stamp(self.writes);
        let new = self.dir.join(&stamp);
        std::fs::create_dir(&new)?;
        for (name, text) in files {
            std::fs::write(new.join(name), text)?;
        }
        symlink(&stamp, self.dir.join(DATA_TMP))?;
        std::fs::rename(self.dir.join(DATA_TMP), self.dir.join(DATA))?;
        for (name, _) in files {
            let visible = self.dir.join(name);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new(DATA).join(name), visible)?;
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old))?;
        }
        Ok(())
    }
}

/// `..` and the time, unique per write (the kubelet uses the UTC time and a
/// random suffix; only the leading `..` matters to anyone).
fn stamp(write: u32) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("..{}_{:09}.{write}", now.as_secs(), now.subsec_nanos())
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
