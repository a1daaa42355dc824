//! `--watch` of `classes` and `conns`: the same table again every interval,
//! until interrupted; and the interval argument they share with `top`.

use std::{
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Result;
use clap::Args;
use shaper_user::units::parse_duration;

/// The shortest interval: the daemon samples its counters once a second, so
/// faster only repeats the same rates.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Args)]
pub(crate) struct WatchArgs {
    /// Print again every --interval until interrupted (Ctrl-C).
    #[arg(long)]
    pub(crate) watch: bool,
    /// Time between two prints with --watch: "1s", "500ms", "2" (seconds).
    #[arg(long, default_value = "1s", value_parser = interval_arg)]
    pub(crate) interval: Duration,
}

/// An interval: a duration ("2s", "500ms") or a number of seconds, at least 100 ms.
pub(crate) fn interval_arg(text: &str) -> Result<Duration, String> {
    let interval = match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|_| format!("not an interval: \"{text}\"")),
        Err(_) => parse_duration(text).map_err(|e| e.to_string()),
    }?;
    if interval < MIN_INTERVAL {
        return Err(format!("an interval of at least 100ms, not \"{text}\""));
    }
    Ok(interval)
}

/// Prints once with `print`, or with --watch again every interval: on a
/// terminal over the last print, elsewhere one after the other, each under a
/// line with its time.
pub(crate) fn run(args: &WatchArgs, mut print: impl FnMut() -> Result<()>) -> Result<()> {
    if !args.watch {
        return print();
    }
    let terminal = std::io::stdout().is_terminal();
    loop {
        if terminal {
            // Home, clear the screen.
            print!("\x1b[H\x1b[2J");
        }
        let now = jiff::Zoned::now();
        println!("{}, every {}", now.strftime("%Y-%m-%d %H:%M:%S"), humane(args.interval));
        print()?;
        if !terminal {
            println!();
        }
        std::io::stdout().flush()?;
        std::thread::sleep(args.interval);
    }
}

/// "1s", "1.5s", "500ms".
pub(crate) fn humane(interval: Duration) -> String {
    if interval.subsec_millis() == 0 {
        format!("{}s", interval.as_secs())
    } else if interval < Duration::from_secs(1) {
        format!("{}ms", interval.as_millis())
    } else {
        format!("{}s", interval.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_in_seconds_or_with_a_unit() {
        assert_eq!(interval_arg("2"), Ok(Duration::from_secs(2)));
        assert_eq!(interval_arg("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(interval_arg("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(interval_arg("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(interval_arg("10ms"), Err("an interval of at least 100ms, not \"10ms\"".to_string()));
        assert!(interval_arg("soon").is_err());
        assert!(interval_arg("-1").is_err());
        assert_eq!(
            (humane(Duration::from_secs(2)), humane(Duration::from_millis(500))),
            ("2s".into(), "500ms".into())
        );
        assert_eq!(humane(Duration::from_millis(1500)), "1.5s");
    }
}
