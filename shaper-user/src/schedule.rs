//! When a class's schedule windows are active, and the class's limits at a
//! given moment: the one place that answers "what limits does this class
//! have at time t" (the daemon, `classes` and `status` ask it; a quota's
//! throttle and per-instance leaves start from its answer).
//!
//! Windows are written in local wall-clock time. A window opens on each of
//! its days at the first moment the local clock reads its start time or
//! later, and closes likewise at its end (on the next day when it crosses
//! midnight). On the days the clocks change that means:
//! - a time that does not exist (skipped when the clocks go forward) is
//!   reached at the jump: a window from 02:30 opens at 03:00 new time, and a
//!   window that lies wholly in the skipped hour does not open that day;
//! - a time that exists twice (when the clocks go back) is taken at its first
//!   occurrence: a window until 02:30 closes at the first 02:30.

use jiff::{
    civil::Date,
    tz::{AmbiguousOffset, TimeZone},
    SignedDuration, Timestamp,
};

use crate::config::{
    schedule::{Window, DAY_MINUTES},
    ClassConfig, Limit,
};

/// How far around a moment the boundaries are looked for: a week of windows
/// and a day on either side.
const SPAN_DAYS: i32 = 8;

/// The window of a class in force at a moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Active {
    /// Index in the class's `schedule`.
    pub index: usize,
    /// Since when this window is in force, and until when (`None`: it has
    /// been / will be for more than a week, e.g. a window on every day).
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// The first moment of `date` (plus `minute` minutes, up to the next midnight)
/// at which the local clock of `tz` reads that time or later.
pub fn boundary(tz: &TimeZone, date: Date, minute: u16) -> Option<Timestamp> {
    let date = if minute >= DAY_MINUTES { date.tomorrow().ok()? } else { date };
    let minute = minute % DAY_MINUTES;
    let dt = date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        // Twice: the first time (the offset before the clocks went back).
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        // Skipped: the jump itself, the first transition after the moment
        // the clock would have shown it with the offset after the gap.
        AmbiguousOffset::Gap { after, .. } => {
            let early = after.to_timestamp(dt).ok()?;
            tz.following(early).next().map(|t| t.timestamp())
        }
    }
}

/// The times `window` is open that start on `from` to `to` (local dates), in order.
fn openings(window: &Window, tz: &TimeZone, from: Date, to: Date) -> Vec<(Timestamp, Timestamp)> {
    let mut out = Vec::new();
    let mut date = from;
    while date <= to {
        let weekday = date.weekday().to_monday_zero_offset() as u8;
        if window.days.contains(weekday) {
            let end_date = if window.end <= window.start { date.tomorrow().ok() } else { Some(date) };
            let open = boundary(tz, date, window.start);
            let close = end_date.and_then(|d| boundary(tz, d, window.end));
            if let (Some(open), Some(close)) = (open, close) {
                // Empty when both ends fall into a skipped hour.
                if open < close {
                    out.push((open, close));
                }
            }
        }
        let Ok(next) = date.tomorrow() else { break };
        date = next;
    }
    out
}

fn local_date(tz: &TimeZone, at: Timestamp) -> Date {
    at.to_zoned(tz.clone()).date()
}

fn days_around(date: Date, before: i32, after: i32) -> (Date, Date) {
    let shift = |d: i32| date.checked_add(jiff::Span::new().days(d)).unwrap_or(date);
    (shift(-before), shift(after))
}

/// The index of the first window of `windows` open at `at`.
pub fn window_at(windows: &[Window], tz: &TimeZone, at: Timestamp) -> Option<usize> {
    // An opening that covers `at` started at most a day (plus a DST hour) before it.
    let (from, to) = days_around(local_date(tz, at), 2, 0);
    windows
        .iter()
        .position(|w| openings(w, tz, from, to).iter().any(|(open, close)| (*open..*close).contains(&at)))
}

/// Every opening and closing of `windows` from `before` days before `at`'s
/// date to `after` days after it, sorted.
fn edges(windows: &[Window], tz: &TimeZone, at: Timestamp, before: i32, after: i32) -> Vec<Timestamp> {
    let (from, to) = days_around(local_date(tz, at), before, after);
    let mut all: Vec<Timestamp> =
        windows.iter().flat_map(|w| openings(w, tz, from, to)).flat_map(|(o, c)| [o, c]).collect();
    all.sort();
    all.dedup();
    all
}

/// The next moment after `at` when the window in force changes (another
/// window, or none), if that happens within a week.
pub fn next_change(windows: &[Window], tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    let now = window_at(windows, tz, at);
    edges(windows, tz, at, 1, SPAN_DAYS)
        .into_iter()
        .filter(|e| *e > at)
        .find(|e| window_at(windows, tz, *e) != now)
}

/// Since when the window in force at `at` (or none) has been in force, if
/// that began within a week.
pub fn last_change(windows: &[Window], tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    let now = window_at(windows, tz, at);
    let just_before = |e: Timestamp| e.checked_sub(SignedDuration::from_nanos(1)).ok();
    edges(windows, tz, at, SPAN_DAYS, 1)
        .into_iter()
        .rev()
        .filter(|e| *e <= at)
        .find(|e| just_before(*e).is_some_and(|b| window_at(windows, tz, b) != now))
}

/// The window of `class` in force at `at`, with since and until.
pub fn active(class: &ClassConfig, tz: &TimeZone, at: Timestamp) -> Option<Active> {
    let index = window_at(&class.schedule, tz, at)?;
    Some(Active {
        index,
        since: last_change(&class.schedule, tz, at),
        until: next_change(&class.schedule, tz, at),
    })
}

/// The limits of `class` while window `active` (an index in its schedule)
/// is in force: the window's, and the class's own in a direction the window
/// does not set. `None`: the class's own.
pub fn limits(class: &ClassConfig, active: Option<usize>) -> (Option<Limit>, Option<Limit>) {
    match active.and_then(|i| class.schedule.get(i)) {
        Some(w) => (w.egress.or(class.egress), w.ingress.or(class.ingress)),
        None => (class.egress, class.ingress),
    }
}

/// The limits of `class` at `at`: (egress, ingress).
pub fn limits_at(class: &ClassConfig, tz: &TimeZone, at: Timestamp) -> (Option<Limit>, Option<Limit>) {
    limits(class, window_at(&class.schedule, tz, at))
}

/// The next moment after `at` when any class of `classes` changes window.
pub fn next_boundary<'a>(
    classes: impl IntoIterator<Item = &'a ClassConfig>,
    tz: &TimeZone,
    at: Timestamp,
) -> Option<Timestamp> {
    classes
        .into_iter()
        .filter(|c| !c.schedule.is_empty())
        .filter_map(|c| next_change(&c.schedule, tz, at))
        .min()
}

#[cfg(test)]
mod tests;
