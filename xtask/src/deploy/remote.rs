//! The host's side: where shaper's files live there, the read-only probe of
//! what is installed and running, and the scripts (POSIX sh) that check,
//! install and activate a new version.
//!
//! Every path is quoted with [`quote`]; scripts use only sh, coreutils and,
//! where the host runs it, systemctl.

use serde::Deserialize;

use super::{
    plan::{Action, Plan, Starter},
    ssh::quote,
};

/// Marks the end of the probe's fields; the installed config follows verbatim.
const CONFIG_MARK: &str = "@@ config";
/// Suffix of the previous version of a file while an activation may still undo it.
const PREV: &str = ".deploy-prev";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("the probe's output has no `{CONFIG_MARK}` line: {0}")]
    Truncated(String),
    #[error("the daemon's status is not readable JSON ({0})")]
    Status(#[source] serde_json::Error),
}

/// The three files on one host, under its remote root ("" for the real paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub root: String,
    pub binary: String,
    pub config: String,
    pub unit: String,
}

impl Layout {
    /// `root` as given to `--remote-root` (`{host}` stands for `host`), or none.
    pub fn new(root: Option<&str>, host: &str) -> Self {
        let root =
            root.map_or_else(String::new, |r| r.replace("{host}", host).trim_end_matches('/').to_string());
        Self {
            binary: format!("{root}/usr/local/bin/shaper"),
            config: format!("{root}/etc/shaper/shaper.toml"),
            unit: format!("{root}/etc/systemd/system/shaper.service"),
            root,
        }
    }

    /// The name a new version of `path` is uploaded under (next to it, so
    /// the move into place is a rename).
    pub fn temp(path: &str, nonce: &str) -> String {
        format!("{path}.deploy-{nonce}")
    }

    /// Directories the files go to.
    pub fn dirs(&self) -> [String; 3] {
        [&self.binary, &self.config, &self.unit]
            .map(|p| p.rsplit_once('/').map_or("/", |(d, _)| d).to_string())
    }
}

/// The parts of `shaper status --json` deploy reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct Daemon {
    pub pid: u32,
    /// The config file the daemon reads.
    pub config: String,
}

/// What the probe found on a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// SHA-256 of the installed binary, config and unit (`None`: absent).
    pub binary: Option<String>,
    pub config: Option<String>,
    pub unit: Option<String>,
    /// `shaper --version` of the installed binary.
    pub version: Option<String>,
    /// The host runs systemd.
    pub systemd: bool,
    /// The daemon that answers on the installed config's control socket.
    pub daemon: Option<Daemon>,
    /// Why none answers, when shaper is installed: `shaper status`'s exit
    /// code and first line (3: the daemon cannot be reached).
    pub down: Option<String>,
    /// The installed config's text (for the dry run's diff).
    pub config_text: String,
}

/// Prints the state of the files at `layout` and of the daemon; changes nothing.
pub(crate) fn probe_script(layout: &Layout) -> String {
    format!(
        r#"B={b}; C={c}; U={u}
h() {{ if [ -f "$1" ]; then sha256sum < "$1" | cut -d ' ' -f 1; else echo -; fi; }}
echo "binary $(h "$B")"; echo "config $(h "$C")"; echo "unit $(h "$U")"
if [ -x "$B" ]; then echo "version $("$B" --version 2>&1 | head -n 1)"; fi
if [ -d /run/systemd/system ]; then echo "systemd yes"; fi
if [ -x "$B" ] && [ -f "$C" ]; then
  if s=$("$B" status --json --config "$C" 2>/dev/null); then
    echo "status $(printf '%s' "$s" | tr -d '\n')"
  else
    echo "down $? $("$B" status --config "$C" 2>&1 >/dev/null | head -n 1)"
  fi
fi
echo {mark}
if [ -f "$C" ]; then cat "$C"; fi
"#,
        b = quote(&layout.binary),
        c = quote(&layout.config),
        u = quote(&layout.unit),
        mark = quote(CONFIG_MARK),
    )
}

pub(crate) fn parse_probe(out: &str) -> Result<State, ProbeError> {
    let (fields, config_text) = match out.split_once(&format!("{CONFIG_MARK}\n")) {
        Some(parts) => parts,
        None => return Err(ProbeError::Truncated(out.lines().next().unwrap_or("").to_string())),
    };
    let mut state = State { config_text: config_text.to_string(), ..State::default() };
    let hash = |v: &str| (v != "-").then(|| v.to_string());
    for line in fields.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "binary" => state.binary = hash(value),
            "config" => state.config = hash(value),
            "unit" => state.unit = hash(value),
            "version" => state.version = Some(value.to_string()),
            "systemd" => state.systemd = value == "yes",
            "status" => state.daemon = Some(serde_json::from_str(value).map_err(ProbeError::Status)?),
            "down" => {
                let (code, why) = value.split_once(' ').unwrap_or((value, ""));
                state.down = Some(
                    format!("shaper status exit {code}: {}", why.trim()).trim_end_matches(": ").to_string(),
                );
            }
            _ => {}
        }
    }
    Ok(state)
}

/// Runs the new binary's `check` on the new config (the temp names, or the
/// installed ones where they do not change).
pub(crate) fn check_script(binary: &str, config: &str) -> String {
    format!("chmod 0755 {b} && exec {b} check --config {c} >/dev/null", b = quote(binary), c = quote(config))
}

/// Removes uploaded files (after a refused check).
pub(crate) fn remove_script(paths: &[String]) -> String {
    let quoted: Vec<String> = paths.iter().map(|p| quote(p)).collect();
    format!("rm -f {}", quoted.join(" "))
}

/// One file the activation moves into place.
#[derive(Clone, Debug)]
pub(crate) struct Swap {
    pub temp: String,
    pub dest: String,
}

/// Moves the uploaded files into place and brings the daemon to them (see
/// [`Action`]), printing `applied …` (a reload's summary) and `status JSON`
/// on success. If any step fails, the previous files come back (and a daemon
/// it stopped is started again from them): the host is as it was, and the
/// script says why on stderr (`deploy: …`, after shaper's own message).
pub(crate) fn activate_script(layout: &Layout, plan: &Plan, swaps: &[Swap]) -> String {
    let (b, c) = (quote(&layout.binary), quote(&layout.config));
    let mut s = String::from(ACTIVATE_LIB);
    s += &rollback_fn(plan, swaps, &b, &c);
    if plan.action == Action::Swap {
        s += &format!(
            "{b} stop --keep --config {c} >/dev/null || fail 'shaper stop --keep failed'\nstopped=1\n"
        );
    }
    for (i, swap) in swaps.iter().enumerate() {
        let (temp, dest) = (quote(&swap.temp), quote(&swap.dest));
        s += &format!("prev {dest} && mv -f {temp} {dest} && put{i}=1 || fail \"cannot install \"{dest}\n");
    }
    if plan.starter == Starter::Systemd && plan.unit {
        s += "systemctl daemon-reload || fail 'systemctl daemon-reload failed'\n";
    }
    s += &match plan.action {
        Action::Reload => {
            format!("r=$({b} reload --config {c}) || fail 'the daemon refused the config'\necho \"$r\"\n")
        }
        Action::Swap | Action::Start => {
            start_command(plan.starter, &b, &c, "fail 'the new daemon did not start'")
        }
        Action::Install | Action::Nothing => String::new(),
    };
    for swap in swaps {
        s += &format!("rm -f {}\n", quote(&format!("{}{PREV}", swap.dest)));
    }
    if plan.starter == Starter::Systemd && plan.action != Action::Reload {
        s += "systemctl enable --quiet shaper.service || echo 'deploy: systemctl enable failed' >&2\n";
    }
    s += &format!(
        "s=$({b} status --json --config {c}) && echo \"status $(printf '%s' \"$s\" | tr -d '\\n')\"\n"
    );
    s
}

/// Helpers of the activation: `prev F` keeps F's current version as F.deploy-prev
/// (a hard link), `back F` restores it (or removes F if it did not exist), `fail
/// MESSAGE` undoes everything and exits 1.
const ACTIVATE_LIB: &str = r#"stopped=0
prev() { rm -f "$1.deploy-prev" && if [ -e "$1" ]; then ln -f "$1" "$1.deploy-prev"; fi; }
back() { if [ -e "$1.deploy-prev" ]; then mv -f "$1.deploy-prev" "$1"; else rm -f "$1"; fi; }
fail() { echo "deploy: $1" >&2; rollback; exit 1; }
"#;

fn rollback_fn(plan: &Plan, swaps: &[Swap], b: &str, c: &str) -> String {
    let mut s = String::new();
    let mut body = String::new();
    for (i, swap) in swaps.iter().enumerate() {
        let (temp, dest) = (quote(&swap.temp), quote(&swap.dest));
        let prev = quote(&format!("{}{PREV}", swap.dest));
        s += &format!("put{i}=0\n");
        body += &format!("  rm -f {temp}; if [ $put{i} = 1 ]; then back {dest}; else rm -f {prev}; fi\n");
    }
    if plan.starter == Starter::Systemd && plan.unit {
        body += "  systemctl daemon-reload\n";
    }
    // The daemon `stop --keep` ended: its successor from the previous files
    // takes shaping over again.
    let restart =
        start_command(plan.starter, b, c, "echo 'deploy: restarting the previous daemon failed too' >&2");
    body += &format!(
        "  if [ $stopped = 1 ]; then\n    {}  fi\n",
        restart.replace('\n', "\n    ").trim_end_matches(' ')
    );
    s + &format!("rollback() {{\n{body}}}\n")
}

/// Starts the daemon from the installed files; runs `on_error` if it does not start.
fn start_command(starter: Starter, b: &str, c: &str, on_error: &str) -> String {
    match starter {
        Starter::Systemd => format!("systemctl start shaper.service || {{ {on_error}; }}\n"),
        Starter::Shaper => format!("{b} start --config {c} >/dev/null || {{ {on_error}; }}\n"),
    }
}

/// What the activation printed: the reload's summary and the daemon now running.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Activated {
    pub applied: Option<String>,
    pub daemon: Option<Daemon>,
}

pub(crate) fn parse_activated(stdout: &str) -> Activated {
    let mut out = Activated::default();
    for line in stdout.lines() {
        if let Some(json) = line.strip_prefix("status ") {
            out.daemon = serde_json::from_str(json).ok();
        } else if line.starts_with("applied ") || line.starts_with("take effect at the next start: ") {
            // `shaper reload`'s summary, and the settings a reload could not apply.
            out.applied = Some(match out.applied.take() {
                Some(before) => format!("{before}; {line}"),
                None => line.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
