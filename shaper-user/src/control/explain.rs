//! Replies of `shaper explain` and of the dry runs (`shaper reload
//! --dry-run`, `shaper check --against-running`): why a connection is in
//! its class, and what a reload would change.

use serde::{Deserialize, Serialize};

pub use super::protocol::ExplainRequest;
use super::protocol::{Changes, Origin};

/// The value of one test for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestValue {
    True,
    False,
    /// The fact it compares is not known (the process exited before it was
    /// read, no process is known, or the local port is not chosen yet).
    Unknown,
}

impl TestValue {
    pub fn of(value: Option<bool>) -> Self {
        match value {
            Some(true) => TestValue::True,
            Some(false) => TestValue::False,
            None => TestValue::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TestValue::True => "true",
            TestValue::False => "false",
            TestValue::Unknown => "unknown",
        }
    }
}

/// Who makes a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestedBy {
    /// The classifier, from the packet, the socket's owner record or its cgroup.
    Kernel,
    /// Only the daemon (exe, args, parent, ancestor, patterns): the kernel
    /// reads it as unknown until the daemon answered for the process.
    Daemon,
}

/// One test of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestExplained {
    /// The test in the `match` language: "rport == 443".
    pub test: String,
    /// The fact it compared: "rport 5201".
    pub fact: String,
    pub value: TestValue,
    pub by: TestedBy,
    /// The evaluator read it (tests after a rule's outcome is settled, and
    /// those of rules the index skipped, are valued for people only).
    pub evaluated: bool,
}

/// What one rule came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleResult {
    /// The first rule that matched: its class is the verdict.
    Matched,
    /// Evaluated, and false.
    False,
    /// Not evaluated: the index showed its cover cannot hold for this connection.
    Skipped,
    /// After the rule that matched.
    NotReached,
    /// Not in the rule table: it can never match on this host (a cgroup or
    /// unit that does not exist), or an earlier rule always matches.
    NotInTable,
}

impl RuleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleResult::Matched => "matched",
            RuleResult::False => "false",
            RuleResult::Skipped => "skipped (index)",
            RuleResult::NotReached => "not reached",
            RuleResult::NotInTable => "not in the table",
        }
    }
}

/// One class's rule, in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleExplained {
    pub class: String,
    /// Its `match`, as written.
    pub rule: String,
    pub result: RuleResult,
    pub tests: Vec<TestExplained>,
}

/// What shaper holds about the process behind a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExplained {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The systemd units on the cgroup path.
    #[serde(default)]
    pub units: Vec<String>,
    /// Names of the parent, grandparent, … (absent: not read, no rule asks for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ancestors: Option<Vec<String>>,
}

/// Who put the connection in its class, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    pub by: Origin,
    /// For people: "at its first packet, with rule table generation 3".
    pub when: String,
}

/// The reply to `explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explained {
    /// "tcp 198.18.0.1:40000 → 198.18.0.2:5201" ("?" for a local port not chosen yet).
    pub flow: String,
    /// The connection's id in `conns` (absent for one that does not exist yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The class it is in now (absent for one that does not exist yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<Decided>,
    /// Absent when no process is known for the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessExplained>,
    /// Every class's rule, in file order.
    pub rules: Vec<RuleExplained>,
    /// The class of the rule that matched (absent: none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// The class the rules give the connection now (the interface's default when none matched).
    pub verdict: String,
    /// A test on a fact that is not known decided the verdict, or could have.
    pub provisional: bool,
    /// Anything else worth knowing: a pin, a class that differs from the verdict, an unknown local port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a reload would do to one class that stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassChange {
    pub class: String,
    /// "egress 10 Mbit/s → 20 Mbit/s", "match 'rport == 80' → 'rport == 8080'", …
    pub how: Vec<String>,
}

/// Live connections a reload would put in another class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moves {
    pub from: String,
    pub to: String,
    pub count: usize,
}

/// The reply to a dry run: what a reload of `config` would change. Nothing
/// was changed: no qdisc, class or map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    /// The file read.
    pub config: String,
    /// As the reload's reply would list them (`flows_reevaluated`: the
    /// flows the daemon or an operator decided, which it would decide again).
    #[serde(flatten)]
    pub changes: Changes,
    /// How each changed class would change.
    #[serde(default)]
    pub how: Vec<ClassChange>,
    /// Live connections that would change class, by (from, to).
    #[serde(default)]
    pub moves: Vec<Moves>,
    /// Live connections looked at.
    pub flows: usize,
    /// `[daemon]` settings that would wait for the next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{Command, Request};

    #[test]
    fn explain_and_dry_run_requests_on_the_wire() {
        let by_id: Request = serde_json::from_str(r#"{"v":1,"cmd":"explain","conn":"3fa2"}"#).unwrap();
        assert_eq!(
            by_id.command,
            Command::Explain(ExplainRequest { conn: Some("3fa2".into()), ..Default::default() })
        );
        let line = serde_json::to_string(&Request::new(Command::Explain(ExplainRequest {
            pid: Some(42),
            to: Some("198.18.0.2:443".into()),
            ..Default::default()
        })))
        .unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"explain","pid":42,"to":"198.18.0.2:443"}"#);
        let dry: Request = serde_json::from_str(r#"{"v":1,"cmd":"dry_run"}"#).unwrap();
        assert_eq!(dry.command, Command::DryRun { config: None });
        let against: Request =
            serde_json::from_str(r#"{"v":1,"cmd":"dry_run","config":"/etc/shaper/new.toml"}"#).unwrap();
        assert_eq!(against.command, Command::DryRun { config: Some("/etc/shaper/new.toml".into()) });
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"cmd":"explain","id":"3fa2"}"#).is_err());
    }

    #[test]
    fn a_dry_run_reply_has_the_reload_fields_at_the_top() {
        let dry = DryRun {
            config: "/etc/shaper/shaper.toml".into(),
            changes: Changes { classes_added: vec!["web".into()], ..Changes::default() },
            flows: 3,
            ..DryRun::default()
        };
        let value = serde_json::to_value(&dry).unwrap();
        assert_eq!(value["classes_added"], serde_json::json!(["web"]));
        assert_eq!(serde_json::from_value::<DryRun>(value).unwrap(), dry);
    }
}
