//! The probe and the activation scripts run here with `sh`, on a layout in a
//! temporary directory, with a fake `shaper` (a shell script that logs its
//! calls and fails where a test asks it to).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use super::*;
use crate::deploy::plan::{Plan, Starter};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A remote root in /tmp with a fake shaper, removed on drop.
struct Host {
    dir: PathBuf,
    layout: Layout,
}

impl Host {
    fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xtask-remote-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = Layout::new(Some(&format!("{}/{{host}}", dir.display())), "h1");
        for d in layout.dirs() {
            std::fs::create_dir_all(d).unwrap();
        }
        Self { dir, layout }
    }

    /// A host with the "old" binary and config installed and its daemon running.
    fn running() -> Self {
        let host = Self::new();
        host.shaper(&host.layout.binary, "old");
        host.write(&host.layout.config, "old");
        host.flag("running");
        host
    }

    /// Uploads a "new" binary and/or config under their temporary names.
    fn upload(&self, binary: bool, config: bool) -> Vec<Swap> {
        let mut swaps = Vec::new();
        if binary {
            swaps.push(swap(&self.layout.binary));
            self.shaper(&swaps[0].temp, "new");
        }
        if config {
            let c = swap(&self.layout.config);
            self.write(&c.temp, "new");
            swaps.push(c);
        }
        swaps
    }

    /// Runs the activation of `action` for the files `swaps`.
    fn activate(&self, action: Action, swaps: &[Swap]) -> (bool, String, String) {
        let (binary, config) = (
            swaps.iter().any(|s| s.dest == self.layout.binary),
            swaps.iter().any(|s| s.dest == self.layout.config),
        );
        self.sh(&activate_script(&self.layout, &plan(action, binary, config), swaps))
    }

    fn log(&self) -> PathBuf {
        self.dir.join("calls.log")
    }

    /// A fake shaper calling itself `name`: logs "NAME ARGS" and fails the
    /// verbs that have a file `fail-VERB` in the test directory.
    fn shaper(&self, path: &str, name: &str) {
        let script = format!(
            "#!/bin/sh\necho \"{name} $*\" >> '{log}'\nif [ -e '{dir}/fail-'\"$1\" ]; then echo \"shaper: $1 failed\" >&2; exit 1; fi\n\
             case \"$1\" in\n  --version) echo 'shaper {name}';;\n  status) [ -e '{dir}/running' ] && printf '{{\\n\"pid\": 42,\\n\"config\": \"%s\"}}\\n' \"$4\" || exit 1;;\n\
             \x20 reload) echo 'applied in 1 ms: classes changed: bulk';;\n  stop) rm -f '{dir}/running';;\n  start) touch '{dir}/running';;\nesac\n",
            log = self.log().display(),
            dir = self.dir.display(),
        );
        std::fs::write(path, script).unwrap();
        run("chmod", &["755", path]);
    }

    fn write(&self, path: &str, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    fn flag(&self, name: &str) {
        std::fs::write(self.dir.join(name), "").unwrap();
    }

    /// A fake `systemctl` first on PATH: logs its calls, `start` fails once
    /// where the test directory has `fail-systemctl`.
    fn systemctl(&self) {
        let bin = self.dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let (log, dir) = (self.log().display().to_string(), self.dir.display().to_string());
        let script = format!(
            "#!/bin/sh\necho \"systemctl $*\" >> '{log}'\n[ \"$1\" = start ] || exit 0\n\
             if [ -e '{dir}/fail-systemctl' ]; then rm '{dir}/fail-systemctl'; exit 1; fi\ntouch '{dir}/running'\n"
        );
        let path = bin.join("systemctl").display().to_string();
        std::fs::write(&path, script).unwrap();
        run("chmod", &["755", &path]);
    }

    fn sh(&self, script: &str) -> (bool, String, String) {
        let path =
            format!("{}:{}", self.dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("sh").arg("-c").arg(script).env("PATH", path).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log()).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Every file under the remote root.
    fn files(&self) -> Vec<String> {
        let out = Command::new("find").arg(&self.layout.root).arg("-type").arg("f").output().unwrap();
        let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.strip_prefix(self.layout.root.as_str()).unwrap_or(l).to_string())
            .collect();
        files.sort();
        files
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(program: &str, args: &[&str]) {
    assert!(Command::new(program).args(args).status().unwrap().success());
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn plan(action: Action, binary: bool, config: bool) -> Plan {
    Plan { binary, config, unit: false, action, starter: Starter::Shaper }
}

/// The calls, each with `--config CONFIG`.
fn on(config: &str, calls: &[&str]) -> Vec<String> {
    calls.iter().map(|c| format!("{c} --config {config}")).collect()
}

fn swap(path: &str) -> Swap {
    Swap { temp: Layout::temp(path, "t"), dest: path.to_string() }
}

#[test]
fn layout_under_a_remote_root_with_the_host_name() {
    let l = Layout::new(Some("/srv/{host}/"), "web1");
    assert_eq!(l.root, "/srv/web1");
    assert_eq!(l.binary, "/srv/web1/usr/local/bin/shaper");
    assert_eq!(l.config, "/srv/web1/etc/shaper/shaper.toml");
    assert_eq!(l.unit, "/srv/web1/etc/systemd/system/shaper.service");
    assert_eq!(l.dirs(), ["/srv/web1/usr/local/bin", "/srv/web1/etc/shaper", "/srv/web1/etc/systemd/system"]);
    let real = Layout::new(None, "web1");
    assert_eq!((real.root.as_str(), real.binary.as_str()), ("", "/usr/local/bin/shaper"));
    assert_eq!(Layout::temp("/a/shaper", "12-0"), "/a/shaper.deploy-12-0");
}

#[test]
fn the_probe_reports_hashes_version_daemon_and_the_config_text() {
    let host = Host::new();
    let l = &host.layout;
    let empty = parse_probe(&host.sh(&probe_script(l)).1).unwrap();
    assert_eq!(empty, State::default());

    host.shaper(&l.binary, "old");
    host.write(&l.config, "[[interface]]\n@@ config\n");
    let stopped = parse_probe(&host.sh(&probe_script(l)).1).unwrap();
    assert_eq!((stopped.daemon, stopped.down.as_deref()), (None, Some("shaper status exit 1")));
    host.flag("fail-status");
    let stopped = parse_probe(&host.sh(&probe_script(l)).1).unwrap();
    assert_eq!(stopped.down.as_deref(), Some("shaper status exit 1: shaper: status failed"));
    std::fs::remove_file(host.dir.join("fail-status")).unwrap();
    host.flag("running");
    let (ok, out, err) = host.sh(&probe_script(l));
    assert!(ok, "{err}");
    let state = parse_probe(&out).unwrap();
    assert_eq!(state.version.as_deref(), Some("shaper old"));
    assert_eq!(state.daemon, Some(Daemon { pid: 42, config: l.config.clone() }));
    assert_eq!(state.config_text, "[[interface]]\n@@ config\n");
    assert_eq!(state.unit, None);
    // sha256 of the text above.
    let sum = Command::new("sha256sum").arg(&l.config).output().unwrap();
    assert_eq!(state.config.as_deref(), String::from_utf8_lossy(&sum.stdout).split(' ').next());
    let calls = host.calls();
    assert_eq!(
        calls[calls.len() - 2..],
        ["old --version", &format!("old status --json --config {}", l.config)]
    );
}

#[test]
fn a_probe_cut_short_is_an_error() {
    assert!(matches!(parse_probe("binary -\n"), Err(ProbeError::Truncated(_))));
    assert!(matches!(parse_probe("status {\n@@ config\n"), Err(ProbeError::Status(_))));
}

#[test]
fn a_reload_moves_the_config_in_and_reports_the_daemon() {
    let host = Host::running();
    let l = &host.layout;
    let (ok, out, err) = host.activate(Action::Reload, &host.upload(false, true));
    assert!(ok, "{err}");
    assert_eq!(read(&l.config), "new");
    let activated = parse_activated(&out);
    assert_eq!(activated.applied.as_deref(), Some("applied in 1 ms: classes changed: bulk"));
    assert_eq!(activated.daemon.map(|d| d.pid), Some(42));
    assert_eq!(host.files(), ["/etc/shaper/shaper.toml", "/usr/local/bin/shaper"]);
}

#[test]
fn a_refused_reload_puts_the_previous_config_back() {
    let host = Host::running();
    let l = &host.layout;
    host.flag("fail-reload");
    let (ok, _, err) = host.activate(Action::Reload, &host.upload(false, true));
    assert!(!ok);
    assert_eq!(
        crate::deploy::outcome::activation_failure(&err),
        "the daemon refused the config: reload failed"
    );
    assert_eq!(read(&l.config), "old");
    assert_eq!(host.files(), ["/etc/shaper/shaper.toml", "/usr/local/bin/shaper"]);
}

#[test]
fn a_new_binary_is_swapped_with_stop_keep_then_a_start_of_the_new_one() {
    let host = Host::running();
    let l = &host.layout;
    let (ok, _, err) = host.activate(Action::Swap, &host.upload(true, true));
    assert!(ok, "{err}");
    assert_eq!(host.calls(), on(&l.config, &["old stop --keep", "new start", "new status --json"]));
    assert_eq!(read(&l.config), "new");
    assert_eq!(host.files(), ["/etc/shaper/shaper.toml", "/usr/local/bin/shaper"]);
}

#[test]
fn a_new_binary_that_does_not_start_hands_shaping_back_to_the_old_one() {
    let host = Host::running();
    let l = &host.layout;
    let swaps = host.upload(true, false);
    // Only the new binary fails to start.
    let new = &swaps[0].temp;
    std::fs::write(new, read(new).replace("start) touch", "start) exit 1; touch")).unwrap();
    let (ok, _, err) = host.activate(Action::Swap, &swaps);
    assert!(!ok);
    assert!(err.contains("deploy: the new daemon did not start"), "{err}");
    assert_eq!(host.calls(), on(&l.config, &["old stop --keep", "new start", "old start"]));
    assert!(read(&l.binary).contains("echo \"old $*\""), "the old binary is not back");
    assert_eq!(host.files(), ["/etc/shaper/shaper.toml", "/usr/local/bin/shaper"]);
}

#[test]
fn a_first_start_that_fails_leaves_no_file_behind() {
    let host = Host::new();
    let swaps = host.upload(true, true);
    host.flag("fail-start");
    let (ok, _, err) = host.activate(Action::Start, &swaps);
    assert!(!ok);
    assert!(err.contains("deploy: the new daemon did not start"), "{err}");
    assert_eq!(host.files(), Vec::<String>::new());
}

#[test]
fn the_check_runs_the_given_binary_on_the_given_config() {
    let host = Host::new();
    let l = &host.layout;
    let b = swap(&l.binary);
    host.shaper(&b.temp, "new");
    run("chmod", &["644", &b.temp]);
    let (ok, _, _) = host.sh(&check_script(&b.temp, "/x.toml"));
    assert!(ok);
    host.flag("fail-check");
    let (ok, _, err) = host.sh(&check_script(&b.temp, "/x.toml"));
    assert!(!ok);
    assert_eq!(err, "shaper: check failed\n");
    assert_eq!(host.calls(), ["new check --config /x.toml", "new check --config /x.toml"]);
}

/// A new binary and unit on a host where systemd runs the daemon.
fn systemd_swap(host: &Host) -> (bool, String) {
    host.systemctl();
    let mut swaps = host.upload(true, false);
    let unit = swap(&host.layout.unit);
    host.write(&unit.temp, "new unit");
    swaps.push(unit);
    let plan =
        Plan { binary: true, config: false, unit: true, action: Action::Swap, starter: Starter::Systemd };
    let (ok, _, err) = host.sh(&activate_script(&host.layout, &plan, &swaps));
    (ok, err)
}

#[test]
fn under_systemd_the_new_binary_is_started_by_systemctl_after_a_daemon_reload() {
    let host = Host::running();
    let (ok, err) = systemd_swap(&host);
    assert!(ok, "{err}");
    let conf = &host.layout.config;
    let calls = host.calls();
    assert_eq!(
        calls,
        [
            format!("old stop --keep --config {conf}"),
            "systemctl daemon-reload".to_string(),
            "systemctl start shaper.service".to_string(),
            "systemctl enable --quiet shaper.service".to_string(),
            format!("new status --json --config {conf}"),
        ]
    );
    assert_eq!(read(&host.layout.unit), "new unit");
}

#[test]
fn under_systemd_a_new_binary_that_does_not_start_hands_back_to_the_old_one() {
    let host = Host::running();
    host.flag("fail-systemctl");
    let (ok, err) = systemd_swap(&host);
    assert!(!ok);
    assert!(err.contains("deploy: the new daemon did not start"), "{err}");
    let conf = &host.layout.config;
    assert_eq!(
        host.calls(),
        [
            format!("old stop --keep --config {conf}"),
            "systemctl daemon-reload".to_string(),
            "systemctl start shaper.service".to_string(),
            // The rollback: the previous unit and binary, started again.
            "systemctl daemon-reload".to_string(),
            "systemctl start shaper.service".to_string(),
        ]
    );
    assert!(read(&host.layout.binary).contains("echo \"old $*\""), "the old binary is not back");
    assert!(
        !host.layout.unit.is_empty() && !std::path::Path::new(&host.layout.unit).exists(),
        "the new unit stayed"
    );
    assert!(host.dir.join("running").exists(), "no daemon runs after the rollback");
}

#[test]
fn a_reload_reports_what_waits_for_the_next_start() {
    let out = "applied in 2 ms: no class changed; 0 flows re-evaluated\ntake effect at the next start: pin_dir\nstatus {\"pid\":9,\"config\":\"/c\"}\n";
    let activated = parse_activated(out);
    assert_eq!(
        activated.applied.as_deref(),
        Some(
            "applied in 2 ms: no class changed; 0 flows re-evaluated; take effect at the next start: pin_dir"
        )
    );
    assert_eq!(activated.daemon, Some(Daemon { pid: 9, config: "/c".into() }));
}
