//! The config file: schema, defaults and validation.
//!
//! A config is read once, validated completely, and only then used; every
//! error names the file, line and column and says what was expected. See
//! config/shaper.toml for an annotated example and README.md for the reference.

pub mod connlimit;
mod per;
pub mod position;
pub mod queue;
mod quota;
mod raw;
pub mod schedule;

use std::{
    collections::HashMap,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use shaper_common::{Direction, DEFAULT_MAX_FLOWS, MAX_CLASSES, MAX_IFACES};
use toml::Spanned;

pub use per::{Per, PerConfig, DEFAULT_INSTANCE_IDLE};
pub use position::Pos;
pub use queue::QueueKind;
pub use quota::{Counted, Period, Quota, Then};
use raw::{RateValue, RawClass, RawConfig, RawInterface, RawLimit};

use crate::{
    classids::ClassIds,
    rules::{
        self,
        compile::{CgroupIndex, Compiled, TooLarge},
        Env, Rule,
    },
    units,
};

/// The config `run`, `start` and `check` read without `--config`, and the
/// clients' source of `control_socket` when neither `--socket` nor
/// `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/shaper/shaper.toml";
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/shaper/shaper.sock";
pub const DEFAULT_PID_FILE: &str = "/run/shaper/shaper.pid";
/// Where the daemon keeps what must outlive a reboot (quota usage).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shaper";
/// The class unmatched traffic goes to when an interface names none; created
/// with no limits of its own if the config does not define it.
pub const DEFAULT_CLASS_NAME: &str = "default";
pub const DEFAULT_PRIORITY: u8 = 4;
pub const MAX_PRIORITY: u8 = 7;
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_FLOWS_RANGE: std::ops::RangeInclusive<i64> = 1024..=16 * 1024 * 1024;
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{pos}: {message}", path.display())]
    At { path: PathBuf, pos: Pos, message: String },
    /// A problem with a setting the file leaves at its default.
    #[error("{}: {message}", path.display())]
    InFile { path: PathBuf, message: String },
}

impl ConfigError {
    /// The message without the file and position.
    pub fn message(&self) -> String {
        match self {
            ConfigError::Read { source, .. } => source.to_string(),
            ConfigError::At { message, .. } | ConfigError::InFile { message, .. } => message.clone(),
        }
    }
}

/// `[daemon]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    /// How often the /proc scan adopts connections and drops stale flows.
    pub scan_interval: Duration,
    pub control_socket: PathBuf,
    /// Capacity of the kernel flow map (LRU: the least recently used flow is
    /// evicted when it is full, and re-classified on its next packet).
    pub max_flows: u32,
    /// The cgroup v2 directory the socket hooks attach to (`None`: the root of
    /// the cgroup v2 hierarchy): processes outside it are matched by their
    /// connections' network attributes, and by the /proc scan.
    pub cgroup: Option<PathBuf>,
    /// New connections are sent to the daemon as they appear (the default).
    /// `false` leaves process rules to the /proc scan alone, as pyshaper did:
    /// only for comparisons.
    pub event_driven: bool,
    /// Where maps, programs and links are pinned so shaping outlives the daemon.
    pub pin_dir: PathBuf,
    /// Where `pin_dir` is written (`None`: the default), for errors found on the host.
    pub pin_dir_pos: Option<Pos>,
    /// Written by the daemon while it runs (`shaper start` waits on it).
    pub pid_file: PathBuf,
    /// Re-read the config when the file changes.
    pub watch_config: bool,
    /// Where quota usage is saved across reboots (`state_dir`).
    pub state_dir: PathBuf,
    /// Where the metrics endpoint listens (`None`: off, the default).
    pub metrics: Option<std::net::SocketAddr>,
}

/// A class's limit in one direction. `None` rate: reserves nothing; `None`
/// ceil: may borrow up to the interface capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Limit {
    pub rate_bps: Option<u64>,
    pub ceil_bps: Option<u64>,
}

/// `[[interface]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct InterfaceConfig {
    pub name: String,
    pub egress_bps: u64,
    pub ingress_bps: Option<u64>,
    /// Name of the class unmatched traffic goes to (one of [`Config::classes`]).
    pub default_class: String,
    /// Where the interface's name is written, for errors found later.
    pub pos: Pos,
    /// `optional = true`: absent at start (or at a reload) is fine; it is
    /// shaped as soon as it appears.
    pub optional: bool,
}

/// `[[class]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassConfig {
    pub name: String,
    pub priority: u8,
    pub egress: Option<Limit>,
    pub ingress: Option<Limit>,
    pub rule: Option<Rule>,
    /// The `match` as written, and where.
    pub rule_source: Option<String>,
    pub rule_pos: Option<Pos>,
    /// `None`: on every interface.
    pub interfaces: Option<Vec<String>>,
    /// Created by shaper as an interface's default, not written in the file.
    pub implicit: bool,
    /// `quota = { … }`: an allowance of bytes per period.
    pub quota: Option<Quota>,
    /// `per`: one HTB leaf per user, program, unit, cgroup or connection.
    pub per: Option<PerConfig>,
    /// Windows whose limits replace `egress` and `ingress` while they are
    /// active (see [`crate::schedule`]).
    pub schedule: Vec<schedule::Window>,
    /// The leaf queue asked for (`None`: the kernel's best), and where.
    pub queue: Option<QueueKind>,
    pub queue_pos: Option<Pos>,
    /// `max_connections` (with `on_limit`, `queue_timeout`).
    pub conn_limit: Option<connlimit::ConnLimitConfig>,
}

impl ClassConfig {
    /// The class's limit in `direction`, if it sets one.
    pub fn limit(&self, direction: Direction) -> Option<Limit> {
        match direction {
            Direction::Egress => self.egress,
            Direction::Ingress => self.ingress,
        }
    }
}

/// A validated config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    pub interfaces: Vec<InterfaceConfig>,
    pub classes: Vec<ClassConfig>,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path, env: &Env<'_>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text, env)
}

/// Validates config `text`; `path` is used in error messages.
pub fn parse(path: &Path, text: &str, env: &Env<'_>) -> Result<Config, ConfigError> {
    Validator { path, text, env }.config()
}

impl Config {
    /// The classes instantiated on `iface`, in file order.
    pub fn classes_on<'a>(
        &'a self,
        iface: &'a InterfaceConfig,
    ) -> impl Iterator<Item = &'a ClassConfig> + 'a {
        self.classes
            .iter()
            .filter(move |c| c.interfaces.as_ref().is_none_or(|list| list.contains(&iface.name)))
    }

    pub fn class(&self, name: &str) -> Option<&ClassConfig> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// Class indices for a host with no shaper state: in file order.
    pub fn class_ids_in_file_order(&self) -> ClassIds {
        ClassIds::in_order(self.class_names())
    }

    /// The classes' names, in file order.
    pub fn class_names(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| c.name.as_str())
    }

    /// The classes' `match` rules in file order, each with its class's index.
    pub fn rules<'a>(&'a self, ids: &ClassIds) -> Vec<(u16, &'a rules::Pred)> {
        self.classes.iter().filter_map(|c| Some((ids.index(&c.name)?, &c.rule.as_ref()?.pred))).collect()
    }

    /// The kernel rule table for the classes' `match` rules, in file order,
    /// with the class indices `ids`. A table too large for the kernel is an
    /// error at the last rule.
    pub fn compile_rules(&self, ids: &ClassIds, cgroups: &dyn CgroupIndex) -> Result<Compiled, ConfigError> {
        rules::compile::compile(&self.rules(ids), cgroups).map_err(|e: TooLarge| ConfigError::At {
            path: self.path.clone(),
            pos: self.classes.iter().rev().find_map(|c| c.rule_pos).unwrap_or_default(),
            message: e.to_string(),
        })
    }

    /// The first interface and direction whose classes guarantee more than
    /// its capacity, if any (sums are checked: validated rates cannot
    /// overflow them, but `shaper set` and tests build configs too).
    pub fn overbooked(&self) -> Option<Overbooked> {
        for iface in &self.interfaces {
            let classes: Vec<&ClassConfig> = self.classes_on(iface).collect();
            // The classes' own limits, then the moments of the week when a
            // schedule window opens or closes.
            let moments = schedule::moments(&classes);
            for (direction, capacity) in
                [(Direction::Egress, Some(iface.egress_bps)), (Direction::Ingress, iface.ingress_bps)]
            {
                let Some(capacity) = capacity else { continue };
                for moment in &moments {
                    let parts: Vec<(String, u64)> = classes
                        .iter()
                        .filter_map(|c| {
                            let (window, limit) = schedule::limit_during(c, *moment, direction);
                            let name =
                                window.map_or_else(|| c.name.clone(), |w| format!("{} ({})", c.name, w.text));
                            Some((name, limit?.rate_bps?))
                        })
                        .collect();
                    let reserved = parts.iter().try_fold(0u64, |sum, (_, rate)| sum.checked_add(*rate));
                    if reserved.is_none_or(|r| r > capacity) {
                        return Some(Overbooked {
                            iface: iface.name.clone(),
                            direction,
                            reserved,
                            parts,
                            capacity,
                        });
                    }
                }
            }
        }
        None
    }

    /// Checks that every interface exists (`exists` asks the host), but the
    /// `optional` ones.
    pub fn check_interfaces_exist(&self, exists: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        for iface in &self.interfaces {
            if !iface.optional && !exists(&iface.name) {
                return Err(ConfigError::At {
                    path: self.path.clone(),
                    pos: iface.pos,
                    message: format!(
                        "interface \"{}\" does not exist (in this network namespace)",
                        iface.name
                    ),
                });
            }
        }
        Ok(())
    }
}

/// An interface whose classes guarantee more than its capacity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the classes on {iface} guarantee {} of {} ({}), more than its capacity of {}",
    reserved.map_or_else(|| format!("more than {}", units::format_rate(u64::MAX)), units::format_rate),
    direction.as_str(),
    parts.iter().map(|(name, rate)| format!("{name} {}", units::format_rate(*rate))).collect::<Vec<_>>().join(" + "),
    units::format_rate(*capacity)
)]
pub struct Overbooked {
    pub iface: String,
    pub direction: Direction,
    /// The sum of the guaranteed rates (`None`: above `u64::MAX`).
    pub reserved: Option<u64>,
    /// Each class with a guaranteed rate, and that rate.
    pub parts: Vec<(String, u64)>,
    pub capacity: u64,
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    env: &'a Env<'a>,
}

impl Validator<'_> {
    fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            path: self.path.to_path_buf(),
            pos: position::pos(self.text, offset),
            message: message.into(),
        }
    }

    fn error<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error_at(at.span().start, message)
    }

    fn config(&self) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(self.text).map_err(|e| {
            let offset = e.span().map_or(0, |s: Range<usize>| s.start);
            // toml's messages may span lines; errors here are one line each.
            let message: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            if message.is_empty() {
                // toml says nothing for some characters it refuses (control
                // characters in comments): name the one it points at.
                let at = self.text.get(offset..).and_then(|t| t.chars().next());
                let what = at.map_or_else(
                    || "invalid TOML".to_string(),
                    |c| format!("invalid character {c:?} (U+{:04X})", u32::from(c)),
                );
                return self.error_at(offset, what);
            }
            self.error_at(offset, message.join("; "))
        })?;
        let daemon = self.daemon(&raw)?;
        if raw.interface.is_empty() {
            return Err(self.error_at(
                0,
                "no [[interface]]: name at least one interface to shape, e.g. [[interface]] with name = \"eth0\" and \
                 egress = \"100mbit\"",
            ));
        }
        if raw.interface.len() > MAX_IFACES as usize {
            return Err(self.error(
                &raw.interface[MAX_IFACES as usize],
                format!("at most {MAX_IFACES} interfaces can be shaped"),
            ));
        }
        let mut classes = self.classes(&raw.class)?;
        let mut interfaces = Vec::new();
        let mut seen: HashMap<&str, &Spanned<String>> = HashMap::new();
        for spanned in &raw.interface {
            let iface = spanned.get_ref();
            if let Some(first) = seen.insert(iface.name.get_ref(), &iface.name) {
                let line = position::pos(self.text, first.span().start).line;
                return Err(self.error(
                    &iface.name,
                    format!("interface \"{}\" is listed twice (first on line {line})", iface.name.get_ref()),
                ));
            }
            interfaces.push(self.interface(iface, &raw.class, &mut classes)?);
        }
        let iface_names: Vec<&str> =
            raw.interface.iter().map(|i| i.get_ref().name.get_ref().as_str()).collect();
        for class in &raw.class {
            for name in class.get_ref().interfaces.iter().flatten() {
                if !iface_names.contains(&name.get_ref().as_str()) {
                    return Err(self.error(name, format!("no [[interface]] named \"{}\"", name.get_ref())));
                }
            }
        }
        if classes.len() > MAX_CLASSES as usize {
            let at = raw.class.get(MAX_CLASSES as usize - 1).map_or(0, |c| c.span().start);
            return Err(
                self.error_at(at, format!("at most {} classes (the implicit default included)", MAX_CLASSES))
            );
        }
        self.check_window_rates(&classes, &interfaces)?;
        let config = Config { path: self.path.to_path_buf(), daemon, interfaces, classes };
        if let Some(over) = config.overbooked() {
            // The capacity it exceeds, as written.
            let raw = raw.interface.iter().map(Spanned::get_ref).find(|i| *i.name.get_ref() == over.iface);
            let at = raw.and_then(|i| match over.direction {
                Direction::Egress => Some(i.egress.span().start),
                Direction::Ingress => i.ingress.as_ref().map(|r| r.span().start),
            });
            return Err(self.error_at(at.unwrap_or(0), over.to_string()));
        }
        Ok(config)
    }

    fn daemon(&self, raw: &RawConfig) -> Result<DaemonConfig, ConfigError> {
        let mut daemon = DaemonConfig {
            scan_interval: DEFAULT_SCAN_INTERVAL,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            max_flows: DEFAULT_MAX_FLOWS,
            cgroup: None,
            event_driven: true,
            pin_dir: PathBuf::from(crate::pins::DEFAULT_PIN_DIR),
            pin_dir_pos: None,
            pid_file: PathBuf::from(DEFAULT_PID_FILE),
            watch_config: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            metrics: None,
        };
        let Some(d) = &raw.daemon else { return Ok(daemon) };
        if let Some(s) = &d.scan_interval {
            let interval = units::parse_duration(s.get_ref()).map_err(|e| self.error(s, e.to_string()))?;
            if interval < MIN_SCAN_INTERVAL {
                return Err(self.error(
                    s,
                    format!("scan_interval must be at least {}ms", MIN_SCAN_INTERVAL.as_millis()),
                ));
            }
            daemon.scan_interval = interval;
        }
        if let Some(s) = &d.control_socket {
            let path = PathBuf::from(s.get_ref());
            if !path.is_absolute() {
                return Err(self.error(s, "control_socket must be an absolute path"));
            }
            daemon.control_socket = path;
        }
        if let Some(n) = &d.max_flows {
            if !MAX_FLOWS_RANGE.contains(n.get_ref()) {
                return Err(self.error(
                    n,
                    format!(
                        "max_flows must be between {} and {}",
                        MAX_FLOWS_RANGE.start(),
                        MAX_FLOWS_RANGE.end()
                    ),
                ));
            }
            daemon.max_flows = *n.get_ref() as u32;
        }
        if let Some(c) = &d.cgroup {
            let path = PathBuf::from(c.get_ref());
            if !path.is_absolute() {
                return Err(self.error(c, "cgroup must be the absolute path of a cgroup v2 directory"));
            }
            daemon.cgroup = Some(path);
        }
        if let Some(e) = &d.event_driven {
            daemon.event_driven = *e.get_ref();
        }
        if let Some(p) = &d.pin_dir {
            let path = PathBuf::from(p.get_ref());
            if !path.is_absolute() {
                return Err(self.error(p, "pin_dir must be an absolute path on a BPF filesystem"));
            }
            daemon.pin_dir = path;
            daemon.pin_dir_pos = Some(position::pos(self.text, p.span().start));
        }
        if let Some(p) = &d.pid_file {
            let path = PathBuf::from(p.get_ref());
            if !path.is_absolute() {
                return Err(self.error(p, "pid_file must be an absolute path"));
            }
            daemon.pid_file = path;
        }
        if let Some(w) = &d.watch_config {
            daemon.watch_config = *w.get_ref();
        }
        if let Some(p) = &d.state_dir {
            let path = PathBuf::from(p.get_ref());
            if !path.is_absolute() {
                return Err(self.error(p, "state_dir must be an absolute path"));
            }
            daemon.state_dir = path;
        }
        if let Some(m) = &d.metrics {
            daemon.metrics = Some(metrics_address(m.get_ref()).map_err(|e| self.error(m, e))?);
        }
        Ok(daemon)
    }

    fn rate(&self, value: &Spanned<RateValue>, what: &str) -> Result<u64, ConfigError> {
        let bps = match value.get_ref() {
            RateValue::Number(n) => units::rate_bps(*n).map_err(|e| self.error(value, e.to_string()))?,
            RateValue::Text(t) => units::parse_rate(t).map_err(|e| self.error(value, e.to_string()))?,
        };
        if bps == 0 {
            return Err(self.error(value, format!("{what} must be above zero")));
        }
        Ok(bps)
    }

    fn limit(
        &self,
        raw: &Spanned<RawLimit>,
        class: &str,
        direction: Direction,
    ) -> Result<Limit, ConfigError> {
        let direction = direction.as_str();
        let what = format!("the {direction} rate of class \"{class}\"");
        match raw.get_ref() {
            RawLimit::Plain(v) => {
                let bps = self.rate(&Spanned::new(raw.span(), v.clone()), &what)?;
                Ok(Limit { rate_bps: Some(bps), ceil_bps: Some(bps) })
            }
            RawLimit::Table(t) => {
                let rate = t.rate.as_ref().map(|r| self.rate(r, &what)).transpose()?;
                let ceil = t
                    .ceil
                    .as_ref()
                    .map(|c| self.rate(c, &format!("the {direction} ceil of class \"{class}\"")))
                    .transpose()?;
                if let (Some(r), Some(c)) = (rate, ceil) {
                    if r > c {
                        return Err(self.error(
                            raw,
                            format!(
                                "class \"{class}\": {direction} rate {} is above its ceil {}; the ceil is the most a class may use",
                                units::format_rate(r),
                                units::format_rate(c)
                            ),
                        ));
                    }
                }
                if rate.is_none() && ceil.is_none() {
                    return Err(self.error(
                        raw,
                        format!("class \"{class}\": {direction} needs a rate, a ceil, or both"),
                    ));
                }
                Ok(Limit { rate_bps: rate, ceil_bps: ceil })
            }
        }
    }

    fn classes(&self, raw: &[Spanned<RawClass>]) -> Result<Vec<ClassConfig>, ConfigError> {
        let mut classes: Vec<ClassConfig> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for spanned in raw {
            let c = spanned.get_ref();
            let name = c.name.get_ref();
            if name.is_empty() || name.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(self.error(&c.name, "class names must be non-empty, without spaces"));
            }
            if let Some(first) = seen.insert(name, c.name.span().start) {
                let line = position::pos(self.text, first).line;
                return Err(self.error(
                    &c.name,
                    format!("duplicate class name \"{name}\" (first defined on line {line})"),
                ));
            }
            let priority = match &c.priority {
                None => DEFAULT_PRIORITY,
                Some(p) => {
                    u8::try_from(*p.get_ref()).ok().filter(|p| *p <= MAX_PRIORITY).ok_or_else(|| {
                        self.error(
                            p,
                            format!(
                                "priority must be 0 (served first) to {MAX_PRIORITY} (last), not {}",
                                p.get_ref()
                            ),
                        )
                    })?
                }
            };
            let egress = c.egress.as_ref().map(|l| self.limit(l, name, Direction::Egress)).transpose()?;
            let ingress = c.ingress.as_ref().map(|l| self.limit(l, name, Direction::Ingress)).transpose()?;
            let rule = match &c.rule {
                None => None,
                Some(source) => Some(Rule::parse(source.get_ref(), self.env).map_err(|e| {
                    let span = source.span();
                    let offset = position::string_content_start(self.text, span.clone(), source.get_ref())
                        .map_or(span.start, |start| start + e.span.start);
                    self.error_at(offset, e.message)
                })?),
            };
            classes.push(ClassConfig {
                name: name.clone(),
                priority,
                egress,
                ingress,
                rule_source: c.rule.as_ref().map(|r| r.get_ref().clone()),
                rule_pos: c.rule.as_ref().map(|r| position::pos(self.text, r.span().start)),
                rule,
                interfaces: c.interfaces.as_ref().map(|l| l.iter().map(|n| n.get_ref().clone()).collect()),
                implicit: false,
                quota: c.quota.as_ref().map(|q| self.quota(q, name)).transpose()?,
                per: self.per(c, name)?,
                schedule: self.schedule(c.schedule.as_deref().unwrap_or_default(), name)?,
                queue: c
                    .queue
                    .as_ref()
                    .map(|q| QueueKind::parse(q.get_ref()).map_err(|e| self.error(q, e)))
                    .transpose()?,
                queue_pos: c.queue.as_ref().map(|q| position::pos(self.text, q.span().start)),
                conn_limit: self.conn_limit(c, name)?,
            });
        }
        Ok(classes)
    }

    fn interface(
        &self,
        raw: &RawInterface,
        raw_classes: &[Spanned<RawClass>],
        classes: &mut Vec<ClassConfig>,
    ) -> Result<InterfaceConfig, ConfigError> {
        let name = raw.name.get_ref();
        if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ']) {
            return Err(self.error(&raw.name, format!("\"{name}\" is not a valid interface name (1 to {MAX_IFNAME} characters, no '/' or spaces)")));
        }
        let egress_bps = self.rate(&raw.egress, &format!("the egress capacity of {name}"))?;
        let ingress_bps = raw
            .ingress
            .as_ref()
            .map(|r| self.rate(r, &format!("the ingress capacity of {name}")))
            .transpose()?;
        let default_name = raw.default.as_ref().map_or(DEFAULT_CLASS_NAME, |d| d.get_ref().as_str());
        let default_class = match classes.iter().position(|c| c.name == default_name) {
            Some(position) => {
                let class = &classes[position];
                if class.interfaces.as_ref().is_some_and(|l| !l.iter().any(|n| n == name)) {
                    let at = raw.default.as_ref().map_or(raw.name.span().start, |d| d.span().start);
                    let class_at = raw_classes.get(position).map_or(0, |c| c.span().start);
                    let line = position::pos(self.text, class_at).line;
                    return Err(self.error_at(
                        at,
                        format!("default class \"{default_name}\" is not on interface {name} (its `interfaces` on line {line} leave it out)"),
                    ));
                }
                class.name.clone()
            }
            None if default_name == DEFAULT_CLASS_NAME => {
                classes.push(ClassConfig {
                    name: DEFAULT_CLASS_NAME.to_string(),
                    priority: DEFAULT_PRIORITY,
                    egress: None,
                    ingress: None,
                    rule: None,
                    rule_source: None,
                    rule_pos: None,
                    interfaces: None,
                    implicit: true,
                    quota: None,
                    per: None,
                    schedule: Vec::new(),
                    queue: None,
                    queue_pos: None,
                    conn_limit: None,
                });
                DEFAULT_CLASS_NAME.to_string()
            }
            None => {
                let known: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
                let list = if known.is_empty() { "none are defined".to_string() } else { known.join(", ") };
                let at = raw.default.as_ref().map_or(raw.name.span().start, |d| d.span().start);
                return Err(
                    self.error_at(at, format!("unknown default class \"{default_name}\" (classes: {list})"))
                );
            }
        };
        Ok(InterfaceConfig {
            name: name.clone(),
            egress_bps,
            ingress_bps,
            default_class,
            pos: position::pos(self.text, raw.name.span().start),
            optional: raw.optional.as_ref().is_some_and(|o| *o.get_ref()),
        })
    }
}

/// `[daemon] metrics`: an IP address and a port (no host names: the
/// daemon resolves nothing), e.g. "127.0.0.1:9464" or "[::1]:9464".
fn metrics_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let expected = "metrics must be an IP address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\"";
    match text.trim().parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(format!("{expected}, with a port other than 0")),
        Ok(addr) => Ok(addr),
        Err(_) => Err(format!("{expected} (got \"{text}\")")),
    }
}

#[cfg(test)]
mod tests;
