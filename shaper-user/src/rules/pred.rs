//! Typed predicates: a `match` expression after its values were checked
//! against their attributes and names resolved (services to ports, users and
//! groups to ids). This is what the compiler turns into the kernel's rule
//! table, and what [`Pred::matches`] evaluates in the daemon with everything
//! known about a connection ([`Facts`]): the final word on its class.

use std::net::IpAddr;

use shaper_common::{FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use super::glob::Glob;

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

/// What the daemon knows about the process behind a connection. Fields it
/// could not learn (the process exited before they were read) are `None`:
/// unknown, never a value ([`Atom::known_for`]); the evaluation that decides a
/// class takes a test on them as unknown and its verdict as provisional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcessFacts {
    pub pid: u32,
    /// Real uid and gid.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// The kernel's name for the process (comm, at most 15 characters).
    pub cmd: Option<String>,
    pub exe: Option<String>,
    pub args: Option<Vec<String>>,
    /// cgroup v2 path, as in /proc/PID/cgroup ("/system.slice/sshd.service").
    pub cgroup: Option<String>,
    /// Names (comm) of the parent, grandparent, … up to init.
    pub ancestors: Option<Vec<String>>,
}

impl ProcessFacts {
    /// The systemd units along the cgroup path ("sshd.service", "user@1000.service", …).
    pub fn units(&self) -> impl Iterator<Item = &str> {
        self.cgroup.as_deref().into_iter().flat_map(|c| c.split('/')).filter(|c| is_unit(c))
    }
}

/// Whether a cgroup directory name is a systemd unit.
pub fn is_unit(name: &str) -> bool {
    [".service", ".scope", ".slice", ".socket", ".mount", ".swap"]
        .iter()
        .any(|s| name.ends_with(s) && name.len() > s.len())
}

/// Everything a rule may test about a flow.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub key: &'a FlowKey,
    pub process: Option<&'a ProcessFacts>,
}

/// A string test: equality or a glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrMatch {
    Exact(String),
    Glob(Glob),
}

impl StrMatch {
    pub fn matches(&self, text: &str) -> bool {
        match self {
            StrMatch::Exact(s) => s == text,
            StrMatch::Glob(g) => g.matches(text),
        }
    }
}

/// The string attributes only the daemon can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextAttr {
    /// The user and group names (for globs; `==` resolves to ids).
    User,
    Group,
    /// The process name, for globs the kernel cannot test.
    Cmd,
    Exe,
    /// Any argument (`None`) or argument N.
    Args(Option<u32>),
    Cgroup,
    Unit,
    Parent,
    Ancestor,
}

/// One test on a flow. Network tests and the owner tests (uid, gid, pid,
/// process name, cgroup, unit) are made by the kernel; `Text` tests only by the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    Uid {
        lo: u32,
        hi: u32,
    },
    Gid {
        lo: u32,
        hi: u32,
    },
    Pid {
        lo: u32,
        hi: u32,
    },
    /// The process name (at most 15 bytes): equal to `name`, or starting with it.
    Cmd {
        name: String,
        prefix: bool,
    },
    /// The process's cgroup is `path` (`below: false`), or lies strictly below it.
    Cgroup {
        path: String,
        below: bool,
    },
    /// A unit of this name appears on the cgroup path.
    Unit(String),
    Text(TextAttr, StrMatch),
}

impl Atom {
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let key = facts.key;
        let has_ports = key.proto == PROTO_TCP || key.proto == PROTO_UDP;
        match self {
            Atom::Proto { lo, hi } => (lo..=hi).contains(&&key.proto),
            Atom::Port { side, lo, hi } => {
                let port = if *side == Side::Local { key.lport } else { key.rport };
                has_ports && (lo..=hi).contains(&&port)
            }
            Atom::Addr { side, prefix } => {
                let addr = if *side == Side::Local { &key.laddr } else { &key.raddr };
                prefix.contains(key.family, addr)
            }
            process_atom => facts.process.is_some_and(|p| process_atom.matches_process(p)),
        }
    }

    fn matches_process(&self, p: &ProcessFacts) -> bool {
        match self {
            Atom::Uid { lo, hi } => p.uid.is_some_and(|uid| (*lo..=*hi).contains(&uid)),
            Atom::Gid { lo, hi } => p.gid.is_some_and(|gid| (*lo..=*hi).contains(&gid)),
            Atom::Pid { lo, hi } => (lo..=hi).contains(&&p.pid),
            Atom::Cmd { name, prefix } => p.cmd.as_deref().is_some_and(|cmd| {
                if *prefix {
                    cmd.starts_with(name.as_str())
                } else {
                    cmd == name
                }
            }),
            Atom::Cgroup { path, below } => p.cgroup.as_deref().is_some_and(|c| {
                if !*below {
                    c == path
                } else if path == "/" {
                    c != "/"
                } else {
                    c.strip_prefix(path.as_str()).is_some_and(|rest| rest.starts_with('/'))
                }
            }),
            Atom::Unit(name) => p.units().any(|u| u == name),
            Atom::Text(attr, m) => match attr {
                TextAttr::User => p.user.as_deref().is_some_and(|u| m.matches(u)),
                TextAttr::Group => p.group.as_deref().is_some_and(|g| m.matches(g)),
                TextAttr::Cmd => p.cmd.as_deref().is_some_and(|c| m.matches(c)),
                TextAttr::Exe => p.exe.as_deref().is_some_and(|e| m.matches(e)),
                TextAttr::Args(None) => p.args.iter().flatten().any(|a| m.matches(a)),
                TextAttr::Args(Some(i)) => {
                    p.args.as_ref().and_then(|a| a.get(*i as usize)).is_some_and(|a| m.matches(a))
                }
                TextAttr::Cgroup => p.cgroup.as_deref().is_some_and(|c| m.matches(c)),
                TextAttr::Unit => p.units().any(|u| m.matches(u)),
                TextAttr::Parent => {
                    p.ancestors.as_ref().and_then(|a| a.first()).is_some_and(|c| m.matches(c))
                }
                TextAttr::Ancestor => p.ancestors.iter().flatten().any(|c| m.matches(c)),
            },
            Atom::Proto { .. } | Atom::Port { .. } | Atom::Addr { .. } => false,
        }
    }

    /// Whether `p` holds what this test needs (a process that exited before
    /// it was read leaves its ids, name, exe, args and ancestry unknown).
    pub fn known_for(&self, p: &ProcessFacts) -> bool {
        match self {
            Atom::Text(attr, _) => match attr {
                // A uid read without an account has no name: known, matching none.
                TextAttr::User => p.uid.is_some(),
                TextAttr::Group => p.gid.is_some(),
                TextAttr::Cmd => p.cmd.is_some(),
                TextAttr::Exe => p.exe.is_some(),
                TextAttr::Args(_) => p.args.is_some(),
                TextAttr::Cgroup | TextAttr::Unit => p.cgroup.is_some(),
                TextAttr::Parent | TextAttr::Ancestor => p.ancestors.is_some(),
            },
            Atom::Cgroup { .. } | Atom::Unit(_) => p.cgroup.is_some(),
            Atom::Uid { .. } => p.uid.is_some(),
            Atom::Gid { .. } => p.gid.is_some(),
            Atom::Cmd { .. } => p.cmd.is_some(),
            _ => true,
        }
    }

    /// Whether the kernel can make this test (from the packet, the socket's
    /// owner record or its cgroup).
    pub fn in_kernel(&self) -> bool {
        !matches!(self, Atom::Text(..))
    }

    /// Whether the test is about the process rather than the packet.
    pub fn is_process(&self) -> bool {
        !matches!(self, Atom::Proto { .. } | Atom::Port { .. } | Atom::Addr { .. })
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
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Pred::Const(b) => *b,
            Pred::Not(p) => !p.matches(facts),
            Pred::And(ps) => ps.iter().all(|p| p.matches(facts)),
            Pred::Or(ps) => ps.iter().any(|p| p.matches(facts)),
            Pred::Atom(a) => a.matches(facts),
        }
    }

    /// Whether any test satisfies `f`.
    pub fn any_atom(&self, f: &impl Fn(&Atom) -> bool) -> bool {
        match self {
            Pred::Const(_) => false,
            Pred::Not(p) => p.any_atom(f),
            Pred::And(ps) | Pred::Or(ps) => ps.iter().any(|p| p.any_atom(f)),
            Pred::Atom(a) => f(a),
        }
    }

    /// Number of atoms.
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
