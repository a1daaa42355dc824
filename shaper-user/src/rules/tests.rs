//! Tests of the rule language: parsing, typing, evaluation, and the compiled
//! table held to direct evaluation.

use shaper_common::{target_class, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, TARGET_DEFAULT};

use super::{
    compile::{CgroupIndex, Compiled, Found, NoCgroups},
    pred::{Facts, ProcessFacts},
    *,
};
use crate::{accounts::StaticAccounts, flows};
use table::KernelFacts;

/// The kernel's view of a flow, evaluated by the shared evaluator over a
/// compiled table, in both modes (which must agree).
mod table {
    use shaper_common::{
        rules::{KernelView, SocketFacts},
        target_class, FlowKey, Owner, ProcTests, CLASS_DEFAULT, TARGET_DEFAULT,
    };

    use super::compile::{Compiled, Mode};

    /// What the classifier knows when it evaluates the table.
    #[derive(Clone, Copy, Debug)]
    pub struct KernelFacts<'a> {
        pub key: &'a FlowKey,
        /// The socket's owner record, if it has one.
        pub owner: Option<&'a Owner>,
        /// The socket's cgroup id and its ancestors by level (0 = the root).
        pub cgroup: Option<(u64, &'a [u64])>,
        /// The daemon's answers to the userspace tests for the owner's process,
        /// as PROC_TESTS holds them (the generation check is the caller's).
        pub proc_tests: Option<&'a ProcTests>,
    }

    impl<'a> KernelFacts<'a> {
        /// Facts about the packet alone.
        pub fn packet(key: &'a FlowKey) -> Self {
            Self { key, owner: None, cgroup: None, proc_tests: None }
        }

        /// The same, as the classifier keeps them.
        pub fn socket(&self) -> SocketFacts {
            let mut socket = SocketFacts::default();
            if let Some(owner) = self.owner {
                socket.owner = *owner;
                socket.has_owner = 1;
            }
            if let Some((id, ancestors)) = self.cgroup {
                socket.cgroup = id;
                socket.has_cgroup = 1;
                for (slot, id) in socket.ancestors.iter_mut().zip(ancestors) {
                    *slot = *id;
                }
            }
            if let Some(tests) = self.proc_tests {
                socket.has_answers = 1;
                socket.known = tests.known;
                socket.values = tests.values;
            }
            socket
        }
    }

    /// The verdict for a flow: `target_class(..)` or `TARGET_DEFAULT`, and
    /// whether it is provisional; the linear walk and the index agree on both.
    pub fn eval(table: &Compiled, facts: &KernelFacts<'_>) -> (u16, bool) {
        let socket = facts.socket();
        let view = KernelView { key: facts.key, socket: &socket };
        let linear = table.clone().with_mode(Mode::Linear).evaluate(&view);
        let indexed = table.clone().with_mode(Mode::Indexed).evaluate(&view);
        assert_eq!(linear, indexed, "linear and indexed differ on {facts:?}");
        assert!(!linear.error, "{facts:?}");
        let target = if linear.class == CLASS_DEFAULT { TARGET_DEFAULT } else { target_class(linear.class) };
        (target, linear.provisional)
    }
}

fn services() -> Services {
    Services::parse(
        "ssh 22/tcp\ndomain 53/tcp\ndomain 53/udp\nhttp 80/tcp www\nhttps 443/tcp\nhttps 443/udp\n",
    )
}

fn accounts() -> StaticAccounts {
    StaticAccounts::new(&[("root", 0), ("backup", 34), ("alice", 1000)], &[("root", 0), ("users", 100)])
}

fn parse(source: &str) -> Result<Rule, RuleError> {
    let (services, accounts) = (services(), accounts());
    Rule::parse(source, &Env { services: &services, accounts: &accounts })
}

fn rule(source: &str) -> Rule {
    parse(source).unwrap_or_else(|e| panic!("{source}: {e}"))
}

fn err(source: &str) -> (usize, String) {
    let e = parse(source).unwrap_err();
    (e.span.start, e.message)
}

fn nodes(rules: &[(u16, &Pred)]) -> Compiled {
    compile::compile(rules, &NoCgroups).unwrap()
}

fn packet(key: &FlowKey) -> Facts<'_> {
    Facts { key, process: None }
}

fn key(proto: u8, local: &str, remote: &str) -> FlowKey {
    flows::key(proto, local.parse().unwrap(), remote.parse().unwrap())
}

fn matches(source: &str, k: &FlowKey) -> bool {
    let r = rule(source);
    let by_pred = r.pred.matches(&packet(k));
    // The compiled table must agree with the direct evaluation.
    let nodes = nodes(&[(0, &r.pred)]);
    let by_table = table::eval(&nodes, &KernelFacts::packet(k)).0 == target_class(0);
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
fn first_matching_rule_wins_and_unmatched_flows_get_the_default() {
    let a = rule("rport == 5201");
    let b = rule("raddr in fd00::/8");
    let c = rule("rport in 5201..5210");
    let rules = [(0, &a.pred), (1, &b.pred), (2, &c.pred)];
    let nodes = nodes(&rules);
    let cases = [
        (key(PROTO_TCP, "198.18.0.1:1", "198.18.0.2:5201"), Some(0)),
        (key(PROTO_TCP, "[fd00::1]:1", "[fd00::2]:5201"), Some(0)),
        (key(PROTO_TCP, "[fd00::1]:1", "[fd00::2]:5202"), Some(1)),
        (key(PROTO_TCP, "198.18.0.1:1", "198.18.0.2:5202"), Some(2)),
        (key(PROTO_TCP, "198.18.0.1:1", "198.18.0.2:80"), None),
    ];
    for (k, class) in cases {
        assert_eq!(first_match(&rules, &packet(&k)), class);
        assert_eq!(
            table::eval(&nodes, &KernelFacts::packet(&k)).0,
            class.map_or(TARGET_DEFAULT, target_class)
        );
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
    let nodes = nodes(&rules);
    let atom_count: usize = parsed.iter().map(|r| r.pred.atoms()).sum();
    assert!(nodes.nodes.len() <= atom_count.max(1), "{} nodes for {atom_count} atoms", nodes.nodes.len());
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
        let expected = first_match(&rules, &packet(&k)).map_or(TARGET_DEFAULT, target_class);
        assert_eq!(table::eval(&nodes, &KernelFacts::packet(&k)), (expected, false), "{k:?}");
    }
    // Every jump goes forward (a distance), or leaves the rule.
    use shaper_common::rules::{JUMP_MATCH, JUMP_NEXT};
    for (i, n) in nodes.nodes.iter().enumerate() {
        for t in [n.on_true, n.on_false] {
            let exit = t == JUMP_MATCH || t == JUMP_NEXT;
            assert!(exit || (t > 0 && i + usize::from(t) < nodes.nodes.len()), "node {i} jumps to {t}");
        }
    }
}

#[test]
fn no_rules_compile_to_one_default_node() {
    let none = nodes(&[]);
    assert_eq!(none.nodes.len(), 1);
    assert_eq!(table::eval(&none, &KernelFacts::packet(&FlowKey::default())).0, TARGET_DEFAULT);
    let always = rule("true");
    let all = nodes(&[(3, &always.pred)]);
    assert_eq!(table::eval(&all, &KernelFacts::packet(&FlowKey::default())).0, target_class(3));
}

#[test]
fn a_rule_set_too_large_for_the_kernel_table_is_refused() {
    // Adjacent ports merge into one range test; every other port does not.
    let merged = rule("rport in [80, 81, 82, 83..90, 85]");
    assert_eq!(merged.pred.atoms(), 1);
    let list: Vec<String> = (0..20_000).map(|p| (2 * p).to_string()).collect();
    let big = rule(&format!("rport in [{0}] or lport in [{0}]", list.join(", ")));
    let e = compile::compile(&[(0, &big.pred)], &NoCgroups).map(|_| ()).unwrap_err();
    assert_eq!(e.to_string(), "the rules need 40000 kernel tests; the rule table holds 32768");
    // 10 000 rules of one port each fit, and their index finds each one.
    let rules: Vec<Rule> = (0..10_000).map(|p| rule(&format!("rport == {}", 2 * p))).collect();
    let preds: Vec<(u16, &Pred)> =
        rules.iter().enumerate().map(|(i, r)| ((i % 1000) as u16, &r.pred)).collect();
    let table = compile::compile(&preds, &NoCgroups).unwrap();
    assert_eq!((table.entries.len(), table.index.residual), (10_000, 0));
    let k = key(PROTO_TCP, "198.18.0.1:1", "198.18.0.2:19998");
    assert_eq!(table::eval(&table, &KernelFacts::packet(&k)), (target_class(999), false));
}

#[test]
fn process_attributes_become_kernel_tests_where_the_kernel_can_make_them() {
    use super::pred::{Atom, StrMatch, TextAttr};
    let atom = |source: &str| match rule(source).pred {
        Pred::Atom(a) => a,
        other => panic!("{source}: {other:?}"),
    };
    assert_eq!(atom("user == \"backup\""), Atom::Uid { lo: 34, hi: 34 });
    assert_eq!(atom("uid >= 1000"), Atom::Uid { lo: 1000, hi: u32::MAX });
    assert_eq!(atom("group == \"users\""), Atom::Gid { lo: 100, hi: 100 });
    assert_eq!(atom("gid in 100..199"), Atom::Gid { lo: 100, hi: 199 });
    assert_eq!(atom("pid == 1"), Atom::Pid { lo: 1, hi: 1 });
    assert_eq!(atom("cmd == \"rsync\""), Atom::Cmd { name: "rsync".into(), prefix: false });
    assert_eq!(atom("cmd ~ \"rsync*\""), Atom::Cmd { name: "rsync".into(), prefix: true });
    assert_eq!(atom("cmd ~ \"rsync\""), Atom::Cmd { name: "rsync".into(), prefix: false });
    assert!(matches!(atom("cmd ~ \"*sync\""), Atom::Text(TextAttr::Cmd, StrMatch::Glob(_))));
    assert_eq!(
        atom("cgroup == \"/system.slice/sshd.service/\""),
        Atom::Cgroup { path: "/system.slice/sshd.service".into(), below: false }
    );
    assert_eq!(
        atom("cgroup ~ \"/system.slice/*\""),
        Atom::Cgroup { path: "/system.slice".into(), below: true }
    );
    assert!(matches!(atom("cgroup ~ \"/system.slice/*.service\""), Atom::Text(TextAttr::Cgroup, _)));
    assert_eq!(atom("unit == \"sshd.service\""), Atom::Unit("sshd.service".into()));
    assert!(matches!(atom("user ~ \"back*\""), Atom::Text(TextAttr::User, StrMatch::Glob(_))));
    assert_eq!(
        atom("exe == \"/usr/bin/rsync\""),
        Atom::Text(TextAttr::Exe, StrMatch::Exact("/usr/bin/rsync".into()))
    );
    assert_eq!(
        atom("args[1] == \"sync\""),
        Atom::Text(TextAttr::Args(Some(1)), StrMatch::Exact("sync".into()))
    );
    assert!(matches!(atom("args ~ \"*--limit-rate*\""), Atom::Text(TextAttr::Args(None), StrMatch::Glob(_))));
    assert!(matches!(atom("parent == \"make\""), Atom::Text(TextAttr::Parent, _)));
    assert!(matches!(atom("ancestor == \"make\""), Atom::Text(TextAttr::Ancestor, _)));
    assert!(atom("uid == 0").in_kernel() && !atom("exe == \"/x\"").in_kernel());
}

#[test]
fn process_attribute_errors() {
    assert_eq!(err("user == \"bakup\""), (8, "unknown user \"bakup\" (not in the user database)".into()));
    assert_eq!(
        err("group in [\"users\", \"wheel\"]"),
        (19, "unknown group \"wheel\" (not in the group database)".into())
    );
    assert_eq!(
        err("uid == \"root\""),
        (7, "uid takes numbers, not strings; to match by name write user == \"root\"".into())
    );
    assert_eq!(err("user == 0"), (8, "user takes strings in quotes, not a number".into()));
    assert_eq!(err("pid == 99999999999"), (7, "99999999999 is out of range for pid".into()));
    assert_eq!(
        err("cmd == \"averyveryverylongname\""),
        (7, "process names are at most 15 characters (the kernel cuts longer ones): write cmd == \"averyveryverylo\", or match the path with exe ~ \"*/averyveryverylongname\"".into())
    );
    assert_eq!(
        err("cgroup == \"system.slice\""),
        (
            10,
            "cgroup paths start with \"/\", as in /proc/PID/cgroup (e.g. \"/system.slice/system.slice\")"
                .into()
        )
    );
    assert_eq!(err("exe < 3"), (4, "operator < does not apply to exe; use ==, !=, in, not in, ~".into()));
    assert_eq!(err("args ~ \"[x\""), (7, "\"[\" at character 1 of the pattern is never closed".into()));
}

fn process(pid: u32, uid: u32, cmd: &str, cgroup: &str) -> ProcessFacts {
    ProcessFacts {
        pid,
        uid: Some(uid),
        gid: Some(if uid == 0 { 0 } else { 100 }),
        user: accounts().user_name(uid),
        group: accounts().group_name(if uid == 0 { 0 } else { 100 }),
        cmd: Some(cmd.into()),
        exe: Some(format!("/usr/bin/{cmd}")),
        args: Some(vec![cmd.into(), "--limit-rate=5k".into(), "sync".into()]),
        cgroup: Some(cgroup.into()),
        ancestors: Some(vec!["sh".into(), "make".into(), "systemd".into()]),
    }
}

#[test]
fn process_facts_match_as_documented() {
    let k = key(PROTO_TCP, "198.18.0.1:40000", "198.18.0.2:873");
    let p =
        process(4242, 34, "rsync", "/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service");
    let facts = Facts { key: &k, process: Some(&p) };
    let yes = |source: &str| rule(source).pred.matches(&facts);
    assert!(yes("user == \"backup\" and uid == 34 and group == \"users\" and gid == 100 and pid == 4242"));
    assert!(yes("cmd == \"rsync\" and cmd ~ \"rs*\" and cmd ~ \"*ync\" and not cmd == \"rsyncd\""));
    assert!(yes("exe == \"/usr/bin/rsync\" and exe ~ \"/usr/*\""));
    assert!(yes(
        "args ~ \"--limit-rate=*\" and args[2] == \"sync\" and args[0] == \"rsync\" and not args[9] == \"x\""
    ));
    assert!(yes(
        "parent == \"sh\" and ancestor == \"make\" and ancestor == \"systemd\" and not parent == \"make\""
    ));
    // Every unit on the path counts, nested ones too.
    assert!(yes("unit == \"backup.service\" and unit == \"user@1000.service\" and unit ~ \"user-*.slice\""));
    assert!(!yes("unit == \"app\""));
    assert!(yes("cgroup ~ \"/user.slice/*\" and cgroup ~ \"/*\" and not cgroup == \"/user.slice\""));
    assert!(yes("cgroup == \"/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service\""));
    assert!(!yes("cgroup ~ \"/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service/*\""));
    assert!(yes("user ~ \"back*\" and rport == 873"));
    // Without a process, every process test is false.
    let bare = Facts { key: &k, process: None };
    assert!(!rule("uid == 34").pred.matches(&bare));
    assert!(rule("not uid == 34").pred.matches(&bare));
    // A process whose exe and args could not be read (it exited).
    let gone = ProcessFacts { exe: None, args: None, ..p.clone() };
    let facts = Facts { key: &k, process: Some(&gone) };
    assert!(!rule("exe ~ \"*\"").pred.matches(&facts) && !rule("args ~ \"*\"").pred.matches(&facts));
    assert!(rule("cmd == \"rsync\"").pred.matches(&facts));
}

/// A fixed cgroup tree: ids are positions in the list, plus one.
struct Tree(Vec<&'static str>);

impl Tree {
    fn standard() -> Self {
        Self(vec![
            "/",
            "/system.slice",
            "/system.slice/sshd.service",
            "/system.slice/backup.service",
            "/user.slice",
            "/user.slice/user-1000.slice",
            "/user.slice/user-1000.slice/user@1000.service",
            "/user.slice/user-1000.slice/user@1000.service/app.slice",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service",
        ])
    }
    fn level(path: &str) -> u32 {
        path.split('/').filter(|c| !c.is_empty()).count() as u32
    }
    /// The kernel's view of a process in `path`: its cgroup id and its ancestors.
    fn ancestry(&self, path: &str) -> (u64, Vec<u64>) {
        let mut ancestors = vec![0u64; shaper_common::MAX_CGROUP_LEVEL as usize + 1];
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for level in 0..=parts.len().min(ancestors.len() - 1) {
            let prefix = format!("/{}", parts[..level].join("/"));
            ancestors[level] = self.lookup(&prefix).map_or(0, |(id, _)| id);
        }
        (self.lookup(path).map_or(0, |(id, _)| id), ancestors)
    }
}

impl CgroupIndex for Tree {
    fn lookup(&self, path: &str) -> Option<(u64, u32)> {
        self.0.iter().position(|p| *p == path).map(|i| (i as u64 + 1, Self::level(path)))
    }
    fn units(&self, unit: &str) -> Vec<Found> {
        self.0
            .iter()
            .filter(|p| p.rsplit('/').next() == Some(unit))
            .filter_map(|p| self.lookup(p).map(|(id, level)| Found { path: p.to_string(), id, level }))
            .collect()
    }
}

fn owner_of(p: &ProcessFacts) -> shaper_common::Owner {
    let mut comm = [0u8; 16];
    for (i, b) in p.cmd.iter().flat_map(|c| c.bytes()).take(15).enumerate() {
        comm[i] = b;
    }
    let (uid, gid) = (p.uid.unwrap_or_default(), p.gid.unwrap_or_default());
    shaper_common::Owner { tgid: p.pid, uid, gid, comm, ..Default::default() }
}

#[test]
fn the_kernel_table_agrees_with_the_daemon_whenever_it_is_not_provisional() {
    let tree = Tree::standard();
    let atoms = [
        "uid == 34",
        "user == \"alice\"",
        "gid == 100",
        "pid in 4000..4999",
        "cmd == \"rsync\"",
        "cmd ~ \"iperf*\"",
        "cgroup == \"/system.slice/sshd.service\"",
        "cgroup ~ \"/user.slice/*\"",
        "unit == \"backup.service\"",
        "unit == \"missing.service\"",
        "rport == 873",
        "exe ~ \"/usr/bin/rs*\"",
        "args[2] == \"sync\"",
        "ancestor == \"make\"",
    ];
    let processes = [
        process(4242, 34, "rsync", "/system.slice/backup.service"),
        process(
            1000,
            1000,
            "iperf3",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service",
        ),
        process(77, 0, "sshd", "/system.slice/sshd.service"),
        process(4500, 1000, "rsyncd", "/user.slice/user-1000.slice"),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut decided, mut provisional) = (0, 0);
    for _ in 0..300 {
        let mut sources = Vec::new();
        for _ in 0..(1 + next(4)) {
            let mut s = String::new();
            for j in 0..(1 + next(3)) {
                if j > 0 {
                    s.push_str(if next(2) == 0 { " and " } else { " or " });
                }
                if next(4) == 0 {
                    s.push_str("not ");
                }
                s.push_str(atoms[next(atoms.len() as u64) as usize]);
            }
            sources.push(s);
        }
        let parsed: Vec<Rule> = sources.iter().map(|s| rule(s)).collect();
        let rules: Vec<(u16, &Pred)> = parsed.iter().enumerate().map(|(i, r)| (i as u16, &r.pred)).collect();
        let compiled = compile::compile(&rules, &tree).unwrap();
        for p in &processes {
            for port in [873, 443] {
                let k = key(PROTO_TCP, "198.18.0.1:40000", &format!("198.18.0.2:{port}"));
                let owner = owner_of(p);
                let (cgroup, ancestors) = tree.ancestry(p.cgroup.as_deref().unwrap());
                let kernel = KernelFacts {
                    key: &k,
                    owner: Some(&owner),
                    cgroup: Some((cgroup, &ancestors)),
                    proc_tests: None,
                };
                let (verdict, is_provisional) = table::eval(&compiled, &kernel);
                let daemon = first_match(&rules, &Facts { key: &k, process: Some(p) })
                    .map_or(TARGET_DEFAULT, target_class);
                if is_provisional {
                    provisional += 1;
                } else {
                    decided += 1;
                    assert_eq!(verdict, daemon, "{sources:?} for {p:?} to port {port}");
                }
                let kernel_only = parsed.iter().all(|r| !r.pred.any_atom(&|a| !a.in_kernel()));
                assert!(
                    !(kernel_only && is_provisional),
                    "{sources:?}: provisional without a userspace test"
                );
                // Once the daemon left its answers for the process, the kernel
                // decides every flow of it, and decides it right.
                let answers = answers(&compiled.userspace, p, 1);
                let kernel = KernelFacts { proc_tests: Some(&answers), ..kernel };
                assert_eq!(
                    table::eval(&compiled, &kernel),
                    (daemon, false),
                    "{sources:?} for {p:?}, answered"
                );
            }
        }
    }
    assert!(decided > 1000 && provisional > 100, "decided {decided}, provisional {provisional}");
}

#[test]
fn cgroup_tests_compile_to_ids_and_missing_cgroups_to_false() {
    let tree = Tree::standard();
    let r = rule("unit == \"backup.service\"");
    let c = compile::compile(&[(0, &r.pred)], &tree).unwrap();
    // Two cgroups carry that unit name: two ancestry tests.
    assert_eq!(c.nodes.iter().filter(|n| n.op == shaper_common::OP_CGROUP_UNDER).count(), 2);
    assert!(c.cgroups);
    let missing = rule("unit == \"missing.service\" or rport == 1");
    let c = compile::compile(&[(0, &missing.pred)], &tree).unwrap();
    assert_eq!((c.nodes.len(), c.cgroups), (1, false));
    assert!(!compile::compile(&[(0, &rule("uid == 0").pred)], &tree).unwrap().cgroups);
}

/// The standard tree and a branch deeper than the kernel's ancestry reaches.
fn deep_tree() -> Tree {
    let mut tree = Tree::standard();
    tree.0.extend([
        "/deep.slice",
        "/deep.slice/a",
        "/deep.slice/a/b",
        "/deep.slice/a/b/c",
        "/deep.slice/a/b/c/d",
        "/deep.slice/a/b/c/d/e",
        "/deep.slice/a/b/c/d/e/f",
        "/deep.slice/a/b/c/d/e/f/g",
        "/deep.slice/a/b/c/d/e/f/g/h",
        "/deep.slice/a/b/c/d/e/f/g/h/job.service",
    ]);
    tree
}

/// A pseudo-random `match`: atoms of every kind the index knows and of the
/// kinds it does not, under `not`, in `or`s across dimensions, nested.
fn random_match(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> String {
    const ATOMS: [&str; 38] = [
        "rport == 80",
        "rport == 443",
        "rport == 873",
        "rport in 1000..2000",
        "rport in 0..65535",
        "lport > 1024",
        "lport < 1024",
        "lport == 40000",
        "raddr in 198.18.0.0/15",
        "raddr in 198.18.1.0/24",
        "raddr == 198.18.1.7",
        "raddr in 198.18.1.0..198.18.1.9",
        "raddr in fd00::/8",
        "raddr in fd00::1:0/112",
        "laddr == 198.18.0.1",
        "laddr in 198.18.0.0/16",
        "proto == \"udp\"",
        "uid == 34",
        "uid >= 1000",
        "user == \"alice\"",
        "gid == 100",
        "pid in 4000..4999",
        "cmd == \"rsync\"",
        "cmd ~ \"iperf*\"",
        "cgroup == \"/system.slice/sshd.service\"",
        "cgroup ~ \"/user.slice/*\"",
        "unit == \"backup.service\"",
        "unit == \"job.service\"",
        "unit == \"user@1000.service\"",
        "proto == \"icmp\"",
        "cgroup ~ \"/deep.slice/a/b/c/d/e/f/g/h/*\"",
        "exe ~ \"/usr/bin/rs*\"",
        "exe == \"/usr/bin/iperf3\"",
        "args[2] == \"sync\"",
        "ancestor == \"make\"",
        "service == \"https\"",
        "true",
        "false",
    ];
    let term = |next: &mut dyn FnMut(u64) -> u64| -> String {
        let atom = ATOMS[next(ATOMS.len() as u64) as usize].to_string();
        match next(8) {
            0 => format!("not {atom}"),
            1 if depth > 0 => format!("({})", random_match(next, depth - 1)),
            _ => atom,
        }
    };
    let mut s = term(next);
    for _ in 0..next(3) {
        s.push_str(if next(3) != 0 { " and " } else { " or " });
        s.push_str(&term(next));
    }
    s
}

#[test]
fn the_index_finds_the_first_match_of_the_linear_walk() {
    let tree = deep_tree();
    let processes = [
        process(4242, 34, "rsync", "/system.slice/backup.service"),
        process(
            1000,
            1000,
            "iperf3",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service",
        ),
        process(77, 0, "sshd", "/system.slice/sshd.service"),
        process(4500, 1000, "rsyncd", "/user.slice/user-1000.slice"),
        process(4600, 1000, "job", "/deep.slice/a/b/c/d/e/f/g/h/job.service"),
        ProcessFacts { exe: None, args: None, ancestors: None, ..process(4700, 34, "gone", "/") },
    ];
    let mut seed = 0x0dd1_b1a5_e5e5_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut flows, mut provisional, mut matched, mut late, mut residual) = (0, 0, 0, 0, 0);
    for set in 0..300 {
        let count = if set % 10 == 0 { 150 } else { 1 + next(30) };
        let sources: Vec<String> = (0..count).map(|_| random_match(&mut next, 1)).collect();
        let parsed: Vec<Rule> = sources.iter().map(|s| rule(s)).collect();
        // Classes reused: several rules give the same class.
        let rules: Vec<(u16, &Pred)> =
            parsed.iter().enumerate().map(|(i, r)| ((i % 7) as u16, &r.pred)).collect();
        let compiled = compile::compile(&rules, &tree).unwrap();
        residual += compiled.index.residual;
        for _ in 0..20 {
            let proto = [PROTO_TCP, PROTO_TCP, PROTO_UDP, 1][next(4) as usize];
            let port = [80, 443, 873, 1500, 5201, 40000][next(6) as usize];
            let k = match next(4) {
                0 => key(
                    proto,
                    &format!("[fd00::1]:{}", 1000 + next(40000)),
                    &format!("[fd00::1:{}]:{port}", next(3)),
                ),
                1 => key(proto, "198.18.0.1:40000", &format!("198.18.1.{}:{port}", next(12))),
                _ => key(
                    proto,
                    &format!("198.18.{}.1:{}", next(2), 500 + next(41000)),
                    &format!("198.{}.{}.2:{port}", 18 + next(2), next(3)),
                ),
            };
            let p = &processes[next(processes.len() as u64) as usize];
            // The kernel knows some of it: the owner record, the cgroup, some answers.
            let owner = owner_of(p);
            let (cgroup, ancestors) = tree.ancestry(p.cgroup.as_deref().unwrap_or("/"));
            let mut answers = answers(&compiled.userspace, p, 1);
            answers.known &= next(u64::MAX);
            let kernel = KernelFacts {
                key: &k,
                owner: (next(4) != 0).then_some(&owner),
                cgroup: (next(3) != 0).then_some((cgroup, &ancestors)),
                proc_tests: (next(2) == 0).then_some(&answers),
            };
            // Indexed and linear agree on class and provisional flag (checked in eval).
            let (verdict, is_provisional) = table::eval(&compiled, &kernel);
            // With everything known, the daemon's engine gives the predicates' first match.
            let daemon = first_match(&rules, &Facts { key: &k, process: Some(p) });
            assert_eq!(
                compiled.decide(&k, Some(p)).class,
                daemon.unwrap_or(shaper_common::CLASS_DEFAULT),
                "{sources:?} {p:?} {k:?}"
            );
            let bare = first_match(&rules, &Facts { key: &k, process: None });
            assert_eq!(
                compiled.decide(&k, None).class,
                bare.unwrap_or(shaper_common::CLASS_DEFAULT),
                "{sources:?} {k:?}"
            );
            // A verdict the kernel does not mark provisional is the daemon's.
            if is_provisional {
                provisional += 1;
            } else {
                assert_eq!(verdict, daemon.map_or(TARGET_DEFAULT, target_class), "{sources:?} {kernel:?}");
            }
            let winner =
                rules.iter().position(|(_, pred)| pred.matches(&Facts { key: &k, process: Some(p) }));
            matched += usize::from(daemon.is_some());
            late += usize::from(winner.is_some_and(|w| w >= 5));
            flows += 1;
        }
    }
    assert!(provisional > flows / 10 && provisional < flows * 9 / 10, "{provisional} of {flows} provisional");
    // Flows that match no rule, and flows whose first match comes late.
    assert!(matched < flows - 150 && late > flows / 20, "{matched} of {flows} matched, {late} late");
    assert!(residual > 100, "{residual} rules without a cover");
}
