//! The one summary line per host.

use std::fmt;

/// How a host ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// New files are in place and the daemon runs them (what happened, in words).
    Changed(String),
    Unchanged,
    /// `--dry-run`: what a deploy would do.
    WouldChange(String),
    /// The new binary's `shaper check` refused the config: `FILE:LINE…: reason`,
    /// FILE being the local file the user edits.
    Refused(String),
    /// ssh could not reach the host (ssh's reason).
    Unreachable(String),
    /// Anything else; the host keeps what it had.
    Failed(String),
}

impl Outcome {
    /// Whether the deploy as a whole fails because of this host.
    pub fn failed(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Unreachable(_) | Self::Failed(_))
    }

    /// The word the tally counts it under.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Changed(_) => "changed",
            Self::Unchanged => "unchanged",
            Self::WouldChange(_) => "would change",
            Self::Refused(_) => "refused",
            Self::Unreachable(_) => "unreachable",
            Self::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unchanged => f.write_str("unchanged"),
            Self::Changed(why)
            | Self::WouldChange(why)
            | Self::Refused(why)
            | Self::Unreachable(why)
            | Self::Failed(why) => write!(f, "{}: {why}", self.kind()),
        }
    }
}

/// shaper's reason from its stderr: the `shaper: …` line (log lines may
/// precede it), with `remote` (the uploaded temp name) replaced by `local`.
pub(crate) fn shaper_reason(stderr: &str, remote: &str, local: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("shaper: "))
        .or_else(|| lines.first().copied())
        .unwrap_or("no reason given");
    line.replace(remote, local)
}

/// Why an activation failed: its `deploy: …` line and shaper's reason, if any.
pub(crate) fn activation_failure(stderr: &str) -> String {
    let ours = stderr.lines().find_map(|l| l.strip_prefix("deploy: ")).unwrap_or("the activation failed");
    match stderr.lines().find_map(|l| l.strip_prefix("shaper: ")) {
        Some(why) => format!("{ours}: {why}"),
        None => ours.to_string(),
    }
}

/// The tally after the per-host lines: "2 changed, 1 refused".
pub(crate) fn tally(outcomes: &[Outcome]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for o in outcomes {
        match counts.iter_mut().find(|(k, _)| *k == o.kind()) {
            Some((_, n)) => *n += 1,
            None => counts.push((o.kind(), 1)),
        }
    }
    counts.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_the_issue_writes_them() {
        assert_eq!(Outcome::Unchanged.to_string(), "unchanged");
        assert_eq!(Outcome::Changed("reloaded".into()).to_string(), "changed: reloaded");
        assert_eq!(Outcome::Refused("h.toml:3:8: x".into()).to_string(), "refused: h.toml:3:8: x");
        assert!(Outcome::Unreachable("ssh: …".into()).failed());
        assert!(!Outcome::WouldChange("config".into()).failed());
    }

    #[test]
    fn the_refusal_names_the_local_file() {
        let stderr = "[2025-01-01T00:00:00Z WARN shaper] something\nshaper: /r/etc/shaper/shaper.toml.deploy-9-1:3:8: interface \"x\" does not exist\n";
        assert_eq!(
            shaper_reason(stderr, "/r/etc/shaper/shaper.toml.deploy-9-1", "hosts/h1.toml"),
            "hosts/h1.toml:3:8: interface \"x\" does not exist"
        );
        assert_eq!(shaper_reason("\nbash: shaper: not found\n", "/r/x", "h.toml"), "bash: shaper: not found");
    }

    #[test]
    fn an_activation_failure_says_what_and_why() {
        let stderr = "shaper: reload refused: x\ndeploy: the daemon refused the config\n";
        assert_eq!(activation_failure(stderr), "the daemon refused the config: reload refused: x");
        assert_eq!(activation_failure(""), "the activation failed");
    }

    #[test]
    fn the_tally_counts_in_order_of_appearance() {
        let all = [Outcome::Unchanged, Outcome::Refused("r".into()), Outcome::Unchanged];
        assert_eq!(tally(&all), "2 unchanged, 1 refused");
    }
}
