//! `max_connections`, `on_limit` and `queue_timeout` of a class: at most N TCP
//! connections in service at once, the others waiting in line (or refused).
//! See `shaper_common::connlimit` for the mechanism.

use std::time::Duration;

use shaper_common::connlimit::{ON_LIMIT_QUEUE, ON_LIMIT_REJECT};

use super::{raw::RawClass, ConfigError, Validator};
use crate::units;

/// How long a connection may wait before it is refused, unless the class says.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `queue_timeout`: Linux stops retransmitting a SYN after about 127 s.
pub const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(120);

/// What happens to a connection over the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// It waits for a slot (up to `queue_timeout`).
    Queue,
    /// It is refused at once.
    Reject,
}

impl OnLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimit::Queue => "queue",
            OnLimit::Reject => "reject",
        }
    }

    /// The `ON_LIMIT_*` value the classifier reads.
    pub fn mode(self) -> u32 {
        match self {
            OnLimit::Queue => ON_LIMIT_QUEUE,
            OnLimit::Reject => ON_LIMIT_REJECT,
        }
    }
}

/// A class's connection limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimitConfig {
    /// `max_connections`: connections in service at once (per instance with `per`).
    pub max: u32,
    pub on_limit: OnLimit,
    /// `queue_timeout`: a connection still waiting then is refused.
    pub queue_timeout: Duration,
}

impl Validator<'_> {
    /// The connection limit of `raw` (class `name`), if it has one.
    pub(super) fn conn_limit(
        &self,
        raw: &RawClass,
        name: &str,
    ) -> Result<Option<ConnLimitConfig>, ConfigError> {
        let Some(max) = &raw.max_connections else {
            for (key, at) in
                [("on_limit", raw.on_limit.as_ref()), ("queue_timeout", raw.queue_timeout.as_ref())]
            {
                if let Some(at) = at {
                    return Err(self.error(at, format!("class \"{name}\": `{key}` needs `max_connections`")));
                }
            }
            return Ok(None);
        };
        let max = u32::try_from(*max.get_ref()).ok().filter(|m| *m > 0).ok_or_else(|| {
            self.error(max, format!("max_connections must be 1 or more, not {}", max.get_ref()))
        })?;
        let on_limit = match raw.on_limit.as_ref() {
            None => OnLimit::Queue,
            Some(o) => match o.get_ref().as_str() {
                "queue" => OnLimit::Queue,
                "reject" => OnLimit::Reject,
                other => {
                    return Err(
                        self.error(o, format!("on_limit must be \"queue\" or \"reject\", not \"{other}\""))
                    )
                }
            },
        };
        let queue_timeout = match raw.queue_timeout.as_ref() {
            None => DEFAULT_QUEUE_TIMEOUT,
            Some(t) => {
                let d = units::parse_duration(t.get_ref()).map_err(|e| self.error(t, e.to_string()))?;
                if d.is_zero() || d > MAX_QUEUE_TIMEOUT {
                    return Err(self.error(t, "queue_timeout must be above 0s and at most 120s (the peer stops retrying its SYN after about 127s)"));
                }
                d
            }
        };
        if let Some(rule) = &raw.rule {
            if udp_only(rule.get_ref()) {
                return Err(self.error(
                    rule,
                    format!(
                        "class \"{name}\": max_connections counts TCP connections; this match takes UDP only"
                    ),
                ));
            }
        }
        Ok(Some(ConnLimitConfig { max, on_limit, queue_timeout }))
    }
}

/// Whether a `match` can only take UDP: it requires `proto == "udp"`, with
/// no `or` and no `not` that could let TCP in.
fn udp_only(rule: &str) -> bool {
    let lower = rule.to_ascii_lowercase();
    let compact: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
    let udp = ["proto==udp", "proto==\"udp\"", "proto=='udp'"].iter().any(|p| compact.contains(p));
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    udp && !words.iter().any(|w| matches!(*w, "or" | "not" | "tcp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse_class as parse;

    #[test]
    fn limits_are_read_with_their_defaults() {
        let conf = parse("max_connections = 4\n").unwrap();
        assert_eq!(
            conf.classes[0].conn_limit,
            Some(ConnLimitConfig { max: 4, on_limit: OnLimit::Queue, queue_timeout: DEFAULT_QUEUE_TIMEOUT })
        );
        let conf = parse("max_connections = 2\non_limit = \"reject\"\nqueue_timeout = \"2s\"\n").unwrap();
        assert_eq!(
            conf.classes[0].conn_limit,
            Some(ConnLimitConfig {
                max: 2,
                on_limit: OnLimit::Reject,
                queue_timeout: Duration::from_secs(2)
            })
        );
    }

    #[test]
    fn errors_name_the_place_and_the_reason() {
        assert_eq!(
            parse("max_connections = 0\n").unwrap_err(),
            "t.toml:6:19: max_connections must be 1 or more, not 0"
        );
        assert_eq!(
            parse("max_connections = 3\non_limit = \"drop\"\n").unwrap_err(),
            "t.toml:7:12: on_limit must be \"queue\" or \"reject\", not \"drop\""
        );
        assert_eq!(
            parse("queue_timeout = \"5s\"\n").unwrap_err(),
            "t.toml:6:17: class \"a\": `queue_timeout` needs `max_connections`"
        );
        assert_eq!(
            parse("match = 'proto == \"udp\"'\nmax_connections = 3\n").unwrap_err(),
            "t.toml:6:9: class \"a\": max_connections counts TCP connections; this match takes UDP only"
        );
        assert!(parse("max_connections = 3\nqueue_timeout = \"10m\"\n")
            .unwrap_err()
            .starts_with("t.toml:7:17: queue_timeout must be"));
    }
}
