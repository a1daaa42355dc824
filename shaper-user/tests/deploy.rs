//! `cargo xtask deploy` over real ssh, with real traffic: three test hosts
//! (network namespaces, each with Debian's sshd, its own host key and its own
//! `--remote-root`) and a controller namespace the deploy runs in. Every host
//! shapes its own veth toward the controller, with its own pin dir (a BPF
//! filesystem of the test's), control socket, pid file and hook cgroup.
//!
//! One deploy to all three in parallel starts a daemon on each (rates within
//! ±10% of their classes); a second with one rate edited reloads that host
//! live (same pid, new rate) and leaves the others `unchanged`; `--dry-run`
//! shows the diff and changes nothing; a config naming an interface one host
//! lacks is `refused` there (previous config and rate kept) while the others
//! change, and a fourth host that drops packets is `unreachable` within 10 s;
//! a new binary is swapped in with `stop --keep` and a start while a stream
//! keeps its class rate.
//!
//! Needs root (without it the test reports "skipped: needs root"). The first
//! deploy builds the release binary (`cargo build --release -p shaper-user`):
//! a few seconds when target/release is fresh, minutes when it is cold.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{keygen, run_client, BpfFs, Cgroup, IperfServer, Netns, Sshd, Stream},
};
use shaper_user::control::{client, Status};

/// Each host's veth toward the controller (the interface its config shapes).
const DEV: &str = "shp-up";
/// An interface hosts 1 and 3 have and host 2 lacks.
const EXTRA: &str = "shp-x";
const IPERF_PORT: u16 = 5201;
const STREAM_PORT: u16 = 5202;
/// The classes' rates, host by host (Mbit/s).
const RATES: [u32; 3] = [20, 30, 40];
/// An address on a link to a namespace that drops what arrives: ssh's
/// connection times out.
const DEAD: &str = "198.18.4.2";

/// Link `n` between the controller and `ns`: `ctl-hN` (198.18.N.1/24) in
/// the controller, [`DEV`] (no address yet) in `ns`, both up.
fn link(ctl: &Netns, ns: &Netns, n: usize) {
    let ctl_dev = format!("ctl-h{n}");
    let add =
        ["-n", ctl.name(), "link", "add", &ctl_dev, "type", "veth", "peer", "name", DEV, "netns", ns.name()];
    shaper_testkit::sandbox::run("ip", &add).unwrap();
    ctl.run("ip", &["addr", "add", &format!("198.18.{n}.1/24"), "dev", &ctl_dev]).unwrap();
    ctl.run("ip", &["link", "set", &ctl_dev, "up"]).unwrap();
    ns.run("ip", &["link", "set", DEV, "up"]).unwrap();
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test host. Dropping it stops its daemon (`shaper stop --force`), then
/// kills its sshd, removes its cgroup, unmounts its BPF filesystem and
/// deletes its namespace (the fields, in this order).
struct TestHost {
    /// Its address, and the name `--host` gives it.
    name: String,
    ctl_addr: String,
    /// Its `--remote-root`.
    root: PathBuf,
    sshd: Sshd,
    cgroup: Cgroup,
    _bpffs: BpfFs,
    ns: Netns,
}

impl TestHost {
    fn create(tag: &str, n: usize, lab: &Path, ctl: &Netns, keys: &Path) -> Self {
        let name = format!("198.18.{n}.2");
        let ctl_addr = format!("198.18.{n}.1");
        let ns = Netns::create(&format!("shp-{tag}-h{n}")).unwrap();
        link(ctl, &ns, n);
        ns.run("ip", &["addr", "add", &format!("{name}/24"), "dev", DEV]).unwrap();
        if n != 2 {
            // (No dummy driver on these kernels: a veth pair inside the host.)
            ns.run("ip", &["link", "add", EXTRA, "type", "veth", "peer", "name", "shp-xp"]).unwrap();
            for dev in [EXTRA, "shp-xp"] {
                ns.run("ip", &["link", "set", dev, "up"]).unwrap();
            }
        }
        let root = lab.join("hosts").join(&name);
        std::fs::create_dir_all(root.join("run")).unwrap();
        let bpffs = BpfFs::mount(&root.join("bpf")).unwrap();
        let cgroup = Cgroup::create(&format!("{tag}-h{n}")).unwrap();
        let sshd = Sshd::start(&ns, &name, &lab.join(format!("sshd-h{n}")), keys).unwrap();
        Self { name, ctl_addr, root, sshd, cgroup, _bpffs: bpffs, ns }
    }

    fn socket(&self) -> PathBuf {
        self.root.join("run/shaper.sock")
    }

    /// The host's config: its own daemon paths, its veth (and `shp-x` with
    /// `extra`), one class at `rate` for the test's ports.
    fn config(&self, rate: &str, extra: bool) -> String {
        let extra = if extra {
            format!("[[interface]]\nname = \"{EXTRA}\"\negress = \"1gbit\"\n\n")
        } else {
            String::new()
        };
        format!(
            "[daemon]\ncontrol_socket = \"{sock}\"\npid_file = \"{root}/run/shaper.pid\"\n\
             pin_dir = \"{root}/bpf/shaper\"\ncgroup = \"{cgroup}\"\n\n\
             [[interface]]\nname = \"{DEV}\"\negress = \"1gbit\"\n\n{extra}\
             [[class]]\nname = \"bulk\"\negress = \"{rate}\"\nmatch = 'rport in {IPERF_PORT}..{STREAM_PORT}'\n",
            sock = self.socket().display(),
            root = self.root.display(),
            cgroup = self.cgroup.dir().display(),
        )
    }

    fn status(&self) -> Status {
        client::status(&self.socket()).unwrap_or_else(|e| panic!("{}: status: {e}", self.name))
    }

    fn installed(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.root.join(path)).unwrap_or_default()
    }

    /// What an iperf3 stream from the host to the controller gets, bits/s.
    fn rate(&self) -> f64 {
        run_client(&self.ns, &self.ctl_addr, IPERF_PORT, &["-t", "4", "-O", "1"]).unwrap().received_bps
    }

    /// Files a deploy left under its temporary names.
    fn leftovers(&self) -> Vec<String> {
        let out = std::process::Command::new("find")
            .arg(&self.root)
            .args([
                "-path",
                &format!("{}/bpf", self.root.display()),
                "-prune",
                "-o",
                "-name",
                "*.deploy-*",
                "-print",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let out = self
            .ns
            .command(SHAPER)
            .args(["stop", "--force", "--socket"])
            .arg(self.socket())
            .arg("--pin-dir")
            .arg(self.root.join("bpf/shaper"))
            .arg("--pid-file")
            .arg(self.root.join("run/shaper.pid"))
            .output();
        if let Ok(out) = out {
            println!("{}: shaper stop --force: {}", self.name, String::from_utf8_lossy(&out.stdout).trim());
        }
    }
}

/// The controller, three hosts, a dead fourth address, the client key and
/// the configs. Fields drop in order: hosts first, the directory last.
struct Lab {
    hosts: Vec<TestHost>,
    _servers: Vec<IperfServer>,
    ctl: Netns,
    _dead: Netns,
    configs: PathBuf,
    key: PathBuf,
    dir: TempDir,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let tag = format!("{tag}{}", std::process::id());
        let dir = TempDir(std::env::temp_dir().join(format!("shaper-test-{tag}")));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(dir.0.join("configs")).unwrap();
        let key = dir.0.join("id_ed25519");
        keygen(&key).unwrap();
        let keys = dir.0.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &keys).unwrap();
        let ctl = Netns::create(&format!("shp-{tag}-ctl")).unwrap();
        let dead = Netns::create(&format!("shp-{tag}-dead")).unwrap();
        Self::dead_link(&ctl, &dead);
        let hosts: Vec<TestHost> = (1..=3).map(|n| TestHost::create(&tag, n, &dir.0, &ctl, &keys)).collect();
        let servers =
            hosts.iter().map(|h| IperfServer::start(&ctl, &h.ctl_addr, IPERF_PORT).unwrap()).collect();
        Self { hosts, _servers: servers, ctl, _dead: dead, configs: dir.0.join("configs"), key, dir }
    }

    /// A link to a namespace without the address: the controller's frames
    /// to [`DEAD`] go to a MAC nobody has, and are dropped there.
    fn dead_link(ctl: &Netns, dead: &Netns) {
        link(ctl, dead, 4);
        let neigh =
            ["neigh", "add", DEAD, "lladdr", "02:00:00:00:00:99", "dev", "ctl-h4", "nud", "permanent"];
        ctl.run("ip", &neigh).unwrap();
    }

    /// Host `i`'s config file: its own for hosts 1 and 2, default.toml for host 3.
    fn config_file(&self, i: usize) -> PathBuf {
        match i {
            2 => self.configs.join("default.toml"),
            _ => self.configs.join(format!("{}.toml", self.hosts[i].name)),
        }
    }

    fn write_config(&self, i: usize, rate: &str, extra: bool) {
        std::fs::write(self.config_file(i), self.hosts[i].config(rate, extra)).unwrap();
    }

    /// `cargo xtask deploy` in the controller's namespace to the three hosts
    /// (and `more`), with `args`.
    fn deploy(&self, more: &[&str], args: &[&str]) -> Deployed {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut cmd = self.ctl.command(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(root).args(["xtask", "deploy", "--config"]).arg(&self.configs);
        cmd.arg("--identity").arg(&self.key);
        cmd.arg("--remote-root").arg(self.dir.0.join("hosts/{host}"));
        let known = format!("UserKnownHostsFile={}", self.dir.0.join("known_hosts").display());
        for option in ["StrictHostKeyChecking=no", &known, "LogLevel=ERROR"] {
            cmd.args(["--ssh-option", option]);
        }
        for host in self.hosts.iter().map(|h| h.name.as_str()).chain(more.iter().copied()) {
            cmd.args(["--host", &format!("root@{host}")]);
        }
        cmd.args(args);
        Deployed::run(cmd)
    }
}

/// What a deploy printed: each stdout line with the time it arrived.
struct Deployed {
    ok: bool,
    lines: Vec<(Duration, String)>,
    stderr: String,
    took: Duration,
}

impl Deployed {
    fn run(mut cmd: std::process::Command) -> Self {
        let start = Instant::now();
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let errs = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let lines: Vec<(Duration, String)> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .map(|l| (start.elapsed(), l))
            .collect();
        let status = child.wait().unwrap();
        let stderr = errs.join().unwrap();
        let took = start.elapsed();
        let shown: Vec<String> =
            lines.iter().map(|(t, l)| format!("[{:5.2}s] {l}", t.as_secs_f64())).collect();
        println!(
            "cargo xtask deploy ({status}, {:.1} s):\n{}\n{}",
            took.as_secs_f64(),
            shown.join("\n"),
            tail(&stderr)
        );
        Self { ok: status.success(), lines, stderr, took }
    }

    /// Host `name`'s summary line, without the host, and when it arrived.
    fn host(&self, name: &str) -> (&str, Duration) {
        let prefix = format!("root@{name}: ");
        self.lines
            .iter()
            .find_map(|(t, l)| l.strip_prefix(&prefix).map(|rest| (rest, *t)))
            .unwrap_or_else(|| panic!("no line for {name} in {:#?}", self.lines))
    }

    fn line(&self, name: &str) -> &str {
        self.host(name).0
    }

    fn text(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }
}

/// The last lines of cargo's and the build's output.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The number after the last "pid " in `line`.
fn pid_in(line: &str) -> u32 {
    let after = line.rsplit_once("pid ").map_or("", |(_, rest)| rest);
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

/// Line number (1-based) of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).unwrap()
}

#[test]
fn deploy_to_three_hosts_over_ssh_reloads_refuses_and_swaps_as_promised() {
    require_root!();
    let lab = Lab::new("dep");
    for (i, rate) in RATES.iter().enumerate() {
        lab.write_config(i, &format!("{rate}mbit"), false);
    }

    // 1. The first deploy builds the binary and starts a daemon on every host.
    let first = lab.deploy(&[], &[]);
    assert!(first.ok, "{}", first.stderr);
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/shaper");
    let binary = std::fs::read(&release).unwrap();
    let mut pids = Vec::new();
    for (i, host) in lab.hosts.iter().enumerate() {
        let line = first.line(&host.name);
        assert!(line.starts_with("changed: binary, config, unit; daemon started (pid "), "{line}");
        let status = host.status();
        assert_eq!(pid_in(line), status.pid, "{line}");
        assert_eq!(status.config, host.root.join("etc/shaper/shaper.toml").display().to_string());
        assert_eq!(status.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), [DEV]);
        pids.push(status.pid);
        assert!(host.installed("usr/local/bin/shaper") == binary, "{}: the binary differs", host.name);
        assert_eq!(host.installed("etc/shaper/shaper.toml"), std::fs::read(lab.config_file(i)).unwrap());
        let unit = String::from_utf8(host.installed("etc/systemd/system/shaper.service")).unwrap();
        let r = host.root.display();
        assert!(
            unit.contains(&format!("{r}/usr/local/bin/shaper run --config {r}/etc/shaper/shaper.toml")),
            "{unit}"
        );
        assert_eq!(host.leftovers(), Vec::<String>::new());
        let qdiscs = host.ns.run("tc", &["qdisc", "show", "dev", DEV]).unwrap();
        assert!(String::from_utf8_lossy(&qdiscs.stdout).contains("qdisc htb 1: root"), "{}", host.name);
    }
    assert!(first.text().ends_with("deploy: 3 changed\n"), "{}", first.text());
    for (host, rate) in lab.hosts.iter().zip(RATES) {
        let measured = host.rate();
        println!("{}: {:.2} Mbit/s (class {rate} Mbit/s)", host.name, measured / MBIT);
        assert_near(&format!("{} after the first deploy", host.name), measured, f64::from(rate) * MBIT, 0.10);
    }

    // The rest deploy the binary the first one built.
    let prebuilt = ["--binary", release.to_str().unwrap()];

    // 2. One rate edited: that host reloads live, the others are unchanged.
    lab.write_config(0, "10mbit", false);
    let second = lab.deploy(&[], &prebuilt);
    assert!(second.ok, "{}", second.stderr);
    let (h1, h2, h3) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let line = second.line(&h1.name);
    assert!(
        line.starts_with(&format!("changed: config; config reloaded (pid {}, applied in ", pids[0])),
        "{line}"
    );
    assert!(line.contains("classes changed: bulk"), "{line}");
    assert_eq!(h1.status().pid, pids[0], "the daemon was restarted, not reloaded");
    for host in [h2, h3] {
        assert_eq!(second.line(&host.name), "unchanged");
    }
    let measured = h1.rate();
    println!("{}: {:.2} Mbit/s after the edit (class 10 Mbit/s)", h1.name, measured / MBIT);
    assert_near("host 1 after the reload (10 Mbit/s)", measured, 10.0 * MBIT, 0.10);

    // 3. --dry-run shows the diff and the binary, and changes nothing.
    let h2_installed = h2.installed("etc/shaper/shaper.toml");
    lab.write_config(1, "25mbit", false);
    let dry = lab.deploy(&[], &[&prebuilt[..], &["--dry-run"]].concat());
    assert!(dry.ok, "{}", dry.stderr);
    assert_eq!(dry.line(&h2.name), "would change: config; would reload the config");
    let text = dry.text();
    for expected in [
        format!(
            "  config {}/etc/shaper/shaper.toml: would change ({}):",
            h2.root.display(),
            lab.config_file(1).display()
        ),
        format!("    --- {}:{}/etc/shaper/shaper.toml", h2.name, h2.root.display()),
        "    -egress = \"30mbit\"".to_string(),
        "    +egress = \"25mbit\"".to_string(),
        format!("  daemon: running (pid {}, config {}/etc/shaper/shaper.toml)", pids[1], h2.root.display()),
    ] {
        assert!(text.lines().any(|l| l == expected), "no line `{expected}` in:\n{text}");
    }
    assert!(
        text.contains(&format!("  binary {}/usr/local/bin/shaper: unchanged, shaper ", h2.root.display())),
        "{text}"
    );
    assert_eq!((dry.line(&h1.name), dry.line(&h3.name)), ("unchanged", "unchanged"));
    assert_eq!(h2.installed("etc/shaper/shaper.toml"), h2_installed, "the dry run changed the config");
    assert_eq!(h2.status().pid, pids[1]);
    assert_eq!(h2.leftovers(), Vec::<String>::new());

    // 4. An interface host 2 lacks: refused there (the previous config and
    //    rate stay), the others change; a dead fourth host is reported
    //    within 10 s and holds nobody up.
    for (i, rate) in ["10mbit", "25mbit", "40mbit"].iter().enumerate() {
        lab.write_config(i, rate, true);
    }
    let fourth = lab.deploy(&[DEAD], &prebuilt);
    assert!(!fourth.ok);
    assert!(fourth.stderr.contains("2 of 4 hosts failed"), "{}", fourth.stderr);
    let (line, at) = fourth.host(DEAD);
    assert_eq!(line, format!("unreachable: ssh: connect to host {DEAD} port 22: Connection timed out"));
    assert!(at < Duration::from_secs(10), "the dead host was reported after {at:?}");
    let h2_file = lab.config_file(1);
    let expected = format!(
        "refused: {}:{}:",
        h2_file.display(),
        line_of(&h2.config("25mbit", true), &format!("\"{EXTRA}\""))
    );
    let line = fourth.line(&h2.name);
    assert!(line.starts_with(&expected), "expected `{expected}…`, got `{line}`");
    assert!(
        line.ends_with(&format!("interface \"{EXTRA}\" does not exist (in this network namespace)")),
        "{line}"
    );
    assert_eq!(h2.installed("etc/shaper/shaper.toml"), h2_installed, "the refused config was installed");
    assert_eq!(h2.status().pid, pids[1]);
    assert_eq!(h2.leftovers(), Vec::<String>::new());
    for (host, pid) in [(h1, pids[0]), (h3, pids[2])] {
        let line = fourth.line(&host.name);
        assert!(line.starts_with(&format!("changed: config; config reloaded (pid {pid}, ")), "{line}");
        assert!(line.contains(&format!("interfaces added: {EXTRA}")), "{line}");
        let names: Vec<String> = host.status().interfaces.into_iter().map(|i| i.name).collect();
        assert_eq!(names, [DEV, EXTRA]);
    }
    let measured = h2.rate();
    println!("{}: {:.2} Mbit/s after the refusal (class 30 Mbit/s)", h2.name, measured / MBIT);
    assert_near("host 2 after its refusal (still 30 Mbit/s)", measured, 30.0 * MBIT, 0.10);
    println!(
        "deploy with a dead host: {:.1} s, the dead host reported after {:.1} s",
        fourth.took.as_secs_f64(),
        at.as_secs_f64()
    );

    // 5. A new binary, under a running stream: stop --keep and a start, and
    //    the stream keeps its class rate throughout.
    let v2 = lab.dir.0.join("shaper-v2");
    let mut bytes = binary.clone();
    bytes.extend_from_slice(b"\nanother build of shaper\n");
    std::fs::write(&v2, &bytes).unwrap();
    let stream = Stream::start(&lab.ctl, &h3.ctl_addr, STREAM_PORT, &h3.ns, 200.0 * MBIT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = Instant::now();
    let swapped = lab.deploy(&[], &["--binary", v2.to_str().unwrap()]);
    let after = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let end = Instant::now();
    assert!(!swapped.ok, "host 2 is still refused: {}", swapped.text());
    for (host, pid) in [(h1, pids[0]), (h3, pids[2])] {
        let line = swapped.line(&host.name);
        let status = host.status();
        let expected = format!(
            "changed: binary; binary swapped with stop --keep and a start (pid {pid} → {})",
            status.pid
        );
        assert_eq!(line, expected);
        assert_ne!(status.pid, pid);
        assert!(status.adopted, "the new daemon did not take the pinned state over");
        assert!(host.installed("usr/local/bin/shaper") == bytes, "{}: not the new binary", host.name);
    }
    assert!(swapped.line(&h2.name).starts_with("refused: "), "{}", swapped.text());
    assert!(h2.installed("usr/local/bin/shaper") == binary, "host 2 got the new binary though refused");
    let rate = stream.rate(before, end);
    let gap = stream.longest_gap(before, end);
    let mut windows = Vec::new();
    let mut t = before;
    while t + Duration::from_secs(1) <= end {
        windows.push(stream.rate(t, t + Duration::from_secs(1)));
        t += Duration::from_millis(250);
    }
    let shown: Vec<String> = windows.iter().map(|w| format!("{:.1}", w / MBIT)).collect();
    println!(
        "stream through the swap ({:.1} s): {:.2} Mbit/s, longest gap {gap:?}, 1 s windows: {}",
        (after - before).as_secs_f64(),
        rate / MBIT,
        shown.join(" ")
    );
    assert_near("the stream through the swap (40 Mbit/s)", rate, 40.0 * MBIT, 0.10);
    for w in &windows {
        assert_near("every second of the stream through the swap (40 Mbit/s)", *w, 40.0 * MBIT, 0.15);
    }
    assert!(gap < Duration::from_millis(500), "the stream stopped for {gap:?}");
    drop(stream);
    for host in &lab.hosts {
        println!(
            "{}: sshd log:\n{}",
            host.name,
            host.sshd.log().lines().take(3).collect::<Vec<_>>().join("\n")
        );
    }
}
