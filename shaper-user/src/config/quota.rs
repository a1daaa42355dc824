//! A class's `quota = { bytes, period, start, direction, then }`: how it is
//! written, validated, and where its periods begin and end.
//!
//! Periods of a calendar unit (hour, day, week, month) are counted in local
//! time (the system's zone, or `TZ`): a day period starting at "02:30" starts
//! at 02:30 on the wall clock, also on the days the clocks change (a start
//! the change skips moves to the first moment after the gap; a day around a
//! change is 23 or 25 hours long). Periods given as a duration ("6h") are
//! counted from the Unix epoch, whatever the zone.

use std::time::Duration;

use jiff::{
    civil::{Date, DateTime, Weekday},
    tz::TimeZone,
    Timestamp, ToSpan as _,
};
use serde::Deserialize;
use shaper_common::{Direction, QUOTA_EGRESS, QUOTA_INGRESS};
use toml::Spanned;

use super::Validator;
use crate::{config::ConfigError, units};

/// Shortest period written as a duration.
pub const MIN_PERIOD: Duration = Duration::from_secs(10);

/// The quota as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub bytes: Spanned<Amount>,
    pub period: Option<Spanned<String>>,
    pub start: Option<Spanned<Amount>>,
    pub direction: Option<Spanned<String>>,
    pub then: Option<Spanned<String>>,
}

/// A number or a string (`bytes = "400MB"` or `bytes = 400000000`; `start = 1`
/// or `start = "mon"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged, expecting = "a number or a string")]
pub enum Amount {
    Number(i64),
    Text(String),
}

/// A validated quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub bytes: u64,
    pub period: Period,
    pub counted: Counted,
    pub then: Then,
}

/// How long a quota's period is, and when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hour,
    /// Starts every day at this local time (hour, minute).
    Day {
        hour: i8,
        minute: i8,
    },
    /// Starts on this weekday at midnight, local time.
    Week {
        weekday: Weekday,
    },
    /// Starts on this day of the month at midnight, local time (in shorter
    /// months, on their last day).
    Month {
        day: i8,
    },
    /// Back to back periods of this length from the Unix epoch.
    Every(Duration),
}

/// Which traffic counts against the quota (and is throttled once it is used up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Egress,
    Ingress,
    Both,
}

/// What happens once the quota is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// The class's limit in the counted directions becomes this rate (bits/s).
    Throttle(u64),
    /// The class's packets are dropped.
    Block,
    /// Only flagged in `shaper usage`.
    Report,
}

impl Counted {
    /// The `QUOTA_*` bits of the directions counted.
    pub fn bits(self) -> u32 {
        match self {
            Counted::Egress => QUOTA_EGRESS,
            Counted::Ingress => QUOTA_INGRESS,
            Counted::Both => QUOTA_EGRESS | QUOTA_INGRESS,
        }
    }

    pub fn counts(self, direction: Direction) -> bool {
        match direction {
            Direction::Egress => self != Counted::Ingress,
            Direction::Ingress => self != Counted::Egress,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Counted::Egress => "egress",
            Counted::Ingress => "ingress",
            Counted::Both => "both",
        }
    }
}

impl Then {
    /// "64 kbit/s", "block" or "report".
    pub fn describe(self) -> String {
        match self {
            Then::Throttle(bps) => units::format_rate(bps),
            Then::Block => "block".to_string(),
            Then::Report => "report".to_string(),
        }
    }
}

impl Period {
    /// The period that holds `now`: its start and its end (the next one's start).
    pub fn bounds(&self, now: Timestamp, tz: &TimeZone) -> (Timestamp, Timestamp) {
        if let Period::Every(length) = self {
            let len = length.as_secs().max(1) as i64;
            let start = now.as_second().div_euclid(len) * len;
            return (second(start), second(start + len));
        }
        let local = now.to_zoned(tz.clone()).datetime();
        let (start, end) = self.civil_bounds(local);
        let (start, end) = (zoned(start, tz), zoned(end, tz));
        // A start a clock change moved past `now` (or an end before it): the
        // period is whole hours around `now` instead; never empty.
        if start <= now && now < end {
            (start, end)
        } else {
            let hour = now.as_second().div_euclid(3600) * 3600;
            (second(hour), second(hour + 3600))
        }
    }

    /// The wall-clock start and end of the period that holds `local`.
    fn civil_bounds(&self, local: DateTime) -> (DateTime, DateTime) {
        let date = local.date();
        match *self {
            Period::Hour | Period::Every(_) => {
                let start = date.at(local.hour(), 0, 0, 0);
                (start, start.saturating_add(1.hour()))
            }
            Period::Day { hour, minute } => {
                let today = date.at(hour, minute, 0, 0);
                let start = if local < today { today.saturating_sub(1.day()) } else { today };
                (start, start.saturating_add(1.day()))
            }
            Period::Week { weekday } => {
                let back = i64::from(date.weekday().since(weekday));
                let start = date.saturating_sub(back.days()).at(0, 0, 0, 0);
                (start, start.saturating_add(1.week()))
            }
            Period::Month { day } => {
                let this = month_day(date.first_of_month(), day);
                let start = if date < this { month_day(add_months(date, -1), day) } else { this };
                (start.at(0, 0, 0, 0), month_day(add_months(start, 1), day).at(0, 0, 0, 0))
            }
        }
    }

    /// How the config says it: "month (from day 1)", "day (from 02:30)", "6h".
    pub fn describe(&self) -> String {
        match self {
            Period::Hour => "hour".to_string(),
            Period::Day { hour, minute } => format!("day (from {hour:02}:{minute:02})"),
            Period::Week { weekday } => format!("week (from {})", weekday_name(*weekday)),
            Period::Month { day } => format!("month (from day {day})"),
            Period::Every(d) => format!("{}s", d.as_secs()),
        }
    }
}

fn second(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The instant of wall-clock time `dt` in `tz` (a time a change skips: the
/// moment after the gap; a repeated one: its first occurrence).
fn zoned(dt: DateTime, tz: &TimeZone) -> Timestamp {
    dt.to_zoned(tz.clone()).map_or(Timestamp::UNIX_EPOCH, |z| z.timestamp())
}

/// Day `day` of the month of `first`, or its last day when it is shorter.
fn month_day(first: Date, day: i8) -> Date {
    let first = first.first_of_month();
    Date::new(first.year(), first.month(), day.min(first.days_in_month())).unwrap_or(first)
}

fn add_months(date: Date, months: i64) -> Date {
    date.first_of_month().saturating_add(months.months())
}

const WEEKDAYS: [(Weekday, &str); 7] = [
    (Weekday::Monday, "mon"),
    (Weekday::Tuesday, "tue"),
    (Weekday::Wednesday, "wed"),
    (Weekday::Thursday, "thu"),
    (Weekday::Friday, "fri"),
    (Weekday::Saturday, "sat"),
    (Weekday::Sunday, "sun"),
];

fn weekday_name(day: Weekday) -> &'static str {
    WEEKDAYS.iter().find(|(d, _)| *d == day).map_or("mon", |(_, n)| n)
}

/// "mon", "Monday", "tue", … (the first three letters decide).
fn parse_weekday(text: &str) -> Option<Weekday> {
    let lower = text.trim().to_ascii_lowercase();
    let full = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    WEEKDAYS
        .iter()
        .zip(full)
        .find(|((_, short), long)| lower == *short || lower == *long)
        .map(|((d, _), _)| *d)
}

/// "HH:MM", 00:00 to 23:59.
fn parse_clock(text: &str) -> Option<(i8, i8)> {
    let (h, m) = text.trim().split_once(':')?;
    if !(1..=2).contains(&h.len()) || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some((h, m))
}

impl Validator<'_> {
    /// Validates a class's quota.
    pub(super) fn quota(&self, raw: &Spanned<RawQuota>, class: &str) -> Result<Quota, ConfigError> {
        let q = raw.get_ref();
        let bytes = match q.bytes.get_ref() {
            Amount::Number(n) => u64::try_from(*n).ok().filter(|n| *n > 0),
            Amount::Text(t) => Some(units::parse_bytes(t).map_err(|e| self.error(&q.bytes, e.to_string()))?),
        }
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            self.error(&q.bytes, format!("class \"{class}\": the quota's bytes must be above zero"))
        })?;
        let period = self.period(q)?;
        let counted = match q.direction.as_ref() {
            None => Counted::Both,
            Some(d) => match d.get_ref().as_str() {
                "egress" => Counted::Egress,
                "ingress" => Counted::Ingress,
                "both" => Counted::Both,
                other => {
                    return Err(self.error(
                        d,
                        format!("unknown quota direction \"{other}\": \"egress\", \"ingress\" or \"both\""),
                    ))
                }
            },
        };
        let then = match q.then.as_ref() {
            None => {
                return Err(self.error(
                    raw,
                    format!("class \"{class}\": the quota needs `then`: a rate to throttle to (\"64kbit\"), \"block\" or \"report\""),
                ))
            }
            Some(t) => match t.get_ref().as_str() {
                "block" => Then::Block,
                "report" => Then::Report,
                rate => Then::Throttle(units::parse_rate(rate).ok().filter(|r| *r > 0).ok_or_else(|| {
                    self.error(t, format!("quota `then` must be a rate such as \"64kbit\", \"block\" or \"report\", not \"{rate}\""))
                })?),
            },
        };
        Ok(Quota { bytes, period, counted, then })
    }

    fn period(&self, q: &RawQuota) -> Result<Period, ConfigError> {
        let kind = q.period.as_ref().map_or("month", |p| p.get_ref().as_str());
        let start = q.start.as_ref();
        let start_text = start.map(|s| match s.get_ref() {
            Amount::Number(n) => n.to_string(),
            Amount::Text(t) => t.clone(),
        });
        let bad_start = |what: &str| {
            let at = start.map_or(0, |s| s.span().start);
            self.error_at(at, format!("quota start for a {kind} period must be {what}"))
        };
        let period = match kind {
            "month" => match start_text {
                None => Period::Month { day: 1 },
                Some(t) => Period::Month {
                    day: t.parse::<i8>().ok().filter(|d| (1..=31).contains(d)).ok_or_else(|| {
                        bad_start(
                            "a day of the month, 1 to 31 (29 to 31 mean the last day in shorter months)",
                        )
                    })?,
                },
            },
            "week" => match start_text {
                None => Period::Week { weekday: Weekday::Monday },
                Some(t) => Period::Week {
                    weekday: parse_weekday(&t).ok_or_else(|| bad_start("a weekday: \"mon\" to \"sun\""))?,
                },
            },
            "day" => match start_text {
                None => Period::Day { hour: 0, minute: 0 },
                Some(t) => {
                    let (hour, minute) =
                        parse_clock(&t).ok_or_else(|| bad_start("a local time \"HH:MM\", e.g. \"06:00\""))?;
                    Period::Day { hour, minute }
                }
            },
            "hour" if start_text.is_some() => return Err(bad_start("left out (hours start on the hour)")),
            "hour" => Period::Hour,
            other => {
                let at = q.period.as_ref().map_or(0, |p| p.span().start);
                let length = units::parse_duration(other).map_err(|_| {
                    self.error_at(at, format!("unknown quota period \"{other}\": \"hour\", \"day\", \"week\", \"month\" or a duration such as \"6h\""))
                })?;
                if length < MIN_PERIOD {
                    return Err(
                        self.error_at(at, format!("a quota period is at least {}s", MIN_PERIOD.as_secs()))
                    );
                }
                if start_text.is_some() {
                    return Err(bad_start(
                        "left out (a period given as a duration runs from the Unix epoch)",
                    ));
                }
                Period::Every(Duration::from_secs(length.as_secs()))
            }
        };
        Ok(period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central European time with its clock changes (last Sunday of March
    /// 02:00 → 03:00, last Sunday of October 03:00 → 02:00), without tzdata.
    fn berlin() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn bounds(period: Period, now: &str) -> (String, String) {
        let (s, e) = period.bounds(at(now), &berlin());
        (s.to_string(), e.to_string())
    }

    #[test]
    fn month_periods_start_on_their_day_local_time() {
        let p = Period::Month { day: 1 };
        // 1 March 00:00 CET is 28 Feb 23:00 UTC.
        assert_eq!(
            bounds(p, "2024-03-15T12:00:00Z"),
            ("2024-02-29T23:00:00Z".into(), "2024-03-31T22:00:00Z".into())
        );
        // Day 31 in February is its last day.
        let p = Period::Month { day: 31 };
        assert_eq!(
            bounds(p, "2024-03-10T12:00:00Z"),
            ("2024-02-28T23:00:00Z".into(), "2024-03-30T23:00:00Z".into())
        );
    }

    #[test]
    fn day_periods_are_23_or_25_hours_across_clock_changes() {
        // 31 March 2024: 02:00 → 03:00. A 02:30 start does not exist: 03:30 CEST.
        let p = Period::Day { hour: 2, minute: 30 };
        assert_eq!(
            bounds(p, "2024-03-31T12:00:00Z"),
            ("2024-03-31T01:30:00Z".into(), "2024-04-01T00:30:00Z".into())
        );
        let p = Period::Day { hour: 0, minute: 0 };
        let (s, e) = p.bounds(at("2024-03-31T12:00:00Z"), &berlin());
        assert_eq!(e.as_second() - s.as_second(), 23 * 3600);
        let (s, e) = p.bounds(at("2024-10-27T12:00:00Z"), &berlin());
        assert_eq!(e.as_second() - s.as_second(), 25 * 3600);
        // Before today's start: yesterday's period.
        let p = Period::Day { hour: 6, minute: 0 };
        assert_eq!(
            bounds(p, "2024-06-10T03:00:00Z"),
            ("2024-06-09T04:00:00Z".into(), "2024-06-10T04:00:00Z".into())
        );
    }

    #[test]
    fn hour_periods_in_the_repeated_hour_never_end_before_they_start() {
        // 27 October 2024, 02:00-03:00 CEST then again 02:00-03:00 CET.
        for now in ["2024-10-27T00:30:00Z", "2024-10-27T01:30:00Z"] {
            let (s, e) = Period::Hour.bounds(at(now), &berlin());
            assert!(s <= at(now) && at(now) < e, "{now}: {s} .. {e}");
        }
    }

    #[test]
    fn week_and_duration_periods() {
        // 12 June 2024 is a Wednesday; weeks from Monday 10 June 00:00 CEST.
        let p = Period::Week { weekday: Weekday::Monday };
        assert_eq!(
            bounds(p, "2024-06-12T12:00:00Z"),
            ("2024-06-09T22:00:00Z".into(), "2024-06-16T22:00:00Z".into())
        );
        let p = Period::Every(Duration::from_secs(120));
        assert_eq!(
            bounds(p, "2024-06-12T12:01:30Z"),
            ("2024-06-12T12:00:00Z".into(), "2024-06-12T12:02:00Z".into())
        );
    }

    fn parse(quota: &str) -> Result<Quota, String> {
        let env = crate::rules::SystemEnv::default();
        let text = format!(
            "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n[[class]]\nname = \"bulk\"\nquota = {quota}\n"
        );
        crate::config::parse(std::path::Path::new("q.toml"), &text, &env.env())
            .map(|c| c.classes[0].quota.clone().unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_parses() {
        let q =
            parse(r#"{ bytes = "400MB", period = "month", start = 1, direction = "both", then = "64kbit" }"#)
                .unwrap();
        assert_eq!(
            q,
            Quota {
                bytes: 400_000_000,
                period: Period::Month { day: 1 },
                counted: Counted::Both,
                then: Then::Throttle(64_000)
            }
        );
        let q = parse(r#"{ bytes = "20MiB", period = "6h", then = "block" }"#).unwrap();
        assert_eq!((q.period, q.then), (Period::Every(Duration::from_secs(6 * 3600)), Then::Block));
        let q = parse(
            r#"{ bytes = 1000, period = "week", start = "sat", direction = "egress", then = "report" }"#,
        )
        .unwrap();
        assert_eq!((q.period, q.counted), (Period::Week { weekday: Weekday::Saturday }, Counted::Egress));
        let q = parse(r#"{ bytes = "1GB", period = "day", start = "06:30", then = "1mbit" }"#).unwrap();
        assert_eq!(q.period, Period::Day { hour: 6, minute: 30 });
    }

    #[test]
    fn mistakes_name_the_place_and_the_reason() {
        assert_eq!(
            parse(r#"{ bytes = "400MB", period = "fortnight", then = "block" }"#).unwrap_err(),
            "q.toml:6:37: unknown quota period \"fortnight\": \"hour\", \"day\", \"week\", \"month\" or a duration such as \"6h\""
        );
        assert_eq!(
            parse(r#"{ bytes = "400MB", period = "day", start = "25:00", then = "block" }"#).unwrap_err(),
            "q.toml:6:52: quota start for a day period must be a local time \"HH:MM\", e.g. \"06:00\""
        );
        assert_eq!(
            parse(r#"{ bytes = "400MB", start = 32, then = "block" }"#).unwrap_err(),
            "q.toml:6:36: quota start for a month period must be a day of the month, 1 to 31 (29 to 31 mean the last day in shorter months)"
        );
        assert_eq!(
            parse(r#"{ bytes = "400MB" }"#).unwrap_err(),
            "q.toml:6:9: class \"bulk\": the quota needs `then`: a rate to throttle to (\"64kbit\"), \"block\" or \"report\""
        );
        assert_eq!(
            parse(r#"{ bytes = "400MB", then = "slow" }"#).unwrap_err(),
            "q.toml:6:35: quota `then` must be a rate such as \"64kbit\", \"block\" or \"report\", not \"slow\""
        );
        assert_eq!(
            parse(r#"{ bytes = "400MB", direction = "up", then = "block" }"#).unwrap_err(),
            "q.toml:6:40: unknown quota direction \"up\": \"egress\", \"ingress\" or \"both\""
        );
        assert!(parse(r#"{ bytes = 0, then = "block" }"#).unwrap_err().contains("above zero"));
        assert!(parse(r#"{ bytes = "400MB", period = "5s", then = "block" }"#)
            .unwrap_err()
            .contains("at least 10s"));
    }
}
