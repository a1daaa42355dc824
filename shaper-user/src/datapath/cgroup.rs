//! The socket hooks (shaper-ebpf/src/owner.rs) and their attachment to a
//! cgroup v2 directory: every socket made by a process in that cgroup or below
//! it gets an owner record.

use std::{fs::File, path::Path};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps,
    },
    Ebpf,
};
use shaper_common::names;

use super::{Datapath, DatapathError};

const SOCK_HOOKS: [&str; 4] =
    [names::PROG_SOCK_CREATE, names::PROG_SOCK_RELEASE, names::PROG_POST_BIND4, names::PROG_POST_BIND6];
const ADDR_HOOKS: [&str; 4] =
    [names::PROG_CONNECT4, names::PROG_CONNECT6, names::PROG_SENDMSG4, names::PROG_SENDMSG6];
/// Every socket hook, and the connection limits' sock_ops.
pub(super) const HOOKS: [&str; 9] = [
    SOCK_HOOKS[0],
    SOCK_HOOKS[1],
    SOCK_HOOKS[2],
    SOCK_HOOKS[3],
    ADDR_HOOKS[0],
    ADDR_HOOKS[1],
    ADDR_HOOKS[2],
    ADDR_HOOKS[3],
    names::PROG_SOCK_OPS,
];

/// One hook attached to the cgroup: the link, and its pin when pinned.
pub(super) struct HookLink {
    _link: FdLink,
    pin: Option<std::path::PathBuf>,
}

fn sock<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSock, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
    prog.try_into().map_err(|source| DatapathError::Program { name, source })
}

fn addr<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
    prog.try_into().map_err(|source| DatapathError::Program { name, source })
}

fn sock_ops(ebpf: &mut Ebpf) -> Result<&mut SockOps, DatapathError> {
    let name = names::PROG_SOCK_OPS;
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
    prog.try_into().map_err(|source| DatapathError::Program { name, source })
}

/// Loads the hooks into the kernel (attached later, by [`Datapath::attach_cgroup`]).
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for name in SOCK_HOOKS {
        sock(ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
    }
    for name in ADDR_HOOKS {
        addr(ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
    }
    let name = names::PROG_SOCK_OPS;
    sock_ops(ebpf)?.load().map_err(|source| DatapathError::Program { name, source })?;
    Ok(())
}

/// Attaches hook `name` to `dir` and returns its link.
fn attach_one(ebpf: &mut Ebpf, name: &'static str, dir: &File, path: &Path) -> Result<FdLink, DatapathError> {
    let attach_err = |source| DatapathError::AttachCgroup { name, path: path.to_path_buf(), source };
    let link_err = |source| DatapathError::PinnedLink { path: path.to_path_buf(), source };
    if name == names::PROG_SOCK_OPS {
        let prog = sock_ops(ebpf)?;
        let id = prog.attach(dir, CgroupAttachMode::Single).map_err(attach_err)?;
        FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)
    } else if SOCK_HOOKS.contains(&name) {
        let prog = sock(ebpf, name)?;
        let id = prog.attach(dir, CgroupAttachMode::Single).map_err(attach_err)?;
        FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)
    } else {
        let prog = addr(ebpf, name)?;
        let id = prog.attach(dir, CgroupAttachMode::Single).map_err(attach_err)?;
        FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(link_err)
    }
}

impl Datapath {
    /// Attaches the socket hooks to the cgroup v2 directory `path` (as bpf
    /// links, which always run alongside any other programs there, so the
    /// attach mode is the default: the kernel refuses flags on cgroup links).
    /// With a pin directory each link is pinned, replacing the link an earlier
    /// daemon pinned (the new hook is attached before the old one goes, so no
    /// socket is missed). Removed by [`Datapath::detach_cgroup`].
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<(), DatapathError> {
        let dir =
            File::open(path).map_err(|source| DatapathError::Cgroup { path: path.to_path_buf(), source })?;
        for name in HOOKS {
            let pin = self.pins.as_ref().map(|p| p.hook_link(name));
            // The earlier daemon's link: held open until the new one is in place.
            let old = match pin.as_ref().filter(|p| p.exists()) {
                Some(p) => {
                    let old = PinnedLink::from_pin(p)
                        .map_err(|source| DatapathError::PinnedLink { path: p.clone(), source })?;
                    Some(old.unpin().map_err(|source| DatapathError::Pin {
                        action: "unpinning",
                        path: p.clone(),
                        source,
                    })?)
                }
                None => None,
            };
            let link = attach_one(&mut self.ebpf, name, &dir, path)?;
            let link = match &pin {
                Some(p) => FdLink::from(link.pin(p).map_err(|e| DatapathError::Pin {
                    action: "pinning",
                    path: p.clone(),
                    source: std::io::Error::other(e),
                })?),
                None => link,
            };
            drop(old);
            self.cgroup_links.push(HookLink { _link: link, pin });
        }
        Ok(())
    }

    /// Detaches the socket hooks and unpins them (no-op when they are not attached).
    pub fn detach_cgroup(&mut self) {
        while let Some(HookLink { _link, pin }) = self.cgroup_links.pop() {
            if let Some(path) = pin {
                if let Err(e) = std::fs::remove_file(&path) {
                    log::warn!("unpinning {}: {e}", path.display());
                }
            }
        }
    }
}
