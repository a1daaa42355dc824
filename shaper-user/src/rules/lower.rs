//! Type checking: each comparison's operator and value are checked against its
//! attribute, names are resolved (services to ports, protocols to numbers), and
//! the expression becomes a [`Pred`].

use std::{collections::BTreeMap, net::IpAddr};

use shaper_common::{PROTO_TCP, PROTO_UDP};

use super::{
    ast::{Attr, AttrType, Cmp, Expr, Op, Spanned, Value},
    glob::Glob,
    pred::{range_prefixes, Atom, Pred, Prefix, Side},
    RuleError,
};
use crate::services::Services;

/// Lowers a parsed expression.
pub fn lower(expr: &Expr, services: &Services) -> Result<Pred, RuleError> {
    Ok(match expr {
        Expr::Bool(b) => Pred::Const(*b),
        Expr::Not(inner) => lower(inner, services)?.negate(),
        Expr::And(items) => Pred::And(items.iter().map(|e| lower(e, services)).collect::<Result<_, _>>()?),
        Expr::Or(items) => Pred::Or(items.iter().map(|e| lower(e, services)).collect::<Result<_, _>>()?),
        Expr::Cmp(cmp) => lower_cmp(cmp, services)?,
    })
}

fn lower_cmp(cmp: &Cmp, services: &Services) -> Result<Pred, RuleError> {
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
            port_pred(side, name, op, &cmp.value)?
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
        AttrType::Service => service_pred(op, &cmp.value, services)?,
        AttrType::Number => {
            numbers(name, op, &cmp.value, u64::from(u32::MAX))?;
            return Err(not_yet(cmp));
        }
        AttrType::Text | AttrType::TextList => {
            strings(name, &cmp.value)?;
            return Err(not_yet(cmp));
        }
    };
    Ok(if matches!(op, Op::Ne | Op::NotIn) { pred.negate() } else { pred })
}

fn not_yet(cmp: &Cmp) -> RuleError {
    RuleError::new(
        cmp.attr.span,
        format!(
            "attribute \"{}\" is not yet supported: this version matches network attributes only \
             (proto, raddr, rport, laddr, lport, service)",
            cmp.attr.node.name()
        ),
    )
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

fn port(name: &str, value: &Spanned<Value>) -> Result<u16, RuleError> {
    match &value.node {
        Value::Number(n) => u16::try_from(*n)
            .map_err(|_| RuleError::new(value.span, format!("port {n} is out of range 0..65535"))),
        Value::Str(s) => Err(RuleError::new(
            value.span,
            format!("{name} takes port numbers, not strings; to match by name write service == {s:?}"),
        )),
        other => Err(RuleError::new(value.span, format!("{name} takes port numbers, not {}", kind(other)))),
    }
}

fn port_pred(side: Side, name: &str, op: Op, value: &Spanned<Value>) -> Result<Pred, RuleError> {
    let ranges: Vec<(u16, u16)> = match op {
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let Value::Number(_) = value.node else {
                return Err(RuleError::new(value.span, format!("{} takes one port number", op.as_str())));
            };
            let p = port(name, value)?;
            let range = match op {
                Op::Lt => p.checked_sub(1).map(|hi| (0, hi)),
                Op::Le => Some((0, p)),
                Op::Gt => p.checked_add(1).map(|lo| (lo, u16::MAX)),
                _ => Some((p, u16::MAX)),
            };
            match range {
                Some(r) => vec![r],
                None => return Ok(Pred::Const(false)),
            }
        }
        _ => {
            let mut ranges = Vec::new();
            for item in items(value) {
                ranges.push(match &item.node {
                    Value::Range(lo, hi) => {
                        let (lo, hi) = (port(name, lo)?, port(name, hi)?);
                        if lo > hi {
                            return Err(RuleError::new(
                                item.span,
                                format!("range {lo}..{hi} is empty; write the lower end first"),
                            ));
                        }
                        (lo, hi)
                    }
                    _ => {
                        let p = port(name, item)?;
                        (p, p)
                    }
                });
            }
            merge(ranges)
        }
    };
    Ok(Pred::any(ranges.into_iter().map(|(lo, hi)| Pred::Atom(Atom::Port { side, lo, hi })).collect()))
}

/// Sorts ranges and joins overlapping or adjacent ones: `[80, 81, 82]` is one test.
fn merge(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
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
        let ranges = merge(ports.into_iter().map(|p| (p, p)).collect());
        let mut sides = Vec::new();
        for side in [Side::Remote, Side::Local] {
            sides.extend(ranges.iter().map(|&(lo, hi)| Pred::Atom(Atom::Port { side, lo, hi })));
        }
        per_proto.push(Pred::And(vec![Pred::Atom(Atom::Proto { lo: proto, hi: proto }), Pred::any(sides)]));
    }
    Ok(Pred::any(per_proto))
}

/// Checks a value for a numeric process attribute.
fn numbers(name: &str, op: Op, value: &Spanned<Value>, max: u64) -> Result<(), RuleError> {
    let check = |v: &Spanned<Value>| match v.node {
        Value::Number(n) if n <= max => Ok(()),
        Value::Number(n) => Err(RuleError::new(v.span, format!("{n} is out of range for {name}"))),
        ref other => Err(RuleError::new(v.span, format!("{name} takes numbers, not {}", kind(other)))),
    };
    if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge) {
        return check(value);
    }
    for item in items(value) {
        match &item.node {
            Value::Range(lo, hi) => {
                check(lo)?;
                check(hi)?;
            }
            _ => check(item)?,
        }
    }
    Ok(())
}

/// Checks a value for a text process attribute.
fn strings(name: &str, value: &Spanned<Value>) -> Result<(), RuleError> {
    for item in items(value) {
        if !matches!(item.node, Value::Str(_)) {
            return Err(RuleError::new(
                item.span,
                format!("{name} takes strings in quotes, not {}", kind(&item.node)),
            ));
        }
    }
    Ok(())
}
