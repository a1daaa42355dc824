//! `[daemon] watch_config`: noticing that the config file changed.
//!
//! A file changes in three ways that matter here: written in place (an
//! editor's plain save, `cp`), replaced by a rename (an editor that writes a
//! temporary file and renames it over the old one), or reached through
//! symbolic links one of which was swapped. The last is how the kubelet
//! updates a mounted ConfigMap: `DIR/shaper.toml` is a link to
//! `..data/shaper.toml`, `..data` a link to a `..TIMESTAMP` directory, and an
//! update writes a new `..TIMESTAMP` directory, points `..data_tmp` at it,
//! renames `..data_tmp` over `..data` and deletes the old directory. The
//! file `DIR/shaper.toml` itself is never touched.
//!
//! So the watch follows the path the way the kernel resolves it and watches
//! (inotify) the directory of every symbolic link on the way and of the file
//! it ends at, for events on those names only. After a change
//! [`ConfigWatch::rearm`] follows the path again: the next swap is seen in the
//! directories the path now goes through, and directories it left are no
//! longer watched.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

/// Symbolic links followed at most (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// What is watched in each directory: names created, renamed in, or written
/// and closed; and the directory itself going away or being renamed.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_CREATE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// An inotify descriptor watching the directories a config path goes through.
pub struct ConfigWatch {
    fd: OwnedFd,
    file: PathBuf,
    /// Watch descriptor → the directory and the names in it on the path.
    watched: HashMap<i32, (PathBuf, HashSet<OsString>)>,
}

impl AsRawFd for ConfigWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl ConfigWatch {
    /// Watches `file` (which need not exist yet: then its nearest directory
    /// waits for it).
    pub fn new(file: &Path) -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::path::absolute(file)?;
        let mut watch = Self { fd, file, watched: HashMap::new() };
        watch.rearm()?;
        Ok(watch)
    }

    /// Follows the path again and watches the directories it now goes
    /// through; stops watching those it no longer does. Call it after a
    /// change, before the file is read. A directory that cannot be watched
    /// (gone again already, or the inotify limit reached) is the error; the
    /// others are watched all the same.
    pub fn rearm(&mut self) -> io::Result<()> {
        let mut now: HashMap<i32, (PathBuf, HashSet<OsString>)> = HashMap::new();
        let mut failed = None;
        for (dir, name) in path_steps(&self.file) {
            match self.add(&dir) {
                Ok(wd) => {
                    now.entry(wd).or_insert_with(|| (dir, HashSet::new())).1.insert(name);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        for wd in self.watched.keys().filter(|wd| !now.contains_key(wd)) {
            // SAFETY: plain syscall on our descriptor; a watch the kernel has
            // already dropped (its directory deleted) just fails.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), *wd) };
        }
        self.watched = now;
        failed.map_or(Ok(()), Err)
    }

    fn add(&self, dir: &Path) -> io::Result<i32> {
        let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
        // SAFETY: valid descriptor and C string.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("watching {}: {e}", dir.display())));
        }
        Ok(wd)
    }

    /// Reads the pending events; true if one was about the path: a name on
    /// it created, renamed in or written, or a directory on it gone.
    pub fn changed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let mut hit = false;
        loop {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { return hit };
            if n == 0 {
                return hit;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name = buf.get(at + header..at + header + event.len as usize).unwrap_or_default();
                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                hit |= self.concerns(event.wd, event.mask, OsStr::from_bytes(&name[..end]));
                at += header + event.len as usize;
            }
        }
    }

    fn concerns(&mut self, wd: i32, mask: u32, name: &OsStr) -> bool {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            return true;
        }
        let gone = mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0;
        let on_path = match self.watched.get(&wd) {
            Some((_, names)) => gone || names.contains(name),
            None => false,
        };
        if mask & libc::IN_IGNORED != 0 {
            self.watched.remove(&wd);
        }
        on_path
    }

    /// The directories watched, sorted, for the log.
    pub fn directories(&self) -> Directories {
        let mut dirs: Vec<_> = self.watched.values().map(|(d, _)| d.clone()).collect();
        dirs.sort();
        Directories(dirs)
    }
}

/// The directories a watch is in; shown as a comma-separated list.
#[derive(Debug, PartialEq, Eq)]
pub struct Directories(pub Vec<PathBuf>);

impl std::fmt::Display for Directories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, dir) in self.0.iter().enumerate() {
            write!(f, "{}{}", if i == 0 { "" } else { ", " }, dir.display())?;
        }
        Ok(())
    }
}

/// One step of a path being resolved.
enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
    use std::path::Component;
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(n) => Some(Step::Name(n.to_os_string())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// The (directory, name) pairs whose change can change what `file` reads:
/// every symbolic link met while resolving it, and the name it ends at (or
/// the first name that does not exist). Directories are symlink-free paths.
pub fn path_steps(file: &Path) -> Vec<(PathBuf, OsString)> {
    let mut todo: VecDeque<Step> = steps(file).collect();
    let mut at = PathBuf::from("/");
    let mut out = Vec::new();
    let mut links = 0;
    while let Some(step) = todo.pop_front() {
        let name = match step {
            Step::Root => {
                at = PathBuf::from("/");
                continue;
            }
            Step::Parent => {
                at.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let next = at.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() && links < MAX_LINKS => {
                let Ok(target) = std::fs::read_link(&next) else {
                    out.push((at, name));
                    break;
                };
                links += 1;
                out.push((at.clone(), name));
                for step in steps(&target).collect::<Vec<_>>().into_iter().rev() {
                    todo.push_front(step);
                }
            }
            Ok(_) if !todo.is_empty() => at = next,
            _ => {
                out.push((at, name));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use shaper_testkit::configmap::ConfigMapVolume;

    use super::*;

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shaper-watch-{tag}-{}", std::process::id()))
    }

    fn pair(dir: &Path, name: &str) -> (PathBuf, OsString) {
        (dir.to_path_buf(), OsString::from(name))
    }

    #[test]
    fn the_steps_of_a_configmap_path_are_its_links_and_the_file() {
        let mut volume = ConfigMapVolume::new(&temp("steps")).unwrap();
        volume.write(&[("shaper.toml", "a")]).unwrap();
        let dir = volume.dir();
        assert_eq!(
            path_steps(&volume.path("shaper.toml")),
            [pair(dir, "shaper.toml"), pair(dir, "..data"), pair(&volume.current().unwrap(), "shaper.toml")]
        );
        // A plain file: its own directory and name; a missing one likewise.
        let plain = dir.join("plain.toml");
        assert_eq!(path_steps(&plain), [pair(dir, "plain.toml")]);
        std::fs::write(&plain, "x").unwrap();
        assert_eq!(path_steps(&plain), [pair(dir, "plain.toml")]);
        // A missing directory on the way: its parent waits for it.
        assert_eq!(path_steps(&dir.join("nope/x.toml")), [pair(dir, "nope")]);
        // `..` after a link goes up from where the link led.
        std::os::unix::fs::symlink(volume.current().unwrap(), dir.join("stamp")).unwrap();
        assert_eq!(
            path_steps(&dir.join("stamp/../plain.toml")),
            [pair(dir, "stamp"), pair(dir, "plain.toml")]
        );
        // A loop of links ends.
        std::os::unix::fs::symlink("loop2", dir.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", dir.join("loop2")).unwrap();
        assert_eq!(path_steps(&dir.join("loop1")).len(), MAX_LINKS + 1);
    }

    #[test]
    fn a_configmap_swap_is_seen_again_and_again() {
        let mut volume = ConfigMapVolume::new(&temp("swap")).unwrap();
        volume.write(&[("shaper.toml", "one")]).unwrap();
        let file = volume.path("shaper.toml");
        let mut watch = ConfigWatch::new(&file).unwrap();
        assert!(!watch.changed(), "nothing happened yet");
        for generation in 2..=4 {
            let text = format!("generation {generation}");
            volume.write(&[("shaper.toml", &text)]).unwrap();
            assert!(watch.changed(), "swap {generation} was not seen");
            watch.rearm().unwrap();
            assert!(!watch.changed());
            assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
            // The old timestamped directory is gone, the new one watched.
            assert_eq!(watch.directories().0, [volume.dir().to_path_buf(), volume.current().unwrap()]);
        }
        // Another file of the volume is not the config.
        std::fs::write(volume.dir().join("other.toml"), "x").unwrap();
        assert!(!watch.changed());
    }

    #[test]
    fn an_editor_save_an_in_place_write_and_a_new_link_are_seen() {
        let dir = ConfigMapVolume::new(&temp("edit")).unwrap();
        let file = dir.path("shaper.toml");
        let mut watch = ConfigWatch::new(&file).unwrap();
        // Created where none was.
        std::fs::write(&file, "one").unwrap();
        assert!(watch.changed());
        watch.rearm().unwrap();
        // Written in place.
        std::fs::write(&file, "two").unwrap();
        assert!(watch.changed());
        // Saved by an editor: a temporary file renamed over it.
        std::fs::write(dir.path(".shaper.toml.swp"), "three").unwrap();
        assert!(!watch.changed(), "the temporary file is not the config");
        std::fs::rename(dir.path(".shaper.toml.swp"), &file).unwrap();
        assert!(watch.changed());
        watch.rearm().unwrap();
        // Replaced by a link to a file elsewhere; then that file is edited in place.
        let elsewhere = ConfigMapVolume::new(&temp("edit-target")).unwrap();
        std::fs::write(elsewhere.path("real.toml"), "four").unwrap();
        std::os::unix::fs::symlink(elsewhere.path("real.toml"), dir.path("tmp-link")).unwrap();
        std::fs::rename(dir.path("tmp-link"), &file).unwrap();
        assert!(watch.changed());
        watch.rearm().unwrap();
        let shown = format!("{}, {}", dir.dir().display(), elsewhere.dir().display());
        assert_eq!(watch.directories().to_string(), shown);
        std::fs::write(elsewhere.path("real.toml"), "five").unwrap();
        assert!(watch.changed());
        std::fs::write(elsewhere.path("unrelated.toml"), "six").unwrap();
        assert!(!watch.changed());
    }
}
