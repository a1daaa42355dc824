//! `shaper explain`: why a connection is in its class, or which class a
//! connection that does not exist yet would get. The rules are evaluated by
//! the rule engine's tracing mode ([`crate::rules::explain`]) with the
//! facts the daemon decides with; nothing is changed.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use shaper_common::{FlowKey, FlowValue, CLASS_DEFAULT, OP_USERSPACE, PROTO_TCP, PROTO_UDP};

use super::{decider::Decider, error::RequestError};
use crate::{
    classids::ClassIds,
    config::Config,
    control::{
        explain::{
            Decided, ExplainRequest, Explained, ProcessExplained, RuleExplained, RuleResult, TestExplained,
            TestValue, TestedBy,
        },
        Origin,
    },
    datapath::Datapath,
    flows,
    rules::{
        compile::Compiled,
        explain::{Outcome, Trace},
        pred::ProcessFacts,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Request(Box<RequestError>),
    #[error("give a connection id, or --pid and --to")]
    Nothing,
    #[error("--to {0:?}: expected ADDR:PORT, e.g. 198.18.0.2:443 or [fd00::2]:443")]
    Address(String),
    #[error("--proto {0:?}: expected tcp or udp")]
    Proto(String),
    #[error("no process {0} (it is not running)")]
    NoProcess(u32),
}

/// The daemon's parts `explain` reads.
pub struct Sources<'a> {
    pub decider: &'a mut Decider,
    pub datapath: &'a Datapath,
    pub config: &'a Config,
}

/// The flow whose id starts with `conn` (at least 4 digits).
pub fn find_flow(datapath: &Datapath, conn: &str) -> Result<(FlowKey, FlowValue), RequestError> {
    let conn = conn.trim().to_ascii_lowercase();
    if conn.len() < 4 {
        return Err(RequestError::ShortId(conn));
    }
    let mut matches = datapath.flows().into_iter().filter(|(k, _)| flows::id(k).starts_with(&conn));
    match (matches.next(), matches.count()) {
        (Some(one), 0) => Ok(one),
        (None, _) => Err(RequestError::NoConnection(conn)),
        (Some(_), more) => Err(RequestError::Ambiguous { id: conn, count: more + 1 }),
    }
}

/// Answers `explain`.
pub fn explain(s: Sources<'_>, request: &ExplainRequest) -> Result<Explained, ExplainError> {
    match (&request.conn, request.pid, &request.to) {
        (Some(conn), _, _) => existing(s, conn),
        (None, Some(pid), Some(to)) => upcoming(s, pid, to, request.proto.as_deref()),
        _ => Err(ExplainError::Nothing),
    }
}

/// A connection the classifier knows.
fn existing(s: Sources<'_>, conn: &str) -> Result<Explained, ExplainError> {
    let (key, value) = find_flow(s.datapath, conn).map_err(|e| ExplainError::Request(Box::new(e)))?;
    let ids = s.datapath.class_ids();
    let origin = s.decider.origin(&key, &value);
    let pid = s.decider.conn(&key).map_or(0, |c| c.pid);
    let decided = s.decider.process(pid).cloned();
    let now = if pid != 0 { s.decider.facts_now(pid) } else { None };
    let compiled = &s.decider.rules().compiled;
    let trace = compiled.explain(&key, decided.as_ref(), true);
    let when = when(s.decider, s.datapath, &key, &value, origin);
    let mut out = report(compiled, s.config, &ids, &key, decided.as_ref(), &trace);
    out.id = Some(flows::id(&key));
    out.class = Some(class_name(s.config, &ids, value.class));
    out.decided = Some(Decided { by: origin, when });
    out.process = decided.as_ref().map(|d| process(d, now.as_ref()));
    if decided.is_none() {
        out.notes.push("no process known for it yet (the next reconcile looks for one)".into());
    }
    if origin == Origin::Pinned {
        out.notes.push("pinned by `shaper move`: the rules do not move it while it lives".into());
    } else if out.class.as_deref() != Some(out.verdict.as_str()) {
        out.notes.push(format!(
            "the rules in force give {}: {}",
            out.verdict,
            if trace.verdict.provisional {
                "a fact that is not known decides it, so the class stays until the reconcile learns more"
            } else {
                "it moves at its next packet or the next reconcile"
            }
        ));
    }
    Ok(out)
}

/// A connection process `pid` would make to `to`.
fn upcoming(s: Sources<'_>, pid: u32, to: &str, proto: Option<&str>) -> Result<Explained, ExplainError> {
    let remote: SocketAddr = to.parse().map_err(|_| ExplainError::Address(to.to_string()))?;
    let proto = match proto.unwrap_or("tcp") {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        other => return Err(ExplainError::Proto(other.to_string())),
    };
    let facts = s.decider.facts_now(pid).ok_or(ExplainError::NoProcess(pid))?;
    let source = source_address(remote);
    let local = SocketAddr::new(source.unwrap_or(unspecified(remote.ip())), 0);
    let key = flows::key(proto, local, remote);
    let ids = s.datapath.class_ids();
    let compiled = &s.decider.rules().compiled;
    let trace = compiled.explain(&key, Some(&facts), false);
    let mut out = report(compiled, s.config, &ids, &key, Some(&facts), &trace);
    out.flow = format!(
        "{} {}:? → {}",
        flows::proto_name(proto),
        bracketed(local.ip()),
        flows::endpoint(&key, false)
    );
    out.process = Some(process(&facts, None));
    out.notes.push("the local port is not chosen yet: tests on lport are unknown".into());
    if source.is_none() {
        out.notes
            .push("no route to the address from here: tests on laddr compare the unspecified address".into());
    }
    if trace.depends_on_lport() {
        out.notes.push("the verdict depends on the local port the connection gets".into());
    }
    Ok(out)
}

fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The address this host would send from to `remote` (a UDP socket
/// connected there asks the routing table; nothing is sent).
fn source_address(remote: SocketAddr) -> Option<IpAddr> {
    let socket = UdpSocket::bind(SocketAddr::new(unspecified(remote.ip()), 0)).ok()?;
    socket.connect(remote).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The name of class `index`; the default class by the interfaces' default
/// when they agree.
pub(super) fn class_name(config: &Config, ids: &ClassIds, index: u16) -> String {
    if index != CLASS_DEFAULT {
        return ids.name(index).map_or_else(|| format!("#{index}"), str::to_string);
    }
    let first = config.interfaces.first().map(|i| i.default_class.as_str());
    match first {
        Some(first) if config.interfaces.iter().all(|i| i.default_class == first) => first.to_string(),
        _ => "(the interface's default)".to_string(),
    }
}

/// For people: when and how the class was decided.
fn when(decider: &Decider, datapath: &Datapath, key: &FlowKey, value: &FlowValue, origin: Origin) -> String {
    match origin {
        Origin::Kernel => {
            let gen = datapath.rules_gen();
            let table = if value.rules_gen == gen {
                "the table in force".to_string()
            } else {
                format!("since replaced by generation {gen}: decided again at its next packet")
            };
            format!("at its first packet, with rule table generation {} ({table})", value.rules_gen)
        }
        Origin::Daemon => match decider.provisional(key) {
            Some(p) => format!("on the classifier's report, {} µs after its first packet", p.decided_us),
            None => "on the classifier's report".to_string(),
        },
        Origin::Scan => "at a reconcile (a socket the classifier had not reported)".to_string(),
        Origin::Pinned => match decider.pinned_at(key) {
            Some(at) => format!("with `shaper move` at {}", local_time(at)),
            None => "with `shaper move` (before this daemon started)".to_string(),
        },
    }
}

fn local_time(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64).map_or_else(
        |_| secs.to_string(),
        |t| t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The process facts for people: those decided with, completed by what
/// /proc shows now (`now`) for the facts no rule needed.
fn process(decided: &ProcessFacts, now: Option<&ProcessFacts>) -> ProcessExplained {
    let now = now.filter(|n| n.cmd == decided.cmd);
    let or_now = |mine: &Option<String>, f: fn(&ProcessFacts) -> &Option<String>| {
        mine.clone().or_else(|| now.and_then(|n| f(n).clone()))
    };
    ProcessExplained {
        pid: decided.pid,
        uid: decided.uid,
        user: decided.user.clone(),
        gid: decided.gid,
        group: decided.group.clone(),
        cmd: decided.cmd.clone(),
        exe: or_now(&decided.exe, |n| &n.exe),
        args: decided.args.clone().or_else(|| now.and_then(|n| n.args.clone())),
        cgroup: decided.cgroup.clone(),
        units: decided.units().map(str::to_string).collect(),
        ancestors: decided.ancestors.clone().or_else(|| now.and_then(|n| n.ancestors.clone())),
    }
}

/// The trace for people: every class's rule in file order, its tests and
/// their values.
fn report(
    compiled: &Compiled,
    config: &Config,
    ids: &ClassIds,
    key: &FlowKey,
    process: Option<&ProcessFacts>,
    trace: &Trace,
) -> Explained {
    let mut rules = Vec::new();
    for class in &config.classes {
        let Some(source) = &class.rule_source else { continue };
        let index = ids.index(&class.name);
        let traced = trace.rules.iter().find(|r| Some(r.class) == index);
        let (result, tests) = match traced {
            None => (RuleResult::NotInTable, Vec::new()),
            Some(r) => (result(r.outcome), r.tests.iter().map(|t| test(compiled, t, key, process)).collect()),
        };
        rules.push(RuleExplained { class: class.name.clone(), rule: source.clone(), result, tests });
    }
    let matched =
        trace.winner.and_then(|w| trace.rules.get(w as usize)).map(|r| class_name(config, ids, r.class));
    Explained {
        flow: format!(
            "{} {} → {}",
            flows::proto_name(key.proto),
            flows::endpoint(key, true),
            flows::endpoint(key, false)
        ),
        id: None,
        class: None,
        decided: None,
        process: None,
        rules,
        matched,
        verdict: class_name(config, ids, trace.verdict.class),
        provisional: trace.verdict.provisional,
        notes: Vec::new(),
    }
}

fn result(outcome: Outcome) -> RuleResult {
    match outcome {
        Outcome::Matched => RuleResult::Matched,
        Outcome::Failed => RuleResult::False,
        Outcome::Skipped => RuleResult::Skipped,
        Outcome::After => RuleResult::NotReached,
    }
}

fn test(
    compiled: &Compiled,
    t: &crate::rules::explain::TestTrace,
    key: &FlowKey,
    process: Option<&ProcessFacts>,
) -> TestExplained {
    TestExplained {
        test: compiled.describe(&t.node),
        fact: compiled.fact(&t.node, key, process),
        value: TestValue::of(t.value),
        by: if t.node.op == OP_USERSPACE { TestedBy::Daemon } else { TestedBy::Kernel },
        evaluated: t.read,
    }
}
