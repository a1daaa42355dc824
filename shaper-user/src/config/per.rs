//! `per`, `total` and `instance_idle` of a class: limits per user, program,
//! unit, cgroup or connection (see `shaper_common::instances`).

use std::time::Duration;

use shaper_common::instances::{PER_CGROUP, PER_CONNECTION, PER_PROGRAM, PER_UNIT, PER_USER};

use super::{raw::RawClass, ConfigError, Validator};
use crate::units;

/// An instance with no traffic for this long loses its leaf.
pub const DEFAULT_INSTANCE_IDLE: Duration = Duration::from_secs(300);
/// Shortest `instance_idle`.
pub const MIN_INSTANCE_IDLE: Duration = Duration::from_secs(1);

/// What tells a class's instances apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    User,
    Program,
    Unit,
    Cgroup,
    Connection,
}

impl Per {
    pub const ALL: [Per; 5] = [Per::User, Per::Program, Per::Unit, Per::Cgroup, Per::Connection];

    pub fn as_str(self) -> &'static str {
        match self {
            Per::User => "user",
            Per::Program => "program",
            Per::Unit => "unit",
            Per::Cgroup => "cgroup",
            Per::Connection => "connection",
        }
    }

    /// The `PER_*` value the classifier reads.
    pub fn mode(self) -> u8 {
        match self {
            Per::User => PER_USER,
            Per::Program => PER_PROGRAM,
            Per::Unit => PER_UNIT,
            Per::Cgroup => PER_CGROUP,
            Per::Connection => PER_CONNECTION,
        }
    }
}

/// A class's `per` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerConfig {
    pub per: Per,
    /// `total`: a ceiling for all instances together (both directions).
    pub total_bps: Option<u64>,
    /// `instance_idle`: an instance with no traffic for this long is removed.
    pub idle: Duration,
}

impl Validator<'_> {
    /// The `per` settings of `raw` (class `name`), if it has any.
    pub(super) fn per(&self, raw: &RawClass, name: &str) -> Result<Option<PerConfig>, ConfigError> {
        let Some(per) = &raw.per else {
            if let Some(total) = &raw.total {
                return Err(self.error(
                    total,
                    format!(
                        "class \"{name}\": `total` needs `per` (it caps the instances of a class together)"
                    ),
                ));
            }
            if let Some(idle) = &raw.instance_idle {
                return Err(self.error(idle, format!("class \"{name}\": `instance_idle` needs `per`")));
            }
            return Ok(None);
        };
        let kind = Per::ALL.into_iter().find(|p| p.as_str() == per.get_ref()).ok_or_else(|| {
            self.error(
                per,
                format!(
                    "per must be \"user\", \"program\", \"unit\", \"cgroup\" or \"connection\", not \"{}\"",
                    per.get_ref()
                ),
            )
        })?;
        let total_bps = raw
            .total
            .as_ref()
            .map(|t| self.rate(t, &format!("the total of class \"{name}\"")))
            .transpose()?;
        let idle = match &raw.instance_idle {
            None => DEFAULT_INSTANCE_IDLE,
            Some(s) => {
                let idle = units::parse_duration(s.get_ref()).map_err(|e| self.error(s, e.to_string()))?;
                if idle < MIN_INSTANCE_IDLE {
                    return Err(self.error(s, "instance_idle must be at least 1s"));
                }
                idle
            }
        };
        Ok(Some(PerConfig { per: kind, total_bps, idle }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse_class as parse;

    #[test]
    fn per_total_and_idle_are_read() {
        let conf = parse("per = \"user\"\ntotal = \"6mbit\"\ninstance_idle = \"30s\"\n").unwrap();
        let per = conf.classes[0].per.unwrap();
        assert_eq!(
            per,
            PerConfig { per: Per::User, total_bps: Some(6_000_000), idle: Duration::from_secs(30) }
        );
        let conf = parse("per = \"connection\"\n").unwrap();
        assert_eq!(
            conf.classes[0].per.map(|p| (p.per, p.idle)),
            Some((Per::Connection, DEFAULT_INSTANCE_IDLE))
        );
    }

    #[test]
    fn errors_name_the_place_and_the_reason() {
        assert_eq!(
            parse("per = \"users\"\n").unwrap_err(),
            "t.toml:6:7: per must be \"user\", \"program\", \"unit\", \"cgroup\" or \"connection\", not \"users\""
        );
        assert_eq!(
            parse("total = \"6mbit\"\n").unwrap_err(),
            "t.toml:6:9: class \"a\": `total` needs `per` (it caps the instances of a class together)"
        );
        assert_eq!(
            parse("per = \"user\"\ninstance_idle = \"5x\"\n").unwrap_err().split(": ").next(),
            Some("t.toml:7:17")
        );
        assert_eq!(
            parse("per = \"user\"\ninstance_idle = \"10ms\"\n").unwrap_err(),
            "t.toml:7:17: instance_idle must be at least 1s"
        );
    }
}
