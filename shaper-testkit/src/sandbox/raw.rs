//! Raw Ethernet frames on sandbox interfaces (AF_PACKET): injecting crafted,
//! broken frames, and seeing which of them got through.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use super::{Netns, SandboxError};

const ETH_P_ALL: u16 = 0x0003;

/// The source MAC address that marks frame `n` of a test (locally administered).
pub fn marker_mac(n: u8) -> [u8; 6] {
    [0x02, 0x5b, 0xad, 0x00, 0x00, n]
}

/// An AF_PACKET socket bound to one interface of one namespace.
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

fn err(what: &str) -> SandboxError {
    SandboxError::Daemon(format!("{what}: {}", io::Error::last_os_error()))
}

impl RawSocket {
    /// Opens the socket from inside `ns` (a socket stays in the namespace it was made in).
    pub fn open(ns: &Netns, dev: &str) -> Result<Self, SandboxError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    ns.enter_current_thread()?;
                    let name =
                        std::ffi::CString::new(dev).map_err(|e| SandboxError::Daemon(e.to_string()))?;
                    // SAFETY: plain libc calls with valid arguments; the fd is owned below.
                    unsafe {
                        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                        if ifindex == 0 {
                            return Err(err(&format!("no interface {dev}")));
                        }
                        let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be()));
                        if raw < 0 {
                            return Err(err("opening an AF_PACKET socket"));
                        }
                        let fd = OwnedFd::from_raw_fd(raw);
                        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                        addr.sll_family = libc::AF_PACKET as u16;
                        addr.sll_protocol = ETH_P_ALL.to_be();
                        addr.sll_ifindex = ifindex;
                        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                        if libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), len) != 0 {
                            return Err(err("binding the AF_PACKET socket"));
                        }
                        let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
                        libc::setsockopt(
                            fd.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_RCVTIMEO,
                            (&timeout as *const libc::timeval).cast(),
                            std::mem::size_of::<libc::timeval>() as u32,
                        );
                        Ok(Self { fd, ifindex })
                    }
                })
                .join()
                .unwrap_or_else(|_| Err(SandboxError::Daemon("raw socket thread panicked".into())))
        })
    }

    /// Sends `frame` as it is (its ethertype, bytes 12..14, becomes the packet's protocol).
    pub fn send(&self, frame: &[u8]) -> Result<(), SandboxError> {
        let ethertype = frame.get(12..14).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        // SAFETY: zeroed sockaddr_ll filled in below; the buffer lives for the call.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ethertype.to_be();
            addr.sll_ifindex = self.ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
            let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                len,
            );
            if n < 0 {
                return Err(err("sending a raw frame"));
            }
        }
        Ok(())
    }

    /// The marker numbers (see [`marker_mac`]) of the frames seen within
    /// `wait`: those the interface sent (`sent`), or those it received.
    pub fn markers_seen(&self, wait: Duration, sent: bool) -> Vec<u8> {
        const PACKET_OUTGOING: u8 = 4;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            // SAFETY: valid fd, buffer and address buffer of the right size.
            let (n, pkttype) = unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                );
                (n, from.sll_pkttype)
            };
            if n < 12 || (pkttype == PACKET_OUTGOING) != sent {
                continue;
            }
            if buf[6..11] == marker_mac(0)[..5] && !seen.contains(&buf[11]) {
                seen.push(buf[11]);
            }
        }
        seen.sort_unstable();
        seen
    }
}
