//! A minimal rtnetlink client: build messages with nested attributes, send
//! them one at a time or in batches, read acknowledgements (with the kernel's
//! extended error messages) and dumps.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use super::TcError;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an error reply: the echoed request was cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an error reply: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_CAP_ACK: libc::c_int = 10;
/// Largest batch sent in one sendmsg (the socket's send buffer bounds it).
const MAX_BATCH_BYTES: usize = 96 * 1024;
const RECV_BUF: usize = 256 * 1024;
/// A request the kernel has not answered by then is reported as an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction.
#[derive(Clone, Debug)]
pub struct Message {
    buf: Vec<u8>,
    /// What the message does, for error reports ("adding class 1:10 on ifindex 3").
    pub what: String,
}

impl Message {
    pub fn new(kind: u16, flags: u16, what: impl Into<String>) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        Self { buf, what: what.into() }
    }

    /// Appends a fixed header (ifinfomsg, tcmsg, …) or raw bytes, padded to 4.
    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.push(payload)
    }

    pub fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    pub fn attr_u64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// Opens a nested attribute; close it with [`Message::end_nest`].
    pub fn begin_nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.attr(kind, &[]);
        at
    }

    pub fn end_nest(&mut self, at: usize) -> &mut Self {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub(crate) fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// An rtnetlink socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: AtomicU32,
}

/// One received message: its type and payload (after the netlink header).
struct Received {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: Vec<u8>,
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, TcError> {
        let fd = route_socket(0, 0, 4 * 1024 * 1024)?;
        let one: libc::c_int = 1;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            // SAFETY: valid fd and option buffer. Failure only loses detail in errors.
            unsafe { setsockopt(&fd, libc::SOL_NETLINK, opt, &one) };
        }
        let timeout = libc::timeval { tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
        // SAFETY: valid fd and option buffer.
        unsafe { setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout) };
        Ok(Self { fd, seq: AtomicU32::new(1) })
    }

    fn send(&self, bytes: &[u8]) -> Result<(), TcError> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid fd, buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(TcError::Io(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<Vec<Received>, TcError> {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(TcError::Io(io::Error::last_os_error()));
        }
        let mut out = Vec::new();
        let mut data = buf.get(..n as usize).unwrap_or_default();
        while data.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if len < NLMSG_HDRLEN || len > data.len() {
                return Err(TcError::Malformed("message length"));
            }
            out.push(Received {
                kind: u16::from_ne_bytes([data[4], data[5]]),
                flags: u16::from_ne_bytes([data[6], data[7]]),
                seq: u32::from_ne_bytes([data[8], data[9], data[10], data[11]]),
                payload: data[NLMSG_HDRLEN..len].to_vec(),
            });
            data = data.get(align4(len)..).unwrap_or_default();
        }
        Ok(out)
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends one request and waits for its acknowledgement.
    pub fn request(&self, mut msg: Message) -> Result<(), TcError> {
        self.batch(std::slice::from_mut(&mut msg))
    }

    /// Sends requests in as few system calls as the socket allows and waits for
    /// every acknowledgement. The kernel applies them in order; the first error
    /// is returned (naming its request) and the requests after it are still
    /// applied by the kernel, so callers undo a failed batch as a whole.
    pub fn batch(&self, msgs: &mut [Message]) -> Result<(), TcError> {
        self.batch_each(msgs)?.into_iter().flatten().next().map_or(Ok(()), Err)
    }

    /// Like [`Netlink::batch`], with the kernel's answer to each request:
    /// `None` where it was applied, its error where it was refused.
    pub fn batch_each(&self, msgs: &mut [Message]) -> Result<Vec<Option<TcError>>, TcError> {
        let mut outcomes: Vec<Option<TcError>> = msgs.iter().map(|_| None).collect();
        let mut buf = vec![0u8; RECV_BUF];
        let mut start = 0;
        while start < msgs.len() {
            let mut bytes = Vec::new();
            let mut pending = std::collections::HashMap::new();
            let mut end = start;
            while let Some(msg) = msgs.get_mut(end) {
                if !bytes.is_empty() && bytes.len() + msg.buf.len() > MAX_BATCH_BYTES {
                    break;
                }
                let seq = self.next_seq();
                let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_ACK;
                msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
                bytes.extend_from_slice(msg.finish(seq));
                pending.insert(seq, end);
                end += 1;
            }
            self.send(&bytes)?;
            while !pending.is_empty() {
                for reply in self.recv(&mut buf)? {
                    if reply.kind != NLMSG_ERROR {
                        continue;
                    }
                    let Some(index) = pending.remove(&reply.seq) else { continue };
                    outcomes[index] = error_of(&reply, &msgs[index].what)?;
                }
            }
            start = end;
        }
        Ok(outcomes)
    }

    /// Sends a request that is answered with one message (e.g. RTM_GETLINK for
    /// one interface) and returns that message's payload.
    pub fn get(&self, mut msg: Message) -> Result<Vec<u8>, TcError> {
        let seq = self.next_seq();
        self.send(msg.finish(seq))?;
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            for reply in self.recv(&mut buf)? {
                if reply.seq != seq {
                    continue;
                }
                if reply.kind == NLMSG_ERROR {
                    return Err(error_of(&reply, &msg.what)?
                        .unwrap_or(TcError::Malformed("an ack instead of a reply")));
                }
                return Ok(reply.payload);
            }
        }
    }

    /// Sends a dump request and returns the payload of every reply message.
    pub fn dump(&self, mut msg: Message) -> Result<Vec<Vec<u8>>, TcError> {
        let seq = self.next_seq();
        let flags = u16::from_ne_bytes([msg.buf[6], msg.buf[7]]) | NLM_F_DUMP;
        msg.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self.send(msg.finish(seq))?;
        let mut buf = vec![0u8; RECV_BUF];
        let mut out = Vec::new();
        loop {
            for reply in self.recv(&mut buf)? {
                if reply.seq != seq {
                    continue;
                }
                match reply.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        if let Some(e) = error_of(&reply, &msg.what)? {
                            return Err(e);
                        }
                        return Ok(out);
                    }
                    _ => out.push(reply.payload),
                }
            }
        }
    }
}

/// Sets a socket option of plain-data type `T`; failure only loses a tuning.
///
/// # Safety
/// `T` must be the type the option takes.
unsafe fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, value: &T) {
    // SAFETY: valid fd; the caller vouches for the option's type.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
}

/// An rtnetlink socket of the calling thread's network namespace with a
/// receive buffer of `rcvbuf` bytes, bound to the multicast `groups` (0: none);
/// `flags` are extra socket(2) type flags (`SOCK_NONBLOCK`).
pub(super) fn route_socket(flags: libc::c_int, groups: u32, rcvbuf: libc::c_int) -> Result<OwnedFd, TcError> {
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags, libc::NETLINK_ROUTE)
    };
    if raw < 0 {
        return Err(TcError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: SO_RCVBUF takes an int.
    unsafe { setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf) };
    // SAFETY: zeroed sockaddr_nl is "any pid, no groups"; the groups are set after.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = groups;
    // SAFETY: valid fd and address of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(TcError::Socket(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// The error in an NLMSG_ERROR reply (`None` for an acknowledgement).
fn error_of(reply: &Received, what: &str) -> Result<Option<TcError>, TcError> {
    let p = &reply.payload;
    let errno = p
        .get(0..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(TcError::Malformed("error reply"))?;
    if errno == 0 {
        return Ok(None);
    }
    let mut detail = None;
    if reply.flags & NLM_F_ACK_TLVS != 0 {
        // After the errno comes the request: its header only when capped.
        let echoed = if reply.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            p.get(4..8).map_or(NLMSG_HDRLEN, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        if let Some(tlvs) = p.get(4 + align4(echoed)..) {
            detail = attrs(tlvs).find(|(k, _)| *k == NLMSGERR_ATTR_MSG).map(|(_, v)| c_string(v));
        }
    }
    Ok(Some(TcError::Kernel {
        what: what.to_string(),
        errno: -errno,
        message: match detail {
            Some(d) if !d.is_empty() => format!("{} ({d})", io::Error::from_raw_os_error(-errno)),
            _ => io::Error::from_raw_os_error(-errno).to_string(),
        },
    }))
}

/// A NUL-terminated string attribute's text.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The attributes in `data`: (type without flag bits, payload).
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = data.get(align4(len)..).unwrap_or_default();
        Some((kind, payload))
    })
}

pub fn u32_of(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?))
}

pub fn u64_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(0..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_lengths_padding_and_nested_attributes() {
        let mut m = Message::new(36, NLM_F_CREATE, "test");
        m.push(&[1, 2, 3]);
        let nest = m.begin_nest(2);
        m.attr_u32(7, 0xdead_beef);
        m.attr_str(1, "htb");
        m.end_nest(nest);
        let bytes = m.finish(9).to_vec();
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize, bytes.len());
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        assert_eq!(bytes.len() % 4, 0);
        let body = &bytes[NLMSG_HDRLEN + 4..];
        let outer: Vec<_> = attrs(body).collect();
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, 2);
        let inner: Vec<_> = attrs(outer[0].1).collect();
        assert_eq!(inner[0], (7, &0xdead_beefu32.to_ne_bytes()[..]));
        assert_eq!(c_string(inner[1].1), "htb");
    }

    #[test]
    fn attribute_parsing_stops_at_garbage() {
        assert_eq!(attrs(&[]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0); // length below the header
        assert_eq!(attrs(&[200, 0, 1, 0, 0, 0]).count(), 0); // length past the end
    }
}
