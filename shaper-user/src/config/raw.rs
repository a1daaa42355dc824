//! The config file as TOML: serde structs that keep every value's position, so
//! validation can point at the exact place of a problem. Unknown keys are errors.

use std::fmt;

use serde::{
    de::{self, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: Option<RawDaemon>,
    #[serde(default)]
    pub interface: Vec<Spanned<RawInterface>>,
    #[serde(default)]
    pub class: Vec<Spanned<RawClass>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub scan_interval: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<String>>,
    pub max_flows: Option<Spanned<i64>>,
    pub cgroup: Option<Spanned<String>>,
    pub event_driven: Option<Spanned<bool>>,
    pub pin_dir: Option<Spanned<String>>,
    pub pid_file: Option<Spanned<String>>,
    pub watch_config: Option<Spanned<bool>>,
    pub state_dir: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    pub name: Spanned<String>,
    pub egress: Spanned<RateValue>,
    pub ingress: Option<Spanned<RateValue>>,
    pub default: Option<Spanned<String>>,
    pub optional: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    pub name: Spanned<String>,
    pub priority: Option<Spanned<i64>>,
    pub egress: Option<Spanned<RawLimit>>,
    pub ingress: Option<Spanned<RawLimit>>,
    #[serde(rename = "match")]
    pub rule: Option<Spanned<String>>,
    pub interfaces: Option<Vec<Spanned<String>>>,
    pub quota: Option<Spanned<super::quota::RawQuota>>,
    pub per: Option<Spanned<String>>,
    pub total: Option<Spanned<RateValue>>,
    pub instance_idle: Option<Spanned<String>>,
    pub schedule: Option<Vec<Spanned<RawWindow>>>,
    pub queue: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub on_limit: Option<Spanned<String>>,
    pub queue_timeout: Option<Spanned<String>>,
}

/// One window of a class's `schedule`, as written (see config/schedule.rs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub days: Option<Spanned<String>>,
    pub hours: Option<Spanned<String>>,
    pub egress: Option<Spanned<RawLimit>>,
    pub ingress: Option<Spanned<RawLimit>>,
}

/// A rate as written: `"10mbit"`, or a bare integer (bits/s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateValue {
    Text(String),
    Number(u64),
}

struct RateVisitor;

const RATE_EXPECTED: &str = "a rate such as \"10mbit\"";

impl Visitor<'_> for RateVisitor {
    type Value = RateValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(RATE_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RateValue, E> {
        Ok(RateValue::Text(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RateValue, E> {
        Ok(RateValue::Number(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RateValue, E> {
        u64::try_from(v)
            .map(RateValue::Number)
            .map_err(|_| E::custom(format!("a rate cannot be negative ({v})")))
    }
}

impl<'de> Deserialize<'de> for RateValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RateVisitor)
    }
}

/// `egress = "10mbit"` (rate = ceil) or `egress = { rate = "10mbit", ceil = "50mbit" }`.
#[derive(Debug)]
pub enum RawLimit {
    Plain(RateValue),
    Table(RawLimitTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitTable {
    pub rate: Option<Spanned<RateValue>>,
    pub ceil: Option<Spanned<RateValue>>,
}

struct LimitVisitor;

impl<'de> Visitor<'de> for LimitVisitor {
    type Value = RawLimit;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a rate such as \"10mbit\" (rate = ceil) or a table { rate = \"10mbit\", ceil = \"50mbit\" }",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawLimit, E> {
        RateVisitor.visit_str(v).map(RawLimit::Plain)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawLimit, E> {
        RateVisitor.visit_u64(v).map(RawLimit::Plain)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawLimit, E> {
        RateVisitor.visit_i64(v).map(RawLimit::Plain)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawLimit, A::Error> {
        RawLimitTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawLimit::Table)
    }
}

impl<'de> Deserialize<'de> for RawLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LimitVisitor)
    }
}
