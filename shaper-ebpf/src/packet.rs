//! Reading the flow tuple out of a packet, bounds-checked at every step.

use aya_ebpf::programs::TcContext;
use shaper_common::{FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up (the packet then takes the default class).
const MAX_IPV6_EXT: usize = 6;
/// Longest link-layer header accepted from the interface map (Ethernet is 14; the
/// bound also lets the verifier prove packet offsets stay small).
const MAX_L2_LEN: usize = 32;

/// Which side of the packet is this host.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The packet leaves: the source is local.
    SourceLocal,
    /// The packet arrives: the destination is local.
    DestLocal,
}

/// Reads a `T` at `offset` from the start of the packet: directly from the linear
/// data when it is there, through `bpf_skb_load_bytes` otherwise.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() <= end {
        // SAFETY: the range lies inside the packet's linear data (checked above).
        Some(unsafe { ((start + offset) as *const T).read_unaligned() })
    } else {
        ctx.load::<T>(offset).ok()
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    vtc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The flow key of an IPv4/IPv6 packet, or `None` when the packet has none
/// (not IP, a fragment, truncated, or an IPv6 extension chain too long to walk):
/// such packets take the default class.
#[inline(always)]
pub(crate) fn flow_key(ctx: &TcContext, l2_len: usize, side: Side) -> Option<FlowKey> {
    if l2_len > MAX_L2_LEN {
        return None;
    }
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    let mut key = FlowKey::default();
    let (proto, l4) = match ethertype {
        ETH_P_IP => {
            let ip: Ipv4Hdr = read(ctx, l2_len)?;
            let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
            // More-fragments flag or a fragment offset: no ports in every piece.
            if ip.version_ihl >> 4 != 4 || ihl < 20 || u16::from_be(ip.frag_off) & 0x3fff != 0 {
                return None;
            }
            key.family = FAMILY_V4;
            let (local, remote) = match side {
                Side::SourceLocal => (ip.saddr, ip.daddr),
                Side::DestLocal => (ip.daddr, ip.saddr),
            };
            key.laddr[..4].copy_from_slice(&local);
            key.raddr[..4].copy_from_slice(&remote);
            (ip.proto, l2_len + ihl)
        }
        ETH_P_IPV6 => {
            let ip: Ipv6Hdr = read(ctx, l2_len)?;
            key.family = FAMILY_V6;
            let (local, remote) = match side {
                Side::SourceLocal => (ip.saddr, ip.daddr),
                Side::DestLocal => (ip.daddr, ip.saddr),
            };
            key.laddr = local;
            key.raddr = remote;
            let mut next = ip.nexthdr;
            let mut offset = l2_len + 40;
            let mut found = false;
            for _ in 0..MAX_IPV6_EXT {
                let len = match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        let hdr: [u8; 2] = read(ctx, offset)?;
                        next = hdr[0];
                        (hdr[1] as usize + 1) * 8
                    }
                    IPPROTO_AH => {
                        let hdr: [u8; 2] = read(ctx, offset)?;
                        next = hdr[0];
                        (hdr[1] as usize + 2) * 4
                    }
                    IPPROTO_FRAGMENT => return None,
                    _ => {
                        found = true;
                        break;
                    }
                };
                offset += len;
            }
            if !found {
                return None;
            }
            (next, offset)
        }
        _ => return None,
    };
    key.proto = proto;
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let ports: [u16; 2] = read(ctx, l4)?;
        let (src, dst) = (u16::from_be(ports[0]), u16::from_be(ports[1]));
        (key.lport, key.rport) = match side {
            Side::SourceLocal => (src, dst),
            Side::DestLocal => (dst, src),
        };
    }
    Some(key)
}
