//! Changes to a running shaper: `shaper reload` (and SIGHUP, and a watched
//! config file), `shaper set` and `shaper move`.
//!
//! A reload validates the whole file first; a bad file changes nothing and
//! its error (file:line:col: reason) goes back to whoever asked. `set` changes
//! the config in force without touching the file; `status` lists those
//! changes as drift until the next reload drops them.

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime},
};

use shaper_common::{FlowValue, FLOW_PROVISIONAL, ORIGIN_PINNED};

use super::Shaper;
use crate::{
    config::{Config, DaemonConfig, Limit},
    control::{Applied, Moved, ReloadStatus, SetClass},
    flows, units,
};

/// A class changed with `shaper set`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassOverride {
    pub egress: Option<Limit>,
    pub ingress: Option<Limit>,
    pub priority: Option<u8>,
}

/// How the last reload went (`status`).
#[derive(Clone, Debug)]
pub struct LastReload {
    pub at: SystemTime,
    pub error: Option<String>,
}

impl LastReload {
    pub fn status(&self) -> ReloadStatus {
        ReloadStatus {
            at: self.at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            ok: self.error.is_none(),
            error: self.error.clone(),
        }
    }
}

/// `[daemon]` settings a running daemon cannot change.
fn restart_needed(old: &DaemonConfig, new: &DaemonConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            out.push(name.to_string());
        }
    };
    check("scan_interval", old.scan_interval != new.scan_interval);
    check("control_socket", old.control_socket != new.control_socket);
    check("max_flows", old.max_flows != new.max_flows);
    check("cgroup", old.cgroup != new.cgroup);
    check("event_driven", old.event_driven != new.event_driven);
    check("pin_dir", old.pin_dir != new.pin_dir);
    check("pid_file", old.pid_file != new.pid_file);
    check("watch_config", old.watch_config != new.watch_config);
    out
}

/// "RATE" (rate and ceil, like a plain rate in the config) or "RATE:CEIL", as
/// in `shaper set --egress`.
pub fn parse_limit(text: &str) -> Result<Limit, String> {
    let (rate, ceil) = match text.split_once(':') {
        Some((r, c)) => (r, Some(c)),
        None => (text, None),
    };
    let parse = |t: &str| match units::parse_rate(t.trim()) {
        Ok(0) => Err(format!("{t:?}: a rate must be above zero")),
        Ok(bps) => Ok(bps),
        Err(e) => Err(format!("{t:?}: {e}")),
    };
    let rate_bps = parse(rate)?;
    let ceil_bps = Some(ceil.map(parse).transpose()?.unwrap_or(rate_bps));
    if let Some(c) = ceil_bps.filter(|c| *c < rate_bps) {
        return Err(format!(
            "the ceil ({}) is below the rate ({})",
            units::format_rate(c),
            units::format_rate(rate_bps)
        ));
    }
    Ok(Limit { rate_bps: Some(rate_bps), ceil_bps })
}

fn format_limit(limit: &Limit) -> String {
    let rate = limit.rate_bps.map_or_else(|| "-".to_string(), units::format_rate);
    match limit.ceil_bps {
        Some(c) if Some(c) != limit.rate_bps => format!("{rate} (ceil {})", units::format_rate(c)),
        _ => rate,
    }
}

impl Shaper {
    /// Re-reads the config file and applies it. On a bad file nothing changes
    /// and the error is returned.
    pub fn reload(&mut self) -> Result<Applied, String> {
        let started = Instant::now();
        let result = super::load_config(&self.options).and_then(|new| {
            let restart = restart_needed(&self.file_config.daemon, &new.daemon);
            let mut new = new;
            // The running daemon keeps its own settings; the rest applies now.
            new.daemon = self.config.daemon.clone();
            let changes = self.converge(new).map_err(|e| crate::error_chain(&e))?;
            Ok((changes, restart))
        });
        self.last_reload = Some(LastReload { at: SystemTime::now(), error: result.as_ref().err().cloned() });
        let (changes, restart_needed) = match result {
            Ok(r) => r,
            Err(e) => {
                log::error!("reload refused, the running config stays in force: {e}");
                return Err(e);
            }
        };
        self.overrides.clear();
        self.file_config = self.config.clone();
        let took_ms = started.elapsed().as_millis() as u64;
        log::info!("reloaded {} in {took_ms} ms: {}", self.config.path.display(), changes.summary());
        if !restart_needed.is_empty() {
            log::warn!(
                "changed [daemon] settings take effect at the next start: {}",
                restart_needed.join(", ")
            );
        }
        Ok(Applied { changes, restart_needed, took_ms })
    }

    /// `shaper set`: changes one class of the config in force.
    pub fn set_class(&mut self, set: &SetClass) -> Result<Applied, String> {
        let started = Instant::now();
        if self.file_config.class(&set.class).is_none() {
            return Err(format!("no class named {:?}", set.class));
        }
        if set.egress.is_none() && set.ingress.is_none() && set.priority.is_none() {
            return Err("nothing to change: give --egress, --ingress or --priority".into());
        }
        let mut change = self.overrides.get(&set.class).cloned().unwrap_or_default();
        if let Some(text) = &set.egress {
            change.egress = Some(parse_limit(text).map_err(|e| format!("--egress {e}"))?);
        }
        if let Some(text) = &set.ingress {
            change.ingress = Some(parse_limit(text).map_err(|e| format!("--ingress {e}"))?);
        }
        if let Some(p) = set.priority {
            if p > crate::config::MAX_PRIORITY {
                return Err(format!(
                    "priority must be 0 (served first) to {}, not {p}",
                    crate::config::MAX_PRIORITY
                ));
            }
            change.priority = Some(p);
        }
        let mut overrides = self.overrides.clone();
        overrides.insert(set.class.clone(), change);
        let target = with_overrides(&self.file_config, &overrides);
        let changes = self.converge(target).map_err(|e| crate::error_chain(&e))?;
        self.overrides = overrides;
        let took_ms = started.elapsed().as_millis() as u64;
        log::info!("set {}: {}", set.class, self.drift().join("; "));
        Ok(Applied { changes, restart_needed: Vec::new(), took_ms })
    }

    /// What `shaper set` changed, for `status`.
    pub(super) fn drift(&self) -> Vec<String> {
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
                format!("{name}: {}", parts.join(", "))
            })
            .collect()
    }

    /// `shaper move`: pins the connection `conn` (its id in `shaper conns`)
    /// into `class`; neither the rules nor the daemon move it again while it lives.
    pub fn move_conn(&mut self, conn: &str, class: &str) -> Result<Moved, String> {
        let conn = conn.trim().to_ascii_lowercase();
        if conn.len() < 4 {
            return Err(format!("{conn:?}: give at least 4 digits of a connection id from `shaper conns`"));
        }
        let Some(target) = self.config.class(class) else { return Err(format!("no class named {class:?}")) };
        let index = target.index;
        let matches: Vec<(shaper_common::FlowKey, FlowValue)> =
            self.datapath.flows().into_iter().filter(|(k, _)| flows::id(k).starts_with(&conn)).collect();
        let (key, mut value) = match matches.as_slice() {
            [one] => *one,
            [] => return Err(format!("no connection {conn:?} (see `shaper conns`)")),
            _ => return Err(format!("{conn:?} names {} connections; give more digits", matches.len())),
        };
        value.class = index;
        value.origin = ORIGIN_PINNED;
        value.flags &= !FLOW_PROVISIONAL;
        self.datapath.insert_flow(&key, &value).map_err(|e| crate::error_chain(&e))?;
        let shown = format!(
            "{} {} → {}",
            flows::proto_name(key.proto),
            flows::endpoint(&key, true),
            flows::endpoint(&key, false)
        );
        log::info!("moved {shown} to {class} (pinned)");
        Ok(Moved { id: flows::id(&key), conn: shown, class: class.to_string() })
    }
}

/// The file's config with `shaper set` changes applied.
pub(super) fn with_overrides(file: &Config, overrides: &BTreeMap<String, ClassOverride>) -> Config {
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
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_limit("10mbit:5mbit").unwrap_err().contains("below the rate"));
        assert!(parse_limit("0").unwrap_err().contains("above zero"));
        assert!(parse_limit("fast").is_err());
    }
}
