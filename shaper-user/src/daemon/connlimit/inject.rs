//! Packets the admission thread sends on a peer's behalf through raw sockets
//! (header included): the recorded SYN of an admitted connection, sent again,
//! and the RST that refuses one.
//!
//! Both go where the SYN was going or came from: a re-sent SYN goes to its own
//! destination (an inbound one is local, so it reaches the listener through
//! lo; an outbound one leaves by the interface, past the classifier, which
//! finds it granted); a RST goes from the SYN's destination to its source (an
//! inbound client gets it from the wire, a local client through lo), acking
//! the SYN's sequence number + 1, so the connecting socket takes it: connect()
//! fails with ECONNREFUSED.
//!
//! Checksums are computed here: at tc a SYN may carry only a partial TCP
//! checksum (veth packets are CHECKSUM_PARTIAL), and a packet sent through lo
//! is checked in full.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use shaper_common::connlimit::GateEntry;

const IPV4_MIN: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_MIN: usize = 20;
const PROTO_TCP: u8 = 6;
const TCP_RST_ACK: u8 = 0x14;

/// The two raw sockets (either may be missing: its sends fail).
pub struct Injector {
    v4: io::Result<OwnedFd>,
    v6: io::Result<OwnedFd>,
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Injector {
    /// Opens the sockets in the calling thread's network namespace.
    pub fn open() -> Self {
        Self { v4: raw_socket(libc::AF_INET), v6: raw_socket(libc::AF_INET6) }
    }

    /// Why the sockets could not be opened, if they could not.
    pub fn unavailable(&self) -> Option<String> {
        [("IPv4", &self.v4), ("IPv6", &self.v6)]
            .iter()
            .find_map(|(family, socket)| socket.as_ref().err().map(|e| format!("a raw {family} socket: {e}")))
    }

    /// Sends the recorded SYN of `entry` again.
    pub fn resend_syn(&self, entry: &GateEntry) -> io::Result<()> {
        let packet = syn_again(recorded(entry)).ok_or_else(|| io::Error::other("not a recorded TCP SYN"))?;
        self.send(&packet)
    }

    /// Refuses the connection of `entry` with a RST from the SYN's destination.
    pub fn refuse(&self, entry: &GateEntry) -> io::Result<()> {
        let packet = rst_for(recorded(entry)).ok_or_else(|| io::Error::other("not a recorded TCP SYN"))?;
        self.send(&packet)
    }

    fn send(&self, packet: &[u8]) -> io::Result<()> {
        let (socket, addr, len) = match packet.first().map(|b| b >> 4) {
            Some(4) => {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_addr.s_addr = u32::from_ne_bytes([packet[16], packet[17], packet[18], packet[19]]);
                let mut storage = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
                // SAFETY: the buffer is larger than a sockaddr_in; unaligned write.
                unsafe { std::ptr::write_unaligned(storage.as_mut_ptr().cast(), sin) };
                (&self.v4, storage, std::mem::size_of::<libc::sockaddr_in>())
            }
            Some(6) => {
                // SAFETY: all-zero is a valid sockaddr_in6.
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr.s6_addr.copy_from_slice(&packet[24..40]);
                let mut storage = [0u8; std::mem::size_of::<libc::sockaddr_in6>()];
                // SAFETY: the buffer is a sockaddr_in6's size; unaligned write.
                unsafe { std::ptr::write_unaligned(storage.as_mut_ptr().cast(), sin6) };
                (&self.v6, storage, std::mem::size_of::<libc::sockaddr_in6>())
            }
            _ => return Err(io::Error::other("not an IP packet")),
        };
        let socket = socket.as_ref().map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        // SAFETY: the packet and the address outlive the call; lengths match.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                addr.as_ptr().cast(),
                len as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The bytes of the SYN an entry recorded.
fn recorded(entry: &GateEntry) -> &[u8] {
    &entry.syn[..usize::from(entry.syn_len).min(entry.syn.len())]
}

/// Where the TCP header starts in an IP packet carrying TCP directly, and
/// where the packet ends (by its length field).
fn tcp_span(packet: &[u8]) -> Option<(usize, usize)> {
    let (start, end) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < IPV4_MIN || packet.len() < ihl || *packet.get(9)? != PROTO_TCP {
                return None;
            }
            (ihl, usize::from(u16::from_be_bytes([packet[2], packet[3]])))
        }
        6 => {
            if packet.len() < IPV6_HDR || packet[6] != PROTO_TCP {
                return None;
            }
            (IPV6_HDR, IPV6_HDR + usize::from(u16::from_be_bytes([packet[4], packet[5]])))
        }
        _ => return None,
    };
    let tcp_len = usize::from(*packet.get(start + 12)? >> 4) * 4;
    (end <= packet.len() && tcp_len >= TCP_MIN && start + tcp_len <= end).then_some((start, end))
}

/// Adds `bytes` to a ones' complement sum (16-bit big-endian words).
fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for word in &mut chunks {
        acc += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Rewrites the IPv4 header checksum (if IPv4) and the TCP checksum of `packet`.
fn fix_checksums(packet: &mut [u8], tcp_at: usize) {
    let tcp_len = (packet.len() - tcp_at) as u32;
    let pseudo = if packet[0] >> 4 == 4 {
        packet[10..12].fill(0);
        let ip = fold(sum(0, &packet[..tcp_at]));
        packet[10..12].copy_from_slice(&ip.to_be_bytes());
        sum(sum(0, &packet[12..20]), &[0, PROTO_TCP]) + tcp_len
    } else {
        sum(sum(0, &packet[8..40]), &[0, PROTO_TCP]) + tcp_len
    };
    packet[tcp_at + 16..tcp_at + 18].fill(0);
    let tcp = fold(sum(pseudo, &packet[tcp_at..]));
    packet[tcp_at + 16..tcp_at + 18].copy_from_slice(&tcp.to_be_bytes());
}

/// The recorded SYN, trimmed to its length, with correct checksums.
pub fn syn_again(recorded: &[u8]) -> Option<Vec<u8>> {
    let (tcp_at, end) = tcp_span(recorded)?;
    let mut packet = recorded[..end].to_vec();
    fix_checksums(&mut packet, tcp_at);
    Some(packet)
}

/// A RST|ACK answering the recorded SYN, from its destination to its source.
pub fn rst_for(syn: &[u8]) -> Option<Vec<u8>> {
    let (at, _) = tcp_span(syn)?;
    let seq = u32::from_be_bytes([syn[at + 4], syn[at + 5], syn[at + 6], syn[at + 7]]);
    let mut packet = Vec::with_capacity(IPV6_HDR + TCP_MIN);
    if syn[0] >> 4 == 4 {
        packet.extend_from_slice(&[
            0x45,
            0,
            0,
            (IPV4_MIN + TCP_MIN) as u8,
            0,
            0,
            0x40,
            0,
            64,
            PROTO_TCP,
            0,
            0,
        ]);
        packet.extend_from_slice(&syn[16..20]);
        packet.extend_from_slice(&syn[12..16]);
    } else {
        packet.extend_from_slice(&[0x60, 0, 0, 0, 0, TCP_MIN as u8, PROTO_TCP, 64]);
        packet.extend_from_slice(&syn[24..40]);
        packet.extend_from_slice(&syn[8..24]);
    }
    let tcp_at = packet.len();
    // Ports swapped, sequence 0, ack = the SYN's sequence + 1, RST|ACK, window 0.
    packet.extend_from_slice(&syn[at + 2..at + 4]);
    packet.extend_from_slice(&syn[at..at + 2]);
    packet.extend_from_slice(&[0; 4]);
    packet.extend_from_slice(&seq.wrapping_add(1).to_be_bytes());
    packet.extend_from_slice(&[(TCP_MIN as u8 / 4) << 4, TCP_RST_ACK, 0, 0, 0, 0, 0, 0]);
    fix_checksums(&mut packet, tcp_at);
    Some(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 SYN 198.18.0.2:40000 → 198.18.0.1:8080, seq 1000, with an MSS
    /// option, and a partial checksum in it (as at tc).
    fn syn4() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 44, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1];
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&8080u16.to_be_bytes());
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&[0x60, 0x02, 0xff, 0xff, 0xab, 0xcd, 0, 0, 2, 4, 0x05, 0xb4]);
        p
    }

    fn valid(packet: &[u8]) -> bool {
        let tcp_at = tcp_span(packet).unwrap().0;
        let pseudo = if packet[0] >> 4 == 4 {
            assert_eq!(fold(sum(0, &packet[..tcp_at])), 0, "IPv4 header checksum");
            sum(sum(0, &packet[12..20]), &[0, 6]) + (packet.len() - tcp_at) as u32
        } else {
            sum(sum(0, &packet[8..40]), &[0, 6]) + (packet.len() - tcp_at) as u32
        };
        fold(sum(pseudo, &packet[tcp_at..])) == 0
    }

    #[test]
    fn a_resent_syn_carries_valid_checksums() {
        let mut recorded = syn4();
        recorded.extend_from_slice(&[0xee; 10]); // bytes past the IP length are dropped
        let again = syn_again(&recorded).unwrap();
        assert_eq!(again.len(), 44);
        assert!(valid(&again));
        assert_eq!(&again[20..36], &syn4()[20..36], "the TCP header but its checksum is kept");
    }

    #[test]
    fn a_rst_answers_the_syn_from_its_destination() {
        let rst = rst_for(&syn4()).unwrap();
        assert_eq!(rst.len(), 40);
        assert!(valid(&rst));
        assert_eq!(&rst[12..16], &[198, 18, 0, 1]);
        assert_eq!(&rst[16..20], &[198, 18, 0, 2]);
        assert_eq!(u16::from_be_bytes([rst[20], rst[21]]), 8080);
        assert_eq!(u16::from_be_bytes([rst[22], rst[23]]), 40000);
        assert_eq!(u32::from_be_bytes([rst[28], rst[29], rst[30], rst[31]]), 1001);
        assert_eq!(rst[33], 0x14);
    }

    #[test]
    fn ipv6_too() {
        let mut p = vec![0x60, 0, 0, 0, 0, 24, 6, 64];
        p.extend_from_slice(&[0xfd, 0, 0x05, 0xba, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(&[0xfd, 0, 0x05, 0xba, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&syn4()[20..]);
        let again = syn_again(&p).unwrap();
        assert!(valid(&again));
        let rst = rst_for(&p).unwrap();
        assert_eq!(rst.len(), 60);
        assert!(valid(&rst));
        assert_eq!(&rst[8..24], &p[24..40]);
    }
}
