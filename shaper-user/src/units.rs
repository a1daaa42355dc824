//! Rates, durations and byte counts: parsing what users write in the config and
//! on the command line, and formatting them for people.
//!
//! Rates are bits per second (`u64`). Unlike tc, `mbps` here means megabits per
//! second, as everyone but tc reads it; bytes per second are spelled `KB/s`,
//! `MB/s`, `GB/s` (powers of 1000) or `KiB/s`, `MiB/s`, `GiB/s` (powers of 1024).

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid rate {0:?}: expected a number and a unit such as \"10mbit\", \"500kbit\", \"2MB/s\" or \"1gbit\"")]
    Rate(String),
    #[error("invalid rate {0:?}: unknown unit {1:?} (bits/s: kbit, mbit, gbit, kbps, mbps, gbps, Kbit/s, Mbit/s; bytes/s: KB/s, MB/s, GB/s, KiB/s, MiB/s)")]
    RateUnit(String, String),
    #[error("invalid rate {0:?}: too large")]
    RateTooLarge(String),
    #[error(
        "invalid duration {0:?}: expected a number and a unit such as \"500ms\", \"5s\", \"2m\" or \"1h\""
    )]
    Duration(String),
    #[error("invalid amount {0:?}: expected a number and a unit such as \"400MB\", \"20MiB\" or \"1.5GB\"")]
    Bytes(String),
}

/// Splits "12.5mbit" into (12.5, "mbit"). `None` when there is no leading number.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let text = text.trim();
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    Some((value, unit.trim()))
}

/// Bits per second of one unit, by its lowercase spelling.
fn rate_unit(unit: &str) -> Option<f64> {
    // Units where case decides bits or bytes are matched case-sensitively first.
    let bytes = match unit {
        "KB/s" | "kB/s" => Some(8e3),
        "MB/s" => Some(8e6),
        "GB/s" => Some(8e9),
        "KiB/s" => Some(8.0 * 1024.0),
        "MiB/s" => Some(8.0 * 1024.0 * 1024.0),
        "GiB/s" => Some(8.0 * 1024.0 * 1024.0 * 1024.0),
        _ => None,
    };
    if bytes.is_some() {
        return bytes;
    }
    match unit.to_ascii_lowercase().as_str() {
        "" | "bit" | "bps" | "bit/s" => Some(1.0),
        "kbit" | "kbps" | "kbit/s" => Some(1e3),
        "mbit" | "mbps" | "mbit/s" => Some(1e6),
        "gbit" | "gbps" | "gbit/s" => Some(1e9),
        _ => None,
    }
}

/// The largest rate accepted, in bits/s (10^15 - 1): HTB carries rates as
/// 64-bit bytes/s, and anything near that is a typo. It also keeps a sum of
/// every class's rate (at most `MAX_CLASSES`) far below `u64::MAX`.
pub const MAX_RATE_BPS: u64 = 999_999_999_999_999;

/// A rate given as a bare number of bits/s (a TOML integer), held to the
/// range of written ones.
pub fn rate_bps(bps: u64) -> Result<u64, UnitError> {
    if bps > MAX_RATE_BPS {
        return Err(UnitError::RateTooLarge(bps.to_string()));
    }
    Ok(bps)
}

/// Parses a rate into bits per second: `"10mbit"`, `"2.5 Mbit/s"`, `"500kbps"`,
/// `"2MB/s"`, `"1000000"` (a bare number is bits/s).
pub fn parse_rate(text: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(text).ok_or_else(|| UnitError::Rate(text.to_string()))?;
    let scale = rate_unit(unit).ok_or_else(|| UnitError::RateUnit(text.to_string(), unit.to_string()))?;
    let bps = (value * scale).round();
    if !bps.is_finite() || bps > MAX_RATE_BPS as f64 {
        return Err(UnitError::RateTooLarge(text.to_string()));
    }
    Ok(bps as u64)
}

/// Parses a duration: `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"1.5s"`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(text.to_string());
    let (value, unit) = split_number(text).ok_or_else(err)?;
    let secs = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Parses an amount of data into bytes: `"400MB"`, `"1.5 GB"`, `"20MiB"`,
/// `"512kB"`, `"1000B"` (powers of 1000 for kB, MB, GB, TB; of 1024 for KiB,
/// MiB, GiB, TiB; the case of the letters does not matter: an amount is bytes).
pub fn parse_bytes(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Bytes(text.to_string());
    let (value, unit) = split_number(text).ok_or_else(err)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "b" | "" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let bytes = (value * scale).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// A rate for people: "5 Mbit/s", "1.5 Gbit/s", "800 kbit/s".
pub fn format_rate(bps: u64) -> String {
    let (value, unit) = match bps {
        b if b >= 1_000_000_000 => (b as f64 / 1e9, "Gbit/s"),
        b if b >= 1_000_000 => (b as f64 / 1e6, "Mbit/s"),
        b if b >= 1_000 => (b as f64 / 1e3, "kbit/s"),
        b => (b as f64, "bit/s"),
    };
    format!("{} {unit}", trim_number(value))
}

/// A byte count for people: "1.2 MB", "340 kB", "17 B" (powers of 1000, like the rates).
pub fn format_bytes(bytes: u64) -> String {
    let (value, unit) = match bytes {
        b if b >= 1_000_000_000_000 => (b as f64 / 1e12, "TB"),
        b if b >= 1_000_000_000 => (b as f64 / 1e9, "GB"),
        b if b >= 1_000_000 => (b as f64 / 1e6, "MB"),
        b if b >= 1_000 => (b as f64 / 1e3, "kB"),
        b => (b as f64, "B"),
    };
    format!("{} {unit}", trim_number(value))
}

/// Up to three significant digits, no trailing zeros: 5, 12.5, 1.25, 125.
fn trim_number(value: f64) -> String {
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_bytes_in_powers_of_1000_or_1024() {
        assert_eq!(parse_bytes("400MB"), Ok(400_000_000));
        assert_eq!(parse_bytes("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("20MiB"), Ok(20 * 1024 * 1024));
        assert_eq!(parse_bytes("512kb"), Ok(512_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(
            parse_bytes("400 mbit").unwrap_err().to_string(),
            "invalid amount \"400 mbit\": expected a number and a unit such as \"400MB\", \"20MiB\" or \"1.5GB\""
        );
    }

    #[test]
    fn bit_rates_in_every_spelling() {
        for (text, bps) in [
            ("10mbit", 10_000_000),
            ("10Mbit", 10_000_000),
            ("10 mbit", 10_000_000),
            ("10mbps", 10_000_000),
            ("10MBPS", 10_000_000),
            ("10Mbit/s", 10_000_000),
            ("500kbit", 500_000),
            ("500Kbit/s", 500_000),
            ("500kbps", 500_000),
            ("2.5gbit", 2_500_000_000),
            ("1gbps", 1_000_000_000),
            ("1Gbit/s", 1_000_000_000),
            ("64000", 64_000),
            ("1.5mbit", 1_500_000),
        ] {
            assert_eq!(parse_rate(text), Ok(bps), "{text}");
        }
    }

    #[test]
    fn byte_rates_are_multiplied_by_eight() {
        assert_eq!(parse_rate("1MB/s"), Ok(8_000_000));
        assert_eq!(parse_rate("100KB/s"), Ok(800_000));
        assert_eq!(parse_rate("1GB/s"), Ok(8_000_000_000));
        assert_eq!(parse_rate("1KiB/s"), Ok(8_192));
        assert_eq!(parse_rate("2MiB/s"), Ok(16_777_216));
    }

    #[test]
    fn bad_rates_say_what_is_wrong() {
        assert_eq!(parse_rate("fast"), Err(UnitError::Rate("fast".into())));
        assert_eq!(parse_rate(""), Err(UnitError::Rate("".into())));
        assert_eq!(parse_rate("-5mbit"), Err(UnitError::Rate("-5mbit".into())));
        assert_eq!(
            parse_rate("10 furlongs"),
            Err(UnitError::RateUnit("10 furlongs".into(), "furlongs".into()))
        );
        // tc's "mbps" (megabytes) is not silently accepted with another meaning: it
        // means megabits here, and a byte unit must say "/s".
        assert_eq!(parse_rate("10mb"), Err(UnitError::RateUnit("10mb".into(), "mb".into())));
        assert_eq!(parse_rate("10MB"), Err(UnitError::RateUnit("10MB".into(), "MB".into())));
        assert_eq!(parse_rate("1.2.3mbit"), Err(UnitError::Rate("1.2.3mbit".into())));
        assert_eq!(
            parse_rate("99999999tbit"),
            Err(UnitError::RateUnit("99999999tbit".into(), "tbit".into()))
        );
        assert_eq!(parse_rate("99999999999gbit"), Err(UnitError::RateTooLarge("99999999999gbit".into())));
        assert!(parse_rate("10mbit").unwrap_or(0) > 0);
        let message = parse_rate("10 furlongs").unwrap_err().to_string();
        assert!(message.contains("unknown unit \"furlongs\""), "{message}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["5", "5 sec", "s", "-1s", "1d", ""] {
            assert_eq!(parse_duration(bad), Err(UnitError::Duration(bad.into())), "{bad}");
        }
    }

    #[test]
    fn formatting_for_people() {
        assert_eq!(format_rate(5_000_000), "5 Mbit/s");
        assert_eq!(format_rate(12_500_000), "12.5 Mbit/s");
        assert_eq!(format_rate(1_250_000_000), "1.25 Gbit/s");
        assert_eq!(format_rate(800_000), "800 kbit/s");
        assert_eq!(format_rate(0), "0 bit/s");
        assert_eq!(format_bytes(1_234_567), "1.23 MB");
        assert_eq!(format_bytes(17), "17 B");
        assert_eq!(format_bytes(340_000), "340 kB");
    }
}
