//! What /proc tells about processes: the facts the rules test ([`ProcessFacts`])
//! and which processes hold which sockets.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use shaper_common::Owner;

use crate::{
    accounts::Accounts,
    cgroups::{self, Cgroups},
    rules::pred::{Atom, Pred, ProcessFacts, TextAttr},
};

/// Parents followed at most when collecting ancestors.
const MAX_ANCESTORS: usize = 64;

/// Which facts the rules need beyond the socket owner record, so the daemon
/// reads no more of /proc than it must.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub exe: bool,
    pub args: bool,
    pub ancestors: bool,
}

impl Needs {
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a Pred>) -> Self {
        let mut needs = Self::default();
        for pred in rules {
            needs.exe |= pred.any_atom(&|a| matches!(a, Atom::Text(TextAttr::Exe, _)));
            needs.args |= pred.any_atom(&|a| matches!(a, Atom::Text(TextAttr::Args(_), _)));
            needs.ancestors |=
                pred.any_atom(&|a| matches!(a, Atom::Text(TextAttr::Parent | TextAttr::Ancestor, _)));
        }
        needs
    }
}

/// Where the kernel's process files are (tests of [`crate::proccache`] use a fake tree).
pub(crate) const PROC: &str = "/proc";

fn read(root: &Path, pid: u32, file: &str) -> Option<String> {
    std::fs::read_to_string(root.join(pid.to_string()).join(file)).ok()
}

/// The kernel's name of a process.
pub fn comm(pid: u32) -> Option<String> {
    comm_at(Path::new(PROC), pid)
}

fn comm_at(root: &Path, pid: u32) -> Option<String> {
    read(root, pid, "comm").map(|c| c.trim_end_matches('\n').to_string())
}

/// The parent of `pid`, from /proc/PID/stat (whose second field, the name, may
/// hold spaces and parentheses: the fields after it follow the last ')').
pub fn parent(pid: u32) -> Option<u32> {
    parent_at(Path::new(PROC), pid)
}

fn parent_at(root: &Path, pid: u32) -> Option<u32> {
    let stat = read(root, pid, "stat")?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Real uid and gid from /proc/PID/status.
fn ids(root: &Path, pid: u32) -> Option<(u32, u32)> {
    let status = read(root, pid, "status")?;
    let field = |name: &str| -> Option<u32> {
        status.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// The cgroup v2 path of a process, as [`cgroups::of_process`] reads it.
fn cgroup(root: &Path, pid: u32) -> Option<String> {
    cgroups::v2_path(&read(root, pid, "cgroup")?)
}

/// What /proc showed of a process: each fact `None` where its file could not
/// be read (the process is gone, or the fact was not asked for).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcRead {
    pub comm: Option<String>,
    /// Real uid and gid (read only when no owner record stands in for them).
    pub ids: Option<(u32, u32)>,
    pub cgroup: Option<String>,
    pub exe: Option<String>,
    pub args: Option<Vec<String>>,
    pub ancestors: Option<Vec<String>>,
}

impl ProcRead {
    /// Reads the facts of `pid` under `root`: those `needs` asks for, the
    /// ids when `with_ids`, and the name unless the caller has it already.
    pub fn read(root: &Path, pid: u32, needs: Needs, with_ids: bool, comm: Option<String>) -> Self {
        Self {
            comm: comm.or_else(|| comm_at(root, pid)),
            ids: if with_ids { ids(root, pid) } else { None },
            cgroup: cgroup(root, pid),
            exe: needs.exe.then(|| exe(root, pid)).flatten(),
            args: needs.args.then(|| args(root, pid)).flatten(),
            ancestors: needs.ancestors.then(|| ancestors(root, pid)).flatten(),
        }
    }

    /// Reads what `needs` asks for beyond `had` (the ids too when `with_ids`).
    pub fn complete(&mut self, root: &Path, pid: u32, had: Needs, needs: Needs, with_ids: bool) {
        if with_ids && self.ids.is_none() {
            self.ids = ids(root, pid);
        }
        if needs.exe && !had.exe {
            self.exe = exe(root, pid);
        }
        if needs.args && !had.args {
            self.args = args(root, pid);
        }
        if needs.ancestors && !had.ancestors {
            self.ancestors = ancestors(root, pid);
        }
    }
}

/// The facts of process `pid`. `owner` is what the kernel recorded for the
/// socket (it stands in for what /proc no longer shows once the process exits).
pub fn facts(
    pid: u32,
    owner: Option<&Owner>,
    needs: Needs,
    accounts: &dyn Accounts,
    cgroups: Option<&Cgroups>,
) -> ProcessFacts {
    let read = ProcRead::read(Path::new(PROC), pid, needs, owner.is_none(), None);
    assemble(pid, &read, owner, needs, accounts, cgroups)
}

/// The facts of `pid` from what /proc showed (`read`) and the socket's owner record.
pub(crate) fn assemble(
    pid: u32,
    read: &ProcRead,
    owner: Option<&Owner>,
    needs: Needs,
    accounts: &dyn Accounts,
    cgroups: Option<&Cgroups>,
) -> ProcessFacts {
    let recorded_comm = owner.map(|o| {
        let end = o.comm.iter().position(|b| *b == 0).unwrap_or(o.comm.len());
        String::from_utf8_lossy(&o.comm[..end]).into_owned()
    });
    // Unknown, not a value, when neither the record nor /proc told.
    let (uid, gid) = match owner {
        Some(o) => (Some(o.uid), Some(o.gid)),
        None => read.ids.map_or((None, None), |(u, g)| (Some(u), Some(g))),
    };
    let cgroup = read
        .cgroup
        .clone()
        .or_else(|| owner.filter(|o| o.cgroup_id != 0).and_then(|o| cgroups?.path_of(o.cgroup_id)));
    ProcessFacts {
        pid,
        uid,
        gid,
        user: uid.and_then(|u| accounts.user_name(u)),
        group: gid.and_then(|g| accounts.group_name(g)),
        cmd: read.comm.clone().or(recorded_comm),
        exe: read.exe.clone().filter(|_| needs.exe),
        args: read.args.clone().filter(|_| needs.args),
        cgroup,
        ancestors: read.ancestors.clone().filter(|_| needs.ancestors),
    }
}

fn exe(root: &Path, pid: u32) -> Option<String> {
    let link = std::fs::read_link(root.join(pid.to_string()).join("exe")).ok()?;
    let text = link.to_string_lossy();
    Some(text.strip_suffix(" (deleted)").unwrap_or(&text).to_string())
}

fn args(root: &Path, pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(root.join(pid.to_string()).join("cmdline")).ok()?;
    if raw.is_empty() {
        return None; // a kernel thread, or a process on its way out
    }
    let trimmed = raw.strip_suffix(&[0]).unwrap_or(&raw);
    Some(trimmed.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// Names of the parent, grandparent, … of `pid`.
fn ancestors(root: &Path, pid: u32) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut current = parent_at(root, pid)?;
    while current > 0 && out.len() < MAX_ANCESTORS {
        out.push(comm_at(root, current)?);
        current = parent_at(root, current).unwrap_or(0);
    }
    Some(out)
}

/// The processes holding each of `inodes` (socket inode numbers), found through
/// /proc/*/fd. Sockets nobody holds (closing, in time-wait) are absent.
pub fn socket_holders(inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    if inodes.is_empty() {
        return holders;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return holders };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let pids = holders.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::SystemAccounts;

    #[test]
    fn this_process_as_the_rules_see_it() {
        let me = std::process::id();
        let all = Needs { exe: true, args: true, ancestors: true };
        let f = facts(me, None, all, &SystemAccounts::default(), None);
        assert_eq!(f.pid, me);
        // SAFETY: getuid has no preconditions.
        assert_eq!(f.uid, Some(unsafe { libc::getuid() }));
        assert!(f.cmd.as_ref().is_some_and(|c| !c.is_empty() && c.len() <= 15), "{f:?}");
        assert!(f.exe.as_deref().is_some_and(|e| e.starts_with('/')), "{f:?}");
        assert!(f.args.as_ref().is_some_and(|a| !a.is_empty()), "{f:?}");
        assert!(f.ancestors.as_ref().is_some_and(|a| !a.is_empty()), "{f:?}");
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id()));
        let none = facts(me, None, Needs::default(), &SystemAccounts::default(), None);
        assert_eq!((none.exe, none.args, none.ancestors), (None, None, None));
    }

    #[test]
    fn sockets_are_traced_to_their_holders() {
        use std::os::unix::fs::MetadataExt as _;
        let (socket, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&socket));
        let inode = std::fs::metadata(fd_path).unwrap().ino();
        let holders = socket_holders(&HashSet::from([inode]));
        assert_eq!(holders.get(&inode), Some(&vec![std::process::id()]));
    }
}
