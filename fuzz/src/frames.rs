//! Ethernet frames for the classifier target: generated around the addresses
//! and ports the rules ask about, then broken at their headers; and the
//! reference reading of a frame's flow key, as the classifier documents it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use shaper_common::{Direction, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use shaper_testkit::packets::Frame;

use crate::{world, Rng};

/// Extension headers the classifier walks before giving up.
const MAX_IPV6_EXT: usize = 6;

/// The flow key of `frame` as seen in `direction` (`None`: no key, the
/// default class): Ethernet, then IPv4 (no fragments) or IPv6 (hop-by-hop,
/// routing, destination options and AH walked, at most six; a fragment
/// header ends the walk), then the ports of TCP and UDP.
pub fn flow_key(frame: &[u8], direction: Direction) -> Option<FlowKey> {
    transport(frame, direction).map(|(key, _)| key)
}

/// Whether the classifier sends `frame` to the ACK leaf: a TCP segment with
/// ACK set, no SYN, FIN or RST, and at most 6 bytes after its header (the
/// padding of a minimal Ethernet frame).
pub fn bare_ack(frame: &[u8]) -> bool {
    let Some((key, l4)) = transport(frame, Direction::Egress) else { return false };
    let Some(tcp) = frame.get(l4..l4 + 14) else { return false };
    let header = usize::from(tcp[12] >> 4) * 4;
    key.proto == PROTO_TCP && tcp[13] & 0x10 != 0 && tcp[13] & 0x07 == 0 && frame.len() <= l4 + header + 6
}

/// The flow key and the offset of the transport header.
fn transport(frame: &[u8], direction: Direction) -> Option<(FlowKey, usize)> {
    let at = 14;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let bytes = |offset: usize, n: usize| frame.get(offset..offset.checked_add(n)?);
    let mut key = FlowKey::default();
    let (src, dst, l4);
    match ethertype {
        0x0800 => {
            let ip = bytes(at, 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ip[0] >> 4 != 4 || ihl < 20 || frag & 0x3fff != 0 {
                return None;
            }
            key.family = FAMILY_V4;
            key.proto = ip[9];
            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
            s[..4].copy_from_slice(&ip[12..16]);
            d[..4].copy_from_slice(&ip[16..20]);
            (src, dst, l4) = (s, d, at + ihl);
        }
        0x86dd => {
            let ip = bytes(at, 40)?;
            key.family = FAMILY_V6;
            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            let (mut next, mut offset) = (ip[6], at + 40);
            let mut found = None;
            for _ in 0..MAX_IPV6_EXT {
                let len = match next {
                    0 | 43 | 60 => {
                        let h = bytes(offset, 2)?;
                        next = h[0];
                        (usize::from(h[1]) + 1) * 8
                    }
                    51 => {
                        let h = bytes(offset, 2)?;
                        next = h[0];
                        (usize::from(h[1]) + 2) * 4
                    }
                    44 => return None,
                    _ => {
                        found = Some(offset);
                        break;
                    }
                };
                offset += len;
            }
            key.proto = next;
            (src, dst, l4) = (s, d, found?);
        }
        _ => return None,
    }
    let (mut sport, mut dport) = (0, 0);
    if key.proto == PROTO_TCP || key.proto == PROTO_UDP {
        // The classifier reads TCP's first 14 bytes (ports to flags) at once.
        let p = bytes(l4, if key.proto == PROTO_TCP { 14 } else { 4 })?;
        (sport, dport) = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
    }
    (key.laddr, key.raddr, key.lport, key.rport) = match direction {
        Direction::Egress => (src, dst, sport, dport),
        Direction::Ingress => (dst, src, dport, sport),
    };
    Some((key, l4))
}

fn addr(rng: &mut Rng, v6: bool) -> IpAddr {
    let key = world::flow_key(rng);
    if v6 {
        IpAddr::V6(Ipv6Addr::from(key.laddr))
    } else {
        let [a, b, c, d, ..] = key.laddr;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }
}

/// A frame near the rules: a well-formed one, often broken afterwards at a
/// header field (lengths, versions, protocol numbers, fragment bits), cut
/// short or padded.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.one_in(2);
    let (src, dst) = (addr(rng, v6), addr(rng, v6));
    let port = |rng: &mut Rng| if rng.one_in(2) { *rng.pick(world::PORTS) } else { rng.next_u64() as u16 };
    let (sport, dport) = (port(rng), port(rng));
    let mut frame =
        if rng.one_in(2) { Frame::tcp(src, sport, dst, dport) } else { Frame::udp(src, sport, dst, dport) };
    if rng.one_in(6) {
        frame.proto = *rng.pick(&[1u8, 58, 132, 0, 255]);
    }
    frame.payload = rng.below(64);
    frame.fragment = rng.one_in(10);
    if v6 && rng.one_in(3) {
        frame.ipv6_ext =
            (0..rng.below(8)).map(|_| (*rng.pick(&[0u8, 43, 60, 51, 44]), 8 * (1 + rng.below(3)))).collect();
        // Hop-by-hop is only allowed first, but a packet may say otherwise.
    }
    let mut bytes = frame.build();
    match rng.below(6) {
        0 => {
            // A header byte changed: version, IHL, flags, protocol, next header, lengths.
            let at = *rng.pick(&[12usize, 13, 14, 15, 20, 21, 23, 14 + 6, 14 + 7, 14 + 9, 54, 55, 56, 57]);
            if let Some(b) = bytes.get_mut(at) {
                *b = rng.next_u64() as u8;
            }
        }
        1 => {
            let keep = rng.below(bytes.len() + 1).max(14);
            bytes.truncate(keep);
        }
        2 => {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        3 => bytes.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8)),
        _ => {}
    }
    bytes
}
