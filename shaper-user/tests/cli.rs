//! The `shaper` command as scripts and systemd see it: exit codes (0 ok, 1
//! invalid or refused, 2 usage, 3 no daemon), one-line `FILE:LINE:COL:
//! reason` errors from `check`, `check` without root, the default config
//! /etc/shaper/shaper.toml, and log lines for journald.
//!
//! The tests without a daemon run as any user; the others need root (without
//! it each reports "skipped: needs root"). The default config is tested in a
//! mount namespace of the test's own, where /etc is a directory the test made
//! and /run an empty tmpfs: the host's /etc and any daemon of the host are
//! never seen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    ffi::CString,
    os::unix::{fs::MetadataExt as _, net::UnixListener, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Sandbox},
};

mod common;

use common::*;

/// A directory of the test's own under /tmp, readable by every user, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("shaper-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn shaper_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(SHAPER);
    cmd.args(args);
    cmd
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| panic!("killed by a signal: {}", out.status))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a client prints when nothing listens at `socket` (`cause`: the OS's words).
fn unreachable(socket: &Path, cause: &str) -> String {
    format!(
        "shaper: cannot reach the shaper daemon at {}: {cause} (is it running? start it with `shaper start` \
         or `systemctl start shaper`)\n",
        socket.display()
    )
}

const NO_FILE: &str = "No such file or directory (os error 2)";

/// Every client verb, with the arguments it needs besides the socket.
const CLIENTS: [&[&str]; 12] = [
    &["status"],
    &["classes"],
    &["conns"],
    &["top"],
    &["top", "--batch"],
    &["reload"],
    &["stop"],
    &["set", "web", "--egress", "5mbit"],
    &["move", "3fa2c1", "web"],
    &["reload", "--dry-run"],
    &["explain", "3fa2c1"],
    &["explain", "--pid", "1", "--to", "198.18.0.2:443"],
];

#[test]
fn usage_errors_exit_2_through_clap() {
    for (args, says) in [
        (&["frobnicate"][..], "error: unrecognized subcommand 'frobnicate'"),
        (&["status", "--bogus"], "error: unexpected argument '--bogus' found"),
        (&["set", "web"], "error: the following required arguments were not provided"),
        (&["set", "web", "--priority", "9"], "error: invalid value '9' for '--priority <PRIORITY>'"),
        (&["set", "web", "--egress", "5xbit"], "error: invalid value '5xbit' for '--egress <EGRESS>'"),
        (&["move", "3fa", "web"], "error: invalid value '3fa' for '<CONN>': \"3fa\": give at least 4 digits"),
        (&["stop", "--keep", "--force"], "error: the argument '--keep' cannot be used with '--force'"),
        (&["stop", "--pin-dir", "/p"], "error: the following required arguments were not provided"),
        (&["explain"], "error: the following required arguments were not provided"),
        (&["explain", "--pid", "1"], "error: the following required arguments were not provided"),
        (
            &["explain", "3fa2", "--pid", "1", "--to", "198.18.0.2:1"],
            "error: the argument '[CONN]' cannot be used with",
        ),
        (
            &["explain", "--pid", "1", "--to", "x:1", "--proto", "sctp"],
            "error: invalid value 'sctp' for '--proto",
        ),
        (&["check", "--json"], "error: the following required arguments were not provided"),
        (
            &["conns", "--sort", "size"],
            "error: invalid value 'size' for '--sort <SORT>': unknown sort \"size\"",
        ),
        (
            &["top", "--interval", "10ms"],
            "error: invalid value '10ms' for '--interval <INTERVAL>': an interval",
        ),
    ] {
        let out = output(&mut shaper_cmd(args));
        assert_eq!(code(&out), 2, "shaper {args:?}");
        assert!(stderr(&out).starts_with(says), "shaper {args:?}: expected `{says}…`");
    }
}

#[test]
fn help_documents_the_exit_codes_and_the_default_config() {
    let out = output(&mut shaper_cmd(&["--help"]));
    assert_eq!(code(&out), 0);
    let expected = "\
Exit status:
  0  success
  1  invalid or refused: a config that does not validate, a reload or set the daemon refused, any other failure
  2  usage: an unknown command or option, a missing or malformed argument
  3  the daemon cannot be reached: no control socket, connection refused, no answer
";
    assert!(stdout(&out).ends_with(expected), "no exit codes at the end of --help");
    for verb in ["run", "start", "check"] {
        let out = output(&mut shaper_cmd(&[verb, "--help"]));
        assert!(stdout(&out).contains("[default: /etc/shaper/shaper.toml]"), "shaper {verb} --help");
    }
    let out = output(&mut shaper_cmd(&["status", "--help"]));
    let socket = "[default: `control_socket` of --config, else of /etc/shaper/shaper.toml when it exists, \
                  else /run/shaper/shaper.sock]";
    assert!(stdout(&out).contains(socket), "status --help");
}

#[test]
fn check_of_an_invalid_config_is_one_line_with_file_line_and_column_and_exit_1() {
    let dir = TempDir::new("invalid");
    let text = "[[interface]]\nname = \"lo\"\negress = \"1gbit\"\n\n[[class]]\nname = \"web\"\n\
                egress = \"10mbit\"\nmatch = 'rprot == 80'\n";
    let config = dir.write("web.toml", text);
    let out = output(&mut shaper_cmd(&["check", "--config", config.to_str().unwrap()]));
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!("shaper: {}:8:10: unknown attribute \"rprot\"; did you mean \"rport\"?\n", config.display())
    );
    assert_eq!(stdout(&out), "");
    // A file with no interface at all: still one line.
    let empty = dir.write("empty.toml", "[daemon]\n");
    let out = output(&mut shaper_cmd(&["check", "-c", empty.to_str().unwrap()]));
    assert_eq!(code(&out), 1);
    assert_eq!(stderr(&out).lines().count(), 1, "more than one line");
    assert!(stderr(&out).starts_with(&format!("shaper: {}:1:1: no [[interface]]", empty.display())));
}

#[test]
fn check_of_a_config_naming_an_interface_this_host_lacks_gives_its_line() {
    let dir = TempDir::new("noiface");
    let config = dir.write(
        "host.toml",
        "# one interface this host lacks\n[[interface]]\nname = \"shpnosuch9\"\negress = \"1gbit\"\n",
    );
    let out = output(&mut shaper_cmd(&["check", "--config", config.to_str().unwrap()]));
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!(
            "shaper: {}:3:8: interface \"shpnosuch9\" does not exist (in this network namespace)\n",
            config.display()
        )
    );
}

#[test]
fn every_client_without_a_daemon_exits_3() {
    let dir = TempDir::new("nodaemon");
    let missing = dir.path("missing.sock");
    for args in CLIENTS {
        let out = output(shaper_cmd(args).arg("--socket").arg(&missing));
        assert_eq!(code(&out), 3, "shaper {args:?}");
        assert_eq!(stderr(&out), unreachable(&missing, NO_FILE), "shaper {args:?}");
    }
    // A socket file nobody listens on any more: connection refused.
    let stale = dir.path("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let out = output(shaper_cmd(&["reload", "--socket"]).arg(&stale));
    assert_eq!(code(&out), 3);
    assert_eq!(stderr(&out), unreachable(&stale, "Connection refused (os error 111)"));
    // A listener that hangs up without answering.
    let mute = dir.path("mute.sock");
    let listener = UnixListener::bind(&mute).unwrap();
    let server = std::thread::spawn(move || drop(listener.accept()));
    let out = output(shaper_cmd(&["status", "--socket"]).arg(&mute));
    server.join().unwrap();
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).starts_with("shaper: "), "{}", stderr(&out));
    assert!(stderr(&out).contains(&mute.display().to_string()));
    // --config gives the socket, even from a file that no longer validates.
    let text = format!(
        "[daemon]\ncontrol_socket = \"{}\"\n[[class]]\nname = 'x'\nmatch = 'rprot == 1'\n",
        missing.display()
    );
    let config = dir.write("broken.toml", &text);
    let out = output(shaper_cmd(&["status", "--config"]).arg(&config));
    assert_eq!(code(&out), 3);
    assert_eq!(stderr(&out), unreachable(&missing, NO_FILE));
    // A --config that cannot be read is the user's error, not an absent daemon.
    let out = output(shaper_cmd(&["status", "--config"]).arg(dir.path("absent.toml")));
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!("shaper: cannot read {}: {NO_FILE}\n", dir.path("absent.toml").display())
    );
}

/// `dev:ino` of `file`, as systemd writes JOURNAL_STREAM.
fn journal_stream(file: &Path) -> String {
    let meta = std::fs::metadata(file).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

#[test]
fn under_journald_the_final_error_carries_its_priority_and_elsewhere_not() {
    let dir = TempDir::new("journal");
    let missing = dir.path("missing.sock");
    let err = dir.write("stderr", "");
    let run = |stream: Option<&str>| {
        let file = std::fs::OpenOptions::new().write(true).truncate(true).open(&err).unwrap();
        let mut cmd = shaper_cmd(&["status", "--socket"]);
        cmd.arg(&missing).stderr(file).env_remove("JOURNAL_STREAM");
        if let Some(stream) = stream {
            cmd.env("JOURNAL_STREAM", stream);
        }
        assert_eq!(code(&output(&mut cmd)), 3);
        std::fs::read_to_string(&err).unwrap()
    };
    let line = unreachable(&missing, NO_FILE);
    assert_eq!(run(Some(&journal_stream(&err))), format!("<3>{line}"));
    assert_eq!(run(None), line);
    // Inherited from a unit but written elsewhere (another file): the plain format.
    let other = dir.write("other", "");
    assert_eq!(run(Some(&journal_stream(&other))), line);
}

/// Makes `cmd` run in a mount namespace of its own where /etc is `etc` and
/// /run an empty tmpfs (root only).
fn private_etc(cmd: &mut Command, etc: &Path) {
    let c = |s: &str| CString::new(s).unwrap();
    let (etc, etc_target, run, tmpfs, root) =
        (c(etc.to_str().unwrap()), c("/etc"), c("/run"), c("tmpfs"), c("/"));
    // SAFETY: only system calls between fork and exec, on strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            let none = std::ptr::null();
            check(libc::mount(none, root.as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(etc.as_ptr(), etc_target.as_ptr(), none, libc::MS_BIND, std::ptr::null()))?;
            check(libc::mount(tmpfs.as_ptr(), run.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()))
        });
    }
}

/// An /etc for [`private_etc`]: the host's account and service files, and
/// shaper/shaper.toml with `config` when given.
fn etc_dir(dir: &TempDir, config: Option<&str>) -> PathBuf {
    let etc = dir.path("etc");
    let _ = std::fs::remove_dir_all(&etc);
    std::fs::create_dir_all(&etc).unwrap();
    for file in ["passwd", "group", "services"] {
        let _ = std::fs::copy(Path::new("/etc").join(file), etc.join(file));
    }
    if let Some(text) = config {
        dir.write("etc/shaper/shaper.toml", text);
    }
    etc
}

#[test]
fn the_default_config_is_read_by_check_and_gives_the_clients_their_socket() {
    require_root!();
    let dir = TempDir::new("defaults");
    let default = "/etc/shaper/shaper.toml";
    let socket = dir.path("default.sock");
    let text = format!(
        "[daemon]\ncontrol_socket = \"{}\"\n\n[[interface]]\nname = \"shpnosuch9\"\negress = \"1gbit\"\n",
        socket.display()
    );
    let etc = etc_dir(&dir, Some(&text));
    let mut check = shaper_cmd(&["check"]);
    private_etc(&mut check, &etc);
    let out = output(&mut check);
    assert_eq!(code(&out), 1);
    let expected = format!(
        "shaper: {default}:5:8: interface \"shpnosuch9\" does not exist (in this network namespace)\n"
    );
    assert_eq!(stderr(&out), expected);
    for args in CLIENTS {
        let mut client = shaper_cmd(args);
        private_etc(&mut client, &etc);
        let out = output(&mut client);
        assert_eq!(code(&out), 3, "shaper {args:?}");
        assert_eq!(stderr(&out), unreachable(&socket, NO_FILE), "shaper {args:?}");
    }

    // A default config that is not even TOML: a warning, and the default socket.
    let etc = etc_dir(&dir, Some("[daemon\n"));
    let mut status = shaper_cmd(&["status"]);
    private_etc(&mut status, &etc);
    let out = output(&mut status);
    assert_eq!(code(&out), 3);
    let fallback = Path::new("/run/shaper/shaper.sock");
    assert_eq!(
        stderr(&out),
        format!(
            "shaper: warning: {default} is not TOML (invalid table header expected `.`, `]`); its [daemon] \
             paths are unknown; using /run/shaper/shaper.sock\n{}",
            unreachable(fallback, NO_FILE)
        )
    );

    // No default config: the default socket, and `check` says what it could not read.
    let etc = etc_dir(&dir, None);
    let mut status = shaper_cmd(&["status"]);
    private_etc(&mut status, &etc);
    let out = output(&mut status);
    assert_eq!((code(&out), stderr(&out)), (3, unreachable(fallback, NO_FILE)));
    let mut check = shaper_cmd(&["check"]);
    private_etc(&mut check, &etc);
    let out = output(&mut check);
    assert_eq!((code(&out), stderr(&out)), (1, format!("shaper: reading {default}: {NO_FILE}\n")));
}

/// The sandbox's interface, with the pin directory (and control socket) a
/// test daemon of sandbox `tag` uses written into the file, so that `check`
/// and the clients find them there.
fn daemon_config(sandbox: &Sandbox, rate: &str) -> String {
    let dir = Daemon::dir_for(&sandbox.tag);
    format!(
        "[daemon]\ncontrol_socket = \"{}\"\npin_dir = \"{}\"\n\n{}\n[[class]]\nname = \"web\"\negress = \"{rate}\"\n\
         match = 'rport == 80'\n",
        dir.join("shaper.sock").display(),
        dir.join("bpf/shaper").display(),
        interface(sandbox)
    )
}

#[test]
fn check_without_root_validates_and_names_what_it_skipped() {
    require_root!();
    let sandbox = Sandbox::new("clinobody").unwrap();
    let dir = TempDir::new("nobody");
    let config = dir.write("shaper.toml", &daemon_config(&sandbox, "10mbit"));
    let pin_dir = Daemon::dir_for(&sandbox.tag).join("bpf/shaper");
    let as_nobody = |config: &Path| {
        let mut cmd = sandbox.a.command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", SHAPER, "check", "--config"])
            .arg(config);
        output(&mut cmd)
    };
    let out = as_nobody(&config);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{}: ok\n", config.display())));
    assert_eq!(
        text.lines().last().unwrap(),
        format!(
            "not root: skipped checking that the pin directory {} is on a BPF filesystem and that the root \
             qdiscs and IFB names of shp-a are free or shaper's (only root can read the pin directory)",
            pin_dir.display()
        )
    );
    // What it does check without root still fails: a missing interface.
    let lacking =
        dir.write("lacking.toml", &daemon_config(&sandbox, "10mbit").replace("shp-a", "shpnosuch9"));
    let out = as_nobody(&lacking);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!(
            "shaper: {}:6:8: interface \"shpnosuch9\" does not exist (in this network namespace)\n",
            lacking.display()
        )
    );
}

#[test]
fn check_as_root_refuses_a_pin_dir_off_bpffs_and_a_root_qdisc_shaper_did_not_make() {
    require_root!();
    let sandbox = Sandbox::new("clihost").unwrap();
    let dir = TempDir::new("host");
    let check = |config: &Path| output(sandbox.a.command(SHAPER).args(["check", "--config"]).arg(config));
    // /tmp is no BPF filesystem: the daemon would refuse to pin there.
    let pins = dir.path("pins");
    let text = format!("[daemon]\npin_dir = \"{}\"\n\n{}", pins.display(), interface(&sandbox));
    let config = dir.write("offbpf.toml", &text);
    let out = check(&config);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!(
            "shaper: {}:2:11: the pin directory {} is not on a BPF filesystem (mount one there, e.g. `mount -t \
             bpf bpf DIR`)\n",
            config.display(),
            pins.display()
        )
    );
    // A root qdisc of someone else's on the interface: refused at the interface's line.
    sandbox
        .a
        .run(
            "tc",
            &[
                "qdisc", "add", "dev", "shp-a", "root", "handle", "5:", "tbf", "rate", "1mbit", "burst",
                "10k", "latency", "50ms",
            ],
        )
        .unwrap();
    let config = dir.write("taken.toml", &interface(&sandbox));
    let out = check(&config);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!(
            "shaper: {}:2:8: interface shp-a already has a root qdisc (tbf 5:) that shaper did not create; \
             shaper replaces the root qdisc and could not put yours back exactly, so it leaves it alone. \
             Remove it first (`tc qdisc del dev shp-a root`) or shape another interface\n",
            config.display()
        )
    );
    sandbox.a.run("tc", &["qdisc", "del", "dev", "shp-a", "root"]).unwrap();
    let out = check(&config);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out)
        .lines()
        .last()
        .unwrap()
        .ends_with("; root qdiscs and IFB names free or shaper's on shp-a"));
}

#[test]
fn a_refused_reload_exits_1_and_the_daemon_keeps_its_config() {
    require_root!();
    let sandbox = Sandbox::new("clireload").unwrap();
    let mut daemon = Daemon::start(&sandbox, shaper(), &daemon_config(&sandbox, "10mbit")).unwrap();
    let socket = daemon.socket.clone();
    let config = daemon.config.clone();
    // `check` as root on the running config: the tree on shp-a is shaper's own.
    let out = output(sandbox.a.command(SHAPER).args(["check", "--config"]).arg(&config));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().last().unwrap(),
        format!(
            "host: pin directory {} on a BPF filesystem; root qdiscs and IFB names free or shaper's on shp-a",
            daemon.pins.display()
        )
    );

    // As systemd's `ExecReload=shaper reload` runs it: no arguments, the default config.
    let dir = TempDir::new("reload");
    let etc = etc_dir(&dir, Some(&std::fs::read_to_string(&config).unwrap()));
    let reload = || {
        let mut cmd = shaper_cmd(&["reload"]);
        private_etc(&mut cmd, &etc);
        output(&mut cmd)
    };
    std::fs::write(&config, daemon_config(&sandbox, "20mbit")).unwrap();
    let out = reload();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("applied in "), "{}", stdout(&out));
    assert_eq!(class(&classes(&daemon), "web").rate_bps, 20_000_000);

    // A config naming an interface this host lacks: refused, exit 1, the old one stays.
    let refused =
        daemon_config(&sandbox, "30mbit") + "\n[[interface]]\nname = \"shpnosuch9\"\negress = \"1gbit\"\n";
    std::fs::write(&config, &refused).unwrap();
    let line = refused.lines().position(|l| l == "name = \"shpnosuch9\"").unwrap() + 1;
    let expected = format!(
        "shaper: the daemon refused: {}:{line}:8: interface \"shpnosuch9\" does not exist (in this network namespace)\n",
        config.display()
    );
    let out = reload();
    assert_eq!((code(&out), stderr(&out)), (1, expected.clone()));
    let out = output(shaper_cmd(&["reload", "--socket"]).arg(&socket));
    assert_eq!((code(&out), stderr(&out)), (1, expected));
    assert_eq!(class(&classes(&daemon), "web").rate_bps, 20_000_000, "the refused config was applied");
    // A refused `set` is exit 1 as well.
    let out = output(shaper_cmd(&["set", "nosuch", "--egress", "1mbit", "--socket"]).arg(&socket));
    assert_eq!(
        (code(&out), stderr(&out).as_str()),
        (1, "shaper: the daemon refused: no class named \"nosuch\"\n")
    );
    let status = daemon.status().unwrap();
    assert!(status.last_reload.and_then(|r| r.error).is_some_and(|e| e.contains("shpnosuch9")));
    // Without JOURNAL_STREAM the daemon logs as before: timestamp, level, target.
    let log = daemon.log_text();
    let refusal = log.lines().find(|l| l.contains("reload refused")).unwrap_or_else(|| panic!("{log}"));
    assert!(refusal.starts_with("[20") && refusal.contains(" ERROR "), "{refusal}");

    // Stopped: every client says the daemon cannot be reached.
    let out = output(shaper_cmd(&["stop", "--socket"]).arg(&socket));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("shaper stopped (pid "), "{}", stdout(&out));
    daemon.wait(std::time::Duration::from_secs(30)).unwrap();
    for args in [&["status"][..], &["reload"], &["stop"]] {
        let out = output(shaper_cmd(args).arg("--socket").arg(&socket));
        assert_eq!(code(&out), 3, "shaper {args:?}");
        assert_eq!(stderr(&out), unreachable(&socket, NO_FILE), "shaper {args:?}");
    }
}

#[test]
fn under_journald_the_daemon_logs_priorities_without_timestamps() {
    require_root!();
    let sandbox = Sandbox::new("clijournal").unwrap();
    let mut daemon = Daemon::prepare(&sandbox, shaper(), &daemon_config(&sandbox, "10mbit")).unwrap();
    std::fs::write(&daemon.log, "").unwrap();
    let stream = journal_stream(&daemon.log);
    daemon.restart_with(&[("JOURNAL_STREAM", &stream)]).unwrap();
    std::fs::write(&daemon.config, daemon_config(&sandbox, "10mbit").replace("shp-a", "shpnosuch9")).unwrap();
    assert!(daemon.reload().is_err(), "a config naming a missing interface was applied");
    daemon.stop().unwrap();
    let log = daemon.log_text();
    println!("{log}");
    for line in log.lines() {
        let priority = line.strip_prefix('<').and_then(|l| l.split_once('>')).map(|(p, _)| p);
        assert!(matches!(priority, Some("3" | "4" | "6" | "7")), "no priority: {line}");
        assert!(!line.contains("[20"), "a timestamp: {line}");
    }
    assert!(log.lines().any(|l| l.starts_with("<6>ready: control socket ")), "no <6>ready line");
    assert!(
        log.lines().any(|l| l.starts_with("<3>reload refused, the running config stays in force: ")),
        "no <3> refusal line"
    );
}
