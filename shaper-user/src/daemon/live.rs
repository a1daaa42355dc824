//! The config in force and how it changes: `shaper reload` (and SIGHUP, and
//! a watched config file) and `shaper set`.
//!
//! A reload validates the whole file first; a bad file changes nothing and
//! its error (file:line:col: reason) goes back to whoever asked. `set` changes
//! the config in force without touching the file; `status` lists those
//! changes as drift until the next reload drops them. This module only
//! computes the configs; the daemon applies them.

use std::{collections::BTreeMap, time::SystemTime};

use super::error::{LimitError, RequestError};
use crate::{
    config::{Config, DaemonConfig, Limit, MAX_PRIORITY},
    control::{ReloadStatus, SetClass},
    units,
};

/// A class changed with `shaper set`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassOverride {
    pub egress: Option<Limit>,
    pub ingress: Option<Limit>,
    pub priority: Option<u8>,
    pub max_connections: Option<u32>,
}

/// How the last reload went (`status`).
#[derive(Clone, Debug)]
struct LastReload {
    at: SystemTime,
    error: Option<String>,
}

/// The config in force, the file's, and what `shaper set` changed.
pub struct ConfigState {
    /// The config in force: the file's, with `shaper set` changes applied.
    config: Config,
    /// The config as the file has it.
    file: Config,
    overrides: BTreeMap<String, ClassOverride>,
    last_reload: Option<LastReload>,
}

/// A config to apply, and what it will leave in force if it applies.
pub struct Pending {
    pub config: Config,
    overrides: BTreeMap<String, ClassOverride>,
    /// `[daemon]` settings that changed in the file but wait for a restart.
    pub restart_needed: Vec<String>,
}

impl ConfigState {
    pub fn new(config: Config) -> Self {
        Self { file: config.clone(), config, overrides: BTreeMap::new(), last_reload: None }
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What a reload of the file just read (`new`) applies: the running
    /// daemon keeps its own `[daemon]` settings; the rest applies now.
    pub fn reload(&self, mut new: Config) -> Pending {
        let restart_needed = restart_needed(&self.file.daemon, &new.daemon);
        new.daemon = self.config.daemon.clone();
        Pending { config: new, overrides: BTreeMap::new(), restart_needed }
    }

    /// What `shaper set` applies: one class of the file's config changed,
    /// on top of the earlier `set`s.
    pub fn set(&self, set: &SetClass) -> Result<Pending, RequestError> {
        if self.file.class(&set.class).is_none() {
            return Err(RequestError::UnknownClass(set.class.clone()));
        }
        if set.egress.is_none()
            && set.ingress.is_none()
            && set.priority.is_none()
            && set.max_connections.is_none()
        {
            return Err(RequestError::NothingToChange);
        }
        let mut change = self.overrides.get(&set.class).cloned().unwrap_or_default();
        if let Some(text) = &set.egress {
            change.egress =
                Some(parse_limit(text).map_err(|source| RequestError::Limit { flag: "egress", source })?);
        }
        if let Some(text) = &set.ingress {
            change.ingress =
                Some(parse_limit(text).map_err(|source| RequestError::Limit { flag: "ingress", source })?);
        }
        if let Some(p) = set.priority {
            if p > MAX_PRIORITY {
                return Err(RequestError::Priority { given: p, max: MAX_PRIORITY });
            }
            change.priority = Some(p);
        }
        if let Some(max) = set.max_connections {
            if max == 0 {
                return Err(RequestError::MaxConnections);
            }
            change.max_connections = Some(max);
        }
        let mut overrides = self.overrides.clone();
        overrides.insert(set.class.clone(), change);
        let mut config = with_overrides(&self.file, &overrides);
        if let Some(source) = config.overbooked() {
            return Err(RequestError::Overbooked { class: set.class.clone(), source });
        }
        config.daemon = self.config.daemon.clone();
        Ok(Pending { config, overrides, restart_needed: Vec::new() })
    }

    /// `pending` is in force now. After a reload the file's config is too.
    pub fn applied(&mut self, pending: Pending, reloaded: bool) {
        if reloaded {
            self.file = pending.config.clone();
            self.last_reload = Some(LastReload { at: SystemTime::now(), error: None });
        }
        self.config = pending.config;
        self.overrides = pending.overrides;
    }

    /// A reload was refused; the config in force stays.
    pub fn refused(&mut self, error: String) {
        self.last_reload = Some(LastReload { at: SystemTime::now(), error: Some(error) });
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload.as_ref().map(|r| ReloadStatus {
            at: r.at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            ok: r.error.is_none(),
            error: r.error.clone(),
        })
    }

    /// What `shaper set` changed, for `status`: "web: egress 5 Mbit/s (ceil 20 Mbit/s)".
    pub fn drift(&self) -> Vec<String> {
        self.overrides
            .iter()
            .map(|(name, o)| {
                let mut parts = Vec::new();
                if let Some(l) = &o.egress {
                    parts.push(format!("egress {}", format_limit(l)));
                }
                if let Some(l) = &o.ingress {
                    parts.push(format!("ingress {}", format_limit(l)));
                }
                if let Some(p) = o.priority {
                    parts.push(format!("priority {p}"));
                }
                if let Some(m) = o.max_connections {
                    parts.push(format!("max_connections {m}"));
                }
                format!("{name}: {}", parts.join(", "))
            })
            .collect()
    }
}

/// `[daemon]` settings a running daemon cannot change.
fn restart_needed(old: &DaemonConfig, new: &DaemonConfig) -> Vec<String> {
    let checks = [
        ("scan_interval", old.scan_interval != new.scan_interval),
        ("control_socket", old.control_socket != new.control_socket),
        ("max_flows", old.max_flows != new.max_flows),
        ("cgroup", old.cgroup != new.cgroup),
        ("event_driven", old.event_driven != new.event_driven),
        ("pin_dir", old.pin_dir != new.pin_dir),
        ("pid_file", old.pid_file != new.pid_file),
        ("watch_config", old.watch_config != new.watch_config),
        ("state_dir", old.state_dir != new.state_dir),
        ("metrics", old.metrics != new.metrics),
    ];
    checks.iter().filter(|(_, differs)| *differs).map(|(name, _)| (*name).to_string()).collect()
}

/// "RATE" (rate and ceil, like a plain rate in the config) or "RATE:CEIL", as
/// in `shaper set --egress`.
pub fn parse_limit(text: &str) -> Result<Limit, LimitError> {
    let (rate, ceil) = match text.split_once(':') {
        Some((r, c)) => (r, Some(c)),
        None => (text, None),
    };
    let parse = |t: &str| match units::parse_rate(t.trim()) {
        Ok(0) => Err(LimitError::Zero { text: t.to_string() }),
        Ok(bps) => Ok(bps),
        Err(source) => Err(LimitError::Rate { text: t.to_string(), source }),
    };
    let rate_bps = parse(rate)?;
    let ceil_bps = ceil.map(parse).transpose()?.unwrap_or(rate_bps);
    if ceil_bps < rate_bps {
        return Err(LimitError::CeilBelowRate {
            rate: units::format_rate(rate_bps),
            ceil: units::format_rate(ceil_bps),
        });
    }
    Ok(Limit { rate_bps: Some(rate_bps), ceil_bps: Some(ceil_bps) })
}

fn format_limit(limit: &Limit) -> String {
    let rate = limit.rate_bps.map_or_else(|| "-".to_string(), units::format_rate);
    match limit.ceil_bps {
        Some(c) if Some(c) != limit.rate_bps => format!("{rate} (ceil {})", units::format_rate(c)),
        _ => rate,
    }
}

/// The file's config with `shaper set` changes applied.
fn with_overrides(file: &Config, overrides: &BTreeMap<String, ClassOverride>) -> Config {
    let mut config = file.clone();
    for class in &mut config.classes {
        let Some(o) = overrides.get(&class.name) else { continue };
        if let Some(l) = o.egress {
            class.egress = Some(l);
        }
        if let Some(l) = o.ingress {
            class.ingress = Some(l);
        }
        if let Some(p) = o.priority {
            class.priority = p;
        }
        if let Some(max) = o.max_connections {
            class.conn_limit = Some(match class.conn_limit {
                Some(limit) => crate::config::connlimit::ConnLimitConfig { max, ..limit },
                None => crate::config::connlimit::ConnLimitConfig {
                    max,
                    on_limit: crate::config::connlimit::OnLimit::Queue,
                    queue_timeout: crate::config::connlimit::DEFAULT_QUEUE_TIMEOUT,
                },
            });
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ConfigState {
        let env = crate::rules::SystemEnv::default();
        let text = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\ningress = \"1gbit\"\n\
                    [[class]]\nname = \"a\"\negress = \"10mbit\"\n\
                    [[class]]\nname = \"b\"\negress = \"30mbit\"\n";
        ConfigState::new(crate::config::parse(std::path::Path::new("t.toml"), text, &env.env()).unwrap())
    }

    #[test]
    fn set_refuses_guaranteed_rates_above_the_capacity() {
        let state = state();
        let set = |class: &str, egress: &str| SetClass {
            class: class.into(),
            egress: Some(egress.into()),
            ..SetClass::default()
        };
        // 70 + 30 fit the 100 Mbit/s; 71 + 30 do not.
        assert!(state.set(&set("a", "70mbit")).is_ok());
        let refused = state.set(&set("a", "71mbit")).err().map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("class \"a\": the classes on eth0 guarantee 101 Mbit/s of egress (a 71 Mbit/s + b 30 Mbit/s), more than its capacity of 100 Mbit/s")
        );
        // A rate with a ceil above the capacity reserves only its rate.
        assert!(state.set(&set("a", "60mbit:5gbit")).is_ok());
        // The largest rate a flag takes is range-checked like the config's.
        let refused = state.set(&set("a", "1000000000000000")).err().map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some("--egress \"1000000000000000\": invalid rate \"1000000000000000\": too large")
        );
    }

    #[test]
    fn limits_are_a_rate_and_an_optional_ceil() {
        assert_eq!(
            parse_limit("5mbit").unwrap(),
            Limit { rate_bps: Some(5_000_000), ceil_bps: Some(5_000_000) }
        );
        assert_eq!(
            parse_limit("5mbit:10mbit").unwrap(),
            Limit { rate_bps: Some(5_000_000), ceil_bps: Some(10_000_000) }
        );
        assert!(parse_limit("10mbit:5mbit").unwrap_err().to_string().contains("below the rate"));
        assert!(parse_limit("0").unwrap_err().to_string().contains("above zero"));
        assert!(parse_limit("fast").is_err());
    }
}
