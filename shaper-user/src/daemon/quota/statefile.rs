//! The quota state file (`<state_dir>/quota.json`): each quota's usage and
//! period, saved so that a reboot (which empties the BPF filesystem and its
//! pinned counters) does not hand out a fresh allowance.
//!
//! Written atomically: a temporary file in the same directory, fsync,
//! rename over the old one, fsync of the directory. A file that cannot be
//! read as a state file is moved aside (`quota.json.corrupt-<unix time>`)
//! with a warning, and counting starts from zero: it never stops a start.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Version of the file's format.
const VERSION: u32 = 1;
pub const FILE_NAME: &str = "quota.json";

/// One quota's usage as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQuota {
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Start of the period the usage belongs to, seconds since the Unix epoch.
    pub period_start: u64,
    pub egress_bytes: u64,
    pub ingress_bytes: u64,
    #[serde(default)]
    pub dropped_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    /// When it was written, seconds since the Unix epoch.
    saved_at: u64,
    quotas: Vec<SavedQuota>,
}

#[derive(Debug, thiserror::Error)]
#[error("{action} {}", path.display())]
pub struct StateFileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The state file of a state directory.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn in_dir(dir: &Path) -> Self {
        Self { path: dir.join(FILE_NAME) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved quotas: none when there is no file; a file that cannot be
    /// read as one is moved aside with a warning.
    pub fn load(&self) -> Vec<SavedQuota> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                log::warn!("reading {}: {e}; quota usage starts from zero", self.path.display());
                return Vec::new();
            }
        };
        match serde_json::from_slice::<Saved>(&text) {
            Ok(saved) if saved.version == VERSION => saved.quotas,
            Ok(saved) => self.set_aside(&format!("format version {}, expected {VERSION}", saved.version)),
            Err(e) => self.set_aside(&e.to_string()),
        }
    }

    fn set_aside(&self, why: &str) -> Vec<SavedQuota> {
        let now = jiff::Timestamp::now().as_second();
        let aside = self.path.with_file_name(format!("{FILE_NAME}.corrupt-{now}"));
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => log::warn!(
                "{} is not a quota state file ({why}); moved it to {} and counting starts from zero",
                self.path.display(),
                aside.display()
            ),
            Err(e) => log::warn!(
                "{} is not a quota state file ({why}), and moving it aside failed ({e}); counting starts from zero",
                self.path.display()
            ),
        }
        Vec::new()
    }

    /// Writes `quotas` atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn save(&self, quotas: &[SavedQuota]) -> Result<(), StateFileError> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let fail = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateFileError { action, path, source }
        };
        std::fs::create_dir_all(dir).map_err(fail("creating", dir))?;
        let saved = Saved {
            version: VERSION,
            saved_at: jiff::Timestamp::now().as_second() as u64,
            quotas: quotas.to_vec(),
        };
        let mut text =
            serde_json::to_vec_pretty(&saved).map_err(|e| fail("encoding", &self.path)(e.into()))?;
        text.push(b'\n');
        let temp = self.path.with_file_name(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let written = File::create(&temp).and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(fail("writing", &temp)(e));
        }
        std::fs::rename(&temp, &self.path).map_err(fail("renaming into place", &self.path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(fail("syncing", dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shaper-statefile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_saved_file_loads_back_and_leaves_no_temporary_file() {
        let dir = dir("roundtrip");
        let file = StateFile::in_dir(&dir.join("nested"));
        assert!(file.load().is_empty());
        let quotas = vec![SavedQuota {
            class: "bulk".into(),
            instance: None,
            period_start: 1_700_000_000,
            egress_bytes: 20_000_000,
            ingress_bytes: 5,
            dropped_bytes: 0,
        }];
        file.save(&quotas).unwrap();
        assert_eq!(file.load(), quotas);
        let names: Vec<String> = std::fs::read_dir(dir.join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [FILE_NAME]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_counting_starts_from_zero() {
        let dir = dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::in_dir(&dir);
        std::fs::write(file.path(), "{\"version\": 1, \"quo").unwrap();
        assert!(file.load().is_empty());
        assert!(!file.path().exists());
        let aside: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].starts_with("quota.json.corrupt-"), "{aside:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
