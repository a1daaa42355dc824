use jiff::{tz::TimeZone, Timestamp};

use super::*;
use crate::config::{
    position::Pos,
    schedule::{parse_days, parse_hours, Window},
};

fn window(days: &str, hours: &str) -> Window {
    let (start, end) = parse_hours(hours).unwrap();
    Window {
        days: parse_days(days).unwrap(),
        start,
        end,
        egress: None,
        ingress: None,
        text: format!("{days} {hours}"),
        pos: Pos::default(),
    }
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// Central European time with the EU's rules, as TZ would give it.
fn berlin() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
}

#[test]
fn a_weekday_window_opens_and_closes_on_the_local_clock() {
    let w = [window("mon-fri", "09:00-18:00")];
    let tz = berlin();
    // Wednesday 2 December 2026, 12:00 in Berlin (11:00 UTC).
    let at = ts("2026-12-02T11:00:00Z");
    assert_eq!(window_at(&w, &tz, at), Some(0));
    assert_eq!(last_change(&w, &tz, at), Some(ts("2026-12-02T08:00:00Z")));
    assert_eq!(next_change(&w, &tz, at), Some(ts("2026-12-02T17:00:00Z")));
    // Friday 18:00 Berlin: closed until Monday 09:00.
    let friday = ts("2026-12-04T17:00:00Z");
    assert_eq!(window_at(&w, &tz, friday), None);
    assert_eq!(next_change(&w, &tz, friday), Some(ts("2026-12-07T08:00:00Z")));
    assert_eq!(last_change(&w, &tz, friday), Some(friday));
    // The same window in UTC is an hour later.
    assert_eq!(window_at(&w, &TimeZone::UTC, ts("2026-12-02T08:30:00Z")), None);
    assert_eq!(window_at(&w, &TimeZone::UTC, ts("2026-12-02T09:00:00Z")), Some(0));
}

#[test]
fn a_night_window_runs_into_the_next_day() {
    let w = [window("fri", "22:00-06:00")];
    let tz = TimeZone::UTC;
    assert_eq!(window_at(&w, &tz, ts("2026-12-05T05:59:00Z")), Some(0)); // Saturday morning
    assert_eq!(window_at(&w, &tz, ts("2026-12-05T06:00:00Z")), None);
    assert_eq!(window_at(&w, &tz, ts("2026-12-05T23:00:00Z")), None); // Saturday night
    assert_eq!(window_at(&w, &tz, ts("2026-12-04T05:00:00Z")), None); // Friday morning
    assert_eq!(next_change(&w, &tz, ts("2026-12-05T01:00:00Z")), Some(ts("2026-12-05T06:00:00Z")));
}

#[test]
fn the_first_matching_window_wins() {
    let w = [window("mon", "12:00-13:00"), window("mon-fri", "09:00-18:00")];
    let tz = TimeZone::UTC;
    // Monday 7 December 2026.
    assert_eq!(window_at(&w, &tz, ts("2026-12-07T11:00:00Z")), Some(1));
    assert_eq!(next_change(&w, &tz, ts("2026-12-07T11:00:00Z")), Some(ts("2026-12-07T12:00:00Z")));
    assert_eq!(window_at(&w, &tz, ts("2026-12-07T12:30:00Z")), Some(0));
    // Back to the second window when the first closes; it has been "in force since" then.
    let after = ts("2026-12-07T13:30:00Z");
    assert_eq!(window_at(&w, &tz, after), Some(1));
    assert_eq!(last_change(&w, &tz, after), Some(ts("2026-12-07T13:00:00Z")));
    assert_eq!(next_change(&w, &tz, after), Some(ts("2026-12-07T18:00:00Z")));
}

#[test]
fn windows_on_every_day_never_change() {
    let w = [window("mon-sun", "00:00-24:00")];
    let at = ts("2026-12-07T13:30:00Z");
    assert_eq!(window_at(&w, &TimeZone::UTC, at), Some(0));
    assert_eq!(next_change(&w, &TimeZone::UTC, at), None);
    assert_eq!(last_change(&w, &TimeZone::UTC, at), None);
    assert_eq!(next_change(&[], &TimeZone::UTC, at), None);
}

#[test]
fn a_skipped_time_is_reached_at_the_jump() {
    // Sunday 29 March 2026: Berlin's clocks go from 02:00 CET to 03:00 CEST (01:00 UTC).
    let tz = berlin();
    let date = jiff::civil::date(2026, 3, 29);
    assert_eq!(boundary(&tz, date, 2 * 60 + 30), Some(ts("2026-03-29T01:00:00Z")));
    assert_eq!(boundary(&tz, date, 3 * 60), Some(ts("2026-03-29T01:00:00Z")));
    assert_eq!(boundary(&tz, date, 60 + 59), Some(ts("2026-03-29T00:59:00Z")));
    let w = [window("sun", "02:30-04:00")];
    assert_eq!(next_change(&w, &tz, ts("2026-03-28T12:00:00Z")), Some(ts("2026-03-29T01:00:00Z")));
    assert_eq!(next_change(&w, &tz, ts("2026-03-29T01:00:00Z")), Some(ts("2026-03-29T02:00:00Z")));
    // A window wholly inside the skipped hour does not open that day.
    let inside = [window("sun", "02:10-02:50")];
    assert_eq!(next_change(&inside, &tz, ts("2026-03-28T12:00:00Z")), Some(ts("2026-04-05T00:10:00Z")));
}

#[test]
fn a_repeated_time_is_taken_at_its_first_occurrence() {
    // Sunday 25 October 2026: Berlin's clocks go from 03:00 CEST back to 02:00 CET (01:00 UTC).
    let tz = berlin();
    let date = jiff::civil::date(2026, 10, 25);
    assert_eq!(boundary(&tz, date, 2 * 60 + 30), Some(ts("2026-10-25T00:30:00Z")));
    // 03:00 is reached once, after the repeated hour.
    assert_eq!(boundary(&tz, date, 3 * 60), Some(ts("2026-10-25T02:00:00Z")));
    let w = [window("sun", "02:30-03:00")];
    let open = ts("2026-10-25T00:30:00Z");
    assert_eq!(next_change(&w, &tz, ts("2026-10-24T12:00:00Z")), Some(open));
    // Open an hour and a half by the clock on the wall, from the first 02:30 to 03:00.
    assert_eq!(next_change(&w, &tz, open), Some(ts("2026-10-25T02:00:00Z")));
    assert_eq!(window_at(&w, &tz, ts("2026-10-25T01:45:00Z")), Some(0));
}

#[test]
fn new_york_changes_on_other_days() {
    // US rules: 8 March 2026, 02:00 EST → 03:00 EDT (07:00 UTC).
    let tz = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
    let w = [window("sun", "01:00-02:30")];
    let open = ts("2026-03-08T06:00:00Z");
    assert_eq!(next_change(&w, &tz, ts("2026-03-07T12:00:00Z")), Some(open));
    // 02:30 does not exist: the window closes at the jump, after an hour.
    assert_eq!(next_change(&w, &tz, open), Some(ts("2026-03-08T07:00:00Z")));
}
