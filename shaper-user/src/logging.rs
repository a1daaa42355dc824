//! Log lines on stderr. For a terminal or a file: env_logger's lines, with
//! a timestamp and the level. When stderr is a stream to journald (systemd
//! sets `JOURNAL_STREAM` to its `DEVICE:INODE`, see systemd.exec(5)): each
//! line is `<N>message`, N its syslog priority, with no timestamp (the
//! journal adds its own), so `journalctl -p err` finds the errors.
//! `RUST_LOG` chooses what is logged (`info` by default).

use std::{
    io::Write as _,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
};

use log::Level;

static TO_JOURNAL: AtomicBool = AtomicBool::new(false);

/// Sets up the logger for the whole process (once, first thing in `main`).
pub fn init() {
    let journal = stderr_is_journal();
    TO_JOURNAL.store(journal, Ordering::Relaxed);
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        builder.format(|buf, record| {
            writeln!(buf, "{}", journal_line(record.level(), &record.args().to_string()))
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

/// `text` as a line the CLI writes on stderr itself (its final error, a
/// warning): with its priority under journald, as it is otherwise.
pub fn line(level: Level, text: &str) -> String {
    if TO_JOURNAL.load(Ordering::Relaxed) {
        journal_line(level, text)
    } else {
        text.to_string()
    }
}

/// The syslog priority of a log level: error 3, warn 4, info 6, debug and trace 7.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `text` with its priority in front of each line (journald reads every
/// line of a stream as an entry of its own).
pub fn journal_line(level: Level, text: &str) -> String {
    let prefix = format!("<{}>", priority(level));
    text.lines().map(|l| format!("{prefix}{l}")).collect::<Vec<_>>().join("\n")
}

/// Whether stderr is the stream `JOURNAL_STREAM` names: a child that
/// inherited the variable but writes elsewhere (a terminal, `shaper start`'s
/// log file) keeps the plain format.
pub fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var("JOURNAL_STREAM").ok().as_deref().and_then(parse_journal_stream) else {
        return false;
    };
    let fd = std::io::stderr().as_raw_fd();
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on our own stderr descriptor, into a stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    named == (st.st_dev, st.st_ino)
}

/// `DEVICE:INODE`, both decimal, as systemd writes `JOURNAL_STREAM`.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream("64769:42\n"), Some((64769, 42)));
        for bad in ["", "8", "8:", ":1", "a:1", "8:1:2", "-1:2"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_line_carries_its_syslog_priority() {
        assert_eq!(journal_line(Level::Error, "shaper: bad"), "<3>shaper: bad");
        assert_eq!(journal_line(Level::Warn, "w"), "<4>w");
        assert_eq!(journal_line(Level::Info, "ready"), "<6>ready");
        assert_eq!(journal_line(Level::Debug, "d"), "<7>d");
        assert_eq!(journal_line(Level::Trace, "t"), "<7>t");
        assert_eq!(journal_line(Level::Error, "exited:\nlast line"), "<3>exited:\n<3>last line");
    }
}
