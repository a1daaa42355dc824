//! `cargo xtask setup`: what a fresh machine needs before the first build.
//!
//! - the `rust-src` component (the eBPF crate builds `core` with `-Z build-std`);
//! - `bpf-linker`, built against the LLVM that ships inside the stable toolchain
//!   (Debian's LLVM is far too old), see ../shared/TOOLCHAIN.md;
//! - the Debian packages the tests, the demo and the bench run: iproute2,
//!   iperf3, bpftool, iputils-ping, python3, util-linux, trickle, fonts-dejavu-core,
//!   man-db, zsh, fish, systemd (what the install and package tests check with),
//!   openssh-server and openssh-client (the deploy test's sshds, and ssh/scp),
//!   prometheus (its `promtool check metrics` lints the metrics test's scrape).
//!
//! Each step checks first and does nothing when its part is present.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::exec;

/// The toolchain that builds both sides (the eBPF crate through RUSTC_BOOTSTRAP).
const TOOLCHAIN: &str = "stable";
const BPF_LINKER_VERSION: &str = "0.13.0";
// python3 (with ctypes and threading, which python3-minimal lacks): the
// process tests' UDP senders and a program whose thread names itself;
// util-linux: setpriv, to drop a capability in the cgroup v2 test; trickle:
// the userspace shaper the bench compares with; fonts-dejavu-core: the
// bench plot's labels; man-db (`man -l`), zsh and fish (`zsh -n`, `fish -n`)
// and systemd (`systemd-analyze verify`): the install test's checks of the
// man pages, completions and unit; openssh-server and openssh-client: the
// deploy test runs a real sshd in each of its test hosts and deploys over
// ssh/scp; prometheus: `promtool check metrics` (setup never leaves a
// system sshd or Prometheus running that it started: see `UNWANTED_SERVICES`).
const PACKAGES: &[&str] = &[
    "iproute2",
    "iperf3",
    "bpftool",
    "iputils-ping",
    "python3",
    "util-linux",
    "trickle",
    "fonts-dejavu-core",
    "man-db",
    "zsh",
    "fish",
    "systemd",
    "openssh-server",
    "openssh-client",
    "prometheus",
    // tests/top.rs runs `shaper top` in a real terminal.
    "tmux",
];

/// Services a package's postinst may start on the machine (where no
/// policy-rc.d forbids it) that nothing here needs: (package, process name,
/// init script, systemd units). The deploy test runs its own sshds inside
/// test namespaces; the metrics test needs only `promtool`, not a Prometheus
/// server on port 9090. Setup stops and disables a service its install just
/// started; one that ran before is never touched.
const UNWANTED_SERVICES: &[(&str, &str, &str, &[&str])] = &[
    ("openssh-server", "sshd", "ssh", &["ssh.service", "ssh.socket"]),
    ("prometheus", "prometheus", "prometheus", &["prometheus.service"]),
];

pub(crate) fn run() -> Result<()> {
    build_tools()?;
    packages()
}

/// What `cargo build` needs: rust-src and bpf-linker.
pub(crate) fn build_tools() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.stderr(Stdio::null()).output().with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", TOOLCHAIN]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding the rust-src component to the {TOOLCHAIN} toolchain");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]))
}

/// The toolchain's own libLLVM: (its file, its major version).
fn toolchain_llvm() -> Result<(PathBuf, String)> {
    let sysroot = output(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let file = fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("the {TOOLCHAIN} toolchain has no libLLVM.so.* in {}", lib.display()))?;
    let verbose = output(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--version", "--verbose"]))?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc --version --verbose shows no LLVM version")?
        .to_string();
    Ok((file, major))
}

fn bpf_linker() -> Result<()> {
    let (libllvm, major) = toolchain_llvm()?;
    let linked = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if linked {
        return Ok(());
    }
    // bpf-linker links dynamically against the toolchain's libLLVM, found through a
    // prefix whose lib/ holds libLLVM.so and the soname; the binary keeps an rpath
    // to it, so the prefix lives in a stable place, not /tmp.
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".cache/shaper/llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm.file_name().context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (takes a minute or two)",
        libllvm.display()
    );
    exec(
        Command::new("rustup")
            .args([
                "run",
                TOOLCHAIN,
                "cargo",
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let status = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            !status.contains("install ok installed")
        })
        .collect()
}

fn packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root()? {
        // Building and the unit tests do without them; the root tests,
        // the demo and the bench run as root, and install them then.
        eprintln!("setup: not root, so not installing {} (the root tests need them)", missing.join(" "));
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    // The package lists of a fresh machine are often stale (404s): refresh first.
    exec(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    let before: Vec<bool> = UNWANTED_SERVICES.iter().map(|(_, process, _, _)| running(process)).collect();
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for (&(package, process, init, units), ran) in UNWANTED_SERVICES.iter().zip(before) {
        if missing.contains(&package) && !ran && running(process) {
            no_system_service(package, init, units)?;
        }
    }
    Ok(())
}

/// Whether a process named `name` runs on this machine.
fn running(name: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else { return false };
    entries.filter_map(Result::ok).any(|e| {
        e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())
            && fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
    })
}

/// Stops and disables the service that installing `package` just started
/// (see [`UNWANTED_SERVICES`]).
fn no_system_service(package: &str, init: &str, units: &[&str]) -> Result<()> {
    eprintln!("setup: installing {package} started the system's {init} service; stopping and disabling it");
    if Path::new("/run/systemd/system").exists() {
        return exec(Command::new("systemctl").args(["disable", "--now"]).args(units));
    }
    exec(Command::new(format!("/etc/init.d/{init}")).arg("stop"))?;
    exec(Command::new("update-rc.d").args([init, "disable"]))
}
