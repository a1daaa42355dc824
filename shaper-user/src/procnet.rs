//! /proc/net/{tcp,tcp6,udp,udp6}: the connected sockets as text. The daemon
//! reads them only for a table the kernel cannot dump over sock_diag (see
//! [`crate::sockdiag`]; `udp_diag` is a module some kernels lack), and says
//! so in `status`. These records carry no socket cookie (0).

use procfs::net::TcpState;
use shaper_common::{PROTO_TCP, PROTO_UDP};

use crate::{
    flows,
    sockdiag::{SockState, Socket, Table},
};

#[derive(Debug, thiserror::Error)]
#[error("reading /proc/net/{table}")]
pub struct ProcNetError {
    pub table: &'static str,
    #[source]
    pub source: procfs::ProcError,
}

/// The connected sockets of `table` (listening and unconnected ones have no
/// remote end and are left out), as sock_diag would give them but without cookies.
pub fn connected(table: Table, visit: &mut dyn FnMut(&Socket)) -> Result<usize, ProcNetError> {
    let err = |table| move |source| ProcNetError { table, source };
    let mut n = 0;
    match table {
        Table::Tcp4 | Table::Tcp6 => {
            let entries = if table == Table::Tcp4 {
                procfs::net::tcp().map_err(err("tcp"))?
            } else {
                procfs::net::tcp6().map_err(err("tcp6"))?
            };
            for e in entries.iter().filter(|e| e.state != TcpState::Listen && e.remote_address.port() != 0) {
                n += 1;
                visit(&Socket {
                    key: flows::key(PROTO_TCP, e.local_address, e.remote_address),
                    state: SockState::from(&e.state),
                    uid: e.uid,
                    inode: e.inode,
                    cookie: 0,
                    cgroup_id: None,
                });
            }
        }
        Table::Udp4 | Table::Udp6 => {
            let entries = if table == Table::Udp4 {
                procfs::net::udp().map_err(err("udp"))?
            } else {
                procfs::net::udp6().map_err(err("udp6"))?
            };
            for e in entries.iter().filter(|e| e.remote_address.port() != 0) {
                n += 1;
                visit(&Socket {
                    key: flows::key(PROTO_UDP, e.local_address, e.remote_address),
                    state: SockState::Udp,
                    uid: e.uid,
                    inode: e.inode,
                    cookie: 0,
                    cgroup_id: None,
                });
            }
        }
    }
    Ok(n)
}

/// Every connected socket of the namespace, from /proc/net alone (the
/// benchmark's "today" figure).
pub fn connected_sockets() -> Result<Vec<Socket>, ProcNetError> {
    let mut out = Vec::new();
    for table in Table::ALL {
        connected(table, &mut |s| out.push(*s))?;
    }
    Ok(out)
}
