//! The syntax tree of a `match` expression, and its canonical printed form.

use std::{fmt, net::IpAddr};

use super::lexer::Span;

/// Every attribute a rule can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attr {
    // Network attributes: decided from the packet's flow tuple.
    Proto,
    Raddr,
    Rport,
    Laddr,
    Lport,
    Service,
    // Process attributes: decided from the socket's owner.
    User,
    Uid,
    Group,
    Gid,
    Pid,
    Cmd,
    Exe,
    Args,
    Cgroup,
    Unit,
    Parent,
    Ancestor,
}

/// What kind of values an attribute holds, which decides its operators and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrType {
    Proto,
    Port,
    Addr,
    Service,
    /// A number (uid, gid, pid).
    Number,
    /// A string (names and paths).
    Text,
    /// A list of strings (`args`), matched if any element matches, or indexed.
    TextList,
}

impl Attr {
    pub const ALL: [Attr; 18] = [
        Attr::Proto,
        Attr::Raddr,
        Attr::Rport,
        Attr::Laddr,
        Attr::Lport,
        Attr::Service,
        Attr::User,
        Attr::Uid,
        Attr::Group,
        Attr::Gid,
        Attr::Pid,
        Attr::Cmd,
        Attr::Exe,
        Attr::Args,
        Attr::Cgroup,
        Attr::Unit,
        Attr::Parent,
        Attr::Ancestor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attr::Proto => "proto",
            Attr::Raddr => "raddr",
            Attr::Rport => "rport",
            Attr::Laddr => "laddr",
            Attr::Lport => "lport",
            Attr::Service => "service",
            Attr::User => "user",
            Attr::Uid => "uid",
            Attr::Group => "group",
            Attr::Gid => "gid",
            Attr::Pid => "pid",
            Attr::Cmd => "cmd",
            Attr::Exe => "exe",
            Attr::Args => "args",
            Attr::Cgroup => "cgroup",
            Attr::Unit => "unit",
            Attr::Parent => "parent",
            Attr::Ancestor => "ancestor",
        }
    }

    pub fn from_name(name: &str) -> Option<Attr> {
        Attr::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn ty(self) -> AttrType {
        match self {
            Attr::Proto => AttrType::Proto,
            Attr::Rport | Attr::Lport => AttrType::Port,
            Attr::Raddr | Attr::Laddr => AttrType::Addr,
            Attr::Service => AttrType::Service,
            Attr::Uid | Attr::Gid | Attr::Pid => AttrType::Number,
            Attr::Args => AttrType::TextList,
            Attr::User
            | Attr::Group
            | Attr::Cmd
            | Attr::Exe
            | Attr::Cgroup
            | Attr::Unit
            | Attr::Parent
            | Attr::Ancestor => AttrType::Text,
        }
    }

    /// Whether the attribute comes from the packet (as opposed to the process).
    pub fn is_network(self) -> bool {
        matches!(self.ty(), AttrType::Proto | AttrType::Port | AttrType::Addr | AttrType::Service)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Glob,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::In => "in",
            Op::NotIn => "not in",
            Op::Glob => "~",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A value as written, before it is checked against its attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(u64),
    Str(String),
    Ip(IpAddr),
    Cidr(IpAddr, u8),
    /// `lo..hi`, inclusive.
    Range(Box<Spanned<Value>>, Box<Spanned<Value>>),
    List(Vec<Spanned<Value>>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(node: T, span: Span) -> Self {
        Self { node, span }
    }
}

/// `ATTR[index] OP VALUE`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cmp {
    pub attr: Spanned<Attr>,
    /// `args[1]`: the element index.
    pub index: Option<Spanned<u32>>,
    pub op: Spanned<Op>,
    pub value: Spanned<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Bool(bool),
    Not(Box<Expr>),
    /// Two or more operands, left to right.
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cmp(Cmp),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            Value::Ip(a) => write!(f, "{a}"),
            Value::Cidr(a, l) => write!(f, "{a}/{l}"),
            Value::Range(lo, hi) => write!(f, "{}..{}", lo.node, hi.node),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", item.node)?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.attr.node.name())?;
        if let Some(index) = &self.index {
            write!(f, "[{}]", index.node)?;
        }
        write!(f, " {} {}", self.op.node.as_str(), self.value.node)
    }
}

/// Canonical form: operators spelled out, parentheses only where precedence needs them.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, items: &[Expr], sep: &str, paren: fn(&Expr) -> bool| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                if paren(item) {
                    write!(f, "({item})")?;
                } else {
                    write!(f, "{item}")?;
                }
            }
            Ok(())
        };
        match self {
            Expr::Bool(b) => write!(f, "{b}"),
            Expr::Cmp(c) => write!(f, "{c}"),
            Expr::Not(inner) => match inner.as_ref() {
                Expr::Bool(_) | Expr::Cmp(_) | Expr::Not(_) => write!(f, "not {inner}"),
                _ => write!(f, "not ({inner})"),
            },
            Expr::And(items) => join(f, items, " and ", |e| matches!(e, Expr::Or(_))),
            Expr::Or(items) => join(f, items, " or ", |_| false),
        }
    }
}
