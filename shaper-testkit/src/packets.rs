//! Hand-built frames for running the classifier with BPF_PROG_TEST_RUN (in the
//! root tests and the benchmarks): Ethernet + IPv4/IPv6 (+ extension headers) +
//! TCP/UDP headers, or deliberately broken variants of them.

use std::net::IpAddr;

use shaper_common::{FlowKey, FAMILY_V4, PROTO_TCP, PROTO_UDP};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// A frame description: addresses and ports as seen on the wire (source first).
#[derive(Clone, Debug)]
pub struct Frame {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// Payload bytes after the transport header.
    pub payload: usize,
    /// IPv6 extension headers to insert, as (next-header number, total length in bytes).
    pub ipv6_ext: Vec<(u8, usize)>,
    /// IPv4 "more fragments" flag (and fragment offset 0).
    pub fragment: bool,
}

impl Frame {
    /// A TCP data segment (ACK set, 64 bytes of payload). Without payload it
    /// would be a bare ACK, which the classifier sends to the ACK leaf instead
    /// of its class: [`Frame::bare_ack`].
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self { proto: PROTO_TCP, src, dst, sport, dport, payload: 64, ipv6_ext: Vec::new(), fragment: false }
    }

    /// A TCP segment with ACK set and no payload.
    pub fn bare_ack(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self { payload: 0, ..Self::tcp(src, sport, dst, dport) }
    }

    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self { proto: PROTO_UDP, payload: 0, ..Self::tcp(src, sport, dst, dport) }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let l4_len = match self.proto {
            PROTO_TCP => 20,
            PROTO_UDP => 8,
            _ => 0,
        };
        let mut l4 = vec![0u8; l4_len + self.payload];
        if l4_len > 0 {
            l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
            l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
        }
        if self.proto == PROTO_TCP {
            l4[12] = 5 << 4; // data offset
            l4[13] = 0x10; // ACK
        } else if self.proto == PROTO_UDP {
            let len = l4.len() as u16;
            l4[4..6].copy_from_slice(&len.to_be_bytes());
        }
        let mut frame = vec![0u8; 14];
        frame[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                if self.fragment {
                    ip[6] = 0x20; // MF
                }
                ip[8] = 64;
                ip[9] = self.proto;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
            }
            (src, dst) => {
                let (src, dst) = (to_v6(src), to_v6(dst));
                frame[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
                let ext_len: usize = self.ipv6_ext.iter().map(|(_, len)| len).sum();
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                ip[6] = self.ipv6_ext.first().map_or(self.proto, |(nh, _)| *nh);
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                frame.extend_from_slice(&ip);
                for (i, (kind, len)) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).map_or(self.proto, |(nh, _)| *nh);
                    let mut ext = vec![0u8; *len];
                    if let Some(b) = ext.get_mut(0) {
                        *b = next;
                    }
                    if let Some(b) = ext.get_mut(1) {
                        // AH counts 4-byte units minus 2; the others 8-byte units minus 1.
                        *b = if *kind == 51 {
                            (len / 4).saturating_sub(2) as u8
                        } else {
                            (len / 8).saturating_sub(1) as u8
                        };
                    }
                    frame.extend_from_slice(&ext);
                }
            }
        }
        frame.extend_from_slice(&l4);
        frame
    }
}

fn to_v6(addr: IpAddr) -> std::net::Ipv6Addr {
    match addr {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// Size of the kernel's `struct __sk_buff`, the context of a tc program.
pub const SKB_CTX_SIZE: usize = 192;
/// Offset of `__sk_buff.priority`.
pub const SKB_PRIORITY_OFFSET: usize = 32;
/// Offset of `__sk_buff.ingress_ifindex`.
pub const SKB_INGRESS_IFINDEX_OFFSET: usize = 36;
/// Offset of `__sk_buff.ifindex`.
pub const SKB_IFINDEX_OFFSET: usize = 40;

/// The `i`-th of a series of distinct TCP flows (IPv4, 198.19.0.0/16), for
/// filling a flow map with entries no real packet has.
pub fn synthetic_flow(i: u32) -> FlowKey {
    let mut key = FlowKey {
        family: FAMILY_V4,
        proto: PROTO_TCP,
        lport: 10_000 + (i % 50_000) as u16,
        rport: 443,
        ..FlowKey::default()
    };
    key.laddr[..4].copy_from_slice(&[198, 19, 0, 1]);
    key.raddr[..4].copy_from_slice(&[198, 19, (i >> 16) as u8 + 1, (i >> 8) as u8]);
    key
}
