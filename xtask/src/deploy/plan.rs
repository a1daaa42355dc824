//! What a deploy does on one host: the files that differ from what is
//! installed there (by SHA-256), and what the daemon needs to take them.

use super::remote::State;

/// What happens to the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Same binary, config and unit, and a daemon runs: nothing to do.
    Nothing,
    /// Only the unit differs and a daemon runs: install it (it applies at the next start).
    Install,
    /// The config differs, the binary does not, and a daemon runs: a live reload.
    Reload,
    /// The binary differs and a daemon runs: `shaper stop --keep`, then the
    /// new binary starts and takes the pinned shaping over (no unshaped moment).
    Swap,
    /// No daemon answers: start one.
    Start,
}

/// How a daemon is started on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Starter {
    /// `systemctl start shaper.service` (the host runs systemd, no `--remote-root`).
    Systemd,
    /// `shaper start --config …`.
    Shaper,
}

/// The SHA-256 of what this deploy installs on a host.
#[derive(Clone, Debug)]
pub(crate) struct Wanted<'a> {
    pub binary: &'a str,
    pub config: &'a str,
    pub unit: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Which files differ from the installed ones.
    pub binary: bool,
    pub config: bool,
    pub unit: bool,
    pub action: Action,
    pub starter: Starter,
}

impl Plan {
    /// `rooted`: the files go under a `--remote-root` (never through systemd).
    pub fn new(wanted: &Wanted<'_>, state: &State, rooted: bool) -> Self {
        let differs = |have: &Option<String>, want: &str| have.as_deref() != Some(want);
        let binary = differs(&state.binary, wanted.binary);
        let config = differs(&state.config, wanted.config);
        let unit = differs(&state.unit, wanted.unit);
        let action = match (state.daemon.is_some(), binary, config, unit) {
            (false, ..) => Action::Start,
            (true, true, ..) => Action::Swap,
            (true, false, true, _) => Action::Reload,
            (true, false, false, true) => Action::Install,
            (true, false, false, false) => Action::Nothing,
        };
        let starter = if state.systemd && !rooted { Starter::Systemd } else { Starter::Shaper };
        Self { binary, config, unit, action, starter }
    }

    /// The files that change, for the summary ("binary, config").
    pub fn files(&self) -> String {
        let names: Vec<&str> = [(self.binary, "binary"), (self.config, "config"), (self.unit, "unit")]
            .into_iter()
            .filter_map(|(changed, name)| changed.then_some(name))
            .collect();
        if names.is_empty() {
            "no file".to_string()
        } else {
            names.join(", ")
        }
    }

    /// What the daemon goes through, in words ("reload the config").
    pub fn verb(&self) -> &'static str {
        match (self.action, self.starter) {
            (Action::Nothing, _) => "nothing to do",
            (Action::Install, _) => "install (the unit applies at the next start)",
            (Action::Reload, _) => "reload the config",
            (Action::Swap, Starter::Systemd) => {
                "swap the binary (shaper stop --keep, systemctl start shaper)"
            }
            (Action::Swap, Starter::Shaper) => "swap the binary (shaper stop --keep, shaper start)",
            (Action::Start, Starter::Systemd) => "start the daemon (systemctl start shaper)",
            (Action::Start, Starter::Shaper) => "start the daemon (shaper start)",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::deploy::remote::Daemon;

    fn state(binary: &str, config: &str, running: bool) -> State {
        State {
            binary: Some(binary.into()),
            config: Some(config.into()),
            unit: Some("u".into()),
            daemon: running.then(|| Daemon { pid: 7, config: "/etc/shaper/shaper.toml".into() }),
            ..State::default()
        }
    }

    #[test]
    fn the_action_follows_from_what_differs_and_whether_a_daemon_runs() {
        let wanted = Wanted { binary: "b", config: "c", unit: "u" };
        let action = |s: &State| Plan::new(&wanted, s, true).action;
        assert_eq!(action(&state("b", "c", true)), Action::Nothing);
        assert_eq!(action(&state("b", "c", false)), Action::Start);
        assert_eq!(action(&state("b", "old", true)), Action::Reload);
        assert_eq!(action(&state("old", "c", true)), Action::Swap);
        assert_eq!(action(&state("old", "old", true)), Action::Swap);
        assert_eq!(action(&State::default()), Action::Start);
        let unit_only = State { unit: Some("old".into()), ..state("b", "c", true) };
        let plan = Plan::new(&wanted, &unit_only, true);
        assert_eq!((plan.action, plan.files()), (Action::Install, "unit".to_string()));
        let fresh = Plan::new(&wanted, &State::default(), false);
        assert_eq!(fresh.files(), "binary, config, unit");
    }

    #[test]
    fn systemd_starts_the_daemon_only_for_the_real_paths() {
        let wanted = Wanted { binary: "b", config: "c", unit: "u" };
        let on_systemd = State { systemd: true, ..State::default() };
        assert_eq!(Plan::new(&wanted, &on_systemd, false).starter, Starter::Systemd);
        assert_eq!(Plan::new(&wanted, &on_systemd, true).starter, Starter::Shaper);
        assert_eq!(Plan::new(&wanted, &State::default(), false).starter, Starter::Shaper);
    }
}
