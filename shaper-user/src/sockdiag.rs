//! Connected sockets from the kernel: one NETLINK_SOCK_DIAG dump per table
//! (TCP and UDP, IPv4 and IPv6) instead of /proc/net/{tcp,tcp6,udp,udp6}.
//!
//! The kernel answers `SOCK_DIAG_BY_FAMILY` requests (`inet_diag_req_v2`) with
//! one `inet_diag_msg` per socket, in datagrams of up to 32 KiB, and ends each
//! dump with `NLMSG_DONE`. Besides what /proc shows (tuple, state, uid, inode)
//! every record carries the socket cookie, the key of the kernel's OWNERS
//! records, and the socket's cgroup id.
//!
//! [`SockDiag::dump`] streams: the caller's visitor sees each socket in turn,
//! decoded from one reusable receive buffer, so a dump of 100 000 sockets holds
//! no more than one datagram at a time. The netlink socket belongs to the
//! network namespace the calling thread was in when [`SockDiag::open`] ran.
//!
//! What it reports matches [`crate::procnet::connected`]: every TCP
//! state but LISTEN, and only sockets with a remote end (remote port not 0);
//! keys built by [`flows::key`], so a dual-stack socket talking IPv4 has an
//! IPv4 key.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use shaper_common::{FlowKey, PROTO_TCP, PROTO_UDP};

use crate::flows;

/// `NETLINK_SOCK_DIAG` (linux/netlink.h).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK` (linux/inet_diag.h): the older request, whose dump
/// lists TCP sockets of both families in one walk of the kernel's table.
const TCPDIAG_GETSOCK: u16 = 18;
/// `sizeof(struct inet_diag_req)`, the older request.
const COMPAT_REQ_LEN: usize = 60;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_LEN: usize = 56;
/// `sizeof(struct inet_diag_msg)`.
const MSG_LEN: usize = 72;
/// `INET_DIAG_CGROUP_ID`: the u64 id of the socket's cgroup (kernel >= 5.7).
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_LISTEN: u8 = 10;
/// The kernel fills dump datagrams up to 32 KiB; the buffer leaves room.
const RECV_BUFFER: usize = 64 * 1024;
/// Seconds a dump may go without a datagram before it fails.
const RECV_TIMEOUT_S: libc::time_t = 10;

/// A socket table the kernel dumps separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Tcp4, Table::Tcp6, Table::Udp4, Table::Udp6];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Tcp4 => "tcp",
            Table::Tcp6 => "tcp6",
            Table::Udp4 => "udp",
            Table::Udp6 => "udp6",
        }
    }

    fn family(self) -> u8 {
        match self {
            Table::Tcp4 | Table::Udp4 => libc::AF_INET as u8,
            Table::Tcp6 | Table::Udp6 => libc::AF_INET6 as u8,
        }
    }

    fn proto(self) -> u8 {
        match self {
            Table::Tcp4 | Table::Tcp6 => PROTO_TCP,
            Table::Udp4 | Table::Udp6 => PROTO_UDP,
        }
    }

    /// Bit `s` asks for sockets in state `s`: every TCP state but LISTEN; for
    /// UDP every state (connected UDP sockets are "established", the others
    /// "close"; the ones without a remote end are dropped after the dump).
    fn states(self) -> u32 {
        match self.proto() {
            PROTO_TCP => !(1u32 << TCP_LISTEN),
            _ => u32::MAX,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("opening a NETLINK_SOCK_DIAG socket")]
    Open(#[source] io::Error),
    #[error("asking the kernel for the {table} sockets")]
    Send {
        table: Table,
        #[source]
        source: io::Error,
    },
    #[error("receiving the {table} sockets")]
    Recv {
        table: Table,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the {table} dump")]
    Kernel {
        table: Table,
        #[source]
        source: io::Error,
    },
    #[error("a {table} dump datagram of {len} bytes does not fit the {buffer}-byte buffer")]
    Truncated { table: Table, len: usize, buffer: usize },
    #[error("malformed {table} dump: {detail}")]
    Malformed { table: Table, detail: &'static str },
}

/// A socket's state: TCP states as the kernel numbers them, `Udp` for every
/// UDP socket (whose kernel state only says connected or not), and `Gone` for
/// a flow whose socket no longer exists. On the wire (`shaper conns --json`)
/// they are spelled as `ss` spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SockState {
    Established,
    SynSent,
    SynRecv,
    #[serde(rename = "fin-wait-1")]
    FinWait1,
    #[serde(rename = "fin-wait-2")]
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    Udp,
    Gone,
}

impl SockState {
    /// The TCP state numbered `n` by the kernel (include/net/tcp_states.h).
    pub fn from_tcp(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            13 => Self::BoundInactive,
            _ => return None,
        })
    }

    /// The name `ss` gives the state, in lowercase ("established",
    /// "time-wait", …), as `ss` spells it; "udp" for UDP.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::SynSent => "syn-sent",
            Self::SynRecv => "syn-recv",
            Self::FinWait1 => "fin-wait-1",
            Self::FinWait2 => "fin-wait-2",
            Self::TimeWait => "time-wait",
            Self::Close => "close",
            Self::CloseWait => "close-wait",
            Self::LastAck => "last-ack",
            Self::Listen => "listen",
            Self::Closing => "closing",
            Self::NewSynRecv => "new-syn-recv",
            Self::BoundInactive => "bound-inactive",
            Self::Udp => "udp",
            Self::Gone => "gone",
        }
    }
}

impl fmt::Display for SockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&procfs::net::TcpState> for SockState {
    fn from(state: &procfs::net::TcpState) -> Self {
        use procfs::net::TcpState as T;
        match state {
            T::Established => Self::Established,
            T::SynSent => Self::SynSent,
            T::SynRecv => Self::SynRecv,
            T::FinWait1 => Self::FinWait1,
            T::FinWait2 => Self::FinWait2,
            T::TimeWait => Self::TimeWait,
            T::Close => Self::Close,
            T::CloseWait => Self::CloseWait,
            T::LastAck => Self::LastAck,
            T::Listen => Self::Listen,
            T::Closing => Self::Closing,
            T::NewSynRecv => Self::NewSynRecv,
        }
    }
}

/// A connected socket of the namespace, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub key: FlowKey,
    pub state: SockState,
    /// The socket's owner uid (0 for sockets in time-wait, which have none).
    pub uid: u32,
    /// The socket's inode number (0 for time-wait and half-open sockets).
    pub inode: u64,
    /// The socket cookie: what `bpf_get_socket_cookie` and `SO_COOKIE` give,
    /// and the key of the kernel's OWNERS records.
    pub cookie: u64,
    /// The id of the cgroup the socket was made in, when the kernel says.
    pub cgroup_id: Option<u64>,
}

/// What one dump saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Sockets handed to the visitor.
    pub sockets: usize,
    /// Records without a remote end (unconnected UDP), skipped.
    pub skipped: usize,
    /// Datagrams received.
    pub datagrams: usize,
    /// Tables the kernel has no diag support for (`udp_diag` not built or
    /// loaded): their sockets are missing from the dump; the caller must
    /// read them elsewhere ([`crate::procnet`]) and say the scan is degraded.
    pub unavailable: Vec<Table>,
}

/// A NETLINK_SOCK_DIAG socket and its receive buffer, kept between dumps.
pub struct SockDiag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    /// The kernel takes `TCPDIAG_GETSOCK`: one dump lists IPv4 and IPv6 TCP
    /// sockets, where `SOCK_DIAG_BY_FAMILY` walks the same table once per
    /// family (a walk of every TCP socket of the host, in every namespace).
    tcp_both: bool,
}

impl SockDiag {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SockDiagError> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(SockDiagError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A dump that stops answering ends in an error instead of a hang.
        let timeout = libc::timeval { tv_sec: RECV_TIMEOUT_S, tv_usec: 0 };
        // SAFETY: SO_RCVTIMEO reads a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(SockDiagError::Open(io::Error::last_os_error()));
        }
        Ok(Self { fd, buf: vec![0; RECV_BUFFER], seq: 0, tcp_both: true })
    }

    /// Every connected TCP and UDP socket (IPv4 and IPv6), one at a time.
    /// A table the kernel cannot dump (ENOENT: no diag module for the
    /// protocol) is listed in [`DumpStats::unavailable`]; any other error
    /// ends the dump.
    pub fn dump(&mut self, mut visit: impl FnMut(&Socket)) -> Result<DumpStats, SockDiagError> {
        let mut stats = DumpStats::default();
        let mut tables = &Table::ALL[..];
        if self.tcp_both {
            match self.dump_tcp_both(&mut stats, &mut visit) {
                Ok(()) => tables = &Table::ALL[2..],
                // Refused before any socket: the kernel lacks the older request.
                Err(SockDiagError::Kernel { source, .. })
                    if stats.sockets == 0
                        && matches!(
                            source.raw_os_error(),
                            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOENT)
                        ) =>
                {
                    self.tcp_both = false;
                }
                Err(e) => return Err(e),
            }
        }
        for table in tables.iter().copied() {
            match self.dump_table(table, &mut stats, &mut visit) {
                Err(SockDiagError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                    stats.unavailable.push(table);
                }
                result => result?,
            }
        }
        Ok(stats)
    }

    /// The connected TCP sockets of both families, in one walk.
    fn dump_tcp_both(
        &mut self,
        stats: &mut DumpStats,
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), SockDiagError> {
        self.seq = self.seq.wrapping_add(1);
        self.send(Table::Tcp4, &request_tcp_both(self.seq))?;
        self.receive(Table::Tcp4, stats, visit)
    }

    /// The connected sockets of one table.
    pub fn dump_table(
        &mut self,
        table: Table,
        stats: &mut DumpStats,
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), SockDiagError> {
        self.seq = self.seq.wrapping_add(1);
        self.send(table, &request(table, self.seq))?;
        self.receive(table, stats, visit)
    }

    /// Reads a dump to its end.
    fn receive(
        &mut self,
        table: Table,
        stats: &mut DumpStats,
        visit: &mut dyn FnMut(&Socket),
    ) -> Result<(), SockDiagError> {
        let mut failure = None;
        loop {
            let len = match self.recv(table) {
                Ok(len) => len,
                // After a malformed datagram the end may never come: the
                // receive timeout ends the wait, and the first error stands.
                Err(e) => return Err(failure.unwrap_or(e)),
            };
            stats.datagrams += 1;
            // After a malformed message the rest of the dump is read all
            // the same, so the next one starts clean.
            match walk(&self.buf[..len], self.seq, table, stats, visit, &mut failure) {
                Walk::More => {}
                Walk::Done => return failure.map_or(Ok(()), Err),
                // The kernel ended the dump with an error: nothing more comes.
                Walk::Failed(e) => return Err(failure.unwrap_or(e)),
            }
        }
    }

    fn send(&self, table: Table, request: &[u8]) -> Result<(), SockDiagError> {
        // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: the buffer and the address are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if sent >= 0 {
                return Ok(());
            }
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(SockDiagError::Send { table, source });
            }
        }
    }

    /// Receives one datagram into the buffer; returns its length.
    fn recv(&mut self, table: Table) -> Result<usize, SockDiagError> {
        loop {
            // SAFETY: the buffer is valid for its length; MSG_TRUNC makes the
            // call return the datagram's real length, which may exceed it.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_TRUNC)
            };
            if n >= 0 {
                let len = n as usize;
                if len > self.buf.len() {
                    return Err(SockDiagError::Truncated { table, len, buffer: self.buf.len() });
                }
                return Ok(len);
            }
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(SockDiagError::Recv { table, source });
            }
        }
    }
}

/// One dump request: `nlmsghdr` + `inet_diag_req_v2`, no attributes.
fn request(table: Table, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in the socket's port id.
    let body = &mut req[NLMSG_HDRLEN..];
    body[0] = table.family(); // sdiag_family
    body[1] = table.proto(); // sdiag_protocol
                             // idiag_ext 0 (no extensions), pad 0, then idiag_states; the socket id
                             // (a filter for one socket) stays zero: a dump ignores it.
    body[4..8].copy_from_slice(&table.states().to_ne_bytes());
    req
}

/// The older dump request: `nlmsghdr` + `inet_diag_req`, TCP of every
/// family (the kernel answers it with the same `inet_diag_msg` records).
fn request_tcp_both(seq: u32) -> [u8; NLMSG_HDRLEN + COMPAT_REQ_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + COMPAT_REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + COMPAT_REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    let body = &mut req[NLMSG_HDRLEN..];
    // idiag_family (ignored by a dump), src_len, dst_len, ext 0, the socket
    // id (48 bytes, zero), then idiag_states and idiag_dbs.
    body[0] = libc::AF_INET as u8;
    body[52..56].copy_from_slice(&Table::Tcp4.states().to_ne_bytes());
    req
}

enum Walk {
    More,
    Done,
    /// The kernel refused the request or ended the dump with an error.
    Failed(SockDiagError),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_ne_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(x)
}

/// Netlink messages and attributes are aligned to 4 bytes.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Walks the messages of one datagram.
fn walk(
    mut data: &[u8],
    seq: u32,
    table: Table,
    stats: &mut DumpStats,
    visit: &mut dyn FnMut(&Socket),
    failure: &mut Option<SockDiagError>,
) -> Walk {
    let mut malformed = |detail| {
        failure.get_or_insert(SockDiagError::Malformed { table, detail });
    };
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            malformed("a message length beyond its datagram");
            return Walk::More;
        }
        let (kind, msg_seq) = (u16_at(data, 4), u32_at(data, 8));
        let body = &data[NLMSG_HDRLEN..len];
        data = &data[align(len).min(data.len())..];
        if msg_seq != seq {
            continue; // the end of an earlier, abandoned dump
        }
        // NLMSG_ERROR carries the errno of a refused request (0: an
        // acknowledgement); NLMSG_DONE that of a dump that failed midway.
        let errno = if body.len() >= 4 { -(u32_at(body, 0) as i32) } else { 0 };
        let failed = |errno| SockDiagError::Kernel { table, source: io::Error::from_raw_os_error(errno) };
        match kind {
            NLMSG_DONE if errno > 0 => return Walk::Failed(failed(errno)),
            NLMSG_DONE => return Walk::Done,
            NLMSG_ERROR if errno > 0 => return Walk::Failed(failed(errno)),
            NLMSG_ERROR => {}
            NLMSG_NOOP => {}
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => match parse(body, table) {
                Some(socket) => {
                    stats.sockets += 1;
                    visit(&socket);
                }
                None if body.len() < MSG_LEN => malformed("a socket record too short"),
                None => stats.skipped += 1,
            },
            _ => {}
        }
    }
    Walk::More
}

/// Decodes one `inet_diag_msg` and its attributes; `None` for a socket
/// without a remote end (or a listener, or a record too short).
fn parse(msg: &[u8], table: Table) -> Option<Socket> {
    if msg.len() < MSG_LEN {
        return None;
    }
    // inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid at 4:
    // sport (be16) 4, dport (be16) 6, src (4 × be32) 8, dst 24, if 40, cookie 44.
    let (family, state) = (msg[0], msg[1]);
    let sport = u16::from_be_bytes([msg[4], msg[5]]);
    let dport = u16::from_be_bytes([msg[6], msg[7]]);
    if dport == 0 || (table.proto() == PROTO_TCP && state == TCP_LISTEN) {
        return None;
    }
    let addr = |at: usize| -> Option<IpAddr> {
        let bytes = &msg[at..at + 16];
        if family == libc::AF_INET as u8 {
            Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])))
        } else if family == libc::AF_INET6 as u8 {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        } else {
            None
        }
    };
    let local = SocketAddr::new(addr(8)?, sport);
    let remote = SocketAddr::new(addr(24)?, dport);
    let cookie = u64::from(u32_at(msg, 44)) | (u64::from(u32_at(msg, 48)) << 32);
    // Then expires 52, rqueue 56, wqueue 60, uid 64, inode 68.
    let state = match table.proto() {
        PROTO_TCP => SockState::from_tcp(state)?,
        _ => SockState::Udp,
    };
    Some(Socket {
        key: flows::key(table.proto(), local, remote),
        state,
        uid: u32_at(msg, 64),
        inode: u64::from(u32_at(msg, 68)),
        cookie,
        cgroup_id: cgroup_id(&msg[MSG_LEN..]),
    })
}

/// The `INET_DIAG_CGROUP_ID` attribute among `attrs`.
fn cgroup_id(mut attrs: &[u8]) -> Option<u64> {
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0));
        let kind = u16_at(attrs, 2) & 0x3fff; // without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            let mut id = [0u8; 8];
            id.copy_from_slice(&attrs[4..12]);
            return Some(u64::from_ne_bytes(id));
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use shaper_common::{FAMILY_V4, FAMILY_V6};

    /// An `inet_diag_msg` as the kernel lays it out, with a cgroup attribute.
    fn record(family: u8, state: u8, local: (&str, u16), remote: (&str, u16), cookie: u64) -> Vec<u8> {
        let mut m = vec![0u8; MSG_LEN];
        m[0] = family;
        m[1] = state;
        m[4..6].copy_from_slice(&local.1.to_be_bytes());
        m[6..8].copy_from_slice(&remote.1.to_be_bytes());
        for (at, text) in [(8, local.0), (24, remote.0)] {
            match text.parse::<IpAddr>().unwrap() {
                IpAddr::V4(a) => m[at..at + 4].copy_from_slice(&a.octets()),
                IpAddr::V6(a) => m[at..at + 16].copy_from_slice(&a.octets()),
            }
        }
        m[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        m[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        // INET_DIAG_SHUTDOWN (u8, padded), then INET_DIAG_CGROUP_ID (u64).
        m.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&[12, 0, INET_DIAG_CGROUP_ID as u8, 0]);
        m.extend_from_slice(&77u64.to_ne_bytes());
        m
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(align(m.len()), 0);
        m
    }

    #[test]
    fn a_record_becomes_a_socket_with_its_key_state_and_cookie() {
        let cookie = 0x0000_0102_0304_0506;
        let v4 = record(libc::AF_INET as u8, 1, ("198.18.0.1", 40000), ("198.18.0.2", 80), cookie);
        let s = parse(&v4, Table::Tcp4).unwrap();
        let key =
            flows::key(PROTO_TCP, "198.18.0.1:40000".parse().unwrap(), "198.18.0.2:80".parse().unwrap());
        assert_eq!(s.key, key);
        assert_eq!(
            (s.state, s.uid, s.inode, s.cookie, s.cgroup_id),
            (SockState::Established, 1000, 4242, cookie, Some(77))
        );
        // A dual-stack socket talking IPv4 has the IPv4 key, as in /proc.
        let mapped =
            record(libc::AF_INET6 as u8, 6, ("::ffff:198.18.0.1", 40000), ("::ffff:198.18.0.2", 80), 9);
        let s = parse(&mapped, Table::Tcp6).unwrap();
        assert_eq!((s.key, s.state.as_str()), (key, "time-wait"));
        assert_eq!(s.key.family, FAMILY_V4);
        let v6 = record(libc::AF_INET6 as u8, 1, ("fd00::1", 5000), ("fd00::2", 443), 9);
        let s = parse(&v6, Table::Udp6).unwrap();
        assert_eq!((s.key.family, s.key.proto, s.state), (FAMILY_V6, PROTO_UDP, SockState::Udp));
        assert_eq!(flows::remote(&s.key).to_string(), "[fd00::2]:443");
    }

    #[test]
    fn listeners_and_sockets_without_a_remote_end_are_left_out() {
        let listen = record(libc::AF_INET as u8, TCP_LISTEN, ("0.0.0.0", 80), ("0.0.0.0", 0), 1);
        assert_eq!(parse(&listen, Table::Tcp4), None);
        let unconnected = record(libc::AF_INET as u8, 7, ("0.0.0.0", 53), ("0.0.0.0", 0), 1);
        assert_eq!(parse(&unconnected, Table::Udp4), None);
        assert_eq!(parse(&[0u8; 10], Table::Tcp4), None);
    }

    #[test]
    fn a_datagram_is_walked_to_its_end_and_errors_are_the_kernels() {
        let one = record(libc::AF_INET as u8, 2, ("198.18.0.1", 1), ("198.18.0.9", 9), 5);
        let none = record(libc::AF_INET as u8, 7, ("0.0.0.0", 53), ("0.0.0.0", 0), 6);
        let mut datagram = message(SOCK_DIAG_BY_FAMILY, 7, &one);
        datagram.extend(message(SOCK_DIAG_BY_FAMILY, 7, &none));
        datagram.extend(message(SOCK_DIAG_BY_FAMILY, 6, &one)); // an older dump's leftover
        let (mut seen, mut stats, mut failure) = (Vec::new(), DumpStats::default(), None);
        let more = walk(&datagram, 7, Table::Tcp4, &mut stats, &mut |s| seen.push(*s), &mut failure);
        assert!(matches!(more, Walk::More) && failure.is_none());
        assert_eq!((seen.len(), seen[0].state, stats.sockets, stats.skipped), (1, SockState::SynSent, 1, 1));
        let done = message(NLMSG_DONE, 7, &0i32.to_ne_bytes());
        assert!(matches!(walk(&done, 7, Table::Tcp4, &mut stats, &mut |_| {}, &mut failure), Walk::Done));
        // A refused request, and a dump that failed midway: both end the dump.
        for kind in [NLMSG_ERROR, NLMSG_DONE] {
            let refused = message(kind, 7, &(-libc::ENOENT).to_ne_bytes());
            match walk(&refused, 7, Table::Udp6, &mut stats, &mut |_| {}, &mut failure) {
                Walk::Failed(SockDiagError::Kernel { table: Table::Udp6, source }) => {
                    assert_eq!(source.raw_os_error(), Some(libc::ENOENT))
                }
                _ => panic!("message type {kind}: not a failure"),
            }
        }
        let ack = message(NLMSG_ERROR, 7, &0i32.to_ne_bytes());
        assert!(matches!(walk(&ack, 7, Table::Tcp4, &mut stats, &mut |_| {}, &mut failure), Walk::More));
        // A message cut short: noted, and the end of the dump still counts.
        let mut cut = message(SOCK_DIAG_BY_FAMILY, 7, &one);
        cut.truncate(40);
        assert!(matches!(walk(&cut, 7, Table::Tcp4, &mut stats, &mut |_| {}, &mut failure), Walk::More));
        assert!(matches!(failure, Some(SockDiagError::Malformed { .. })));
        let mut short = message(SOCK_DIAG_BY_FAMILY, 7, &one[..20]);
        short.extend(message(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        let mut failure = None;
        assert!(matches!(walk(&short, 7, Table::Tcp4, &mut stats, &mut |_| {}, &mut failure), Walk::Done));
        assert!(failure.is_some());
    }

    #[test]
    fn the_request_asks_for_every_state_but_listen() {
        let req = request(Table::Tcp6, 3);
        assert_eq!(u32_at(&req, 0) as usize, req.len());
        assert_eq!((u16_at(&req, 4), u16_at(&req, 6), u32_at(&req, 8)), (20, 0x301, 3));
        assert_eq!((req[16], req[17]), (libc::AF_INET6 as u8, PROTO_TCP));
        let states = u32_at(&req, 20);
        assert_eq!(states & (1 << TCP_LISTEN), 0);
        assert_eq!(states & (1 << 1 | 1 << 6), 1 << 1 | 1 << 6);
        assert_eq!(u32_at(&request(Table::Udp4, 1), 20), u32::MAX);
    }

    #[test]
    fn states_are_named_as_ss_names_them_on_the_wire_too() {
        use procfs::net::TcpState;
        for n in 1..=12u8 {
            let ours = SockState::from_tcp(n).unwrap();
            assert_eq!(SockState::from(&TcpState::from_u8(n).unwrap()), ours);
        }
        assert_eq!(SockState::from_tcp(0), None);
        assert_eq!(SockState::TimeWait.to_string(), "time-wait");
        assert_eq!(SockState::FinWait1.as_str(), "fin-wait-1");
        assert_eq!(SockState::Udp.as_str(), "udp");
        for state in [SockState::FinWait1, SockState::TimeWait, SockState::NewSynRecv, SockState::Gone] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<SockState>(&json).unwrap(), state);
        }
    }
}
