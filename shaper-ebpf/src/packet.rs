//! Reading the flow tuple out of a packet, bounds-checked at every step.
//!
//! The key is written in place into the caller's zeroed, 8-byte aligned
//! buffer, and header fields are read where they lie in the packet: copying
//! headers and keys around by value made LLVM shuffle them byte by byte
//! through dozens of stack slots, a good part of a known flow's cost.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
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
const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;

/// Which side of the packet is this host.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The packet leaves: the source is local.
    SourceLocal,
    /// The packet arrives: the destination is local.
    DestLocal,
}

/// Room for a flow key on the stack, 8-byte aligned so that it is zeroed in
/// five word stores (see [`KeyBuf::zeroed`]).
#[repr(C, align(8))]
pub(crate) union KeyBuf {
    words: [u64; KEY_WORDS],
    key: FlowKey,
}
const KEY_WORDS: usize = core::mem::size_of::<FlowKey>() / 8;
const _: () = assert!(core::mem::size_of::<KeyBuf>() == core::mem::size_of::<FlowKey>());

impl KeyBuf {
    /// Zeroes `buf` and hands it out as a key. The stores are volatile so that
    /// LLVM keeps them as stores: it would merge them into a memset, which
    /// the BPF backend emits as a call to a byte-by-byte loop.
    #[inline(always)]
    pub(crate) fn zeroed(buf: &mut MaybeUninit<KeyBuf>) -> &mut FlowKey {
        let words = buf.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < KEY_WORDS {
            // SAFETY: `words` points to KEY_WORDS aligned u64s inside `buf`.
            unsafe { words.add(i).write_volatile(0) };
            i += 1;
        }
        // SAFETY: every byte is now written, and any bit pattern is a valid
        // FlowKey (integers and byte arrays).
        unsafe { &mut buf.assume_init_mut().key }
    }
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

/// Copies `N` bytes of `from`, starting at `at`, to the front of `to`
/// (byte by byte: packet data has no known alignment).
#[inline(always)]
fn copy<const N: usize, const M: usize>(to: &mut [u8; 16], from: &[u8; M], at: usize) {
    let mut i = 0;
    while i < N {
        to[i] = from[at + i];
        i += 1;
    }
}

/// Offsets of the local and remote address in an IP header whose source
/// address is at `src` and destination at `dst`.
#[inline(always)]
fn local_remote(side: Side, src: usize, dst: usize) -> (usize, usize) {
    match side {
        Side::SourceLocal => (src, dst),
        Side::DestLocal => (dst, src),
    }
}

/// Fills in the flow key of an IPv4/IPv6 packet (`key` comes zeroed).
/// False when the packet has none (not IP, a fragment, truncated, or an IPv6
/// extension chain too long to walk): such packets take the default class.
#[inline(always)]
pub(crate) fn flow_key(ctx: &TcContext, l2_len: usize, side: Side, key: &mut FlowKey) -> bool {
    if l2_len > MAX_L2_LEN {
        return false;
    }
    let found = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => ipv4(ctx, l2_len, side, key),
        ETH_P_IPV6 => ipv6(ctx, l2_len, side, key),
        _ => None,
    };
    let Some((proto, l4)) = found else { return false };
    key.proto = proto;
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let mut buf = MaybeUninit::<[u8; 4]>::uninit();
        let Some(ports) = bytes(ctx, l4, &mut buf) else { return false };
        let src = u16::from_be_bytes([ports[0], ports[1]]);
        let dst = u16::from_be_bytes([ports[2], ports[3]]);
        (key.lport, key.rport) = match side {
            Side::SourceLocal => (src, dst),
            Side::DestLocal => (dst, src),
        };
    }
    true
}

/// Fills in the family and addresses of the IPv4 header at `at`; returns its
/// protocol and where the next header starts.
#[inline(always)]
fn ipv4(ctx: &TcContext, at: usize, side: Side, key: &mut FlowKey) -> Option<(u8, usize)> {
    let mut buf = MaybeUninit::uninit();
    let ip = bytes(ctx, at, &mut buf)?;
    let version_ihl = ip[0];
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let frag_off = u16::from_be_bytes([ip[6], ip[7]]);
    // More-fragments flag or a fragment offset: no ports in every piece.
    if version_ihl >> 4 != 4 || ihl < IPV4_HDR_LEN || frag_off & 0x3fff != 0 {
        return None;
    }
    key.family = FAMILY_V4;
    let (local, remote) = local_remote(side, 12, 16);
    copy::<4, IPV4_HDR_LEN>(&mut key.laddr, ip, local);
    copy::<4, IPV4_HDR_LEN>(&mut key.raddr, ip, remote);
    Some((ip[9], at + ihl))
}

/// Fills in the family and addresses of the IPv6 header at `at`; returns the
/// upper-layer protocol past its extension headers and where that starts.
#[inline(always)]
fn ipv6(ctx: &TcContext, at: usize, side: Side, key: &mut FlowKey) -> Option<(u8, usize)> {
    let mut buf = MaybeUninit::uninit();
    let ip = bytes(ctx, at, &mut buf)?;
    key.family = FAMILY_V6;
    let (local, remote) = local_remote(side, 8, 24);
    copy::<16, IPV6_HDR_LEN>(&mut key.laddr, ip, local);
    copy::<16, IPV6_HDR_LEN>(&mut key.raddr, ip, remote);
    let mut next = ip[6];
    let mut offset = at + IPV6_HDR_LEN;
    for _ in 0..MAX_IPV6_EXT {
        let mut buf = MaybeUninit::<[u8; 2]>::uninit();
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr = bytes(ctx, offset, &mut buf)?;
                next = hdr[0];
                (hdr[1] as usize + 1) * 8
            }
            IPPROTO_AH => {
                let hdr = bytes(ctx, offset, &mut buf)?;
                next = hdr[0];
                (hdr[1] as usize + 2) * 4
            }
            IPPROTO_FRAGMENT => return None,
            _ => return Some((next, offset)),
        };
        offset += len;
    }
    None
}
