//! Reading the flow tuple out of a packet, bounds-checked at every step.
//!
//! The key is written into the caller's buffer a 64-bit word at a time (the
//! addresses as soon as they are read, the word with the protocol and ports
//! last), and header fields are read where they lie in the packet. Building
//! it field by field, with headers and keys passed by value, cost several
//! times more: LLVM copied them byte by byte through dozens of stack slots
//! and zeroed them with calls to the BPF memset, a byte loop.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use shaper_common::{Direction, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

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
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;

/// Room for a flow key on the stack, filled a word at a time (word 0: family,
/// protocol and ports; 1–2: local address; 3–4: remote address).
pub(crate) struct KeyBuf {
    words: [MaybeUninit<u64>; KEY_WORDS],
}
const KEY_WORDS: usize = core::mem::size_of::<FlowKey>() / 8;
const _: () = assert!(KEY_WORDS * 8 == core::mem::size_of::<FlowKey>());

impl KeyBuf {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self { words: [MaybeUninit::uninit(); KEY_WORDS] }
    }

    /// Stores the addresses: `src` and `dst` are the packet's source and
    /// destination address as key words.
    #[inline(always)]
    fn addresses(&mut self, direction: Direction, src: [u64; 2], dst: [u64; 2]) {
        let (local, remote) = match direction {
            Direction::Egress => (src, dst),
            Direction::Ingress => (dst, src),
        };
        self.words[1].write(local[0]);
        self.words[2].write(local[1]);
        self.words[3].write(remote[0]);
        self.words[4].write(remote[1]);
    }

    /// Stores word 0 and hands out the key.
    ///
    /// # Safety
    ///
    /// [`KeyBuf::addresses`] was called first (every other word is written).
    #[inline(always)]
    unsafe fn finish(&mut self, head: u64) -> &FlowKey {
        self.words[0].write(head);
        // SAFETY: all KEY_WORDS words are written (the caller's promise and
        // the line above), the buffer is 8-byte aligned and as large as a
        // FlowKey, and any bit pattern is a valid FlowKey.
        unsafe { &*(self.words.as_ptr() as *const FlowKey) }
    }
}

/// The key's first word: family, protocol, local and remote port (and the
/// zero padding), as `FlowKey` lays them out.
#[inline(always)]
fn head(family: u8, proto: u8, lport: u16, rport: u16) -> u64 {
    let (l, r) = (lport.to_ne_bytes(), rport.to_ne_bytes());
    u64::from_ne_bytes([family, proto, l[0], l[1], r[0], r[1], 0, 0])
}

/// The `N` (4 or 8) bytes of `from` at `at` as a key word, in memory order.
#[inline(always)]
fn word<const N: usize, const M: usize>(from: &[u8; M], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    let mut i = 0;
    while i < N {
        bytes[i] = from[at + i];
        i += 1;
    }
    u64::from_ne_bytes(bytes)
}

/// What the IP header gives the key besides the addresses.
struct Ip {
    family: u8,
    /// The upper-layer protocol.
    proto: u8,
    /// Where its header starts.
    l4: usize,
}

/// The `N` bytes at `offset` from the start of the packet: in place in the
/// linear data when they are there, else copied into `copy` by
/// `bpf_skb_load_bytes`.
#[inline(always)]
fn bytes<'a, const N: usize>(
    ctx: &TcContext,
    offset: usize,
    copy: &'a mut MaybeUninit<[u8; N]>,
) -> Option<&'a [u8; N]> {
    let start = ctx.data();
    if start + offset + N <= ctx.data_end() {
        // SAFETY: the range lies inside the packet's linear data (checked
        // above), which does not move while the program runs; `[u8; N]` has
        // alignment 1.
        Some(unsafe { &*((start + offset) as *const [u8; N]) })
    } else {
        // SAFETY: helper on the program's own context; it writes `N` bytes
        // into `copy` or fails.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                offset as u32,
                copy.as_mut_ptr() as *mut c_void,
                N as u32,
            )
        };
        // SAFETY: on success all `N` bytes were written.
        (ret == 0).then(|| unsafe { copy.assume_init_ref() })
    }
}

/// TCP flags of a bare acknowledgement: ACK, and none of SYN, FIN, RST.
const TCP_ACK: u8 = 0x10;
const TCP_SYN_FIN_RST: u8 = 0x07;
/// Bytes past the TCP header a bare ACK may carry: Ethernet pads a frame to
/// 60 bytes, and a received one reaches tc before IP trims the padding.
const ACK_SLACK: usize = 6;

/// What [`tcp_shape`] tells of a TCP packet: bits of one byte.
pub(crate) type Shape = u8;
/// A pure TCP SYN (SYN set, ACK clear): a connection's first packet.
pub(crate) const PURE_SYN: Shape = 2;
/// A TCP RST.
pub(crate) const RST: Shape = 4;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// For the connection-limit gates: whether an IPv4/IPv6 TCP packet (IPv6
/// without extension headers) is a pure SYN or a RST, and where its IP
/// header starts. `None` for anything else.
#[inline(always)]
pub(crate) fn tcp_shape(ctx: &TcContext, l2_len: usize) -> Option<(Shape, u16)> {
    if l2_len > MAX_L2_LEN {
        return None;
    }
    let l4 = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let mut copy = MaybeUninit::<[u8; IPV4_HDR_LEN]>::uninit();
            let ip = bytes(ctx, l2_len, &mut copy)?;
            if ip[9] != PROTO_TCP || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return None;
            }
            l2_len + ((ip[0] & 0x0f) as usize) * 4
        }
        ETH_P_IPV6 => {
            let mut copy = MaybeUninit::<[u8; IPV6_HDR_LEN]>::uninit();
            let ip = bytes(ctx, l2_len, &mut copy)?;
            if ip[6] != PROTO_TCP {
                return None;
            }
            l2_len + IPV6_HDR_LEN
        }
        _ => return None,
    };
    let mut copy = MaybeUninit::<[u8; 14]>::uninit();
    let flags = bytes(ctx, l4 & 0xff, &mut copy)?[13];
    let mut shape = 0;
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        shape |= PURE_SYN;
    }
    if flags & TCP_RST != 0 {
        shape |= RST;
    }
    Some((shape, l2_len as u16))
}

/// The flow key of an IPv4/IPv6 packet, built in `buf`, or `None` when the
/// packet has none (not IP, a fragment, truncated, or an IPv6 extension
/// chain too long to walk): such packets take the default class. With it,
/// whether the packet is a bare TCP acknowledgement (no payload).
#[inline(always)]
pub(crate) fn flow_key<'a>(
    ctx: &TcContext,
    l2_len: usize,
    direction: Direction,
    buf: &'a mut KeyBuf,
) -> Option<(&'a FlowKey, bool)> {
    if l2_len > MAX_L2_LEN {
        return None;
    }
    let ip = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => ipv4(ctx, l2_len, direction, buf)?,
        ETH_P_IPV6 => ipv6(ctx, l2_len, direction, buf)?,
        _ => return None,
    };
    let (mut src_port, mut dst_port, mut bare_ack) = (0, 0, false);
    if ip.proto == PROTO_TCP {
        let mut copy = MaybeUninit::<[u8; 14]>::uninit();
        let tcp = bytes(ctx, ip.l4, &mut copy)?;
        src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        let header = ((tcp[12] >> 4) as usize) * 4;
        bare_ack = tcp[13] & TCP_ACK != 0
            && tcp[13] & TCP_SYN_FIN_RST == 0
            && ctx.len() as usize <= ip.l4 + header + ACK_SLACK;
    } else if ip.proto == PROTO_UDP {
        let mut copy = MaybeUninit::<[u8; 4]>::uninit();
        let ports = bytes(ctx, ip.l4, &mut copy)?;
        src_port = u16::from_be_bytes([ports[0], ports[1]]);
        dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    }
    let (lport, rport) = match direction {
        Direction::Egress => (src_port, dst_port),
        Direction::Ingress => (dst_port, src_port),
    };
    // SAFETY: ipv4() and ipv6() store the addresses before they return Some.
    Some((unsafe { buf.finish(head(ip.family, ip.proto, lport, rport)) }, bare_ack))
}

/// The IPv4 header at `at`.
#[inline(always)]
fn ipv4(ctx: &TcContext, at: usize, direction: Direction, buf: &mut KeyBuf) -> Option<Ip> {
    let mut copy = MaybeUninit::<[u8; IPV4_HDR_LEN]>::uninit();
    let ip = bytes(ctx, at, &mut copy)?;
    let version_ihl = ip[0];
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let frag_off = u16::from_be_bytes([ip[6], ip[7]]);
    // More-fragments flag or a fragment offset: no ports in every piece.
    if version_ihl >> 4 != 4 || ihl < IPV4_HDR_LEN || frag_off & 0x3fff != 0 {
        return None;
    }
    let src = [word::<4, IPV4_HDR_LEN>(ip, 12), 0];
    let dst = [word::<4, IPV4_HDR_LEN>(ip, 16), 0];
    buf.addresses(direction, src, dst);
    Some(Ip { family: FAMILY_V4, proto: ip[9], l4: at + ihl })
}

/// The IPv6 header at `at`, its extension headers skipped.
#[inline(always)]
fn ipv6(ctx: &TcContext, at: usize, direction: Direction, buf: &mut KeyBuf) -> Option<Ip> {
    let mut copy = MaybeUninit::<[u8; IPV6_HDR_LEN]>::uninit();
    let ip = bytes(ctx, at, &mut copy)?;
    // Into the key now: kept in registers across the walk below, the 32
    // address bytes would be spilled to the stack one by one.
    let src = [word::<8, IPV6_HDR_LEN>(ip, 8), word::<8, IPV6_HDR_LEN>(ip, 16)];
    let dst = [word::<8, IPV6_HDR_LEN>(ip, 24), word::<8, IPV6_HDR_LEN>(ip, 32)];
    buf.addresses(direction, src, dst);
    let mut next = ip[6];
    let mut offset = at + IPV6_HDR_LEN;
    for _ in 0..MAX_IPV6_EXT {
        let mut copy = MaybeUninit::<[u8; 2]>::uninit();
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr = bytes(ctx, offset, &mut copy)?;
                next = hdr[0];
                (hdr[1] as usize + 1) * 8
            }
            IPPROTO_AH => {
                let hdr = bytes(ctx, offset, &mut copy)?;
                next = hdr[0];
                (hdr[1] as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => return None,
            _ => return Some(Ip { family: FAMILY_V6, proto: next, l4: offset }),
        };
        offset += len;
    }
    None
}
