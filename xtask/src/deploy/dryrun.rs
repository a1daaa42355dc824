//! `--dry-run`: what a deploy would change on a host (the config as a
//! unified diff, the binary's version and hash, the unit, the daemon), from
//! the probe alone: nothing is uploaded or run there.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use super::{
    host::{Job, Report},
    outcome::Outcome,
    plan::{Action, Plan},
    remote::State,
};

/// Characters of a SHA-256 shown.
const SHORT: usize = 12;

pub(crate) fn report(job: &Job<'_>, state: &State, plan: &Plan) -> Report {
    let outcome = match plan.action {
        Action::Nothing => Outcome::Unchanged,
        _ => Outcome::WouldChange(format!("{}; would {}", plan.files(), plan.verb())),
    };
    let mut details = vec![binary_line(job, state, plan)];
    details.extend(config_lines(job, state, plan));
    details.push(format!(
        "unit {}: {}",
        job.layout.unit,
        if plan.unit { "would change" } else { "unchanged" }
    ));
    details.push(match &state.daemon {
        Some(d) => format!("daemon: running (pid {}, config {})", d.pid, d.config),
        None => {
            format!("daemon: not running ({})", state.down.as_deref().unwrap_or("shaper is not installed"))
        }
    });
    Report { outcome, details }
}

fn short(hash: &str) -> &str {
    hash.get(..SHORT).unwrap_or(hash)
}

fn binary_line(job: &Job<'_>, state: &State, plan: &Plan) -> String {
    let new = format!("{} (sha256 {})", job.release.version, short(&job.release.payload.sha256));
    match (&state.binary, plan.binary) {
        (_, false) => format!("binary {}: unchanged, {new}", job.layout.binary),
        (None, true) => format!("binary {}: not installed → {new}", job.layout.binary),
        (Some(old), true) => {
            let version = state.version.as_deref().unwrap_or("?");
            format!("binary {}: {version} (sha256 {}) → {new}", job.layout.binary, short(old))
        }
    }
}

/// "config …: unchanged", or the unified diff from the installed config to the local file.
fn config_lines(job: &Job<'_>, state: &State, plan: &Plan) -> Vec<String> {
    let local = job.config.path.display().to_string();
    if !plan.config {
        return vec![format!("config {}: unchanged ({local})", job.layout.config)];
    }
    let before = if state.config.is_some() { job.layout.config.clone() } else { "/dev/null".to_string() };
    let label = format!("{}:{before}", job.ssh.target.name);
    let mut lines = vec![format!("config {}: would change ({local}):", job.layout.config)];
    match diff(&state.config_text, &label, &local) {
        Ok(text) => lines.extend(text.lines().map(|l| format!("  {l}"))),
        Err(e) => lines.push(format!("  (no diff: {e})")),
    }
    lines
}

/// `diff -u` from `before` (text, labelled `label`) to the file `after`.
fn diff(before: &str, label: &str, after: &str) -> std::io::Result<String> {
    let mut child = Command::new("diff")
        .args(["-u", "--label", label, "--label", after, "-", after])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("diff has no stdin"))?;
    let text = before.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| std::io::Error::other("writing to diff panicked"))??;
    // 0: same, 1: different, 2: trouble.
    if out.status.code() == Some(2) {
        return Err(std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn the_diff_runs_from_the_installed_text_to_the_local_file() {
        let path = std::env::temp_dir().join(format!("xtask-dryrun-{}.toml", std::process::id()));
        std::fs::write(&path, "a = 1\nb = 3\n").unwrap();
        let local = path.display().to_string();
        let text = diff("a = 1\nb = 2\n", "h1:/etc/shaper/shaper.toml", &local).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "--- h1:/etc/shaper/shaper.toml");
        assert_eq!(lines[1], format!("+++ {local}"));
        assert_eq!(&lines[2..], ["@@ -1,2 +1,2 @@", " a = 1", "-b = 2", "+b = 3"]);
        assert_eq!(diff("a = 1\nb = 3\n", "x", &local).unwrap(), "");
        std::fs::remove_file(&path).unwrap();
    }
}
