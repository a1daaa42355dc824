//! Devices that come and go under a running daemon, told by link events
//! (`tc::LinkMonitor`, polled in the main loop):
//!
//! - an IFB set down or deleted: the classifier would redirect every arriving
//!   packet into a device that drops it, so its interface's entry gets
//!   `IFB_DOWN` at once (packets pass unshaped, counted as `ifb_down`), and
//!   [`IFB_RESTORE_DELAY`] later the daemon brings the IFB back (up, or a new
//!   one with its tree) and shaping resumes;
//! - a shaped interface deleted (wg0, ppp0, a USB NIC): its state is taken
//!   off and its IFB deleted; it waits, like an `optional` interface absent
//!   at start, and is shaped again [`SETTLE`] after it appears.
//!
//! Events are only a cue: what the daemon does is decided from the devices as
//! they are when it reads the events (events may be stale, or lost).

use std::time::Duration;

use shaper_common::IFB_DOWN;

use super::{
    apply::{self, Parts},
    error::DaemonError,
};
use crate::{config::Config, control::protocol::Changes, tc::LinkEvent};

/// How long a lost IFB stays lost before the daemon restores it: no fight at
/// full speed with whatever removed it (at most one restore a second).
pub const IFB_RESTORE_DELAY: Duration = Duration::from_secs(1);
/// How long after an awaited interface appears the daemon shapes it (the
/// events of its creation arrive together).
pub const SETTLE: Duration = Duration::from_millis(100);
/// When a restore failed, the next try.
pub const RETRY: Duration = Duration::from_secs(5);

/// Handles link events: takes gone interfaces off, lets arriving packets pass
/// where the IFB is lost. Returns when to [`heal`], if something is to be
/// restored.
pub fn on_events(parts: &mut Parts<'_>, config: &Config, events: &[LinkEvent]) -> Option<Duration> {
    let concerns = |index: u32, name: &str| {
        parts.host.concerns(index, name) || config.interfaces.iter().any(|i| i.name == name)
    };
    let relevant = events.iter().any(|e| match e {
        LinkEvent::Present { index, name, .. } | LinkEvent::Gone { index, name } => concerns(*index, name),
        LinkEvent::Lost => true,
    });
    if !relevant {
        return None;
    }
    let mut heal: Option<Duration> = None;
    let mut soon = |d: Duration| heal = Some(heal.map_or(d, |h| h.min(d)));
    for (ifindex, ifb, state) in parts.host.lost_ifbs() {
        if fail_open(parts, ifindex) {
            log::warn!("{ifb} is {state}: arriving packets pass unshaped until it is restored");
        }
        soon(IFB_RESTORE_DELAY);
    }
    for (ifindex, name) in parts.host.vanished() {
        log::warn!("{name} went away (ifindex {ifindex}); it is shaped again when it comes back");
        if parts.host.forget(ifindex).is_some() {
            apply::unshape(parts, ifindex, Some(&name));
        }
    }
    if parts.host.waited_for_appeared() {
        soon(SETTLE);
    }
    heal
}

/// Points interface `ifindex`'s entry at no IFB (`IFB_DOWN`); returns whether
/// it changed.
fn fail_open(parts: &mut Parts<'_>, ifindex: u32) -> bool {
    let Some((_, mut info)) = parts.datapath.ifaces().into_iter().find(|(i, _)| *i == ifindex) else {
        return false;
    };
    if info.ifb_ifindex == IFB_DOWN {
        return false;
    }
    info.ifb_ifindex = IFB_DOWN;
    match parts.datapath.set_iface(ifindex, &info) {
        Ok(()) => true,
        Err(e) => {
            log::error!("letting packets past a lost IFB: {}", crate::error_chain(&e));
            false
        }
    }
}

/// Brings the host back to the config in force: lost IFBs restored,
/// interfaces that appeared shaped (the path of a reload to the same config).
pub fn heal(parts: &mut Parts<'_>, config: &Config) -> Result<Changes, DaemonError> {
    let changes = apply::converge(parts, Some(config), config)?;
    for name in &changes.interfaces_added {
        log::info!("{name} is shaped again");
    }
    Ok(changes)
}
