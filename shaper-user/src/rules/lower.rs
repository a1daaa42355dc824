//! Type checking: each comparison's operator and value are checked against its
//! attribute, names are resolved (services to ports, protocols to numbers,
//! users and groups to ids), and the expression becomes a [`Pred`].

use std::{collections::BTreeMap, net::IpAddr};

use shaper_common::{PROTO_TCP, PROTO_UDP};

use super::{
    ast::{Attr, AttrType, Cmp, Expr, Op, Spanned, Value},
    glob::Glob,
    pred::{range_prefixes, Atom, Pred, Prefix, Side, StrMatch, TextAttr},
    Env, RuleError,
};
use crate::services::Services;

/// The kernel keeps at most 15 bytes of a process name.
pub const MAX_CMD_LEN: usize = 15;

/// Lowers a parsed expression.
pub fn lower(expr: &Expr, env: &Env<'_>) -> Result<Pred, RuleError> {
    Ok(match expr {
        Expr::Bool(b) => Pred::Const(*b),
        Expr::Not(inner) => lower(inner, env)?.negate(),
        Expr::And(items) => Pred::And(items.iter().map(|e| lower(e, env)).collect::<Result<_, _>>()?),
        Expr::Or(items) => Pred::Or(items.iter().map(|e| lower(e, env)).collect::<Result<_, _>>()?),
        Expr::Cmp(cmp) => lower_cmp(cmp, env)?,
    })
}

fn lower_cmp(cmp: &Cmp, env: &Env<'_>) -> Result<Pred, RuleError> {
    let attr = cmp.attr.node;
    let name = attr.name();
    if let Some(index) = &cmp.index {
        if attr != Attr::Args {
            return Err(RuleError::new(index.span, format!("{name} cannot be indexed; only args[N] can")));
        }
    }
    let op = cmp.op.node;
    check_operator(attr, &cmp.op)?;
    let pred = match attr.ty() {
        AttrType::Port => {
            let side = if attr == Attr::Lport { Side::Local } else { Side::Remote };
            let ranges = number_ranges(op, &cmp.value, u64::from(u16::MAX), &|v| port(name, v))?;
            let atoms = ranges.into_iter().map(|(lo, hi)| Atom::Port { side, lo: lo as u16, hi: hi as u16 });
            Pred::any(atoms.map(Pred::Atom).collect())
        }
        AttrType::Addr => {
            let side = if attr == Attr::Laddr { Side::Local } else { Side::Remote };
            let prefixes = addresses(name, &cmp.value)?;
            Pred::any(prefixes.into_iter().map(|prefix| Pred::Atom(Atom::Addr { side, prefix })).collect())
        }
        AttrType::Proto => {
            let protos = protocols(&cmp.value)?;
            Pred::any(protos.into_iter().map(|p| Pred::Atom(Atom::Proto { lo: p, hi: p })).collect())
        }
        AttrType::Service => service_pred(op, &cmp.value, env.services)?,
        AttrType::Number => {
            let ranges = number_ranges(op, &cmp.value, u64::from(u32::MAX), &|v| id_number(name, v))?;
            let atom = |lo: u64, hi: u64| {
                let (lo, hi) = (lo as u32, hi as u32);
                match attr {
                    Attr::Uid => Atom::Uid { lo, hi },
                    Attr::Gid => Atom::Gid { lo, hi },
                    _ => Atom::Pid { lo, hi },
                }
            };
            Pred::any(ranges.into_iter().map(|(lo, hi)| Pred::Atom(atom(lo, hi))).collect())
        }
        AttrType::Text | AttrType::TextList => text_pred(cmp, env)?,
    };
    Ok(if matches!(op, Op::Ne | Op::NotIn) { pred.negate() } else { pred })
}

fn check_operator(attr: Attr, op: &Spanned<Op>) -> Result<(), RuleError> {
    let name = attr.name();
    let ok = match op.node {
        Op::Eq | Op::Ne | Op::In | Op::NotIn => true,
        Op::Glob => matches!(attr.ty(), AttrType::Text | AttrType::TextList | AttrType::Service),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => matches!(attr.ty(), AttrType::Port | AttrType::Number),
    };
    if ok {
        return Ok(());
    }
    let allowed = match attr.ty() {
        AttrType::Port | AttrType::Number => "==, !=, in, not in, <, <=, >, >=",
        AttrType::Text | AttrType::TextList | AttrType::Service => "==, !=, in, not in, ~",
        AttrType::Addr | AttrType::Proto => "==, !=, in, not in",
    };
    Err(RuleError::new(
        op.span,
        format!("operator {} does not apply to {name}; use {allowed}", op.node.as_str()),
    ))
}

/// The scalars of a value: the value itself, or the items of a list.
fn items(value: &Spanned<Value>) -> Vec<&Spanned<Value>> {
    match &value.node {
        Value::List(items) => items.iter().collect(),
        _ => vec![value],
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Number(_) => "a number",
        Value::Str(_) => "a string",
        Value::Ip(_) => "an address",
        Value::Cidr(..) => "a CIDR",
        Value::Range(..) => "a range",
        Value::List(_) => "a list",
    }
}

fn port(name: &str, value: &Spanned<Value>) -> Result<u64, RuleError> {
    match &value.node {
        Value::Number(n) if *n <= u64::from(u16::MAX) => Ok(*n),
        Value::Number(n) => Err(RuleError::new(value.span, format!("port {n} is out of range 0..65535"))),
        Value::Str(s) => Err(RuleError::new(
            value.span,
            format!("{name} takes port numbers, not strings; to match by name write service == {s:?}"),
        )),
        other => Err(RuleError::new(value.span, format!("{name} takes port numbers, not {}", kind(other)))),
    }
}

/// A uid, gid or pid.
fn id_number(name: &str, value: &Spanned<Value>) -> Result<u64, RuleError> {
    let hint = match name {
        "uid" => "; to match by name write user == ",
        "gid" => "; to match by name write group == ",
        _ => "",
    };
    match &value.node {
        Value::Number(n) if *n <= u64::from(u32::MAX) => Ok(*n),
        Value::Number(n) => Err(RuleError::new(value.span, format!("{n} is out of range for {name}"))),
        Value::Str(s) if !hint.is_empty() => {
            Err(RuleError::new(value.span, format!("{name} takes numbers, not strings{hint}{s:?}")))
        }
        other => Err(RuleError::new(value.span, format!("{name} takes numbers, not {}", kind(other)))),
    }
}

/// The inclusive ranges a numeric comparison selects, merged. `number` reads
/// and bounds one value.
fn number_ranges(
    op: Op,
    value: &Spanned<Value>,
    max: u64,
    number: &dyn Fn(&Spanned<Value>) -> Result<u64, RuleError>,
) -> Result<Vec<(u64, u64)>, RuleError> {
    if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge) {
        let Value::Number(_) = value.node else {
            let what = if max == u64::from(u16::MAX) { "port number" } else { "number" };
            return Err(RuleError::new(value.span, format!("{} takes one {what}", op.as_str())));
        };
        let n = number(value)?;
        let range = match op {
            Op::Lt => n.checked_sub(1).map(|hi| (0, hi)),
            Op::Le => Some((0, n)),
            Op::Gt => (n < max).then(|| (n + 1, max)),
            _ => Some((n, max)),
        };
        return Ok(range.into_iter().collect());
    }
    let mut ranges = Vec::new();
    for item in items(value) {
        ranges.push(match &item.node {
            Value::Range(lo, hi) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if lo > hi {
                    return Err(RuleError::new(
                        item.span,
                        format!("range {lo}..{hi} is empty; write the lower end first"),
                    ));
                }
                (lo, hi)
            }
            _ => {
                let n = number(item)?;
                (n, n)
            }
        });
    }
    Ok(merge(ranges))
}

/// Sorts ranges and joins overlapping or adjacent ones: `[80, 81, 82]` is one test.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn address(name: &str, value: &Spanned<Value>) -> Result<IpAddr, RuleError> {
    match &value.node {
        Value::Ip(a) => Ok(*a),
        other => Err(RuleError::new(value.span, format!("{name} takes addresses, not {}", kind(other)))),
    }
}

fn addresses(name: &str, value: &Spanned<Value>) -> Result<Vec<Prefix>, RuleError> {
    let mut out = Vec::new();
    for item in items(value) {
        match &item.node {
            Value::Ip(a) => {
                let len = if a.is_ipv4() { 32 } else { 128 };
                out.extend(Prefix::new(*a, len));
            }
            Value::Cidr(a, len) => {
                let prefix = Prefix::new(*a, *len).ok_or_else(|| {
                    RuleError::new(
                        item.span,
                        format!("{a}/{len} has host bits set; did you mean {}/{len}?", network(*a, *len)),
                    )
                })?;
                out.push(prefix);
            }
            Value::Range(lo, hi) => {
                let (lo_ip, hi_ip) = (address(name, lo)?, address(name, hi)?);
                if lo_ip.is_ipv4() != hi_ip.is_ipv4() {
                    return Err(RuleError::new(
                        item.span,
                        "a range's two ends must be both IPv4 or both IPv6",
                    ));
                }
                if lo_ip > hi_ip {
                    return Err(RuleError::new(
                        item.span,
                        format!("range {lo_ip}..{hi_ip} is empty; write the lower end first"),
                    ));
                }
                for (a, len) in range_prefixes(lo_ip, hi_ip) {
                    out.extend(Prefix::new(a, len));
                }
            }
            other => {
                return Err(RuleError::new(
                    item.span,
                    format!("{name} takes an address, a CIDR or an address range, not {}", kind(other)),
                ))
            }
        }
    }
    Ok(out)
}

/// `addr` with the bits past `len` cleared.
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

const PROTOCOLS: [(&str, u8); 5] =
    [("tcp", PROTO_TCP), ("udp", PROTO_UDP), ("icmp", 1), ("icmpv6", 58), ("sctp", 132)];

fn protocols(value: &Spanned<Value>) -> Result<Vec<u8>, RuleError> {
    items(value)
        .into_iter()
        .map(|item| match &item.node {
            Value::Str(s) => PROTOCOLS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(s))
                .map(|(_, p)| *p)
                .ok_or_else(|| RuleError::new(item.span, format!("unknown protocol {s:?}; expected \"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"sctp\" or a number"))),
            Value::Number(n) => u8::try_from(*n)
                .map_err(|_| RuleError::new(item.span, format!("protocol number {n} is out of range 0..255"))),
            other => Err(RuleError::new(item.span, format!("proto takes \"tcp\", \"udp\" or a number, not {}", kind(other)))),
        })
        .collect()
}

fn service_pred(op: Op, value: &Spanned<Value>, services: &Services) -> Result<Pred, RuleError> {
    // Protocol → ports, from every name the value selects.
    let mut by_proto: BTreeMap<u8, Vec<u16>> = BTreeMap::new();
    for item in items(value) {
        let Value::Str(name) = &item.node else {
            return Err(RuleError::new(
                item.span,
                format!("service takes names from /etc/services such as \"ssh\", not {}; for numbers use rport or lport", kind(&item.node)),
            ));
        };
        let mut found = false;
        if op == Op::Glob {
            let glob = Glob::new(name).map_err(|e| RuleError::new(item.span, e.to_string()))?;
            let names: Vec<&str> = services.names().filter(|n| glob.matches(n)).collect();
            for n in names {
                for sp in services.lookup(n).unwrap_or_default() {
                    by_proto.entry(sp.proto).or_default().push(sp.port);
                    found = true;
                }
            }
            if !found {
                return Err(RuleError::new(
                    item.span,
                    format!("no service in /etc/services matches {name:?}"),
                ));
            }
        } else {
            let ports = services.lookup(name).ok_or_else(|| {
                let hint = if name.contains(['*', '?', '[']) { "; use ~ for a pattern" } else { "" };
                RuleError::new(item.span, format!("unknown service {name:?} (not in /etc/services){hint}"))
            })?;
            for sp in ports {
                by_proto.entry(sp.proto).or_default().push(sp.port);
            }
        }
    }
    let mut per_proto = Vec::new();
    for (proto, ports) in by_proto {
        let ranges = merge(ports.into_iter().map(|p| (u64::from(p), u64::from(p))).collect());
        let mut sides = Vec::new();
        for side in [Side::Remote, Side::Local] {
            sides.extend(
                ranges.iter().map(|&(lo, hi)| Pred::Atom(Atom::Port { side, lo: lo as u16, hi: hi as u16 })),
            );
        }
        per_proto.push(Pred::And(vec![Pred::Atom(Atom::Proto { lo: proto, hi: proto }), Pred::any(sides)]));
    }
    Ok(Pred::any(per_proto))
}

/// The strings of a text comparison, with their spans.
fn strings<'a>(
    name: &str,
    value: &'a Spanned<Value>,
) -> Result<Vec<(&'a str, crate::rules::Span)>, RuleError> {
    items(value)
        .into_iter()
        .map(|item| match &item.node {
            Value::Str(s) => Ok((s.as_str(), item.span)),
            other => {
                Err(RuleError::new(item.span, format!("{name} takes strings in quotes, not {}", kind(other))))
            }
        })
        .collect()
}

/// A comparison on a process's text attribute.
fn text_pred(cmp: &Cmp, env: &Env<'_>) -> Result<Pred, RuleError> {
    let attr = cmp.attr.node;
    let name = attr.name();
    let glob = cmp.op.node == Op::Glob;
    let mut atoms = Vec::new();
    for (text, span) in strings(name, &cmp.value)? {
        let m = if glob {
            let g = Glob::new(text).map_err(|e| RuleError::new(span, e.to_string()))?;
            if g.is_literal() {
                StrMatch::Exact(text.to_string())
            } else {
                StrMatch::Glob(g)
            }
        } else {
            StrMatch::Exact(text.to_string())
        };
        atoms.push(text_atom(attr, cmp.index.as_ref().map(|i| i.node), m, span, env)?);
    }
    Ok(Pred::any(atoms.into_iter().map(Pred::Atom).collect()))
}

/// The test for one string value: a kernel test where the kernel can make it.
fn text_atom(
    attr: Attr,
    index: Option<u32>,
    m: StrMatch,
    span: crate::rules::Span,
    env: &Env<'_>,
) -> Result<Atom, RuleError> {
    let exact = |m: &StrMatch| match m {
        StrMatch::Exact(s) => Some(s.clone()),
        StrMatch::Glob(_) => None,
    };
    Ok(match attr {
        Attr::User => match exact(&m) {
            Some(user) => {
                let uid = env.accounts.uid(&user).ok_or_else(|| {
                    RuleError::new(span, format!("unknown user {user:?} (not in the user database)"))
                })?;
                Atom::Uid { lo: uid, hi: uid }
            }
            None => Atom::Text(TextAttr::User, m),
        },
        Attr::Group => match exact(&m) {
            Some(group) => {
                let gid = env.accounts.gid(&group).ok_or_else(|| {
                    RuleError::new(span, format!("unknown group {group:?} (not in the group database)"))
                })?;
                Atom::Gid { lo: gid, hi: gid }
            }
            None => Atom::Text(TextAttr::Group, m),
        },
        Attr::Cmd => {
            let (name, prefix) = match &m {
                StrMatch::Exact(s) => (Some(s.clone()), false),
                StrMatch::Glob(g) => (g.prefix_only(), true),
            };
            match name {
                Some(name) if name.len() > MAX_CMD_LEN => {
                    let cut: String = name.chars().take(MAX_CMD_LEN).collect();
                    return Err(RuleError::new(
                        span,
                        format!(
                            "process names are at most {MAX_CMD_LEN} characters (the kernel cuts longer ones): \
                             write cmd == {cut:?}, or match the path with exe ~ \"*/{name}\""
                        ),
                    ));
                }
                Some(name) if !name.contains('\0') => Atom::Cmd { name, prefix },
                _ => Atom::Text(TextAttr::Cmd, m),
            }
        }
        Attr::Cgroup => match &m {
            StrMatch::Exact(path) => Atom::Cgroup { path: cgroup_path(path, span)?, below: false },
            StrMatch::Glob(g) => match g.prefix_only().as_deref().and_then(|p| p.strip_suffix('/')) {
                Some(dir) => Atom::Cgroup {
                    path: cgroup_path(if dir.is_empty() { "/" } else { dir }, span)?,
                    below: true,
                },
                None => Atom::Text(TextAttr::Cgroup, m),
            },
        },
        Attr::Unit => match exact(&m) {
            Some(unit) => Atom::Unit(unit),
            None => Atom::Text(TextAttr::Unit, m),
        },
        Attr::Exe => Atom::Text(TextAttr::Exe, m),
        Attr::Args => Atom::Text(TextAttr::Args(index), m),
        Attr::Parent => Atom::Text(TextAttr::Parent, m),
        _ => Atom::Text(TextAttr::Ancestor, m),
    })
}

/// A cgroup path as /proc/PID/cgroup writes it: absolute, no trailing slash.
fn cgroup_path(path: &str, span: crate::rules::Span) -> Result<String, RuleError> {
    if !path.starts_with('/') {
        return Err(RuleError::new(
            span,
            format!("cgroup paths start with \"/\", as in /proc/PID/cgroup (e.g. \"/system.slice/{path}\")"),
        ));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() })
}
