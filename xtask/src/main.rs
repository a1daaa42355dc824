//! `cargo xtask …`: bootstrap, build, test, lint, demo and benchmark shaper.
//!
//! Every command that needs the eBPF toolchain or the test tools runs `setup`
//! first; `setup` is idempotent and a fast no-op when everything is present.

mod deploy;
mod install;
mod package;
mod setup;
mod structure;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// What `build_release` makes, relative to the workspace root.
const RELEASE_BINARY: &str = "target/release/shaper";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and try shaper")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (rust-src, bpf-linker, iproute2, iperf3, …).
    Setup,
    /// Release build of the eBPF programs and the `shaper` binary (target/release/shaper).
    Build,
    /// Run every test: unit tests (no root needed), then the root tests with
    /// real BPF, HTB and traffic. Without root the root tests are skipped and
    /// the command fails saying so; `--unit` asks for the unit tests alone.
    Test {
        /// Only run tests whose name contains this string.
        filter: Option<String>,
        /// Only the unit tests (no root needed; exit 0 when they pass).
        #[arg(long)]
        unit: bool,
    },
    /// rustfmt, clippy and the structure check (no import cycles, short daemon functions), as CI runs them.
    Lint,
    /// Shape live traffic in a throw-away sandbox and show the result.
    Demo,
    /// Fuzz the config loader, the rules and their compiled table, the
    /// control protocol and the classifier (root) for a bounded time each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        seconds: u32,
        /// Seed of the generators (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// One target (config, rules, control, classifier); all when omitted.
        target: Option<String>,
    },
    /// Build the release binary and install it with its man pages, shell completions,
    /// systemd unit, README and (if none exists) the example config /etc/shaper/shaper.toml.
    Install {
        /// Where the program's files go (PREFIX/bin/shaper, PREFIX/share/…).
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage everything below this directory instead of / (for packages and tests).
        #[arg(long)]
        destdir: Option<PathBuf>,
    },
    /// Build a .deb (dpkg-deb) and a .tar.gz of the same tree (prefix /usr) in target/package/.
    Package,
    /// Deploy shaper to hosts over ssh: build once, check the config on each
    /// host with the new binary, install, and reload, swap or start the daemon.
    Deploy(deploy::DeployArgs),
    /// Measure shaper against u32 chains, trickle, the pyshaper model and tc (see README, Performance).
    Bench {
        /// Only the sections whose name contains one of these words.
        sections: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            build_release()
        }
        Cmd::Test { filter, unit } => {
            setup::run()?;
            test(filter.as_deref(), unit)
        }
        Cmd::Lint => {
            setup::run()?;
            lint(&root)
        }
        Cmd::Demo => {
            setup::run()?;
            require_root("the demo")?;
            build_release()?;
            let shaper = root.join(RELEASE_BINARY);
            exec(
                Command::new("cargo")
                    .args(["run", "--quiet", "--release", "-p", "shaper-user", "--example", "demo", "--"])
                    .arg(&shaper),
            )
        }
        Cmd::Fuzz { seconds, seed, target } => {
            setup::run()?;
            // The debug profile: overflow checks and debug assertions on, and
            // the build `cargo xtask test` already made.
            let mut cmd = Command::new("cargo");
            cmd.args(["run", "--quiet", "-p", "shaper-fuzz", "--", "--seconds", &seconds.to_string()]);
            if let Some(seed) = seed {
                cmd.args(["--seed", &seed.to_string()]);
            }
            cmd.args(target);
            exec(&mut cmd)
        }
        Cmd::Install { prefix, destdir } => {
            if destdir.is_none() && !is_root()? {
                bail!("installing into / needs root (or stage it with --destdir DIR)");
            }
            setup::run()?;
            build_release()?;
            let layout = install::Layout { prefix, destdir };
            for line in install::install(&root, &root.join(RELEASE_BINARY), &layout)? {
                println!("{line}");
            }
            if layout.destdir.is_none() {
                println!(
                    "next: edit {}, then `systemctl daemon-reload && systemctl enable --now shaper`",
                    install::CONFIG
                );
            }
            Ok(())
        }
        Cmd::Package => {
            setup::run()?;
            build_release()?;
            for path in package::package(&root, &root.join(RELEASE_BINARY))? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Cmd::Deploy(args) => deploy::run(args, &root, || {
            // The build needs the eBPF toolchain only, not the test packages.
            setup::build_tools()?;
            build_release()?;
            Ok(root.join(RELEASE_BINARY))
        }),
        Cmd::Bench { sections } => {
            setup::run()?;
            require_root("the benchmarks")?;
            exec(
                Command::new("cargo")
                    .args(["bench", "-p", "shaper-user", "--bench", "datapath", "--"])
                    .args(&sections),
            )
        }
    }
}

/// rustfmt, then clippy on the host crates and on the eBPF crate for its own
/// target, then the structure check.
fn lint(root: &Path) -> Result<()> {
    exec(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    exec(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    exec(
        Command::new("cargo")
            .current_dir("shaper-ebpf")
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["clippy", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )?;
    structure::check(root)
}

fn build_release() -> Result<()> {
    exec(Command::new("cargo").args(["build", "--release", "-p", "shaper-user"]))
}

fn test(filter: Option<&str>, unit_only: bool) -> Result<()> {
    let with_filter = |cmd: &mut Command| {
        if let Some(f) = filter {
            cmd.arg(f);
        }
    };
    // Pure logic first: fast, no privileges used.
    let mut unit = Command::new("cargo");
    // The default members: every crate but the eBPF one, which only builds for bpfel.
    unit.args(["test", "--lib", "--bins"]);
    unit.arg("--");
    with_filter(&mut unit);
    exec(&mut unit)?;
    if unit_only {
        return Ok(());
    }
    if !is_root()? {
        // The suite did not run: say so, and do not exit 0.
        bail!(
            "the unit tests passed; the root tests were skipped: they load BPF programs and create \
             network namespaces, so they need root (run `sudo -E cargo xtask test`; \
             `cargo xtask test --unit` runs the unit tests alone)"
        );
    }
    // Then the kernel tests, one at a time: they measure rates, and parallel
    // traffic would disturb the measurements.
    let mut root = Command::new("cargo");
    root.args(["test", "-p", "shaper-user", "--test", "*", "--", "--test-threads=1"]);
    with_filter(&mut root);
    exec(&mut root)
}

fn require_root(what: &str) -> Result<()> {
    if !is_root()? {
        bail!("{what} need root: run `sudo -E cargo xtask …` (or as root)");
    }
    Ok(())
}

pub(crate) fn is_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output().context("running `id -u`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a command with inherited stdio; the error names the command.
pub(crate) fn exec(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    let status = cmd.status().with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).context("xtask has no parent directory")
}
