//! The cgroup v2 hierarchy: where it is mounted, and cgroup paths ↔ ids (a
//! cgroup's id is the inode number of its directory), for rules on `cgroup`
//! and `unit` and for showing where a connection's process runs.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::rules::{
    compile::{CgroupIndex, Found},
    pred::is_unit,
};

/// Directories walked at most when looking for units or an id.
const MAX_WALK: usize = 200_000;
/// Levels walked at most.
const MAX_DEPTH: usize = 32;
/// How often an unknown id may trigger a new walk.
const REWALK_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/mounts")]
    Mounts(#[source] io::Error),
    #[error("cgroup v2 is not mounted (no cgroup2 line in /proc/mounts)")]
    NotMounted,
}

/// The mount point of the cgroup v2 hierarchy (e.g. /sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on hybrid systems).
pub fn v2_root() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(unescape(dir)))
        })
        .next()
        .ok_or(CgroupError::NotMounted)
}

/// /proc/mounts escapes spaces and a few other bytes as \ooo.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(char::from(b));
                continue;
            }
            out.push('\\');
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// The cgroup v2 path of process `pid` ("/system.slice/sshd.service"), from /proc/PID/cgroup.
pub fn of_process(pid: u32) -> Option<String> {
    v2_path(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The cgroup v2 path in the text of a /proc/PID/cgroup file. /proc shows
/// it relative to the reader's cgroup namespace: a daemon in a container's
/// namespace (a Kubernetes pod) reads a process outside it as
/// "/../../system.slice/x.service", which names no cgroup a rule does. Such
/// a path is no answer; the socket's owner record (a cgroup id, which no
/// namespace changes) is looked up in the mounted hierarchy instead.
pub fn v2_path(proc_cgroup: &str) -> Option<String> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    (!path.starts_with("/..")).then(|| path.to_string())
}

/// A view of the hierarchy under `root` (its mount point).
pub struct Cgroups {
    root: PathBuf,
    /// id → path, from the last walk.
    by_id: Mutex<(HashMap<u64, String>, Option<Instant>)>,
}

impl Cgroups {
    pub fn new(root: PathBuf) -> Self {
        Self { root, by_id: Mutex::new((HashMap::new(), None)) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Every cgroup below the root as (path, id), breadth first, bounded.
    fn walk(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut queue = vec![("/".to_string(), 0usize)];
        while let Some((path, depth)) = queue.pop() {
            let Ok(meta) = std::fs::metadata(self.dir(&path)) else { continue };
            out.push((path.clone(), meta.ino()));
            if depth >= MAX_DEPTH || out.len() >= MAX_WALK {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(self.dir(&path)) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                    queue.push((child, depth + 1));
                }
            }
        }
        out
    }

    /// The path of cgroup `id`, walking the hierarchy again (at most once a
    /// second) when the id is new.
    pub fn path_of(&self, id: u64) -> Option<String> {
        let mut cache = self.by_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(path) = cache.0.get(&id) {
            return Some(path.clone());
        }
        if cache.1.is_some_and(|t| t.elapsed() < REWALK_AFTER) {
            return None;
        }
        cache.0 = self.walk().into_iter().map(|(p, i)| (i, p)).collect();
        cache.1 = Some(Instant::now());
        cache.0.get(&id).cloned()
    }
}

fn level(path: &str) -> u32 {
    path.split('/').filter(|c| !c.is_empty()).count() as u32
}

impl CgroupIndex for Cgroups {
    fn lookup(&self, path: &str) -> Option<(u64, u32)> {
        let meta = std::fs::metadata(self.dir(path)).ok()?;
        meta.is_dir().then(|| (meta.ino(), level(path)))
    }

    fn units(&self, unit: &str) -> Vec<Found> {
        if !is_unit(unit) {
            return Vec::new();
        }
        self.walk()
            .into_iter()
            .filter(|(p, _)| p.rsplit('/').next() == Some(unit))
            .map(|(path, id)| Found { level: level(&path), path, id })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_outside_the_readers_namespace_is_no_answer() {
        assert_eq!(v2_path("0::/system.slice/sshd.service\n").as_deref(), Some("/system.slice/sshd.service"));
        assert_eq!(v2_path("12:pids:/x\n0::/\n").as_deref(), Some("/"));
        // As a daemon in a pod's cgroup namespace reads a process of the node.
        assert_eq!(v2_path("0::/../../../system.slice/sshd.service\n"), None);
        assert_eq!(v2_path("0::/..\n"), None);
        // A cgroup v1 only line.
        assert_eq!(v2_path("3:cpu:/x\n"), None);
    }

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
    }

    #[test]
    fn a_fake_hierarchy_is_indexed_by_inode() {
        let root = std::env::temp_dir().join(format!("shaper-cgroups-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("system.slice/sshd.service")).unwrap();
        std::fs::create_dir_all(root.join("user.slice/x/sshd.service")).unwrap();
        let cg = Cgroups::new(root.clone());
        let (id, lvl) = cg.lookup("/system.slice/sshd.service").unwrap();
        assert_eq!(lvl, 2);
        assert_eq!(id, std::fs::metadata(root.join("system.slice/sshd.service")).unwrap().ino());
        assert_eq!(cg.lookup("/nope"), None);
        let mut units: Vec<u32> = cg.units("sshd.service").into_iter().map(|f| f.level).collect();
        units.sort_unstable();
        assert_eq!(units, [2, 3]);
        assert!(cg.units("x").is_empty());
        assert_eq!(cg.path_of(id).as_deref(), Some("/system.slice/sshd.service"));
        assert_eq!(cg.lookup("/").map(|(_, l)| l), Some(0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
