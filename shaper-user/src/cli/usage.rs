//! `shaper usage`: every quota and where it stands, for people or as JSON.

use anyhow::Result;
use shaper_user::{control::UsageRow, table::Table, units::format_bytes};

use super::print::print_json;

/// A time of a period's bounds, in local time ("2026-12-01 00:00").
fn local_time(secs: u64) -> String {
    let Ok(ts) = jiff::Timestamp::from_second(secs as i64) else { return secs.to_string() };
    ts.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M").to_string()
}

pub(crate) fn print_usage(rows: &[UsageRow], json: bool) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no class has a quota");
        return Ok(());
    }
    let mut table = Table::new(&[
        ("CLASS", false),
        ("INSTANCE", false),
        ("USED", true),
        ("LIMIT", true),
        ("%", true),
        ("DIR", false),
        ("THEN", false),
        ("PERIOD", false),
        ("STATE", false),
    ]);
    for r in rows {
        table.row(vec![
            r.class.clone(),
            r.instance.clone().unwrap_or_else(|| "-".to_string()),
            format_bytes(r.used_bytes),
            format_bytes(r.limit_bytes),
            format!("{:.1}", r.percent),
            r.direction.clone(),
            r.then.clone(),
            format!("{} to {}", local_time(r.period_start), local_time(r.period_end)),
            r.state.as_str().to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}
