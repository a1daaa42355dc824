//! `schedule = [ { days = "mon-fri", hours = "09:00-18:00", egress = "2mbit" } ]`
//! on a class: windows of the week, in local time, whose limits replace the
//! class's own while they are active. The first window that matches wins;
//! outside every window the class's own limits apply. When a window is
//! active at a given moment is [`crate::schedule`]'s business; this module
//! reads and checks the windows.

use shaper_common::Direction;
use toml::Spanned;

use super::{
    position::{self, Pos},
    raw::{RateValue, RawLimit, RawLimitTable, RawWindow},
    Limit, Validator,
};
use crate::{
    config::{ClassConfig, ConfigError, InterfaceConfig},
    units,
};

/// Minutes in a day: `24:00`, the end of a window that lasts until midnight.
pub const DAY_MINUTES: u16 = 24 * 60;

/// A set of weekdays: bit 0 is Monday, bit 6 Sunday.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Days(pub u8);

impl Days {
    pub const ALL: Days = Days(0x7f);

    /// Whether the set holds weekday `day` (0 = Monday … 6 = Sunday).
    pub fn contains(self, day: u8) -> bool {
        day < 7 && self.0 & (1 << day) != 0
    }
}

/// A validated window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The days it starts on (a window that crosses midnight belongs to the
    /// day it starts).
    pub days: Days,
    /// Minutes after local midnight: `start` in 0..1440, `end` in 1..=1440.
    /// `end <= start`: the window ends on the next day.
    pub start: u16,
    pub end: u16,
    /// The limits while it is active; `None`: the class's own in that direction.
    pub egress: Option<Limit>,
    pub ingress: Option<Limit>,
    /// "mon-fri 09:00-18:00", for `classes` and `status`.
    pub text: String,
    pub pos: Pos,
}

impl Window {
    pub fn limit(&self, direction: Direction) -> Option<Limit> {
        match direction {
            Direction::Egress => self.egress,
            Direction::Ingress => self.ingress,
        }
    }

    /// Whether the window covers minute `minute` of weekday `day` (0 =
    /// Monday), on the local wall clock.
    pub fn covers(&self, day: u8, minute: u16) -> bool {
        if self.start < self.end {
            self.days.contains(day) && (self.start..self.end).contains(&minute)
        } else {
            (self.days.contains(day) && minute >= self.start)
                || (self.days.contains((day + 6) % 7) && minute < self.end)
        }
    }

    /// The (weekday, minute) points of the week where it opens or closes.
    pub fn edges(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        (0..7u8).filter(move |d| self.days.contains(*d)).flat_map(move |d| {
            let end = if self.start < self.end && self.end < DAY_MINUTES {
                (d, self.end)
            } else {
                // Ends at or after the next midnight.
                ((d + 1) % 7, self.end % DAY_MINUTES)
            };
            [(d, self.start), end]
        })
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_NAMES: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

fn day(name: &str) -> Result<u8, String> {
    let lower = name.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .zip(LONG_NAMES)
        .position(|(short, long)| lower == *short || lower == long)
        .map(|i| i as u8)
        .ok_or_else(|| {
            if lower.is_empty() {
                "a day is missing (days are a list such as \"mon-fri\" or \"sat,sun\")".to_string()
            } else {
                format!("\"{}\" is not a day (mon, tue, wed, thu, fri, sat, sun)", name.trim())
            }
        })
}

/// `"mon-fri"`, `"sat,sun"`, `"mon-wed,fri"`, `"fri-mon"` (a range wraps
/// over the end of the week).
pub fn parse_days(text: &str) -> Result<Days, String> {
    let mut days = 0u8;
    for item in text.split(',') {
        match item.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days |= 1 << day(item)?,
        }
    }
    Ok(Days(days))
}

fn time_of_day(text: &str, is_end: bool) -> Result<u16, String> {
    let bad = || format!("\"{text}\" is not a time of day (HH:MM, 00:00 to 23:59; 24:00 as an end)");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let digits =
        |s: &str, max_len| !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if is_end => Ok(DAY_MINUTES),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// `"09:00-18:00"`; `"22:00-06:00"` ends the next day; `"00:00-24:00"` is the
/// whole day. Returns (start, end) in minutes after midnight.
pub fn parse_hours(text: &str) -> Result<(u16, u16), String> {
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("\"{text}\" is not a span of hours (HH:MM-HH:MM, e.g. \"09:00-18:00\")"))?;
    let (start, end) = (time_of_day(start, false)?, time_of_day(end, true)?);
    if start == end % DAY_MINUTES && end != DAY_MINUTES {
        return Err(format!(
            "the window \"{}\" starts and ends at the same time: it would be empty (for a whole day write \
             \"00:00-24:00\", or leave `hours` out)",
            text.trim()
        ));
    }
    Ok((start, end))
}

impl Validator<'_> {
    /// A window's limit: as a class's (a rate, or { rate, ceil }), or
    /// "RATE:CEIL" as `shaper set` takes it.
    fn window_limit(
        &self,
        raw: &Spanned<RawLimit>,
        class: &str,
        direction: Direction,
    ) -> Result<Limit, ConfigError> {
        if let RawLimit::Plain(RateValue::Text(text)) = raw.get_ref() {
            if let Some((rate, ceil)) = text.split_once(':') {
                let part = |t: &str| Some(Spanned::new(raw.span(), RateValue::Text(t.trim().to_string())));
                let table = RawLimit::Table(RawLimitTable { rate: part(rate), ceil: part(ceil) });
                return self.limit(&Spanned::new(raw.span(), table), class, direction);
            }
        }
        self.limit(raw, class, direction)
    }

    /// The windows of class `class`.
    pub(super) fn schedule(
        &self,
        raw: &[Spanned<RawWindow>],
        class: &str,
    ) -> Result<Vec<Window>, ConfigError> {
        let mut windows = Vec::new();
        for (i, spanned) in raw.iter().enumerate() {
            let w = spanned.get_ref();
            let days = match &w.days {
                Some(d) => parse_days(d.get_ref()).map_err(|e| self.error(d, e))?,
                None => Days::ALL,
            };
            let (start, end) = match &w.hours {
                Some(h) => parse_hours(h.get_ref()).map_err(|e| self.error(h, e))?,
                None => (0, DAY_MINUTES),
            };
            let what = format!("class \"{class}\", schedule window {}", i + 1);
            let egress =
                w.egress.as_ref().map(|l| self.window_limit(l, class, Direction::Egress)).transpose()?;
            let ingress =
                w.ingress.as_ref().map(|l| self.window_limit(l, class, Direction::Ingress)).transpose()?;
            if egress.is_none() && ingress.is_none() {
                return Err(self.error(
                    spanned,
                    format!("{what}: an empty window: give it an egress or an ingress limit (or both)"),
                ));
            }
            let text = format!(
                "{} {}",
                w.days.as_ref().map_or("every day", |d| d.get_ref().trim()),
                w.hours.as_ref().map_or("00:00-24:00", |h| h.get_ref().trim())
            );
            let pos = position::pos(self.text, spanned.span().start);
            windows.push(Window { days, start, end, egress, ingress, text, pos });
        }
        Ok(windows)
    }
}

/// A moment of the week on the local clock: (weekday, 0 = Monday; minute).
pub type Moment = (u8, u16);

/// The moments worth checking for the sum of guaranteed rates of `classes`:
/// `None` for the classes' own limits, then every moment a window of theirs
/// opens or closes (between two such moments nothing changes).
pub fn moments(classes: &[&ClassConfig]) -> Vec<Option<Moment>> {
    let mut out: Vec<Option<Moment>> =
        classes.iter().flat_map(|c| &c.schedule).flat_map(Window::edges).map(Some).collect();
    out.sort_unstable();
    out.dedup();
    out.insert(0, None);
    out
}

/// The window of `class` in force at `moment` (`None`: its own limits) and
/// its limit in `direction` then.
pub fn limit_during(
    class: &ClassConfig,
    moment: Option<Moment>,
    direction: Direction,
) -> (Option<&Window>, Option<Limit>) {
    let window = moment.and_then(|(day, minute)| class.schedule.iter().find(|w| w.covers(day, minute)));
    let limit = window.and_then(|w| w.limit(direction)).or_else(|| class.limit(direction));
    (window, limit)
}

impl Validator<'_> {
    /// No window guarantees more than the capacity of an interface its class is on.
    pub(super) fn check_window_rates(
        &self,
        classes: &[ClassConfig],
        interfaces: &[InterfaceConfig],
    ) -> Result<(), ConfigError> {
        for class in classes {
            for (i, window) in class.schedule.iter().enumerate() {
                for iface in interfaces
                    .iter()
                    .filter(|f| class.interfaces.as_ref().is_none_or(|l| l.contains(&f.name)))
                {
                    for (direction, capacity) in
                        [(Direction::Egress, Some(iface.egress_bps)), (Direction::Ingress, iface.ingress_bps)]
                    {
                        let (Some(capacity), Some(rate)) =
                            (capacity, window.limit(direction).and_then(|l| l.rate_bps))
                        else {
                            continue;
                        };
                        if rate > capacity {
                            return Err(ConfigError::At {
                                path: self.path.to_path_buf(),
                                pos: window.pos,
                                message: format!(
                                    "class \"{}\", schedule window {} ({}): its {} rate {} is above the {} capacity of {} ({})",
                                    class.name, i + 1, window.text, direction.as_str(), units::format_rate(rate),
                                    direction.as_str(), iface.name, units::format_rate(capacity)
                                ),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_lists_and_ranges_that_may_wrap() {
        assert_eq!(parse_days("mon-fri"), Ok(Days(0b001_1111)));
        assert_eq!(parse_days("sat,sun"), Ok(Days(0b110_0000)));
        assert_eq!(parse_days("mon-wed, fri"), Ok(Days(0b001_0111)));
        assert_eq!(parse_days("fri-mon"), Ok(Days(0b111_0001)));
        assert_eq!(parse_days("Sunday"), Ok(Days(0b100_0000)));
        assert_eq!(parse_days("wed-wed"), Ok(Days(0b000_0100)));
        assert_eq!(
            parse_days("mon-fryday"),
            Err("\"fryday\" is not a day (mon, tue, wed, thu, fri, sat, sun)".into())
        );
        assert!(parse_days("mon,,fri").unwrap_err().starts_with("a day is missing"));
        assert!(parse_days("").is_err());
    }

    #[test]
    fn hours_are_a_span_that_may_cross_midnight() {
        assert_eq!(parse_hours("09:00-18:00"), Ok((540, 1080)));
        assert_eq!(parse_hours("22:00-06:00"), Ok((1320, 360)));
        assert_eq!(parse_hours("00:00-24:00"), Ok((0, 1440)));
        assert_eq!(parse_hours("9:30-24:00"), Ok((570, 1440)));
        assert!(parse_hours("18:00-18:00").unwrap_err().contains("would be empty"));
        assert!(parse_hours("24:00-06:00").unwrap_err().contains("\"24:00\" is not a time of day"));
        assert!(parse_hours("09:60-10:00").unwrap_err().contains("\"09:60\""));
        assert!(parse_hours("09:00").unwrap_err().contains("is not a span of hours"));
        assert!(parse_hours("0900-1000").unwrap_err().contains("\"0900\" is not a time of day"));
        assert!(parse_hours("09:00-1000").is_err());
        assert!(parse_hours("09:0-10:00").is_err());
    }

    #[test]
    fn a_night_window_belongs_to_the_day_it_starts() {
        let (start, end) = parse_hours("22:00-06:00").unwrap();
        let w = Window {
            days: parse_days("fri").unwrap(),
            start,
            end,
            egress: None,
            ingress: None,
            text: String::new(),
            pos: Pos::default(),
        };
        // Friday 23:00 and Saturday 05:59 are in; Saturday 22:00 and Friday 05:00 are not.
        assert!(w.covers(4, 23 * 60));
        assert!(w.covers(5, 5 * 60 + 59));
        assert!(!w.covers(5, 22 * 60));
        assert!(!w.covers(4, 5 * 60));
        assert!(!w.covers(5, 6 * 60));
        assert_eq!(w.edges().collect::<Vec<_>>(), [(4, 1320), (5, 360)]);
    }

    fn load(text: &str) -> Result<crate::config::Config, String> {
        let env = crate::rules::SystemEnv::default();
        crate::config::parse(std::path::Path::new("t.toml"), text, &env.env()).map_err(|e| e.to_string())
    }

    const IFACE: &str = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\ningress = \"100mbit\"\n";

    #[test]
    fn windows_read_from_the_file() {
        let c = load(&format!(
            "{IFACE}[[class]]\nname = \"bulk\"\negress = \"50mbit\"\nqueue = \"pfifo\"\nschedule = [\n  \
             {{ days = \"mon-fri\", hours = \"09:00-18:00\", egress = \"2mbit\", ingress = \"10mbit:20mbit\" }},\n  \
             {{ hours = \"22:00-06:00\", ingress = \"1mbit\" }},\n]\n"
        ))
        .unwrap();
        let bulk = c.class("bulk").unwrap();
        assert_eq!(bulk.queue, Some(crate::config::QueueKind::Pfifo));
        assert_eq!(bulk.schedule.len(), 2);
        let (day, night) = (&bulk.schedule[0], &bulk.schedule[1]);
        assert_eq!((day.days, day.start, day.end), (Days(0x1f), 540, 1080));
        assert_eq!(day.egress, Some(Limit { rate_bps: Some(2_000_000), ceil_bps: Some(2_000_000) }));
        assert_eq!(day.ingress, Some(Limit { rate_bps: Some(10_000_000), ceil_bps: Some(20_000_000) }));
        assert_eq!((day.text.as_str(), day.pos.line), ("mon-fri 09:00-18:00", 10));
        assert_eq!(
            (night.days, night.egress, night.text.as_str()),
            (Days::ALL, None, "every day 22:00-06:00")
        );
    }

    #[test]
    fn window_errors_name_the_place_and_the_reason() {
        let class = |window: &str| format!("{IFACE}[[class]]\nname = \"bulk\"\nschedule = [ {window} ]\n");
        assert_eq!(
            load(&class("{ days = \"mon-fry\", egress = \"1mbit\" }")).unwrap_err(),
            "t.toml:7:23: \"fry\" is not a day (mon, tue, wed, thu, fri, sat, sun)"
        );
        assert_eq!(
            load(&class("{ hours = \"25:00-06:00\", egress = \"1mbit\" }")).unwrap_err(),
            "t.toml:7:24: \"25:00\" is not a time of day (HH:MM, 00:00 to 23:59; 24:00 as an end)"
        );
        assert!(load(&class("{ hours = \"06:00-06:00\", egress = \"1mbit\" }"))
            .unwrap_err()
            .starts_with("t.toml:7:24: the window \"06:00-06:00\" starts and ends at the same time"));
        assert_eq!(
            load(&class("{ days = \"sat\" }")).unwrap_err(),
            "t.toml:7:14: class \"bulk\", schedule window 1: an empty window: give it an egress or an ingress limit (or both)"
        );
        assert_eq!(
            load(&class("{ days = \"sat\", egress = \"200mbit\" }")).unwrap_err(),
            "t.toml:7:14: class \"bulk\", schedule window 1 (sat 00:00-24:00): its egress rate 200 Mbit/s is above \
             the egress capacity of eth0 (100 Mbit/s)"
        );
        assert!(load(&class("{ days = \"sat\", speed = \"1mbit\" }"))
            .unwrap_err()
            .contains("unknown field `speed`"));
        assert!(load(&format!("{IFACE}[[class]]\nname = \"bulk\"\nqueue = \"sfq\"\n"))
            .unwrap_err()
            .starts_with("t.toml:7:9: unknown queue \"sfq\""));
    }

    #[test]
    fn windows_count_in_the_guaranteed_rates() {
        // a has 60 Mbit/s on weekdays and b 50 all the time: 110 of 100 on weekdays.
        let text = format!(
            "{IFACE}[[class]]\nname = \"a\"\negress = \"10mbit\"\n\
             schedule = [ {{ days = \"mon-fri\", hours = \"09:00-18:00\", egress = \"60mbit\" }} ]\n\
             [[class]]\nname = \"b\"\negress = \"50mbit\"\n"
        );
        assert_eq!(
            load(&text).unwrap_err(),
            "t.toml:3:10: the classes on eth0 guarantee 110 Mbit/s of egress (a (mon-fri 09:00-18:00) 60 Mbit/s + \
             b 50 Mbit/s), more than its capacity of 100 Mbit/s"
        );
        // Two windows that never overlap fit.
        let text = format!(
            "{IFACE}[[class]]\nname = \"a\"\negress = \"10mbit\"\n\
             schedule = [ {{ days = \"mon-fri\", hours = \"09:00-18:00\", egress = \"60mbit\" }} ]\n\
             [[class]]\nname = \"b\"\negress = \"10mbit\"\n\
             schedule = [ {{ days = \"mon-fri\", hours = \"18:00-09:00\", egress = \"80mbit\" }} ]\n"
        );
        assert!(load(&text).is_ok());
    }
}
