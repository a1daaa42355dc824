//! `top --batch`: the live view's tables as plain text, a frame every
//! interval (like `top -b`), for scripts and logs.

use std::{io::Write as _, path::Path, time::Instant};

use anyhow::Result;
use shaper_user::{control::client, table::Table};

use super::{
    views::{grid, summary, Sort, View},
    TopArgs,
};

/// Prints frames until `-n` of them are out (or forever).
pub(crate) fn run(args: &TopArgs, socket: &Path) -> Result<()> {
    let mut next = Instant::now();
    let mut printed = 0u64;
    while args.frames.is_none_or(|n| printed < n) {
        if printed > 0 {
            next += args.interval;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let report = client::top(socket, args.rows)?;
        let mut out = std::io::stdout().lock();
        if args.client.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else {
            let now = jiff::Zoned::now();
            writeln!(out, "shaper top, {}: {}", now.strftime("%Y-%m-%d %H:%M:%S"), summary(&report))?;
            for view in View::ALL {
                let g = grid(&report, view, Sort::Rate);
                let mut table = Table::new(&g.columns);
                g.rows.into_iter().for_each(|r| table.row(r));
                writeln!(out, "\n{}:\n{}", view.title(), table.render().trim_end())?;
            }
            writeln!(out)?;
        }
        out.flush()?;
        printed += 1;
    }
    Ok(())
}
