//! `cargo xtask install --destdir D` and `cargo xtask package`, run for real:
//! every file in place with its mode, each man page renders, each completion
//! script loads in its shell, `systemd-analyze verify` accepts the installed
//! unit, an edited config survives a second install, and the .deb and the
//! .tar.gz hold the same files, the conffile and the maintainer scripts; and
//! the .deb's maintainer scripts, run on its own binary in a sandbox, hand
//! shaping over on an upgrade without an unshaped moment and remove it all.
//!
//! Both build the release binary (`cargo build --release`, cached after the
//! first), so this file costs one release build per run.
//!
//! Needs root (without it each test reports "skipped: needs root"): the
//! tools it checks with are installed by `cargo xtask setup` as root. Each
//! test removes its own directories.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Sandbox},
};

mod common;

use common::*;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shaper-test-{label}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// `cargo xtask ARGS…`, from the workspace; its standard output.
fn xtask(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    stdout(
        Command::new(cargo)
            .current_dir(WORKSPACE)
            .args(["run", "--quiet", "--package", "xtask", "--"])
            .args(args),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o7777
}

/// The verbs `shaper --help` lists (a man page each).
fn verbs(shaper: &Path) -> BTreeSet<String> {
    let help = stdout(Command::new(shaper).arg("--help"));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(str::to_string)
        .collect()
}

/// Renders a man page with man-db; returns the text.
fn render_man(page: &Path) -> String {
    let out = run(Command::new("man").arg("-l").arg(page).env("MANPAGER", "cat").env("MANWIDTH", "100"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "{}: man warned: {stderr}", page.display());
    String::from_utf8(out.stdout).unwrap()
}

/// Checks each completion script loads in its shell and knows the verbs.
fn check_completions(root: &Path) {
    let bash = root.join("usr/local/share/bash-completion/completions/shaper");
    run(Command::new("bash").arg("-n").arg(&bash));
    let registered = stdout(
        Command::new("bash").arg("-c").arg(format!("source {} && complete -p shaper", bash.display())),
    );
    assert!(registered.contains("-F _shaper shaper"), "bash: {registered}");
    let zsh = root.join("usr/local/share/zsh/site-functions/_shaper");
    run(Command::new("zsh").arg("-n").arg(&zsh));
    let fish = root.join("usr/local/share/fish/vendor_completions.d/shaper.fish");
    run(Command::new("fish").arg("-n").arg(&fish));
    let offered = stdout(
        Command::new("fish").arg("-c").arg(format!("source {}; complete -C 'shaper st'", fish.display())),
    );
    let offered: Vec<&str> = offered.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(offered, ["start", "status", "stop"], "fish completes `shaper st` with");
}

/// `systemd-analyze verify` on the installed unit: it must print nothing
/// (it exits 0 even for unknown keys, so its output is the verdict). The
/// staged /usr/local is bind-mounted over the real one in a mount namespace
/// of its own, so that the unit's ExecStart= binary and its man page
/// (Documentation=man:shaper(8)) are where the unit says.
fn systemd_verify(root: &Path, unit: &Path) -> String {
    let script = format!(
        "mount --bind {} /usr/local && exec systemd-analyze verify {} 2>&1",
        root.join("usr/local").display(),
        unit.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir("/")
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), if out.status.success() { "" } else { "(failed)" })
}

#[test]
fn install_puts_every_file_in_place_and_keeps_an_edited_config() {
    require_root!();
    let dest = TempDir::new("install");
    let root = &dest.0;
    let printed = xtask(&["install", "--destdir", root.to_str().unwrap()]);
    println!("{printed}");

    let shaper = root.join("usr/local/bin/shaper");
    let unit = root.join("etc/systemd/system/shaper.service");
    let config = root.join("etc/shaper/shaper.toml");
    let files = [
        (shaper.clone(), 0o755),
        (unit.clone(), 0o644),
        (config.clone(), 0o644),
        (root.join("usr/local/share/doc/shaper/README.md"), 0o644),
        (root.join("usr/local/share/bash-completion/completions/shaper"), 0o644),
        (root.join("usr/local/share/zsh/site-functions/_shaper"), 0o644),
        (root.join("usr/local/share/fish/vendor_completions.d/shaper.fish"), 0o644),
    ];
    for (path, want) in &files {
        assert_eq!(mode(path), *want, "mode of {}", path.display());
        assert!(printed.contains(&path.display().to_string()), "not reported: {}", path.display());
    }
    for dir in ["usr/local/bin", "usr/local/share/man/man8", "etc/shaper", "etc/systemd/system"] {
        assert_eq!(mode(&root.join(dir)), 0o755, "mode of {dir}");
    }
    let workspace = Path::new(WORKSPACE);
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(workspace.join("config/shaper.toml")).unwrap());
    assert_eq!(
        std::fs::read(root.join("usr/local/share/doc/shaper/README.md")).unwrap(),
        std::fs::read(workspace.join("README.md")).unwrap()
    );

    // The unit runs and reloads the installed binary with the default config.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/shaper run --config /etc/shaper/shaper.toml",
        "ExecReload=/usr/local/bin/shaper reload --config /etc/shaper/shaper.toml",
    ] {
        assert!(unit_text.lines().any(|l| l == line), "no `{line}` in\n{unit_text}");
    }

    // One page per verb, and each renders with its NAME.
    let man8 = root.join("usr/local/share/man/man8");
    let pages: BTreeSet<String> = std::fs::read_dir(&man8)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut want: BTreeSet<String> = verbs(&shaper).iter().map(|v| format!("shaper-{v}.8.gz")).collect();
    want.insert("shaper.8.gz".into());
    assert_eq!(pages, want);
    for page in &pages {
        assert_eq!(mode(&man8.join(page)), 0o644, "mode of {page}");
        let text = render_man(&man8.join(page));
        let name = page.trim_end_matches(".8.gz");
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(words.contains(&format!("NAME {name} - ")), "{page}:\n{text}");
    }
    check_completions(root);

    if Path::new("/usr/bin/systemd-analyze").exists() {
        assert_eq!(systemd_verify(root, &unit), "", "systemd-analyze verify complained");
        // The check sees what is wrong: a misspelt key is reported.
        let broken = root.join("broken.service");
        std::fs::write(&broken, unit_text.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
        assert!(systemd_verify(root, &broken).contains("Unknown key"), "a broken unit passed");
        println!("systemd-analyze verify: the installed unit is accepted");
    } else {
        println!("systemd-analyze verify: skipped: systemd is not installed");
    }

    // A second install keeps the edited config and says so.
    let edited = format!("{}\n# edited by the admin\n", std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, &edited).unwrap();
    let again = xtask(&["install", "--destdir", root.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert!(
        again.contains(&format!("kept      {} (it exists; never overwritten)", config.display())),
        "{again}"
    );
}

/// A `tar -tv`-style listing (`dpkg-deb -c` prints one too) as "mode path"
/// lines, directories left out; every entry must belong to `owner`.
fn files_of(listing: &str, owner: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(fields[1], owner, "{l}");
            format!("{} {}", fields[0], fields[5].trim_start_matches('.'))
        })
        .collect()
}

#[test]
fn package_builds_a_deb_and_a_tarball_of_the_same_files() {
    require_root!();
    let printed = xtask(&["package"]);
    println!("{printed}");
    let path = |suffix: &str| -> PathBuf {
        printed
            .lines()
            .find(|l| l.ends_with(suffix))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no {suffix}"))
    };
    let (deb, tarball) = (path(".deb"), path(".tar.gz"));

    let files = files_of(&stdout(Command::new("dpkg-deb").arg("-c").arg(&deb)), "root/root");
    for want in [
        "-rwxr-xr-x /usr/bin/shaper",
        "-rw-r--r-- /usr/lib/systemd/system/shaper.service",
        "-rw-r--r-- /etc/shaper/shaper.toml",
        "-rw-r--r-- /usr/share/man/man8/shaper.8.gz",
        "-rw-r--r-- /usr/share/man/man8/shaper-reload.8.gz",
        "-rw-r--r-- /usr/share/bash-completion/completions/shaper",
        "-rw-r--r-- /usr/share/zsh/site-functions/_shaper",
        "-rw-r--r-- /usr/share/fish/vendor_completions.d/shaper.fish",
        "-rw-r--r-- /usr/share/doc/shaper/README.md",
    ] {
        assert!(files.contains(want), "{want} not in\n{files:#?}");
    }
    let info = stdout(Command::new("dpkg-deb").arg("-I").arg(&deb));
    println!("{info}");
    for script in ["conffiles", "control", "postinst", "postrm", "prerm"] {
        assert!(info.lines().any(|l| l.split_whitespace().any(|w| w == script)), "no {script} in\n{info}");
    }
    let field =
        |name: &str| stdout(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name)).trim().to_string();
    let shaper_version = stdout(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/shaper")).arg("--version"),
    );
    assert_eq!(format!("shaper {}\n", field("Version")), shaper_version);
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    assert_eq!(
        stdout(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles")),
        "/etc/shaper/shaper.toml\n"
    );

    // The unit inside runs /usr/bin/shaper; the scripts hand over with `stop --keep`.
    let dir = TempDir::new("package");
    run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&dir.0));
    let unit = std::fs::read_to_string(dir.0.join("usr/lib/systemd/system/shaper.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/shaper run --config /etc/shaper/shaper.toml\n"), "{unit}");
    assert!(
        unit.contains("\nExecReload=/usr/bin/shaper reload --config /etc/shaper/shaper.toml\n"),
        "{unit}"
    );
    for script in ["prerm", "postinst", "postrm"] {
        let path = dir.0.join("DEBIAN").join(script);
        assert_eq!(mode(&path), 0o755, "{script}");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    let prerm = std::fs::read_to_string(dir.0.join("DEBIAN/prerm")).unwrap();
    assert!(prerm.contains("\"$SHAPER\" stop --keep"), "{prerm}");

    // The tarball: the same files with the same modes, owned by root.
    let in_tar = files_of(&stdout(Command::new("tar").args(["-tvzf"]).arg(&tarball)), "0/0");
    assert_eq!(in_tar, files);
}

/// Runs `script` with `sh -e` in the sandbox's namespace `a`: in a new
/// private mount namespace, or in the one of process `pid` (a daemon that
/// an earlier script started there).
fn in_sandbox(sandbox: &Sandbox, pid: Option<u32>, script: &str) -> String {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", sandbox.a.path().display()));
    match pid {
        Some(pid) => cmd.arg(format!("--mount=/proc/{pid}/ns/mnt")).args(["--", "sh", "-ec", script]),
        None => cmd.args(["--", "unshare", "--mount", "--propagation", "private", "sh", "-ec", script]),
    };
    stdout(&mut cmd)
}

fn pid_of(daemon: &Daemon) -> u32 {
    std::fs::read_to_string(&daemon.pid_file).unwrap().trim().parse().unwrap()
}

/// The .deb installed as dpkg would (its files, then `postinst configure`),
/// with /usr, /etc and /run overlaid in a mount namespace of the test's own
/// (so nothing reaches the host's, and no systemd is seen: the scripts use
/// `shaper start`), its config naming the sandbox's interface and the test's
/// paths; a daemon started; then an upgrade (`prerm upgrade`, `postinst
/// configure OLD`) while traffic flows, then `prerm remove`, `postrm purge`.
#[test]
fn the_deb_scripts_hand_shaping_over_on_upgrade_and_remove_it() {
    require_root!();
    let printed = xtask(&["package"]);
    let deb = printed.lines().find(|l| l.ends_with(".deb")).map(PathBuf::from).expect("no .deb");
    let sandbox = Sandbox::new("deb").unwrap();
    let daemon = Daemon::prepare(&sandbox, shaper(), "").unwrap();
    let config = format!(
        "[daemon]\ncontrol_socket = \"{}\"\npin_dir = \"{}\"\npid_file = \"{}\"\ncgroup = \"{}\"\n\n\
         [[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\n\
         [[class]]\nname = \"bulk\"\negress = \"10mbit\"\nmatch = 'rport == 5201'\n",
        daemon.socket.display(),
        daemon.pins.display(),
        daemon.pid_file.display(),
        sandbox.cgroup.dir().display(),
        sandbox.dev_a
    );
    std::fs::write(&daemon.config, config).unwrap();
    let o = daemon.dir().join("root");
    let install = format!(
        "O={o}; mkdir -p $O; mount -t tmpfs tmpfs $O\n\
         for d in usr etc run; do mkdir $O/$d.up $O/$d.work\n\
         mount -t overlay overlay -o lowerdir=/$d,upperdir=$O/$d.up,workdir=$O/$d.work /$d; done\n\
         rm -rf /run/systemd\n\
         dpkg-deb -R {deb} $O/deb; cp -a $O/deb/usr/. /usr/; cp -a $O/deb/etc/. /etc/\n\
         cp {config} /etc/shaper/shaper.toml\n\
         $O/deb/DEBIAN/postinst configure\n\
         /usr/bin/shaper start\n",
        o = o.display(),
        deb = deb.display(),
        config = daemon.config.display()
    );
    println!("{}", in_sandbox(&sandbox, None, &install));
    let first = pid_of(&daemon);
    assert!(!daemon.status().unwrap().adopted, "a fresh install took something over");

    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let client = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", "6"]).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let upgrade = format!(
        "O={}; $O/deb/DEBIAN/prerm upgrade 0.0.1; $O/deb/DEBIAN/postinst configure 0.0.1",
        o.display()
    );
    println!("{}", in_sandbox(&sandbox, Some(first), &upgrade));
    let result = finish_client(client).unwrap();
    let second = pid_of(&daemon);
    let status = daemon.status().unwrap();
    println!("across the upgrade (pid {first} → {second}): {:.2} Mbit/s", result.received_bps / MBIT);
    assert_ne!(first, second, "the daemon was not replaced");
    assert!(status.adopted, "the new daemon did not take the pinned state over: {status:#?}");
    // A moment unshaped on this veth (about 10 Gbit/s) would add tens of megabytes.
    assert_near(
        "a stream across the upgrade (class bulk, 10 Mbit/s)",
        result.received_bps,
        10.0 * MBIT,
        0.10,
    );

    let remove = format!(
        "O={}; $O/deb/DEBIAN/prerm remove\nrm /etc/shaper/shaper.toml\n$O/deb/DEBIAN/postrm purge\n\
         test ! -e /etc/shaper && test ! -e /run/shaper && echo purged",
        o.display()
    );
    let removed = in_sandbox(&sandbox, Some(second), &remove);
    println!("{removed}");
    assert!(removed.ends_with("purged\n"), "{removed}");
    assert!(daemon.status().is_err(), "a daemon still answers after removal");
    assert!(!qdiscs(&sandbox).contains("htb"), "shaping left after removal:\n{}", qdiscs(&sandbox));
    assert_eq!(daemon.pinned(), Vec::<String>::new(), "pins left after removal");
}
