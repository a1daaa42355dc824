//! The limits in force: what the config (with `shaper set`'s changes) gives
//! each class, and on top of it what holds right now. A quota's throttle
//! wins over everything else (a schedule window included) while it holds:
//! the class's rate and ceil in the counted directions go down to the
//! quota's `then` rate (never up: a class already slower stays so).
//!
//! Every converge goes through [`in_force`], so a reload or a `set` keeps a
//! throttle, and the end of a throttle is one more converge.

use shaper_common::Direction;

use super::quota::Throttle;
use crate::config::{Config, Limit};

/// `config` with the throttles applied.
pub fn in_force(config: &Config, throttles: &[Throttle]) -> Config {
    let mut config = config.clone();
    for throttle in throttles {
        let Some(class) = config.classes.iter_mut().find(|c| c.name == throttle.class) else { continue };
        for direction in Direction::BOTH {
            if !throttle.counted.counts(direction) {
                continue;
            }
            let limit = match direction {
                Direction::Egress => &mut class.egress,
                Direction::Ingress => &mut class.ingress,
            };
            *limit = Some(throttled(*limit, throttle.bps));
        }
    }
    config
}

/// A limit held to `bps`.
pub fn throttled(limit: Option<Limit>, bps: u64) -> Limit {
    let ceil = limit.and_then(|l| l.ceil_bps).map_or(bps, |c| c.min(bps));
    let rate = limit.and_then(|l| l.rate_bps).map_or(ceil, |r| r.min(ceil));
    Limit { rate_bps: Some(rate), ceil_bps: Some(ceil) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Counted;

    #[test]
    fn a_throttle_lowers_the_counted_directions_only() {
        let env = crate::rules::SystemEnv::default();
        let text = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\ningress = \"100mbit\"\n\
                    [[class]]\nname = \"bulk\"\negress = \"50mbit\"\ningress = { rate = \"1mbit\", ceil = \"80mbit\" }\n\
                    [[class]]\nname = \"other\"\negress = \"10kbit\"\n";
        let config = crate::config::parse(std::path::Path::new("t.toml"), text, &env.env()).unwrap();
        let limits = |c: &Config, name: &str| (c.class(name).unwrap().egress, c.class(name).unwrap().ingress);
        let throttle =
            |class: &str, counted| Throttle { class: class.into(), instance: None, counted, bps: 64_000 };
        let held = in_force(&config, &[throttle("bulk", Counted::Egress)]);
        let fixed = |bps| Some(Limit { rate_bps: Some(bps), ceil_bps: Some(bps) });
        assert_eq!(limits(&held, "bulk"), (fixed(64_000), limits(&config, "bulk").1));
        let held = in_force(&config, &[throttle("bulk", Counted::Both), throttle("other", Counted::Both)]);
        // Ingress keeps its lower rate under the new ceil; a class already slower stays so.
        assert_eq!(
            limits(&held, "bulk"),
            (fixed(64_000), Some(Limit { rate_bps: Some(64_000), ceil_bps: Some(64_000) }))
        );
        assert_eq!(limits(&held, "other"), (fixed(10_000), fixed(64_000)));
        assert_eq!(in_force(&config, &[]), config);
    }
}
