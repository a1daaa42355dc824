//! Tests of the rule table in the `match` language's words, and the fact
//! each compares, for `shaper explain`: "rport == 443" against "rport 5201".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use shaper_common::{
    FlowKey, RuleNode, FAMILY_V4, OP_CGROUP, OP_CGROUP_UNDER, OP_COMM, OP_GID, OP_LADDR, OP_LPORT, OP_PID,
    OP_PROTO, OP_RADDR, OP_RPORT, OP_TRUE, OP_UID, OP_USERSPACE,
};

use super::{
    compile::Compiled,
    pred::{Atom, ProcessFacts, Side, StrMatch, TextAttr},
};
use crate::flows;

/// "name == 5" for a one-value range, "name in 5..9" otherwise.
fn range(name: &str, lo: u32, hi: u32, show: impl Fn(u32) -> String) -> String {
    if lo == hi {
        format!("{name} == {}", show(lo))
    } else {
        format!("{name} in {}..{}", show(lo), show(hi))
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

fn text_attr(attr: TextAttr) -> String {
    match attr {
        TextAttr::User => "user".into(),
        TextAttr::Group => "group".into(),
        TextAttr::Cmd => "cmd".into(),
        TextAttr::Exe => "exe".into(),
        TextAttr::Args(None) => "args".into(),
        TextAttr::Args(Some(i)) => format!("args[{i}]"),
        TextAttr::Cgroup => "cgroup".into(),
        TextAttr::Unit => "unit".into(),
        TextAttr::Parent => "parent".into(),
        TextAttr::Ancestor => "ancestor".into(),
    }
}

/// A test only the daemon makes, or any atom, in the language's words.
pub fn atom(atom: &Atom) -> String {
    let side = |s: &Side, what: &str| format!("{}{what}", if *s == Side::Local { "l" } else { "r" });
    match atom {
        Atom::Proto { lo, hi } => {
            range("proto", u32::from(*lo), u32::from(*hi), |p| flows::proto_name(p as u8))
        }
        Atom::Port { side: s, lo, hi } => {
            range(&side(s, "port"), u32::from(*lo), u32::from(*hi), |p| p.to_string())
        }
        Atom::Addr { side: s, prefix } => {
            format!("{} in {}/{}", side(s, "addr"), address(prefix.family, &prefix.addr), prefix.len)
        }
        Atom::Uid { lo, hi } => range("uid", *lo, *hi, |v| v.to_string()),
        Atom::Gid { lo, hi } => range("gid", *lo, *hi, |v| v.to_string()),
        Atom::Pid { lo, hi } => range("pid", *lo, *hi, |v| v.to_string()),
        Atom::Cmd { name, prefix: false } => format!("cmd == {name:?}"),
        Atom::Cmd { name, prefix: true } => format!("cmd ~ \"{name}*\""),
        Atom::Cgroup { path, below: false } => format!("cgroup == {path:?}"),
        Atom::Cgroup { path, below: true } => format!("cgroup below {path:?}"),
        Atom::Unit(name) => format!("unit == {name:?}"),
        Atom::Text(attr, StrMatch::Exact(s)) => format!("{} == {s:?}", text_attr(*attr)),
        Atom::Text(attr, StrMatch::Glob(g)) => format!("{} ~ \"{g}\"", text_attr(*attr)),
    }
}

/// The process name a node tests, and whether exactly (the NUL after it is tested).
fn comm(node: &RuleNode) -> (String, bool) {
    let len = usize::from(node.bits / 8).min(node.a.len());
    let tested = node.a.get(..len).unwrap_or_default();
    let exact = tested.last() == Some(&0);
    let name: Vec<u8> = tested.iter().copied().take_while(|b| *b != 0).collect();
    (String::from_utf8_lossy(&name).into_owned(), exact)
}

fn or_unknown<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

impl Compiled {
    /// The cgroup path the table knows for id `id`.
    fn cgroup_path(&self, id: u64) -> String {
        self.cgroup_paths
            .iter()
            .find(|(_, i)| **i == id)
            .map_or_else(|| format!("cgroup id {id}"), |(p, _)| format!("{p:?}"))
    }

    /// What `node` tests, in the `match` language's words.
    pub fn describe(&self, node: &RuleNode) -> String {
        let num = |v: u32| v.to_string();
        match node.op {
            OP_TRUE => "true".into(),
            OP_PROTO => range("proto", node.lo, node.hi, |p| flows::proto_name(p as u8)),
            OP_RPORT => range("rport", node.lo, node.hi, num),
            OP_LPORT => range("lport", node.lo, node.hi, num),
            OP_RADDR | OP_LADDR => format!(
                "{} in {}/{}",
                if node.op == OP_RADDR { "raddr" } else { "laddr" },
                address(node.family, &node.a),
                node.bits
            ),
            OP_UID => range("uid", node.lo, node.hi, num),
            OP_GID => range("gid", node.lo, node.hi, num),
            OP_PID => range("pid", node.lo, node.hi, num),
            OP_COMM => match comm(node) {
                (name, true) => format!("cmd == {name:?}"),
                (name, false) => format!("cmd ~ \"{name}*\""),
            },
            OP_CGROUP => format!("cgroup == {}", self.cgroup_path(node.id())),
            OP_CGROUP_UNDER => format!("cgroup under {}", self.cgroup_path(node.id())),
            OP_USERSPACE => self.userspace.get(node.lo as usize).map_or_else(|| "?".into(), atom),
            op => format!("unknown test {op}"),
        }
    }

    /// The fact `node` compares, for flow `key` of `process`.
    pub fn fact(&self, node: &RuleNode, key: &FlowKey, process: Option<&ProcessFacts>) -> String {
        let p = process;
        match node.op {
            OP_TRUE => String::new(),
            OP_PROTO => format!("proto {}", flows::proto_name(key.proto)),
            OP_RPORT => format!("rport {}", key.rport),
            OP_LPORT => format!("lport {}", key.lport),
            OP_RADDR => format!("raddr {}", flows::remote(key).ip()),
            OP_LADDR => format!("laddr {}", flows::local(key).ip()),
            OP_UID => format!("uid {}", or_unknown(p.and_then(|p| p.uid))),
            OP_GID => format!("gid {}", or_unknown(p.and_then(|p| p.gid))),
            OP_PID => format!("pid {}", or_unknown(p.map(|p| p.pid))),
            OP_COMM => {
                format!("cmd {}", or_unknown(p.and_then(|p| p.cmd.as_ref()).map(|c| format!("{c:?}"))))
            }
            OP_CGROUP | OP_CGROUP_UNDER => {
                format!("cgroup {}", or_unknown(p.and_then(|p| p.cgroup.as_ref()).map(|c| format!("{c:?}"))))
            }
            OP_USERSPACE => match self.userspace.get(node.lo as usize) {
                Some(a) => atom_fact(a, p),
                None => String::new(),
            },
            _ => String::new(),
        }
    }
}

/// The fact a daemon-side test compares.
fn atom_fact(atom: &Atom, p: Option<&ProcessFacts>) -> String {
    let quoted = |v: Option<&String>| or_unknown(v.map(|s| format!("{s:?}")));
    let list = |v: Option<&Vec<String>>| or_unknown(v.map(|l| format!("{l:?}")));
    match atom {
        Atom::Text(attr, _) => {
            let value = match attr {
                TextAttr::User => quoted(p.and_then(|p| p.user.as_ref())),
                TextAttr::Group => quoted(p.and_then(|p| p.group.as_ref())),
                TextAttr::Cmd => quoted(p.and_then(|p| p.cmd.as_ref())),
                TextAttr::Exe => quoted(p.and_then(|p| p.exe.as_ref())),
                TextAttr::Args(None) => list(p.and_then(|p| p.args.as_ref())),
                TextAttr::Args(Some(i)) => {
                    quoted(p.and_then(|p| p.args.as_ref()).and_then(|a| a.get(*i as usize)))
                }
                TextAttr::Cgroup => quoted(p.and_then(|p| p.cgroup.as_ref())),
                TextAttr::Unit => or_unknown(p.filter(|p| p.cgroup.is_some()).map(|p| {
                    let units: Vec<&str> = p.units().collect();
                    format!("{units:?}")
                })),
                TextAttr::Parent => quoted(p.and_then(|p| p.ancestors.as_ref()).and_then(|a| a.first())),
                TextAttr::Ancestor => list(p.and_then(|p| p.ancestors.as_ref())),
            };
            format!("{} {value}", text_attr(*attr))
        }
        Atom::Cgroup { .. } | Atom::Unit(_) => {
            format!("cgroup {}", quoted(p.and_then(|p| p.cgroup.as_ref())))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{compile, compile::NoCgroups, lower, parser, pred::Pred, SystemEnv};
    use shaper_common::PROTO_TCP;

    #[test]
    fn tests_read_as_the_language_writes_them() {
        let env = SystemEnv::default();
        let source = "rport == 443 and raddr in 198.18.0.0/15 and cmd == \"curl\" and exe ~ \"/usr/*\" \
                      and args[1] == \"-O\" and uid in 1000..2000 and cmd ~ \"wg*\" and proto == \"udp\"";
        let pred: Pred = lower::lower(&parser::parse(source).unwrap(), &env.env()).unwrap();
        let table = compile::compile(&[(0, &pred)], &NoCgroups).unwrap();
        let mut shown: Vec<String> = table.nodes.iter().map(|n| table.describe(n)).collect();
        shown.sort();
        assert_eq!(
            shown,
            [
                "args[1] == \"-O\"",
                "cmd == \"curl\"",
                "cmd ~ \"wg*\"",
                "exe ~ \"/usr/*\"",
                "proto == udp",
                "raddr in 198.18.0.0/15",
                "rport == 443",
                "uid in 1000..2000",
            ]
        );
        let mut key = FlowKey { family: FAMILY_V4, proto: PROTO_TCP, rport: 8080, ..FlowKey::default() };
        key.raddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        let process = ProcessFacts {
            pid: 7,
            uid: Some(1000),
            cmd: Some("curl".into()),
            exe: Some("/usr/bin/curl".into()),
            ..ProcessFacts::default()
        };
        let mut facts: Vec<String> =
            table.nodes.iter().map(|n| table.fact(n, &key, Some(&process))).collect();
        facts.sort();
        assert_eq!(
            facts,
            [
                "args[1] unknown",
                "cmd \"curl\"",
                "cmd \"curl\"",
                "exe \"/usr/bin/curl\"",
                "proto tcp",
                "raddr 198.18.0.2",
                "rport 8080",
                "uid 1000",
            ]
        );
    }
}
