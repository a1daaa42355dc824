//! Typed predicates: a `match` expression after its values were checked
//! against their attributes and services resolved to ports. This is what the
//! compiler turns into the kernel's rule table, and what [`Pred::matches`]
//! evaluates directly (the reference the table is tested against).

use std::net::IpAddr;

use shaper_common::{FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

/// Which end of the flow, seen from this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
}

/// An address prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub family: u8,
    /// Network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    pub len: u8,
}

impl Prefix {
    /// The prefix `addr/len`; `None` when `addr` has bits set past `len`.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let (family, bytes, width) = match addr {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (FAMILY_V4, b, 32)
            }
            IpAddr::V6(a) => (FAMILY_V6, a.octets(), 128),
        };
        if len > width {
            return None;
        }
        let prefix = Self { family, addr: bytes, len };
        let mask = prefix.mask();
        if bytes.iter().zip(mask).any(|(b, m)| b & !m != 0) {
            return None;
        }
        Some(prefix)
    }

    /// The network mask, in the same layout as `addr`.
    pub fn mask(&self) -> [u8; 16] {
        let mut mask = [0u8; 16];
        for (i, m) in mask.iter_mut().enumerate() {
            let bits = (i32::from(self.len) - 8 * i as i32).clamp(0, 8);
            *m = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        }
        mask
    }

    pub fn contains(&self, family: u8, addr: &[u8; 16]) -> bool {
        family == self.family && addr.iter().zip(self.mask()).zip(self.addr).all(|((a, m), p)| a & m == p)
    }
}

/// One test on a flow; each becomes one node of the kernel rule table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atom {
    /// IP protocol number in `lo..=hi`.
    Proto {
        lo: u8,
        hi: u8,
    },
    /// Port in `lo..=hi`; false for protocols without ports.
    Port {
        side: Side,
        lo: u16,
        hi: u16,
    },
    Addr {
        side: Side,
        prefix: Prefix,
    },
}

impl Atom {
    pub fn matches(&self, key: &FlowKey) -> bool {
        let has_ports = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
        match *self {
            Atom::Proto { lo, hi } => (lo..=hi).contains(&key.proto),
            Atom::Port { side, lo, hi } => {
                let port = if side == Side::Local { key.lport } else { key.rport };
                has_ports && (lo..=hi).contains(&port)
            }
            Atom::Addr { side, prefix } => {
                let addr = if side == Side::Local { &key.laddr } else { &key.raddr };
                prefix.contains(key.family, addr)
            }
        }
    }
}

/// A boolean combination of atoms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pred {
    Const(bool),
    Not(Box<Pred>),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Atom(Atom),
}

impl Pred {
    pub fn matches(&self, key: &FlowKey) -> bool {
        match self {
            Pred::Const(b) => *b,
            Pred::Not(p) => !p.matches(key),
            Pred::And(ps) => ps.iter().all(|p| p.matches(key)),
            Pred::Or(ps) => ps.iter().any(|p| p.matches(key)),
            Pred::Atom(a) => a.matches(key),
        }
    }

    /// Number of atoms (each is one kernel rule node).
    pub fn atoms(&self) -> usize {
        match self {
            Pred::Const(_) => 0,
            Pred::Not(p) => p.atoms(),
            Pred::And(ps) | Pred::Or(ps) => ps.iter().map(Pred::atoms).sum(),
            Pred::Atom(_) => 1,
        }
    }

    /// `Or` of `items`, without a needless wrapper for one item.
    pub fn any(mut items: Vec<Pred>) -> Pred {
        if items.len() == 1 {
            items.remove(0)
        } else {
            Pred::Or(items)
        }
    }

    pub fn negate(self) -> Pred {
        Pred::Not(Box::new(self))
    }
}

/// The smallest set of prefixes covering the addresses `lo..=hi` (same family,
/// `lo <= hi`), as (address, prefix length).
pub fn range_prefixes(lo: IpAddr, hi: IpAddr) -> Vec<(IpAddr, u8)> {
    let (mut lo, hi, width) = match (lo, hi) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return Vec::new(),
    };
    let to_ip = |v: u128| -> IpAddr {
        if width == 32 {
            IpAddr::V4(std::net::Ipv4Addr::from(v as u32))
        } else {
            IpAddr::V6(std::net::Ipv6Addr::from(v))
        }
    };
    let mut out = Vec::new();
    while lo <= hi {
        // Largest aligned block starting at lo that stays within hi.
        let align = if lo == 0 { width } else { lo.trailing_zeros().min(width) };
        let span = hi - lo; // block of 2^k addresses fits when 2^k - 1 <= span
        let fit = if span == u128::MAX { 128 } else { 127 - (span + 1).leading_zeros() };
        let k = align.min(fit);
        out.push((to_ip(lo), (width - k) as u8));
        if k >= 128 {
            break;
        }
        match lo.checked_add(1u128 << k) {
            Some(next) if width == 128 || next <= u128::from(u32::MAX) => lo = next,
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_refuse_host_bits() {
        assert!(Prefix::new("198.18.0.0".parse().unwrap(), 15).is_some());
        assert!(Prefix::new("198.19.0.0".parse().unwrap(), 15).is_none());
        assert!(Prefix::new("fd00::".parse().unwrap(), 8).is_some());
        assert!(Prefix::new("fd00::1".parse().unwrap(), 8).is_none());
        let p = Prefix::new("198.18.0.0".parse().unwrap(), 15).unwrap();
        assert_eq!(&p.mask()[..4], &[255, 254, 0, 0]);
        assert!(p.contains(FAMILY_V4, &[198, 19, 200, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!p.contains(FAMILY_V4, &[198, 20, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!p.contains(FAMILY_V6, &[198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn address_ranges_become_minimal_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let show = |v: Vec<(IpAddr, u8)>| v.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>();
        assert_eq!(show(range_prefixes(ip("10.0.0.0"), ip("10.0.0.255"))), ["10.0.0.0/24"]);
        assert_eq!(
            show(range_prefixes(ip("10.0.0.1"), ip("10.0.0.6"))),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(show(range_prefixes(ip("0.0.0.0"), ip("255.255.255.255"))), ["0.0.0.0/0"]);
        assert_eq!(
            show(range_prefixes(ip("255.255.255.255"), ip("255.255.255.255"))),
            ["255.255.255.255/32"]
        );
        assert_eq!(show(range_prefixes(ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))), ["::/0"]);
        assert_eq!(show(range_prefixes(ip("fd00::"), ip("fd00::1:0"))), ["fd00::/112", "fd00::1:0/128"]);
    }
}
