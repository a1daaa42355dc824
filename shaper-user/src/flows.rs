//! Flow keys as people and /proc see them: socket addresses in, "addr:port" out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shaper_common::{FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

/// The flow key of a socket. IPv4-mapped IPv6 addresses (a dual-stack socket
/// talking IPv4) become IPv4, since that is what the packets carry.
pub fn key(proto: u8, local: SocketAddr, remote: SocketAddr) -> FlowKey {
    let mut key = FlowKey { proto, lport: local.port(), rport: remote.port(), ..FlowKey::default() };
    let (local, remote) = (canonical(local.ip()), canonical(remote.ip()));
    match (local, remote) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            key.family = FAMILY_V4;
            key.laddr[..4].copy_from_slice(&l.octets());
            key.raddr[..4].copy_from_slice(&r.octets());
        }
        (l, r) => {
            key.family = FAMILY_V6;
            key.laddr = v6(l).octets();
            key.raddr = v6(r).octets();
        }
    }
    key
}

/// A short, stable name of a flow for `shaper conns` and `shaper move`: eight
/// hex digits of an FNV-1a hash of the key.
pub fn id(key: &FlowKey) -> String {
    let mut bytes = Vec::with_capacity(40);
    bytes.extend_from_slice(&[key.family, key.proto]);
    bytes.extend_from_slice(&key.lport.to_be_bytes());
    bytes.extend_from_slice(&key.rport.to_be_bytes());
    bytes.extend_from_slice(&key.laddr);
    bytes.extend_from_slice(&key.raddr);
    let hash = bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    format!("{hash:08x}")
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
        v4 => v4,
    }
}

fn v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

pub fn local(key: &FlowKey) -> SocketAddr {
    SocketAddr::new(addr(key.family, &key.laddr), key.lport)
}

pub fn remote(key: &FlowKey) -> SocketAddr {
    SocketAddr::new(addr(key.family, &key.raddr), key.rport)
}

/// An end of the flow as `shaper conns` shows it: "addr:port" ("[v6]:port"),
/// or the bare address for protocols without ports.
pub fn endpoint(key: &FlowKey, local_side: bool) -> String {
    let addr = if local_side { local(key) } else { remote(key) };
    if key.proto == PROTO_TCP || key.proto == PROTO_UDP {
        addr.to_string()
    } else {
        addr.ip().to_string()
    }
}

/// "tcp", "udp", or the protocol number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".to_string(),
        PROTO_UDP => "udp".to_string(),
        1 => "icmp".to_string(),
        58 => "icmpv6".to_string(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv6_becomes_ipv4_and_formats_like_a_socket_address() {
        let k = key(
            PROTO_TCP,
            "[::ffff:198.18.0.1]:40000".parse().unwrap(),
            "[::ffff:198.18.0.2]:80".parse().unwrap(),
        );
        assert_eq!(k.family, FAMILY_V4);
        assert_eq!(local(&k).to_string(), "198.18.0.1:40000");
        assert_eq!(remote(&k).to_string(), "198.18.0.2:80");
        let k6 = key(PROTO_UDP, "[fd00::1]:5000".parse().unwrap(), "[fd00::2]:443".parse().unwrap());
        assert_eq!(k6.family, FAMILY_V6);
        assert_eq!(remote(&k6).to_string(), "[fd00::2]:443");
        assert_eq!(proto_name(k6.proto), "udp");
        assert_eq!(endpoint(&k6, false), "[fd00::2]:443");
        let icmp = FlowKey { proto: 58, ..k6 };
        assert_eq!((endpoint(&icmp, true), proto_name(58)), ("fd00::1".to_string(), "icmpv6".to_string()));
    }
}
