//! The socket hooks (shaper-ebpf/src/owner.rs) and their attachment to a
//! cgroup v2 directory: every socket made by a process in that cgroup or below
//! it gets an owner record.

use std::{fs::File, path::Path};

use aya::{
    programs::{
        cgroup_sock::CgroupSockLinkId, cgroup_sock_addr::CgroupSockAddrLinkId, CgroupAttachMode, CgroupSock,
        CgroupSockAddr,
    },
    Ebpf,
};
use shaper_common::names;

use super::{Datapath, DatapathError};

const SOCK_HOOKS: [&str; 4] =
    [names::PROG_SOCK_CREATE, names::PROG_SOCK_RELEASE, names::PROG_POST_BIND4, names::PROG_POST_BIND6];
const ADDR_HOOKS: [&str; 4] =
    [names::PROG_CONNECT4, names::PROG_CONNECT6, names::PROG_SENDMSG4, names::PROG_SENDMSG6];

/// One hook attached to the cgroup.
pub(super) enum HookLink {
    Sock(&'static str, CgroupSockLinkId),
    Addr(&'static str, CgroupSockAddrLinkId),
}

fn sock<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSock, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
    prog.try_into().map_err(|source| DatapathError::Program { name, source })
}

fn addr<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, DatapathError> {
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
    Ok(())
}

impl Datapath {
    /// Attaches the socket hooks to the cgroup v2 directory `path` (as bpf
    /// links, which always run alongside any other programs there, so the
    /// attach mode is the default: the kernel refuses flags on cgroup links).
    /// Detached again on drop.
    pub fn attach_cgroup(&mut self, path: &Path) -> Result<(), DatapathError> {
        let dir =
            File::open(path).map_err(|source| DatapathError::Cgroup { path: path.to_path_buf(), source })?;
        let attach_err =
            |name, source| DatapathError::AttachCgroup { name, path: path.to_path_buf(), source };
        for name in SOCK_HOOKS {
            let link = sock(&mut self.ebpf, name)?
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| attach_err(name, e))?;
            self.cgroup_links.push(HookLink::Sock(name, link));
        }
        for name in ADDR_HOOKS {
            let link = addr(&mut self.ebpf, name)?
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| attach_err(name, e))?;
            self.cgroup_links.push(HookLink::Addr(name, link));
        }
        Ok(())
    }

    /// Detaches the socket hooks (no-op when they are not attached).
    pub fn detach_cgroup(&mut self) {
        while let Some(link) = self.cgroup_links.pop() {
            let result = match link {
                HookLink::Sock(name, id) => sock(&mut self.ebpf, name)
                    .and_then(|p| p.detach(id).map_err(|source| DatapathError::Program { name, source })),
                HookLink::Addr(name, id) => addr(&mut self.ebpf, name)
                    .and_then(|p| p.detach(id).map_err(|source| DatapathError::Program { name, source })),
            };
            if let Err(e) = result {
                log::warn!("detaching a socket hook: {}", crate::error_chain(&e));
            }
        }
    }
}
