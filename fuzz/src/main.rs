//! `shaper-fuzz [--seconds N] [--seed N] [TARGET…]`: runs each target (all
//! by default: config, rules, control, classifier) for N seconds; `--replay
//! FILE TARGET` runs one saved input. `cargo xtask fuzz` runs this.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use shaper_fuzz::{classifier::Classifier, config::Config, control::Control, rules::Rules, Target};

const TARGETS: &[&str] = &["config", "rules", "control", "classifier"];

#[derive(Parser)]
#[command(
    name = "shaper-fuzz",
    about = "Fuzz shaper's config loader, rules, control protocol and classifier"
)]
struct Cli {
    /// Seconds per target.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seed of the generators (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Run this one saved input (a finding) instead of fuzzing.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Targets to run (all when none is named).
    targets: Vec<String>,
}

fn target(name: &str) -> Result<Box<dyn Target>> {
    Ok(match name {
        "config" => Box::new(Config::new()),
        "rules" => Box::new(Rules::new()),
        "control" => Box::new(Control::new()?),
        "classifier" => Box::new(Classifier::new()?),
        _ => bail!("unknown target {name:?} (targets: {})", TARGETS.join(", ")),
    })
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    if let Some(path) = &cli.replay {
        let [name] = cli.targets.as_slice() else { bail!("--replay FILE needs exactly one TARGET") };
        let input = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut t = target(name)?;
        shaper_fuzz::quiet_panics();
        return Ok(match shaper_fuzz::run_one(t.as_mut(), &input) {
            Ok(_) => {
                println!("{name}: {} passes", path.display());
                ExitCode::SUCCESS
            }
            Err(finding) => {
                println!("{name}: {} fails: {}", path.display(), finding.message);
                ExitCode::FAILURE
            }
        });
    }
    let named = !cli.targets.is_empty();
    let names: Vec<String> =
        if named { cli.targets.clone() } else { TARGETS.iter().map(|s| s.to_string()).collect() };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let mut failed = false;
    for name in &names {
        if name == "classifier" && !shaper_testkit::is_root() {
            if named {
                bail!("the classifier target loads BPF programs: it needs root");
            }
            println!("classifier: skipped (needs root)");
            continue;
        }
        let mut t = target(name)?;
        let seeds = shaper_fuzz::seeds(name).with_context(|| format!("reading the corpus of {name}"))?;
        match shaper_fuzz::fuzz(t.as_mut(), &seeds, Duration::from_secs_f64(cli.seconds), seed) {
            Ok(r) => println!(
                "{:<10} {:>8} runs ({} accepted) in {:.1} s, seed {seed}, {} seeds: no finding",
                r.target,
                r.runs,
                r.accepted,
                r.elapsed.as_secs_f64(),
                seeds.len()
            ),
            Err(finding) => {
                failed = true;
                let saved = shaper_fuzz::save(&finding).context("saving the finding")?;
                println!("{name}: FINDING (seed {seed}): {}", finding.message);
                println!(
                    "  input ({} bytes): {:?}",
                    finding.input.len(),
                    String::from_utf8_lossy(&finding.input)
                );
                println!(
                    "  saved as {}; replay: cargo run -p shaper-fuzz -- --replay {} {name}",
                    saved.display(),
                    saved.display()
                );
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
