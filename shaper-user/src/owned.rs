//! Which HTB trees and IFB devices on this host are shaper's: one record per
//! shaped interface in the pin directory, written before shaper changes
//! anything on that interface, and a tag on every HTB root it builds.
//!
//! ```text
//! <pin dir>/owned/<ifindex>  ->  "shaper-owned v1 name=eth0 tag=1436592013 ifb=12"
//! ```
//!
//! A record is a symbolic link whose target is its text: a BPF filesystem
//! holds only BPF objects, directories and symlinks, and a symlink is
//! created, replaced (a rename) and read (readlink) in one system call each.
//! It outlives the daemon with the rest of the pinned state (a crash, `kill
//! -9`, `shaper stop --keep`), `ls -l` shows it, and it does not depend on the
//! config file: `shaper stop --force` reads it when the config no longer loads.
//!
//! ## What makes a root qdisc shaper's
//! The root of the interface (or of its IFB) is shaper's when it is an HTB
//! qdisc `1:` whose rate2quantum (`r2q` in `tc -d qdisc show`) is the record's
//! tag. Kind and handle alone say nothing: an admin's `tc qdisc add dev X root
//! handle 1: htb` has both, and can even copy shaper's class layout (`1:1` and
//! leaves under it). The kernel gives a qdisc no identity of its own (no id,
//! no creation time), so shaper marks its own:
//! - rate2quantum is set when HTB creates the qdisc and never after (HTB has
//!   no change operation: only deleting the qdisc takes the value away);
//! - the kernel reports it in every dump;
//! - HTB uses it only for classes without a quantum, and every class shaper
//!   makes has one, so the mark changes nothing in how it shapes;
//! - the tag is random per interface, between 2^30 and 2^31 (the kernel keeps
//!   r2q as a signed int): tc's default is 10, and a tree made again by hand,
//!   even a copy of shaper's, does not carry it unless the tag is copied too.
//!
//! The ifindex keys the record, not the name: a device deleted and created
//! again gets a new ifindex (so its new tree is not shaper's), and a renamed
//! one keeps its own. An IFB is shaper's when its ifindex is the one recorded
//! and its name the one shaper gives it. Ifindexes are per network namespace:
//! the record holds the namespace's inode, and [`take_down`] refuses to act on
//! a record from another namespace (where the same ifindex is another device).

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::tc::{self, Netlink, Qdisc};

/// The first word and version of a record's text.
const FORMAT: &str = "shaper-owned v1";
/// Tags are `TAG_BASE` plus 30 random bits.
const TAG_BASE: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum OwnedError {
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What shaper made for one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The shaped interface.
    pub ifindex: u32,
    /// Its name when the record was written (for messages).
    pub name: String,
    /// The mark on every HTB root shaper builds for the interface: on it, and on its IFB.
    pub tag: u32,
    /// The IFB shaper created for the interface's ingress, by ifindex.
    pub ifb: Option<u32>,
    /// The inode of the network namespace the ifindexes belong to (`None`
    /// when it could not be read).
    pub netns: Option<u64>,
}

/// The name of the IFB device shaper makes for interface `ifindex`.
pub fn ifb_name(ifindex: u32) -> String {
    format!("shpifb{ifindex}")
}

/// The inode of the calling thread's network namespace.
pub fn current_netns() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| m.ino())
}

impl Record {
    /// A record for interface `ifindex` with a fresh tag.
    pub fn new(ifindex: u32, name: &str) -> Self {
        Self { ifindex, name: name.to_string(), tag: new_tag(), ifb: None, netns: current_netns() }
    }

    /// Whether the record was made in the caller's network namespace (or
    /// says nothing of it).
    pub fn in_this_netns(&self) -> bool {
        self.netns.is_none_or(|n| current_netns().is_none_or(|here| here == n))
    }

    /// Whether `root` is the HTB root shaper built under this record.
    pub fn owns_root(&self, root: &Qdisc) -> bool {
        tc::is_tagged_htb_root(root, self.tag)
    }

    fn text(&self) -> String {
        let mut text = format!("{FORMAT} name={} tag={}", self.name, self.tag);
        if let Some(ifb) = self.ifb {
            text.push_str(&format!(" ifb={ifb}"));
        }
        if let Some(netns) = self.netns {
            text.push_str(&format!(" netns={netns}"));
        }
        text
    }

    /// The record of `ifindex` from its text; `None` if it is not one.
    fn parse(ifindex: u32, text: &str) -> Option<Self> {
        let rest = text.strip_prefix(FORMAT)?;
        let (mut name, mut tag, mut ifb, mut netns) = (None, None, None, None);
        for field in rest.split_whitespace() {
            match field.split_once('=')? {
                ("name", v) => name = Some(v.to_string()),
                ("tag", v) => tag = Some(v.parse().ok()?),
                ("ifb", v) => ifb = Some(v.parse().ok()?),
                ("netns", v) => netns = Some(v.parse().ok()?),
                _ => {}
            }
        }
        Some(Self { ifindex, name: name?, tag: tag?, ifb, netns })
    }
}

/// 30 random bits above 2^30 (see the module documentation).
fn new_tag() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into a 4-byte buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let random = if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        // No entropy source: time and pid still differ between two daemons.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        nanos ^ std::process::id().rotate_left(16)
    };
    TAG_BASE | (random & (TAG_BASE - 1))
}

/// The records in `<pin dir>/owned`.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, ifindex: u32) -> PathBuf {
        self.dir.join(ifindex.to_string())
    }

    /// The record of interface `ifindex`, if shaper made anything there.
    pub fn get(&self, ifindex: u32) -> Option<Record> {
        let text = std::fs::read_link(self.path(ifindex)).ok()?;
        Record::parse(ifindex, &text.to_string_lossy())
    }

    /// Every record, by ifindex. Entries that are not records are skipped.
    pub fn all(&self) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<Record> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter_map(|ifindex| self.get(ifindex))
            .collect();
        out.sort_by_key(|r| r.ifindex);
        out
    }

    /// Writes `record`, replacing the one of its interface in one rename.
    pub fn put(&self, record: &Record) -> Result<(), OwnedError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| OwnedError::Io { action, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        // bpffs refuses names with a dot in them.
        let new = self.dir.join(format!("{}-new", record.ifindex));
        let _ = std::fs::remove_file(&new);
        std::os::unix::fs::symlink(record.text(), &new).map_err(io_err("writing", &new))?;
        let path = self.path(record.ifindex);
        std::fs::rename(&new, &path).map_err(io_err("writing", &path))
    }

    /// Removes the record of `ifindex` (nothing of shaper's is left there).
    pub fn remove(&self, ifindex: u32) -> Result<(), OwnedError> {
        let path = self.path(ifindex);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(OwnedError::Io { action: "removing", path, source }),
        }
    }
}

/// The root qdisc of interface `ifindex` when shaper may not replace it:
/// neither the kernel's default nor the HTB root shaper recorded there.
pub fn foreign_root(nl: &Netlink, records: &Records, ifindex: u32) -> Result<Option<Qdisc>, tc::TcError> {
    let record = records.get(ifindex);
    Ok(tc::root_qdisc(nl, ifindex)?
        .filter(|q| !q.is_kernel_default() && !record.as_ref().is_some_and(|r| r.owns_root(q))))
}

/// The name of shaper's IFB for interface `ifindex` when a device that
/// shaper did not create (not the one recorded) has it.
pub fn foreign_ifb(nl: &Netlink, records: &Records, ifindex: u32) -> Result<Option<String>, tc::TcError> {
    let name = ifb_name(ifindex);
    let recorded = records.get(ifindex).and_then(|r| r.ifb);
    Ok(tc::link_by_name(nl, &name)?.filter(|dev| Some(dev.index) != recorded).map(|_| name))
}

/// What [`take_down`] did for one record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TakenDown {
    /// "HTB root 1: on eth0", "IFB shpifb2": what was removed.
    pub removed: Vec<String>,
    /// What was found in shaper's place and left, because it is not shaper's.
    pub left: Vec<String>,
    /// What could not be removed (the record stays, for the next attempt).
    pub failed: Vec<String>,
}

/// Removes what `record` says shaper made: its HTB root on the interface
/// (when the interface still exists and the root still is shaper's) and the
/// IFB it created (with the root on it). A root qdisc that is not shaper's is
/// left as it is. The record goes once nothing of it is left. A record from
/// another network namespace is left whole.
pub fn take_down(nl: &Netlink, records: &Records, record: &Record) -> TakenDown {
    let mut done = TakenDown::default();
    if !record.in_this_netns() {
        done.failed.push(format!(
            "{}: recorded in another network namespace (net:[{}])",
            record.name,
            record.netns.unwrap_or_default()
        ));
        return done;
    }
    let link = tc::link_by_index(nl, record.ifindex).ok().flatten();
    let shown = link.as_ref().map_or_else(|| record.name.clone(), |l| l.name.clone());
    if link.is_some() {
        match tc::root_qdisc(nl, record.ifindex) {
            Ok(Some(q)) if record.owns_root(&q) => match tc::remove_htb_root(nl, record.ifindex) {
                Ok(()) => done.removed.push(format!("HTB root 1: on {shown}")),
                Err(e) => done.failed.push(format!("HTB root 1: on {shown}: {}", crate::error_chain(&e))),
            },
            Ok(Some(q)) if !q.is_kernel_default() => done.left.push(format!(
                "{shown}: root qdisc {} {} (not shaper's)",
                q.kind,
                tc::format_handle(q.handle)
            )),
            Ok(_) => {}
            Err(e) => done.failed.push(format!("{shown}: {}", crate::error_chain(&e))),
        }
    }
    if let Some(ifb) = record.ifb {
        match tc::link_by_index(nl, ifb) {
            Ok(Some(dev)) if dev.name != ifb_name(record.ifindex) => {
                done.left.push(format!("{} (ifindex {ifb}, once shaper's IFB, renamed)", dev.name))
            }
            Ok(Some(dev)) => match tc::delete_link(nl, dev.index, &dev.name) {
                Ok(()) => done.removed.push(format!("IFB {}", dev.name)),
                Err(e) => done.failed.push(format!("IFB {}: {}", dev.name, crate::error_chain(&e))),
            },
            Ok(None) => {}
            Err(e) => done.failed.push(format!("IFB of {shown}: {}", crate::error_chain(&e))),
        }
    }
    if done.failed.is_empty() {
        if let Err(e) = records.remove(record.ifindex) {
            done.failed.push(crate::error_chain(&e));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let with_ifb = Record {
            ifindex: 7,
            name: "wg0".into(),
            tag: TAG_BASE + 5,
            ifb: Some(12),
            netns: Some(4026531840),
        };
        assert_eq!(
            with_ifb.text(),
            format!("shaper-owned v1 name=wg0 tag={} ifb=12 netns=4026531840", TAG_BASE + 5)
        );
        assert_eq!(Record::parse(7, &with_ifb.text()), Some(with_ifb));
        let without = Record { ifb: None, netns: None, ..Record::new(3, "eth0") };
        assert_eq!(Record::parse(3, &without.text()), Some(without));
        let here = Record::new(3, "eth0");
        assert!(here.netns.is_some() && here.in_this_netns());
        assert!(!Record { netns: here.netns.map(|n| n + 1), ..here }.in_this_netns());
    }

    #[test]
    fn anything_else_is_not_a_record() {
        assert_eq!(Record::parse(1, "../../etc/passwd"), None);
        assert_eq!(Record::parse(1, "shaper-owned v1 name=eth0"), None);
        assert_eq!(Record::parse(1, "shaper-owned v1 name=eth0 tag=x"), None);
        assert_eq!(Record::parse(1, "shaper-owned v1 name=eth0 tag=5 ifb"), None);
    }

    #[test]
    fn tags_are_far_from_any_r2q_typed_by_hand_and_fit_the_kernels_int() {
        for _ in 0..1000 {
            let tag = new_tag();
            assert!((TAG_BASE..=i32::MAX as u32).contains(&tag), "{tag}");
        }
        assert_ne!(new_tag(), new_tag());
    }

    #[test]
    fn only_a_tagged_htb_root_1_is_owned() {
        let record = Record { tag: TAG_BASE + 9, ..Record::new(2, "eth0") };
        let root = |kind: &str, handle: u32, r2q: Option<u32>| Qdisc {
            kind: kind.into(),
            handle,
            parent: tc::TC_H_ROOT,
            r2q,
        };
        assert!(record.owns_root(&root("htb", 0x1_0000, Some(TAG_BASE + 9))));
        assert!(!record.owns_root(&root("htb", 0x1_0000, Some(10))), "an admin's htb 1:");
        assert!(!record.owns_root(&root("htb", 0x1_0000, Some(TAG_BASE + 8))), "another shaper's");
        assert!(!record.owns_root(&root("htb", 0x2_0000, Some(TAG_BASE + 9))));
        assert!(!record.owns_root(&root("tbf", 0x1_0000, None)));
    }
}
