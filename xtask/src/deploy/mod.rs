//! `cargo xtask deploy`: shaper onto many hosts over the system's OpenSSH.
//!
//! Builds once (or takes `--binary`), then for each host, in parallel
//! threads: probe what is installed and running ([`remote`]), decide what
//! changes ([`plan`]), upload the files that differ to temporary names, run
//! the new binary's `shaper check` there, and only then move them into place
//! and reload, swap or start the daemon ([`host`]). One summary line per host
//! ([`outcome`]); the command fails if any host did.
//!
//! | module | what it does |
//! |---|---|
//! | [`target`] | `[USER@]HOST[:PORT]` |
//! | [`local`] | the binary, the unit, each host's config file, their SHA-256 |
//! | [`ssh`] | `ssh` and `scp` with the user's options |
//! | [`remote`] | the layout on a host, the probe, the check and activation scripts |
//! | [`plan`] | what differs, and what the daemon goes through |
//! | [`host`] | one host from probe to summary |
//! | [`dryrun`] | `--dry-run`'s report |
//! | [`outcome`] | the summary line |

mod dryrun;
mod host;
mod local;
mod outcome;
mod plan;
mod remote;
mod ssh;
mod target;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use anyhow::{bail, Context as _, Result};

use self::{
    host::{Job, Report},
    local::{ConfigSource, Payload, Release},
    outcome::Outcome,
    remote::Layout,
    ssh::Ssh,
    target::Target,
};

#[derive(clap::Args)]
pub(crate) struct DeployArgs {
    /// A host to deploy to (repeat for more). HOST names its config file in a
    /// --config directory and stands for {host} in --remote-root.
    #[arg(long = "host", value_name = "[USER@]HOST[:PORT]", required = true)]
    hosts: Vec<Target>,
    /// The config: one file for every host, or a directory of HOST.toml files
    /// with default.toml for the hosts without one.
    #[arg(long, value_name = "FILE|DIR")]
    config: PathBuf,
    /// The ssh private key (ssh -i).
    #[arg(long, value_name = "KEY")]
    identity: Option<PathBuf>,
    /// Install under this directory on each host (DIR/usr/local/bin/shaper,
    /// DIR/etc/shaper/shaper.toml, DIR/etc/systemd/system/shaper.service) and
    /// never through systemd; {host} stands for the host's name.
    #[arg(long, value_name = "DIR", value_parser = absolute)]
    remote_root: Option<String>,
    /// An ssh option for ssh and scp (-o KEY=VALUE); repeatable, and wins over
    /// deploy's own (BatchMode=yes, ConnectTimeout=5).
    #[arg(long = "ssh-option", value_name = "KEY=VALUE", value_parser = ssh_option)]
    ssh_options: Vec<String>,
    /// Hosts deployed to at the same time.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// Show what would change on each host (config diff, binary version) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Deploy this binary instead of building target/release/shaper.
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
}

fn absolute(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_string())
    } else {
        Err("the remote root must be an absolute path".to_string())
    }
}

fn ssh_option(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((key, _)) if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Ok(s.to_string())
        }
        _ => Err("expected KEY=VALUE, e.g. StrictHostKeyChecking=accept-new".to_string()),
    }
}

/// Runs the deploy; fails if any host failed.
/// `workspace`: the source tree (config/shaper.service).
pub(crate) fn run(args: DeployArgs, workspace: &Path, build: impl FnOnce() -> Result<PathBuf>) -> Result<()> {
    unique_names(&args.hosts)?;
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => build()?,
    };
    let release = Release::new(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let staging = Staging::new()?;
    let (jobs, mut outcomes) = jobs(&args, &release, workspace, &staging.0);
    outcomes.extend(in_parallel(&jobs, usize::from(args.parallel), |job| {
        let report = host::deploy(job);
        print(&job.ssh.target, &report);
        report.outcome
    }));
    println!("deploy: {}", outcome::tally(&outcomes));
    let failed = outcomes.iter().filter(|o| o.failed()).count();
    if failed > 0 {
        bail!("{failed} of {} hosts failed", outcomes.len());
    }
    Ok(())
}

/// A job per host whose files are ready; the others fail at once (their
/// lines printed first).
fn jobs<'a>(
    args: &DeployArgs,
    release: &'a Release,
    workspace: &Path,
    staging: &Path,
) -> (Vec<Job<'a>>, Vec<Outcome>) {
    let source = ConfigSource::new(&args.config);
    let (mut jobs, mut failed) = (Vec::new(), Vec::new());
    for (i, target) in args.hosts.iter().enumerate() {
        match job(args, target, i, release, workspace, &source, staging) {
            Ok(job) => jobs.push(job),
            Err(e) => {
                let report = Report { outcome: Outcome::Failed(format!("{e:#}")), details: Vec::new() };
                print(target, &report);
                failed.push(report.outcome);
            }
        }
    }
    (jobs, failed)
}

/// Two `--host`s with one name would share a config file and a remote root.
fn unique_names(hosts: &[Target]) -> Result<()> {
    for (i, a) in hosts.iter().enumerate() {
        if let Some(b) = hosts[..i].iter().find(|b| b.name == a.name) {
            bail!("--host {a} and --host {b} name the same host {}", a.name);
        }
    }
    Ok(())
}

fn job<'a>(
    args: &DeployArgs,
    target: &Target,
    index: usize,
    release: &'a Release,
    workspace: &Path,
    source: &ConfigSource,
    staging: &Path,
) -> Result<Job<'a>> {
    let layout = Layout::new(args.remote_root.as_deref(), &target.name);
    let config = Payload::from_file(&source.for_host(&target.name)?)?;
    let unit_text = local::unit_for(workspace, &layout.root)?;
    let unit = local::stage(staging, &format!("{index}.service"), unit_text.as_bytes())?;
    let ssh = Ssh {
        target: target.clone(),
        identity: args.identity.clone(),
        options: args.ssh_options.clone(),
        control: Some(staging.join(format!("{index}.ssh"))),
    };
    let nonce = format!("{}-{index}", std::process::id());
    Ok(Job { ssh, layout, config, unit, release, nonce, dry_run: args.dry_run })
}

/// Runs `work` on each job with at most `n` threads; the results in the
/// order they finished.
fn in_parallel<T: Sync, R: Send>(jobs: &[T], n: usize, work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..n.min(jobs.len()) {
            scope.spawn(|| {
                while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = work(job);
                    results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(result);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A host's line (and a dry run's details under it), as soon as it is known.
fn print(target: &Target, report: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{target}: {}", report.outcome);
    for line in &report.details {
        let _ = writeln!(out, "  {line}");
    }
    let _ = out.flush();
}

/// This run's local scratch directory (the units rendered per host), removed at the end.
struct Staging(PathBuf);

impl Staging {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("xtask-deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn every_job_runs_once_with_at_most_n_at_a_time() {
        let jobs: Vec<u64> = (0..7).collect();
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let mut done = in_parallel(&jobs, 3, |v| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            running.fetch_sub(1, Ordering::SeqCst);
            v * 10
        });
        done.sort();
        assert_eq!(done, (0..7).map(|i| i * 10).collect::<Vec<u64>>());
        assert!(most.load(Ordering::SeqCst) <= 3 && most.load(Ordering::SeqCst) >= 2);
    }

    #[test]
    fn options_and_roots_are_checked_before_anything_runs() {
        assert!(ssh_option("StrictHostKeyChecking=no").is_ok());
        assert!(ssh_option("Bad Key=1").is_err());
        assert!(ssh_option("novalue").is_err());
        assert!(absolute("srv/x").is_err());
        let hosts: Vec<Target> = ["a", "root@b", "a:2222"].iter().map(|h| h.parse().unwrap()).collect();
        assert_eq!(
            unique_names(&hosts).unwrap_err().to_string(),
            "--host a:2222 and --host a name the same host a"
        );
    }
}
