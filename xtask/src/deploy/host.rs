//! One host, start to end: probe, plan, upload to temporary names, the new
//! binary's `shaper check` there, then the move into place and the reload,
//! swap or start. Nothing is moved before the check passes; a refused or
//! failed host keeps its binary, config and shaping.

use super::{
    dryrun,
    local::{Payload, Release},
    outcome::{activation_failure, shaper_reason, Outcome},
    plan::{Action, Plan, Wanted},
    remote::{self, Activated, Layout, ProbeError, State, Swap},
    ssh::{Ssh, SshError},
};

/// Everything one host's deploy needs.
pub(crate) struct Job<'a> {
    pub ssh: Ssh,
    pub layout: Layout,
    /// The host's config file (here) and the unit rendered for its layout.
    pub config: Payload,
    pub unit: Payload,
    pub release: &'a Release,
    /// Makes this run's temporary names unique.
    pub nonce: String,
    pub dry_run: bool,
}

/// A host's summary line and, for a dry run, the details under it.
#[derive(Debug)]
pub(crate) struct Report {
    pub outcome: Outcome,
    pub details: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum HostError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

impl From<HostError> for Outcome {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Ssh(SshError::Unreachable(why)) => Outcome::Unreachable(why),
            HostError::Refused(why) => Outcome::Refused(why),
            // With its causes: "copying …: reason".
            other => Outcome::Failed(format!("{:#}", anyhow::Error::new(other))),
        }
    }
}

pub(crate) fn deploy(job: &Job<'_>) -> Report {
    let report = run(job).unwrap_or_else(|e| Report { outcome: e.into(), details: Vec::new() });
    job.ssh.close();
    report
}

fn run(job: &Job<'_>) -> Result<Report, HostError> {
    let ran = job.ssh.run(&remote::probe_script(&job.layout))?;
    let state = remote::parse_probe(&ran.stdout)?;
    let wanted =
        Wanted { binary: &job.release.payload.sha256, config: &job.config.sha256, unit: &job.unit.sha256 };
    let plan = Plan::new(&wanted, &state, !job.layout.root.is_empty());
    if let Some(daemon) = state.daemon.as_ref().filter(|d| d.config != job.layout.config) {
        return Err(HostError::Failed(format!(
            "the running daemon (pid {}) reads {}, not {}: deploy would not reach it",
            daemon.pid, daemon.config, job.layout.config
        )));
    }
    if job.dry_run {
        return Ok(dryrun::report(job, &state, &plan));
    }
    if plan.action == Action::Nothing {
        return Ok(Report { outcome: Outcome::Unchanged, details: Vec::new() });
    }
    let swaps = upload(job, &plan)?;
    check(job, &plan, &swaps)?;
    let ran = job.ssh.run(&remote::activate_script(&job.layout, &plan, &swaps))?;
    if !ran.ok {
        return Err(HostError::Failed(activation_failure(&ran.stderr)));
    }
    let outcome = Outcome::Changed(changed(&plan, &state, &remote::parse_activated(&ran.stdout)));
    Ok(Report { outcome, details: Vec::new() })
}

/// Copies the files that differ to their temporary names; returns where each goes.
fn upload(job: &Job<'_>, plan: &Plan) -> Result<Vec<Swap>, HostError> {
    let layout = &job.layout;
    let files = [
        (plan.binary, &job.release.payload, &layout.binary),
        (plan.config, &job.config, &layout.config),
        (plan.unit, &job.unit, &layout.unit),
    ];
    let mkdir: Vec<String> = layout.dirs().iter().map(|d| super::ssh::quote(d)).collect();
    let ran = job.ssh.run(&format!("mkdir -p {}", mkdir.join(" ")))?;
    if !ran.ok {
        return Err(HostError::Failed(format!("creating {}: {}", mkdir.join(" "), ran.stderr.trim())));
    }
    let mut swaps = Vec::new();
    for (_, payload, dest) in files.into_iter().filter(|(changed, ..)| *changed) {
        let swap = Swap { temp: Layout::temp(dest, &job.nonce), dest: dest.clone() };
        if let Err(e) = job.ssh.upload(&payload.path, &swap.temp) {
            swaps.push(swap);
            remove(job, &swaps);
            return Err(e.into());
        }
        swaps.push(swap);
    }
    Ok(swaps)
}

/// Removes the uploaded files (best effort: the host may be gone).
fn remove(job: &Job<'_>, swaps: &[Swap]) {
    let temps: Vec<String> = swaps.iter().map(|s| s.temp.clone()).collect();
    let _ = job.ssh.run(&remote::remove_script(&temps));
}

/// The new binary checks the new config against the host's interfaces.
fn check(job: &Job<'_>, plan: &Plan, swaps: &[Swap]) -> Result<(), HostError> {
    let new = |changed: bool, dest: &str| {
        let swap = swaps.iter().find(|s| s.dest == dest).filter(|_| changed);
        swap.map_or_else(|| dest.to_string(), |s| s.temp.clone())
    };
    let (binary, config) = (new(plan.binary, &job.layout.binary), new(plan.config, &job.layout.config));
    let ran = job.ssh.run(&remote::check_script(&binary, &config))?;
    if ran.ok {
        return Ok(());
    }
    remove(job, swaps);
    let why = shaper_reason(&ran.stderr, &config, &job.config.path.display().to_string());
    if ran.code == Some(1) && ran.stderr.lines().any(|l| l.starts_with("shaper: ")) {
        return Err(HostError::Refused(why));
    }
    Err(HostError::Failed(format!("shaper check did not run: {why}")))
}

/// The summary of a successful change.
fn changed(plan: &Plan, before: &State, after: &Activated) -> String {
    let pid = after.daemon.as_ref().map_or_else(|| "?".to_string(), |d| d.pid.to_string());
    let files = plan.files();
    match plan.action {
        Action::Reload => match &after.applied {
            Some(applied) => format!("{files}; config reloaded (pid {pid}, {applied})"),
            None => format!("{files}; config reloaded (pid {pid})"),
        },
        Action::Swap => {
            let old = before.daemon.as_ref().map_or(0, |d| d.pid);
            format!("{files}; binary swapped with stop --keep and a start (pid {old} → {pid})")
        }
        Action::Start => format!("{files}; daemon started (pid {pid})"),
        Action::Install | Action::Nothing => format!("{files}; installed (pid {pid} runs on)"),
    }
}
