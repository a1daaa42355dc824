//! The rule language and its compiled table: `match` rules are parsed,
//! printed and parsed again (the canonical form must mean the same), compiled,
//! and the table's verdicts (the evaluator the classifier runs) are held to
//! the predicates' on random flows and processes.
//!
//! Input: one `match` per line, for classes 0, 1, 2, … (lines that do not
//! parse are skipped, after their error is checked). The flows and processes
//! are drawn from a generator seeded by the input.

use shaper_common::{
    rules::{KernelView, SocketFacts},
    target_class, Owner, CLASS_DEFAULT, TARGET_DEFAULT,
};
use shaper_user::rules::{
    answers,
    compile::{self, Compiled, Mode},
    first_match,
    pred::{Facts, ProcessFacts},
    Pred, Rule,
};

use crate::{
    world::{self, World},
    Rng, Target,
};

/// Flows tried per rule set.
const FLOWS: usize = 48;
/// Rule lines read per input.
const MAX_RULES: usize = 64;

pub struct Rules {
    world: World,
}

impl Rules {
    pub fn new() -> Self {
        Self { world: World::new() }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::new()
    }
}

pub const DICTIONARY: &[&str] = &[
    " and ",
    " or ",
    "not ",
    "(",
    ")",
    "[",
    "]",
    "..",
    ", ",
    "/",
    "==",
    "!=",
    "<",
    ">=",
    "~",
    " in ",
    "\"",
    "'",
    "rport",
    "lport",
    "raddr",
    "laddr",
    "proto",
    "service",
    "user",
    "uid",
    "group",
    "gid",
    "pid",
    "cmd",
    "exe",
    "args",
    "args[1]",
    "cgroup",
    "unit",
    "parent",
    "ancestor",
    "true",
    "false",
    "198.18.0.0/15",
    "fd00::/8",
    "::",
    "::ffff:1.2.3.4",
    "*",
    "?",
    "[a-z]",
    "\\",
    "tcp",
    "udp",
    "\u{0}",
    "\u{feff}",
    "é",
];

impl Target for Rules {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn dictionary(&self) -> &'static [&'static str] {
        DICTIONARY
    }

    fn max_len(&self) -> usize {
        8 * 1024
    }

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        let count = if rng.one_in(20) { 40 + rng.below(24) } else { 1 + rng.below(8) };
        let lines: Vec<String> = (0..count).map(|_| world::match_rule(rng, 2)).collect();
        lines.join("\n").into_bytes()
    }

    fn run(&mut self, input: &[u8]) -> bool {
        let text = String::from_utf8_lossy(input);
        let env = self.world.env();
        let (mut parsed, mut printed) = (Vec::new(), Vec::new());
        for line in text.lines().take(MAX_RULES) {
            match Rule::parse(line, &env) {
                Ok(rule) => {
                    printed.push(check_canonical_form(&rule, &env));
                    parsed.push(rule);
                }
                Err(e) => {
                    assert!(
                        e.span.start <= e.span.end && e.span.end <= line.len(),
                        "error span {:?} outside the rule ({} bytes): {e}",
                        e.span,
                        line.len()
                    );
                    assert!(!e.message.is_empty(), "empty error message for {line:?}");
                }
            }
        }
        if parsed.is_empty() {
            return false;
        }
        let rules: Vec<(u16, &Pred)> =
            parsed.iter().enumerate().map(|(i, r)| ((i % 9) as u16, &r.pred)).collect();
        let printed: Vec<(u16, &Pred)> =
            printed.iter().enumerate().map(|(i, p)| ((i % 9) as u16, p)).collect();
        let Ok(table) = compile::compile(&rules, &self.world.tree) else {
            return true; // too large for the kernel: refused, as it should be
        };
        let tables =
            Tables { linear: table.clone().with_mode(Mode::Linear), indexed: table.with_mode(Mode::Indexed) };
        let mut rng = Rng::from_bytes(input);
        for _ in 0..FLOWS {
            check_flow(&tables, &rules, &printed, &self.world, &mut rng);
        }
        true
    }
}

/// One table in both evaluation modes.
pub struct Tables {
    pub linear: Compiled,
    pub indexed: Compiled,
}

/// A rule's canonical form parses, prints the same again, and gives the
/// predicate returned (which must mean the same as the rule's: checked on
/// the flows; `and`s and `or`s may nest differently).
fn check_canonical_form(rule: &Rule, env: &shaper_user::rules::Env<'_>) -> Pred {
    let printed = rule.to_string();
    let again = Rule::parse(&printed, env)
        .unwrap_or_else(|e| panic!("{:?} prints as {printed:?}, which does not parse: {e}", rule.source));
    assert_eq!(again.to_string(), printed, "printing {:?} is not stable", rule.source);
    again.pred
}

/// The kernel's record of a process, as the socket hooks write it: all or nothing.
pub fn owner_of(p: &ProcessFacts) -> Option<Owner> {
    let (uid, gid, cmd) = (p.uid?, p.gid?, p.cmd.as_deref()?);
    let mut comm = [0u8; 16];
    for (c, b) in comm.iter_mut().zip(cmd.bytes().take(15)) {
        *c = b;
    }
    Some(Owner { tgid: p.pid, uid, gid, comm, ..Owner::default() })
}

/// Every fact a process can have was read.
fn fully_known(p: &ProcessFacts) -> bool {
    p.uid.is_some()
        && p.gid.is_some()
        && p.user.is_some()
        && p.group.is_some()
        && p.cmd.is_some()
        && p.exe.is_some()
        && p.args.is_some()
        && p.cgroup.is_some()
        && p.ancestors.is_some()
}

/// The table on one random flow, as the kernel sees it (with random parts of
/// what it can know) and as the daemon does, against the predicates.
fn check_flow(
    tables: &Tables,
    rules: &[(u16, &Pred)],
    printed: &[(u16, &Pred)],
    world: &World,
    rng: &mut Rng,
) {
    let key = world::flow_key(rng);
    let process = world::process(rng, &world.tree);
    let mut socket = SocketFacts { rules_gen: 1, ..SocketFacts::default() };
    if let Some(owner) = owner_of(&process).filter(|_| !rng.one_in(4)) {
        socket.owner = owner;
        socket.has_owner = 1;
    }
    if let Some(path) = process.cgroup.as_deref().filter(|_| !rng.one_in(3)) {
        let (id, ancestors) = world.tree.ancestry(path);
        (socket.cgroup, socket.ancestors, socket.has_cgroup) = (id, ancestors, 1);
    }
    let table = &tables.indexed;
    let tests = answers(&table.userspace, &process, 1);
    if rng.one_in(2) {
        socket.has_answers = 1;
        socket.known = tests.known & rng.next_u64();
        socket.values = tests.values;
    }
    let kernel = evaluate(tables, &KernelView { key: &key, socket: &socket });
    let daemon = first_match(rules, &Facts { key: &key, process: Some(&process) });
    let reprinted = first_match(printed, &Facts { key: &key, process: Some(&process) });
    assert_eq!(reprinted, daemon, "the rules' canonical forms mean something else on {key:?} {process:?}");
    let shown = || format!("{key:?}\n{process:?}\n{socket:?}");
    if !kernel.1 {
        assert_eq!(
            kernel.0,
            daemon.map_or(TARGET_DEFAULT, target_class),
            "kernel verdict ≠ predicates on {}",
            shown()
        );
    }
    // The daemon's engine (the same table, everything it knows) gives the
    // predicates' first match, unless a fact it needed could not be read
    // (then its verdict is provisional: the flow keeps its class).
    let decided = table.decide(&key, Some(&process));
    if !decided.provisional || fully_known(&process) {
        assert_eq!(
            (decided.class, decided.provisional),
            (daemon.unwrap_or(CLASS_DEFAULT), false),
            "decide ≠ predicates on {}",
            shown()
        );
    }
    let bare = first_match(rules, &Facts { key: &key, process: None });
    assert_eq!(
        table.decide(&key, None).class,
        bare.unwrap_or(CLASS_DEFAULT),
        "decide without a process on {key:?}"
    );
    // With the owner record, the cgroup and every answer, the kernel decides, and decides right.
    if let (Some(owner), Some(path), true) =
        (owner_of(&process), process.cgroup.as_deref(), fully_known(&process))
    {
        let (id, ancestors) = world.tree.ancestry(path);
        let full = SocketFacts {
            owner,
            has_owner: 1,
            cgroup: id,
            ancestors,
            has_cgroup: 1,
            rules_gen: 1,
            has_answers: 1,
            known: tests.known,
            values: tests.values,
        };
        let verdict = evaluate(tables, &KernelView { key: &key, socket: &full });
        assert_eq!(verdict, (daemon.map_or(TARGET_DEFAULT, target_class), false), "fully known: {}", shown());
    }
}

/// `(target, provisional)` of the table on `view`; the linear walk and the
/// index must agree, and the walk must end without an error.
pub fn evaluate(tables: &Tables, view: &KernelView<'_>) -> (u16, bool) {
    let linear = tables.linear.evaluate(view);
    let indexed = tables.indexed.evaluate(view);
    assert_eq!(linear, indexed, "linear and indexed walks differ on {:?} / {:?}", view.key, view.socket);
    assert!(!linear.error, "the walk ended in an error on {:?}", view.key);
    let target = if linear.class == CLASS_DEFAULT { TARGET_DEFAULT } else { target_class(linear.class) };
    (target, linear.provisional)
}
