//! Schedules and leaf queues in the daemon: the config in force as the host
//! gets it now (each class's schedule window resolved, each class's queue
//! chosen for this kernel), when that changes next, and what `classes` and
//! `status` say about it.
//!
//! The daemon sleeps until the next window boundary, but never longer than
//! [`RECHECK`]: a clock set by hand or a changed time zone is noticed within
//! that. A reload or `shaper set` resolves the new config at once.

use std::{collections::BTreeMap, time::Duration};

use jiff::{tz::TimeZone, Timestamp};

use crate::{
    config::{Config, ConfigError, QueueKind},
    control::protocol::{QueueStatus, WindowStatus},
    schedule::{self, Active},
    tc::{Kernel, Netlink},
};

/// The longest the daemon sleeps between two looks at the clock.
pub const RECHECK: Duration = Duration::from_secs(60);

/// Class → the schedule window in force.
pub type Windows = BTreeMap<String, Active>;

pub struct Schedules {
    kernel: Kernel,
    /// Why the kernel's queues are unknown, when they are.
    probe_error: Option<String>,
    /// The window of each class that is in one, as last applied.
    active: Windows,
}

/// The local time zone (TZ, else /etc/localtime), read again each time: a
/// changed zone applies at the next look.
pub fn local_zone() -> TimeZone {
    TimeZone::try_system().unwrap_or_else(|e| {
        log::warn!("the local time zone is unknown ({e}); schedules run on UTC");
        TimeZone::UTC
    })
}

impl Schedules {
    /// Finds out what the kernel offers for leaf queues.
    pub fn probe() -> Self {
        match Netlink::open().and_then(|nl| Kernel::probe(&nl)) {
            Ok(kernel) => {
                if !kernel.fq_codel {
                    log::info!("this kernel has no fq_codel: classes without `queue` get a byte FIFO");
                }
                Self { kernel, probe_error: None, active: Windows::new() }
            }
            Err(e) => {
                let why = crate::error_chain(&e);
                log::warn!("could not find out whether the kernel has fq_codel ({why}); using byte FIFOs");
                Self { kernel: Kernel { fq_codel: false }, probe_error: Some(why), active: Windows::new() }
            }
        }
    }

    /// An explicit `queue = "fq_codel"` on a kernel without it is refused.
    pub fn check_queues(&self, config: &Config) -> Result<(), ConfigError> {
        if self.kernel.fq_codel {
            return Ok(());
        }
        match config.classes.iter().find(|c| c.queue == Some(QueueKind::FqCodel)) {
            Some(class) => Err(ConfigError::At {
                path: config.path.clone(),
                pos: class.queue_pos.unwrap_or_default(),
                message: format!(
                    "class \"{}\": queue \"fq_codel\": this kernel has no fq_codel qdisc (sch_fq_codel){}; use \
                     \"bfifo\" or \"pfifo\", or leave `queue` out (fq_codel where the kernel has it, else bfifo)",
                    class.name,
                    self.probe_error.as_ref().map_or_else(String::new, |e| format!(" or it could not be asked: {e}"))
                ),
            }),
            None => Ok(()),
        }
    }

    /// `config` as the host gets it: the limits of the windows in force (as
    /// last [`Schedules::advance`]d), each class's queue chosen.
    pub fn apply(&self, config: &Config) -> Config {
        let mut config = config.clone();
        for class in &mut config.classes {
            class.queue.get_or_insert(self.kernel.default_queue());
            let index = self.active.get(&class.name).map(|a| a.index);
            (class.egress, class.ingress) = schedule::limits(class, index);
        }
        config
    }

    /// Takes the windows of `config` in force at `now` in `tz`; returns the
    /// ones before (for [`Schedules::restore`] and [`Schedules::switched`]).
    pub fn advance(&mut self, config: &Config, tz: &TimeZone, now: Timestamp) -> Windows {
        let active = config
            .classes
            .iter()
            .filter_map(|c| Some((c.name.clone(), schedule::active(c, tz, now)?)))
            .collect();
        std::mem::replace(&mut self.active, active)
    }

    /// Back to the windows `before` (a change that took them failed).
    pub fn restore(&mut self, before: Windows) {
        self.active = before;
    }

    /// The classes whose window differs from `before`.
    pub fn switched(&self, before: &Windows) -> Vec<String> {
        let index = |w: &Windows, name: &String| w.get(name).map(|a| a.index);
        let mut names: Vec<String> = self.active.keys().chain(before.keys()).cloned().collect();
        names.sort();
        names.dedup();
        names.retain(|n| index(&self.active, n) != index(before, n));
        names
    }

    /// How long until the windows of `config` should be looked at again.
    pub fn next_check(config: &Config, tz: &TimeZone, now: Timestamp) -> Duration {
        let next = schedule::next_boundary(&config.classes, tz, now);
        // A little past the boundary: the loop's timer runs on the monotonic
        // clock, the boundary is on the wall clock.
        next.and_then(|at| Duration::try_from(at.duration_since(now)).ok())
            .map_or(RECHECK, |d| (d + Duration::from_millis(10)).min(RECHECK))
    }

    /// The window in force of each class of `config`, for `status`.
    pub fn windows(&self, config: &Config) -> Vec<WindowStatus> {
        self.active.iter().filter_map(|(class, active)| window_status(config, class, active)).collect()
    }

    /// The window in force of `class` of `config`.
    pub fn window(&self, config: &Config, class: &str) -> Option<WindowStatus> {
        window_status(config, class, self.active.get(class)?)
    }

    pub fn queues(&self) -> QueueStatus {
        QueueStatus {
            default: self.kernel.default_queue().as_str().to_string(),
            fq_codel: self.kernel.fq_codel,
            probe_error: self.probe_error.clone(),
        }
    }
}

fn window_status(config: &Config, class: &str, active: &Active) -> Option<WindowStatus> {
    let window = config.class(class)?.schedule.get(active.index)?;
    let seconds = |t: Option<Timestamp>| t.map(|t| t.as_second().max(0) as u64);
    Some(WindowStatus {
        class: class.to_string(),
        window: active.index + 1,
        text: window.text.clone(),
        since: seconds(active.since),
        until: seconds(active.until),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limit;

    fn config() -> Config {
        let env = crate::rules::SystemEnv::default();
        let text = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n\
                    [[class]]\nname = \"bulk\"\negress = \"50mbit\"\nqueue = \"fq_codel\"\n\
                    schedule = [ { days = \"mon-fri\", hours = \"09:00-18:00\", egress = \"2mbit\" } ]\n";
        crate::config::parse(std::path::Path::new("t.toml"), text, &env.env()).unwrap()
    }

    fn schedules(fq_codel: bool) -> Schedules {
        Schedules { kernel: Kernel { fq_codel }, probe_error: None, active: Windows::new() }
    }

    #[test]
    fn the_windows_in_force_replace_the_limits_and_queues_are_chosen_for_the_kernel() {
        let (config, tz) = (config(), TimeZone::UTC);
        let mut s = schedules(true);
        let limit = |c: &Config, name: &str| c.class(name).unwrap().egress.and_then(|l: Limit| l.rate_bps);
        // Monday 7 December 2026, 08:59:59 UTC: the class's own limits.
        let before = s.advance(&config, &tz, "2026-12-07T08:59:59Z".parse().unwrap());
        assert!(before.is_empty() && s.switched(&before).is_empty());
        assert_eq!(limit(&s.apply(&config), "bulk"), Some(50_000_000));
        assert_eq!(
            Schedules::next_check(&config, &tz, "2026-12-07T08:59:59Z".parse().unwrap()).as_millis(),
            1_010
        );
        // 09:00: the window's.
        let before = s.advance(&config, &tz, "2026-12-07T09:00:00Z".parse().unwrap());
        assert_eq!(s.switched(&before), ["bulk"]);
        let applied = s.apply(&config);
        assert_eq!(limit(&applied, "bulk"), Some(2_000_000));
        assert_eq!(applied.class("default").unwrap().queue, Some(QueueKind::FqCodel));
        assert_eq!(s.windows(&config)[0].until, Some(1_796_666_400)); // 18:00 UTC
                                                                      // Back, as if the change had failed.
        s.restore(before);
        assert_eq!(limit(&s.apply(&config), "bulk"), Some(50_000_000));
        // Without fq_codel in the kernel: bfifo by default, and the explicit one refused.
        let s = schedules(false);
        assert_eq!(s.apply(&config).class("default").unwrap().queue, Some(QueueKind::Bfifo));
        assert_eq!(
            s.check_queues(&config).unwrap_err().to_string(),
            "t.toml:7:9: class \"bulk\": queue \"fq_codel\": this kernel has no fq_codel qdisc (sch_fq_codel); \
             use \"bfifo\" or \"pfifo\", or leave `queue` out (fq_codel where the kernel has it, else bfifo)"
        );
        assert!(schedules(true).check_queues(&config).is_ok());
    }
}
