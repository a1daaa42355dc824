//! Messages of the control protocol. The JSON that `--json` prints is exactly
//! the `result` of these replies.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::{datapath::AttachMode, sockdiag::SockState};
pub use shaper_common::Direction;

/// Version of the protocol; a request with another version gets an error reply.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line the daemon reads; a longer one gets an error and the connection is closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Status,
    Classes,
    /// Flows, filtered, sorted and cut as the filter says (all of them with none).
    Conns(ConnFilter),
    /// `shaper top`: classes with their history, and the busiest `n`
    /// programs, users, units and connections.
    Top {
        #[serde(default = "top_default")]
        n: usize,
    },
    /// Re-read the config file and apply it (see `Changes`).
    Reload,
    /// Change a running class without touching the file.
    Set(SetClass),
    /// Pin one connection into a class.
    Move {
        conn: String,
        class: String,
    },
    /// Quota usage per class and instance (`shaper usage`).
    Usage,
    /// Starts a quota's period over (`shaper usage reset CLASS [INSTANCE]`);
    /// replies with the usage afterwards.
    UsageReset {
        class: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    /// The metrics as the HTTP endpoint serves them (`shaper metrics`);
    /// `openmetrics`: OpenMetrics 1.0.0 instead of Prometheus text 0.0.4.
    Metrics {
        #[serde(default)]
        openmetrics: bool,
    },
    /// Why a connection is in its class, or which class one not made yet
    /// would get (`shaper explain`, see `super::explain`).
    Explain(ExplainRequest),
    /// What a reload would change, changing nothing: of the daemon's config
    /// file, or of `config` (`shaper reload --dry-run`, `shaper check --against-running`).
    DryRun {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<String>,
    },
    /// Stop the daemon; `keep` leaves shaping in place for the next one.
    Stop {
        #[serde(default)]
        keep: bool,
    },
}

/// `shaper explain`: a connection by its id (as `conns` shows it), or one
/// that does not exist yet: process `pid` connecting to `to` ("addr:port").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// "tcp" (the default) or "udp".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
}

/// Rows per list of a `top` reply when the request names none.
pub const TOP_DEFAULT: usize = 10;

/// How `conns` orders its rows (the largest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnSort {
    /// Current rate, sent plus received.
    Rate,
    /// Bytes sent plus received since the flow began.
    Bytes,
    /// Age: the longest known first.
    Age,
}

impl ConnSort {
    pub const NAMES: [&'static str; 3] = ["rate", "bytes", "age"];
}

impl FromStr for ConnSort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "rate" => Ok(ConnSort::Rate),
            "bytes" => Ok(ConnSort::Bytes),
            "age" => Ok(ConnSort::Age),
            other => Err(format!("unknown sort \"{other}\" (rate, bytes or age)")),
        }
    }
}

/// Which flows `conns` returns, in which order, how many.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnFilter {
    /// Only the flows in this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Only the flows of this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Only the flows of this user (name, or uid where it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only the flows of processes whose command name contains this (on
    /// the wire `command`: `cmd` names the request).
    #[serde(default, rename = "command", skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// The order (absent: by protocol and addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<ConnSort>,
    /// At most this many rows (after sorting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

fn top_default() -> usize {
    TOP_DEFAULT
}

/// `shaper set CLASS …`: rates as in the config ("10mbit", "RATE:CEIL").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetClass {
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// `--max-connections`: the class's connection limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// What a converge changed (in the reply to `shaper reload` and `shaper set`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub classes_added: Vec<String>,
    pub classes_removed: Vec<String>,
    /// Classes whose rate, ceil, priority, rule or interfaces changed.
    pub classes_changed: Vec<String>,
    pub interfaces_added: Vec<String>,
    pub interfaces_removed: Vec<String>,
    /// Flows the daemon decided that it decided again (the kernel redoes its
    /// own at their next packet).
    pub flows_reevaluated: usize,
}

impl Changes {
    /// One line for people: "classes changed: web; 3 flows re-evaluated".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, list) in [
            ("classes added", &self.classes_added),
            ("classes removed", &self.classes_removed),
            ("classes changed", &self.classes_changed),
            ("interfaces added", &self.interfaces_added),
            ("interfaces removed", &self.interfaces_removed),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if parts.is_empty() {
            parts.push("no class changed".to_string());
        }
        parts.push(format!("{} flows re-evaluated", self.flows_reevaluated));
        parts.join("; ")
    }
}

/// The reply to `reload` and `set`: what changed, and what needs a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    #[serde(flatten)]
    pub changes: Changes,
    /// `[daemon]` settings that changed in the file but take effect at the next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
    pub took_ms: u64,
}

/// The reply to `move`: the connection now pinned into `class`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// The connection's full id (`shaper conns`), of which the request gave a prefix.
    pub id: String,
    /// The connection for people: "tcp 198.18.0.1:40000 → 198.18.0.2:5201".
    pub conn: String,
    pub class: String,
}

/// The reply to `metrics`: the exposition text and its content type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsText {
    /// E.g. "text/plain; version=0.0.4; charset=utf-8".
    pub content_type: String,
    pub text: String,
}

/// The reply to `stop`, sent before the daemon exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    /// Always true: the daemon took the request and is on its way out.
    pub stopping: bool,
    /// Shaping is left in place for the next daemon (`stop --keep`).
    pub keep: bool,
    /// The daemon's process, gone once it has finished (`shaper stop` waits for that).
    pub pid: u32,
}

impl Stopping {
    /// What this process answers to `stop`.
    pub fn now(keep: bool) -> Self {
        Self { stopping: true, keep, pid: std::process::id() }
    }
}

/// The last reload (`status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub ok: bool,
    /// Why the config was refused (file:line:col: reason); the previous one stayed in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Self { v: PROTOCOL_VERSION, command }
    }
}

/// The daemon's answer: `{"v":1,"ok":true,"result":…}` or `{"v":1,"ok":false,"error":"…"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(result: serde_json::Value) -> Self {
        Self { v: PROTOCOL_VERSION, ok: true, result: Some(result), error: None }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self { v: PROTOCOL_VERSION, ok: false, result: None, error: Some(message.into()) }
    }
    /// A successful reply carrying `result` (one of the result types above).
    pub fn encode<T: Serialize>(result: &T) -> Self {
        match serde_json::to_value(result) {
            Ok(value) => Self::ok(value),
            Err(e) => Self::error(format!("encoding the reply: {e}")),
        }
    }
}

/// `shaper status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub config: String,
    pub uptime_s: u64,
    pub interfaces: Vec<InterfaceStatus>,
    /// Interfaces the config names that are absent (`optional`, or gone
    /// since they were shaped): shaped as soon as they appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    pub classes: usize,
    /// Nodes in the kernel rule table and its generation.
    pub rule_nodes: usize,
    pub rules_gen: u32,
    /// Entries in the flow map at the last reconcile.
    pub flows: usize,
    pub max_flows: u32,
    /// Classifier error counters: flow-map inserts that failed, rule walks that
    /// ended without a verdict, packets on an interface missing from the map.
    pub errors: std::collections::BTreeMap<String, u64>,
    pub scan_interval_ms: u64,
    pub last_scan: Option<ScanReport>,
    /// The cgroup the socket hooks are attached to (absent: process rules are
    /// left to the /proc scan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks_cgroup: Option<String>,
    /// Why process rules wait for the /proc scan, when they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_only: Option<String>,
    #[serde(default)]
    pub decisions: Decisions,
    /// Where the shaping state is pinned.
    #[serde(default)]
    pub pin_dir: String,
    /// This daemon took over the state an earlier one left pinned.
    #[serde(default)]
    pub adopted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadStatus>,
    /// Classes changed with `shaper set` since the file was last read, as
    /// "class: egress 10mbit:20mbit" (gone at the next reload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// How full the kernel maps that grow with traffic are.
    #[serde(default)]
    pub maps: Vec<MapUsage>,
    /// Every quota and where it stands (as `shaper usage`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<UsageRow>,
    /// Where quota usage is saved across reboots, and why it could not be (if so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// Instances of classes with `per`.
    #[serde(default)]
    pub instances: InstanceCounters,
    /// The schedule windows in force, one per class that is in one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowStatus>,
    /// The leaf queues this kernel offers.
    #[serde(default)]
    pub queues: QueueStatus,
    /// Classes with `max_connections`: their counts.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub connection_limits: std::collections::BTreeMap<String, super::connlimit::ConnLimitRow>,
}

/// A class's schedule window in force (`status`, `classes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStatus {
    pub class: String,
    /// 1 for the class's first window.
    pub window: usize,
    /// The window as written: "mon-fri 09:00-18:00".
    pub text: String,
    /// Since and until when it is in force, in seconds since the Unix epoch
    /// (absent: more than a week away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// The queues of the classes that name none (`status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// "fq_codel", or "bfifo" where the kernel has no fq_codel.
    pub default: String,
    pub fq_codel: bool,
    /// Why the kernel could not be asked, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_error: Option<String>,
}

/// Instances of classes with `per` (`status`): how many live, and what
/// happened to the reports of new ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCounters {
    pub live: u64,
    /// Live instances by class name.
    #[serde(default)]
    pub by_class: std::collections::BTreeMap<String, u64>,
    pub created: u64,
    /// Removed: idle for `instance_idle`, or their class lost `per`.
    pub removed: u64,
    /// Not created: the class (or all classes) had as many as allowed;
    /// their traffic stays in the class's shared leaf.
    pub capped: u64,
    /// Not created: the kernel refused a leaf.
    pub failed: u64,
}

/// One instance of a class with `per` (`classes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRow {
    /// The user, program, unit, cgroup or connection.
    pub key: String,
    /// tc notation of its leaf, e.g. "1:1003".
    pub classid: String,
    pub rate_bps: u64,
    pub ceil_bps: u64,
    /// Bytes the classifier put into it in this direction since it was made.
    pub bytes: u64,
    /// What HTB sent out of its leaf.
    pub sent_bytes: u64,
    pub rate_now_bps: u64,
    /// Seconds since its last packet (as of the last scan).
    pub idle_s: u64,
}

/// One kernel map's fill (`status`): FLOWS and KEPT_FLOWS as the last scan
/// counted them, the others at most 2 s old.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapUsage {
    pub name: String,
    pub entries: usize,
    pub capacity: u32,
}

/// How the daemon decided flows the kernel could not (`status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Decisions {
    /// New flows the classifier reported.
    pub events: u64,
    /// Of those, flows whose kernel verdict was provisional.
    pub provisional: u64,
    /// Flows the daemon moved to another class.
    pub changed: u64,
    /// Bytes sent in a provisional class before the daemon moved the flow.
    pub provisional_bytes: u64,
    /// First packet → final class for provisional flows, microseconds (recent flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_us: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub egress_bps: u64,
    pub ingress_bps: Option<u64>,
    /// The IFB device downloads are shaped on, when ingress is shaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifb: Option<String>,
    pub attach: AttachMode,
    pub default_class: String,
}

/// What one reconcile pass of the daemon did (`status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    /// Connected sockets found.
    pub sockets: usize,
    /// Flows entered into the flow map for sockets the classifier had not seen.
    pub adopted: usize,
    /// Flow entries removed: no socket and idle for longer than the scan interval.
    pub removed: usize,
    /// Flows moved to another class because their process is not what the
    /// kernel knew (it exec'd, or the socket changed hands).
    #[serde(default)]
    pub corrected: usize,
    /// Wall time of the pass, microseconds.
    pub micros: u64,
    /// Socket tables read from /proc/net because the kernel could not dump
    /// them over sock_diag ("udp4", …): a degraded scan (no socket cookies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_proc_net: Vec<String>,
}

/// Who decided a flow's class (`shaper conns`' BY column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The classifier, at the flow's first packet.
    Kernel,
    /// The daemon, on the classifier's report.
    Daemon,
    /// The daemon's periodic reconcile.
    Scan,
    /// An operator, with `shaper move`.
    Pinned,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Kernel => "kernel",
            Origin::Daemon => "daemon",
            Origin::Scan => "scan",
            Origin::Pinned => "pinned",
        }
    }
}

/// One HTB class on one interface and direction (`shaper classes`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassRow {
    pub name: String,
    pub interface: String,
    pub direction: Direction,
    /// tc notation, e.g. "1:10".
    pub classid: String,
    pub rate_bps: u64,
    pub ceil_bps: u64,
    pub priority: u8,
    /// Bytes and packets the classifier put into the class (frames as seen on
    /// the hook, link-layer header included, before any queueing or drop).
    pub bytes: u64,
    pub packets: u64,
    /// What HTB sent out of the class, and what it dropped.
    pub sent_bytes: u64,
    pub sent_packets: u64,
    pub drops: u64,
    pub overlimits: u64,
    pub backlog_bytes: u64,
    /// Rate HTB sent at over the last few seconds, bits/s.
    pub rate_now_bps: u64,
    /// Current rate: bits/s the classifier put into the class over the last
    /// second (its `bytes` per interval: offered, before queueing and drops).
    #[serde(default)]
    pub current_bps: u64,
    /// The class's `match`, as written in the config (absent for default-only classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The kind of the class's leaf queue: "fq_codel", "bfifo" or "pfifo".
    #[serde(default)]
    pub queue: String,
    /// The schedule window whose limits the class has now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStatus>,
    /// Where the class's quota stands (absent: no quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaState>,
    /// `per` ("user", "program", …), when the class has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// Its live instances (with `per`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceRow>,
    /// Its connection limit (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<super::connlimit::ConnLimitRow>,
}

/// Where a quota stands (`shaper usage`, `classes`, `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaState {
    /// Below the limit.
    Ok,
    /// Used up; the class is held to the quota's `then` rate until the period ends.
    Throttled,
    /// Used up; the class's packets are dropped until the period ends.
    Blocked,
    /// Used up; only reported (`then = "report"`).
    Reported,
}

impl QuotaState {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaState::Ok => "ok",
            QuotaState::Throttled => "throttled",
            QuotaState::Blocked => "blocked",
            QuotaState::Reported => "reported",
        }
    }
}

/// One quota of a class, or of one instance of it (`shaper usage`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub class: String,
    /// The instance (user, program, …) for a class with `per`; absent for the class as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Bytes counted this period (the counted directions, as the classifier saw them).
    pub used_bytes: u64,
    pub limit_bytes: u64,
    /// `used_bytes` as a percentage of `limit_bytes`.
    pub percent: f64,
    pub egress_bytes: u64,
    pub ingress_bytes: u64,
    /// Bytes dropped because the quota blocks.
    pub dropped_bytes: u64,
    /// "egress", "ingress" or "both".
    pub direction: String,
    /// "64 kbit/s", "block" or "report".
    pub then: String,
    /// The period, seconds since the Unix epoch: start (included) and end.
    pub period_start: u64,
    pub period_end: u64,
    pub state: QuotaState,
    /// Bytes counted when this daemon saw the quota used up and applied its
    /// action (the overrun is this minus `limit_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at_action: Option<u64>,
}

/// One flow (`shaper conns`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnRow {
    /// Short name of the flow (for `shaper move`).
    pub id: String,
    pub proto: String,
    /// "addr:port", IPv6 as "[addr]:port"; the bare address for protocols without ports.
    pub local: String,
    pub remote: String,
    /// Class name ("default" classes by their name too).
    pub class: String,
    /// Who decided the class.
    pub origin: Origin,
    /// The process behind the connection, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// The `match` of the class's rule (absent when no rule matched: the default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// For flows the kernel classed provisionally: microseconds until the
    /// daemon's decision, and bytes sent in the provisional class meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisional_bytes: Option<u64>,
    /// The socket's state ("established", …, "udp"), or "gone" when it no longer exists.
    pub state: SockState,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Counted on interfaces whose ingress is shaped (0 elsewhere).
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub idle_ms: u64,
    /// Current rates: bits/s sent and received over the last second.
    #[serde(default)]
    pub tx_bps: u64,
    #[serde(default)]
    pub rx_bps: u64,
    /// Seconds since the daemon first counted the flow (at most its uptime).
    #[serde(default)]
    pub age_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_one_line_json() {
        let line = serde_json::to_string(&Request::new(Command::Classes)).unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"classes"}"#);
        let back: Request = serde_json::from_str(r#"{"cmd":"conns","v":1}"#).unwrap();
        assert_eq!(back, Request::new(Command::Conns(ConnFilter::default())));
        let line = serde_json::to_string(&Request::new(Command::Conns(ConnFilter::default()))).unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"conns"}"#);
        let filtered: Request = serde_json::from_str(
            r#"{"v":1,"cmd":"conns","class":"bulk","command":"rsync","sort":"rate","limit":5}"#,
        )
        .unwrap();
        let filter = ConnFilter {
            class: Some("bulk".into()),
            cmd: Some("rsync".into()),
            sort: Some(ConnSort::Rate),
            limit: Some(5),
            ..Default::default()
        };
        assert_eq!(filtered.command, Command::Conns(filter.clone()));
        let line = serde_json::to_string(&Request::new(Command::Conns(filter))).unwrap();
        assert!(line.starts_with(r#"{"v":1,"cmd":"conns","class":"bulk","command":"rsync""#), "{line}");
        let top: Request = serde_json::from_str(r#"{"v":1,"cmd":"top"}"#).unwrap();
        assert_eq!(top.command, Command::Top { n: TOP_DEFAULT });
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).is_err());
        let stop: Request = serde_json::from_str(r#"{"v":1,"cmd":"stop","keep":true}"#).unwrap();
        assert_eq!(stop.command, Command::Stop { keep: true });
        let reset: Request = serde_json::from_str(r#"{"v":1,"cmd":"usage_reset","class":"bulk"}"#).unwrap();
        assert_eq!(reset.command, Command::UsageReset { class: "bulk".into(), instance: None });
        let metrics: Request = serde_json::from_str(r#"{"v":1,"cmd":"metrics"}"#).unwrap();
        assert_eq!(metrics.command, Command::Metrics { openmetrics: false });
        let line = serde_json::to_string(&Request::new(Command::Metrics { openmetrics: true })).unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"metrics","openmetrics":true}"#);
        let line = serde_json::to_string(&Request::new(Command::Usage)).unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"usage"}"#);
        let set: Request =
            serde_json::from_str(r#"{"v":1,"cmd":"set","class":"bulk","egress":"5mbit:10mbit"}"#).unwrap();
        assert_eq!(
            set.command,
            Command::Set(SetClass {
                class: "bulk".into(),
                egress: Some("5mbit:10mbit".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn move_and_stop_results_keep_their_documented_shape() {
        let moved = Moved {
            id: "3fa2c1d0".into(),
            conn: "tcp 198.18.0.1:40000 → 198.18.0.2:5201".into(),
            class: "bulk".into(),
        };
        // On the wire (a `result` is a JSON value, whose keys serde_json sorts),
        // byte for byte what the daemon sent when it built these with `json!`.
        let line = serde_json::to_string(&Reply::encode(&moved)).unwrap();
        let wire = r#"{"class":"bulk","conn":"tcp 198.18.0.1:40000 → 198.18.0.2:5201","id":"3fa2c1d0"}"#;
        assert_eq!(line, format!(r#"{{"v":1,"ok":true,"result":{wire}}}"#));
        assert_eq!(serde_json::from_str::<Moved>(wire).unwrap(), moved);
        let stopping = Stopping { stopping: true, keep: true, pid: 4242 };
        let line = serde_json::to_string(&Reply::encode(&stopping)).unwrap();
        let wire = r#"{"keep":true,"pid":4242,"stopping":true}"#;
        assert_eq!(line, format!(r#"{{"v":1,"ok":true,"result":{wire}}}"#));
        assert_eq!(serde_json::from_str::<Stopping>(wire).unwrap(), stopping);
        assert_eq!(Stopping::now(false).pid, std::process::id());
    }

    #[test]
    fn replies_carry_either_a_result_or_an_error() {
        let ok = serde_json::to_string(&Reply::ok(serde_json::json!([1]))).unwrap();
        assert_eq!(ok, r#"{"v":1,"ok":true,"result":[1]}"#);
        let err = serde_json::to_string(&Reply::error("nope")).unwrap();
        assert_eq!(err, r#"{"v":1,"ok":false,"error":"nope"}"#);
    }
}
