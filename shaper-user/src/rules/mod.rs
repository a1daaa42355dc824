//! The `match` language: parsed, type-checked and compiled, never executed.
//!
//! | stage | module | output |
//! |---|---|---|
//! | tokens | [`lexer`] | tokens with byte spans |
//! | syntax | [`parser`], [`ast`] | [`Expr`], printable in canonical form |
//! | types and names | [`lower`] | [`Pred`]: atoms over the flow tuple |
//! | kernel table | [`compile`] | `RuleNode`s, walked by the classifier |
//! | userspace walk | [`table`] | the classifier's verdict, computed by the daemon |
//!
//! Every error carries the byte span of the offending part of the `match`
//! string; the config layer turns it into file:line:column.

pub mod ast;
pub mod compile;
pub mod glob;
pub mod lexer;
pub mod lower;
pub mod parser;
pub mod pred;
pub mod table;

pub use ast::{Attr, Expr};
pub use lexer::Span;
pub use pred::Pred;

use crate::services::Services;

/// An error in a `match` string, at `span` (bytes of the string).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub span: Span,
    pub message: String,
}

impl RuleError {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Self { span, message: message.into() }
    }
}

/// A class's `match`: as written, as parsed, and as lowered.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub source: String,
    pub expr: Expr,
    pub pred: Pred,
}

impl Rule {
    pub fn parse(source: &str, services: &Services) -> Result<Self, RuleError> {
        let expr = parser::parse(source)?;
        let pred = lower::lower(&expr, services)?;
        Ok(Self { source: source.to_string(), expr, pred })
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.expr.fmt(f)
    }
}

/// The class the rules give `key` when evaluated directly: first match wins.
pub fn first_match(rules: &[(u16, &Pred)], key: &shaper_common::FlowKey) -> Option<u16> {
    rules.iter().find(|(_, p)| p.matches(key)).map(|(class, _)| *class)
}

#[cfg(test)]
mod tests {
    use shaper_common::{target_class, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, TARGET_DEFAULT};

    use super::*;
    use crate::flows;

    fn services() -> Services {
        Services::parse(
            "ssh 22/tcp\ndomain 53/tcp\ndomain 53/udp\nhttp 80/tcp www\nhttps 443/tcp\nhttps 443/udp\n",
        )
    }

    fn rule(source: &str) -> Rule {
        Rule::parse(source, &services()).unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    fn err(source: &str) -> (usize, String) {
        let e = Rule::parse(source, &services()).unwrap_err();
        (e.span.start, e.message)
    }

    fn key(proto: u8, local: &str, remote: &str) -> FlowKey {
        flows::key(proto, local.parse().unwrap(), remote.parse().unwrap())
    }

    fn matches(source: &str, k: &FlowKey) -> bool {
        let r = rule(source);
        let by_pred = r.pred.matches(k);
        // The compiled table must agree with the direct evaluation.
        let nodes = compile::compile(&[(0, &r.pred)]).unwrap();
        let by_table = table::eval(&nodes, k) == target_class(0);
        assert_eq!(by_pred, by_table, "{source} on {k:?}");
        by_pred
    }

    #[test]
    fn network_attributes() {
        let web = key(PROTO_TCP, "198.18.0.1:40000", "198.18.0.2:443");
        let dns6 = key(PROTO_UDP, "[fd00::1]:5353", "[fd00::2]:53");
        assert!(matches("rport in [80, 443]", &web));
        assert!(matches("rport == 443 and proto == \"tcp\"", &web));
        assert!(!matches("rport == 443 and proto == \"udp\"", &web));
        assert!(matches("rport in 400..500", &web));
        assert!(matches("rport > 442 and rport <= 443", &web));
        assert!(!matches("rport < 443", &web));
        assert!(matches("lport >= 40000", &web));
        assert!(matches("raddr in 198.18.0.0/15", &web));
        assert!(matches("raddr == 198.18.0.2", &web));
        assert!(matches("raddr in 198.18.0.1..198.18.0.3", &web));
        assert!(!matches("raddr in 198.18.0.3..198.18.0.9", &web));
        assert!(matches("laddr not in fd00::/8", &web));
        assert!(matches("laddr in fd00::/8 and raddr == fd00::2", &dns6));
        assert!(!matches("raddr in 198.18.0.0/15", &dns6));
        assert!(matches("service == \"domain\"", &dns6));
        assert!(matches("service in [\"ssh\", \"https\"]", &web));
        assert!(matches("service ~ \"http*\"", &web));
        assert!(matches("service == \"www\"", &key(PROTO_TCP, "198.18.0.1:40000", "198.18.0.2:80")));
        // /etc/services says http is TCP only.
        assert!(!matches("service == \"http\"", &key(PROTO_UDP, "198.18.0.1:40000", "198.18.0.2:80")));
        // Local port matches too: a connection to this host's ssh server.
        assert!(matches("service == \"ssh\"", &key(PROTO_TCP, "198.18.0.1:22", "198.18.0.2:51000")));
        assert!(matches("not rport == 80", &web));
        assert!(matches("rport != 80", &web));
        assert!(matches("true", &web));
        assert!(!matches("false", &web));
        assert!(matches("proto in [\"udp\", 6]", &web));
    }

    #[test]
    fn ports_never_match_port_less_protocols() {
        let icmp = FlowKey { family: FAMILY_V4, proto: 1, ..FlowKey::default() };
        assert!(!matches("rport in 0..65535", &icmp));
        assert!(matches("proto == \"icmp\"", &icmp));
        let icmp6 = FlowKey { family: FAMILY_V6, proto: 58, ..FlowKey::default() };
        assert!(matches("proto == \"icmpv6\"", &icmp6));
    }

    #[test]
    fn type_errors_name_the_attribute_and_what_it_takes() {
        assert_eq!(
            err("rport == \"http\""),
            (9, "rport takes port numbers, not strings; to match by name write service == \"http\"".into())
        );
        assert_eq!(err("rport == 70000"), (9, "port 70000 is out of range 0..65535".into()));
        assert_eq!(err("rport in 90..80"), (9, "range 90..80 is empty; write the lower end first".into()));
        assert_eq!(
            err("rport ~ \"8*\""),
            (6, "operator ~ does not apply to rport; use ==, !=, in, not in, <, <=, >, >=".into())
        );
        assert_eq!(
            err("raddr < 10.0.0.1"),
            (6, "operator < does not apply to raddr; use ==, !=, in, not in".into())
        );
        assert_eq!(
            err("raddr in 10.0.0.1/8"),
            (9, "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?".into())
        );
        assert_eq!(
            err("raddr == 80"),
            (9, "raddr takes an address, a CIDR or an address range, not a number".into())
        );
        assert_eq!(
            err("raddr in 10.0.0.1..fd00::1"),
            (9, "a range's two ends must be both IPv4 or both IPv6".into())
        );
        assert_eq!(err("proto == \"tcpp\""), (9, "unknown protocol \"tcpp\"; expected \"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"sctp\" or a number".into()));
        assert_eq!(err("service == \"htp\""), (11, "unknown service \"htp\" (not in /etc/services)".into()));
        assert_eq!(
            err("service == \"ht*\""),
            (11, "unknown service \"ht*\" (not in /etc/services); use ~ for a pattern".into())
        );
        assert_eq!(err("service ~ \"zz*\""), (10, "no service in /etc/services matches \"zz*\"".into()));
        assert_eq!(err("rport[1] == 80"), (5, "rport cannot be indexed; only args[N] can".into()));
        assert_eq!(err("rport < 1..2"), (8, "< takes one port number".into()));
    }

    #[test]
    fn process_attributes_parse_but_are_not_yet_supported() {
        for (source, at) in [
            ("user == \"backup\"", 0),
            ("uid >= 1000", 0),
            ("rport == 80 and cmd ~ \"rsync*\"", 16),
            ("args[1] == \"sync\"", 0),
            ("ancestor == \"make\"", 0),
            ("cgroup ~ \"/system.slice/*\"", 0),
        ] {
            let (pos, message) = err(source);
            assert_eq!(pos, at, "{source}");
            assert!(message.contains("is not yet supported"), "{source}: {message}");
        }
        // Values are still checked first.
        assert_eq!(err("uid == \"root\""), (7, "uid takes numbers, not a string".into()));
        assert_eq!(err("user == 0"), (8, "user takes strings in quotes, not a number".into()));
    }

    #[test]
    fn first_matching_rule_wins_and_unmatched_flows_get_the_default() {
        let a = rule("rport == 5201");
        let b = rule("raddr in fd00::/8");
        let c = rule("rport in 5201..5210");
        let rules = [(0, &a.pred), (1, &b.pred), (2, &c.pred)];
        let nodes = compile::compile(&rules).unwrap();
        let cases = [
            (key(PROTO_TCP, "198.18.0.1:1", "198.18.0.2:5201"), Some(0)),
            (key(PROTO_TCP, "[fd00::1]:1", "[fd00::2]:5201"), Some(0)),
            (key(PROTO_TCP, "[fd00::1]:1", "[fd00::2]:5202"), Some(1)),
            (key(PROTO_TCP, "198.18.0.1:1", "198.18.0.2:5202"), Some(2)),
            (key(PROTO_TCP, "198.18.0.1:1", "198.18.0.2:80"), None),
        ];
        for (k, class) in cases {
            assert_eq!(first_match(&rules, &k), class);
            assert_eq!(table::eval(&nodes, &k), class.map_or(TARGET_DEFAULT, target_class));
        }
    }

    #[test]
    fn the_table_is_linear_in_the_rules_and_agrees_with_direct_evaluation() {
        // A pseudo-random rule set and pseudo-random flows; the compiled table
        // must give the same class as evaluating the rules one by one.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let atoms = [
            "rport == 80",
            "rport in 1000..2000",
            "lport < 1024",
            "raddr in 198.18.0.0/16",
            "raddr in 198.18.1.0/24",
            "laddr == 198.18.0.1",
            "proto == \"udp\"",
            "raddr in fd00::/16",
            "service == \"domain\"",
            "true",
            "false",
        ];
        let mut sources = Vec::new();
        for _ in 0..40 {
            let mut s = String::new();
            for j in 0..(1 + next(4)) {
                if j > 0 {
                    s.push_str(if next(2) == 0 { " and " } else { " or " });
                }
                if next(3) == 0 {
                    s.push_str("not ");
                }
                let a = atoms[next(atoms.len() as u64) as usize];
                let b = atoms[next(atoms.len() as u64) as usize];
                s.push_str(&format!("({a} or {b})"));
            }
            sources.push(s);
        }
        let parsed: Vec<Rule> = sources.iter().map(|s| rule(s)).collect();
        let rules: Vec<(u16, &Pred)> = parsed.iter().enumerate().map(|(i, r)| (i as u16, &r.pred)).collect();
        let nodes = compile::compile(&rules).unwrap();
        let atom_count: usize = parsed.iter().map(|r| r.pred.atoms()).sum();
        assert!(nodes.len() <= atom_count.max(1), "{} nodes for {atom_count} atoms", nodes.len());
        for _ in 0..5000 {
            let proto = if next(2) == 0 { PROTO_TCP } else { PROTO_UDP };
            let k = if next(4) == 0 {
                key(
                    proto,
                    &format!("[fd00::{}]:{}", next(3), next(3000)),
                    &format!("[fd00::{:x}]:{}", next(3), next(3000)),
                )
            } else {
                key(
                    proto,
                    &format!("198.18.{}.{}:{}", next(2), next(3), next(3000)),
                    &format!("198.18.{}.{}:{}", next(3), next(3), next(3000)),
                )
            };
            let expected = first_match(&rules, &k).map_or(TARGET_DEFAULT, target_class);
            assert_eq!(table::eval(&nodes, &k), expected, "{k:?}");
        }
        // Every jump goes forward.
        for (i, n) in nodes.iter().enumerate() {
            for t in [n.on_true, n.on_false] {
                assert!(t >= shaper_common::TARGET_VERDICT || usize::from(t) > i, "node {i} jumps to {t}");
            }
        }
    }

    #[test]
    fn no_rules_compile_to_one_default_node() {
        let nodes = compile::compile(&[]).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(table::eval(&nodes, &FlowKey::default()), TARGET_DEFAULT);
        let always = rule("true");
        let nodes = compile::compile(&[(3, &always.pred)]).unwrap();
        assert_eq!(table::eval(&nodes, &FlowKey::default()), target_class(3));
    }

    #[test]
    fn a_rule_set_too_large_for_the_kernel_table_is_refused() {
        // Adjacent ports merge into one range test; every other port does not.
        let merged = rule("rport in [80, 81, 82, 83..90, 85]");
        assert_eq!(merged.pred.atoms(), 1);
        let list: Vec<String> = (0..5000).map(|p| (2 * p).to_string()).collect();
        let big = rule(&format!("rport in [{}]", list.join(", ")));
        let e = compile::compile(&[(0, &big.pred)]).unwrap_err();
        assert_eq!(e.to_string(), "the rules need 5001 kernel tests; the rule table holds 4096");
    }
}
