//! The `shaper` command: the daemon (`run`, `start`, `stop`), config
//! validation (`check`), and the clients of a running daemon (`status`,
//! `classes`, `conns`, `usage`, `metrics`, `explain`, `reload`, `set`, `move`).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{ArgGroup, CommandFactory as _, Parser, Subcommand};
use log::Level;
use shaper_user::{
    config::DEFAULT_CONFIG,
    control::{self, SetClass, Status},
    daemon, error_chain, logging, manual,
    pins::Pins,
    supervise, teardown,
};

mod cli;

use cli::{
    args::{conn_arg, limit_arg, ClientArgs, DaemonArgs},
    explain::{print_dry_run, print_explained},
    print::{print_applied, print_json, print_status},
    usage::print_usage,
};

#[derive(Parser)]
#[command(
    name = "shaper",
    version,
    about = "Traffic shaping by program, user, port and address, with eBPF and HTB",
    after_help = cli::exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the daemon in the foreground until SIGINT/SIGTERM or `shaper stop`
    /// (SIGHUP reloads the config). Takes over shaping a previous daemon left in place.
    Run(DaemonArgs),
    /// Run the daemon in the background; returns once it shapes (or says why it could not).
    Start(DaemonArgs),
    /// Stop the daemon and restore every interface (--keep: leave shaping in place, e.g. for an upgrade;
    /// --force: also with no daemon, from what it pinned and left on the host).
    Stop {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, conflicts_with = "force")]
        keep: bool,
        /// Works with no daemon (after kill -9, a config that no longer loads, interfaces gone):
        /// removes shaper's qdiscs, IFBs, links and pins. A daemon that answers is stopped first,
        /// one that holds the pid file but does not answer is killed.
        #[arg(long)]
        force: bool,
        /// With --force: the pin directory, instead of the config's `pin_dir`.
        #[arg(long, requires = "force")]
        pin_dir: Option<PathBuf>,
        /// With --force: the pid file, instead of the config's `pid_file`.
        #[arg(long, requires = "force")]
        pid_file: Option<PathBuf>,
    },
    /// Have the daemon re-read its config file and apply the difference live (a file it refuses
    /// changes nothing, and exits 1).
    Reload {
        /// Only say what the reload would change (classes, interfaces, connections that would
        /// move), changing nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a running class without touching the config file (until the next reload).
    #[command(group(ArgGroup::new("change").args(["egress", "ingress", "priority", "max_connections"]).required(true).multiple(true)))]
    Set {
        /// The class's name.
        class: String,
        /// RATE or RATE:CEIL, e.g. 5mbit or 5mbit:20mbit.
        #[arg(long, value_parser = limit_arg)]
        egress: Option<String>,
        #[arg(long, value_parser = limit_arg)]
        ingress: Option<String>,
        /// 0 (served first) to 7.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=7))]
        priority: Option<u8>,
        /// TCP connections of the class in service at once (raising it admits waiting ones at once).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pin one connection (its ID in `shaper conns`) into a class.
    Move {
        /// At least 4 digits of the connection's ID.
        #[arg(value_parser = conn_arg)]
        conn: String,
        class: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Validate a config file on this host and summarise its classes (exit 1 on error). Without
    /// root it skips (and names) what only root can read.
    Check {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Also ask the running daemon what a reload of this file would change (changing nothing).
        #[arg(long)]
        against_running: bool,
        /// With --against-running: the daemon's control socket, instead of the file's `control_socket`.
        #[arg(long, requires = "against_running")]
        socket: Option<PathBuf>,
        /// With --against-running: print the daemon's answer as JSON.
        #[arg(long, requires = "against_running")]
        json: bool,
    },
    /// What the running daemon is doing.
    Status(ClientArgs),
    /// Every class on every interface with its limits, counters and current rate.
    Classes(cli::conns::ClassesArgs),
    /// Every flow the classifier knows and the class it is in (filtered, sorted, cut to -n).
    Conns(cli::conns::ConnsArgs),
    /// A live view: classes with their current rates and last minute, then the busiest
    /// programs, users, units and connections (keys: 1-5/Tab view, s sort, q quit).
    Top(cli::top::TopArgs),
    /// Why a connection (its ID in `shaper conns`) is in its class: what shaper knows of its
    /// process, each rule in file order with the value of each of its tests, the rule that
    /// matched. With --pid and --to: the class a connection that process makes would get.
    #[command(group(ArgGroup::new("what").args(["conn", "pid"]).required(true)))]
    Explain {
        /// At least 4 digits of the connection's ID.
        #[arg(value_parser = conn_arg)]
        conn: Option<String>,
        /// A process that has not made the connection yet.
        #[arg(long, requires = "to")]
        pid: Option<u32>,
        /// Where it would connect: ADDR:PORT ([ADDR]:PORT for IPv6).
        #[arg(long, requires = "pid")]
        to: Option<String>,
        /// tcp or udp.
        #[arg(long, requires = "pid", default_value = "tcp", value_parser = ["tcp", "udp"])]
        proto: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Quota usage per class and instance: used, limit, period and state (ok, throttled, blocked,
    /// reported); `usage reset CLASS [INSTANCE]` starts a quota's period over.
    Usage {
        #[command(subcommand)]
        action: Option<UsageAction>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The daemon's metrics as Prometheus text, as its `[daemon] metrics` endpoint serves them
    /// (e.g. for node_exporter's textfile collector).
    Metrics {
        /// OpenMetrics 1.0.0 instead of Prometheus text 0.0.4.
        #[arg(long)]
        openmetrics: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the shell completion script for SHELL (e.g. `shaper completions bash > /usr/share/bash-completion/completions/shaper`).
    Completions { shell: manual::Shell },
    /// Write the man pages (shaper.8, shaper-VERB.8) into DIR (used by `cargo xtask install`).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Subcommand)]
enum UsageAction {
    /// Start the quota of CLASS (of one of its instances) over: usage from zero, its throttle or
    /// block lifted until it is used up again.
    Reset {
        class: String,
        instance: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> ExitCode {
    // Usage errors end here, with clap's message and exit code 2.
    let cli = Cli::parse();
    logging::init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", logging::line(Level::Error, &format!("shaper: {}", error_chain(e.as_ref()))));
            ExitCode::from(cli::exit::code(&e))
        }
    }
}

fn dispatch(verb: Verb) -> Result<()> {
    match verb {
        Verb::Run(args) => {
            let options = args.options();
            let conf = daemon::load_config(&options)?;
            let names: Vec<String> = conf.interfaces.iter().map(|i| i.name.clone()).collect();
            log::info!(
                "config {}: {} classes on {}",
                args.config.display(),
                conf.classes.len(),
                names.join(", ")
            );
            daemon::run(conf, options)?;
            Ok(())
        }
        Verb::Start(args) => {
            let options = args.options();
            let conf = daemon::load_config(&options)?;
            let started = supervise::start(&options, &conf)?;
            println!(
                "shaper started (pid {}): control socket {}, log {}",
                started.pid,
                conf.daemon.control_socket.display(),
                started.log.display()
            );
            if let Ok(Status { scan_only: Some(why), .. }) =
                control::client::status(&conf.daemon.control_socket)
            {
                println!("warning: process rules are decided by the /proc scan only ({why})");
            }
            Ok(())
        }
        Verb::Stop { client, force: true, pin_dir, pid_file, .. } => force_stop(&client, pin_dir, pid_file),
        Verb::Stop { client, keep, .. } => {
            let socket = client.socket()?;
            let pid = supervise::stop(&socket, keep)?;
            if keep {
                println!("shaper stopped (pid {pid}); shaping left in place for the next daemon");
            } else {
                println!("shaper stopped (pid {pid}); every interface restored");
            }
            Ok(())
        }
        Verb::Reload { dry_run: true, client } => {
            let dry = control::client::dry_run(&client.socket()?, None)?;
            print_dry_run(&dry, client.json)
        }
        Verb::Reload { client, .. } => {
            let applied = control::client::reload(&client.socket()?)?;
            print_applied(&applied, client.json)
        }
        Verb::Set { class, egress, ingress, priority, max_connections, client } => {
            let set = SetClass { class, egress, ingress, priority, max_connections };
            let applied = control::client::set(&client.socket()?, set)?;
            print_applied(&applied, client.json)
        }
        Verb::Move { conn, class, client } => {
            let moved = control::client::move_conn(&client.socket()?, &conn, &class)?;
            if client.json {
                return print_json(&moved);
            }
            println!("moved {} to {} (pinned until it ends)", moved.conn, moved.class);
            Ok(())
        }
        Verb::Check { config, against_running: false, .. } => cli::check::check(&config),
        Verb::Check { config, socket, json, .. } => {
            cli::check::against_running(&config, socket.as_deref(), json)
        }
        Verb::Status(args) => {
            let status = control::client::status(&args.socket()?)?;
            print_status(&status, args.json)
        }
        Verb::Classes(args) => cli::conns::classes(&args),
        Verb::Conns(args) => cli::conns::conns(&args),
        Verb::Top(args) => cli::top::run(&args),
        Verb::Explain { conn, pid, to, proto, client } => {
            let request = control::ExplainRequest { conn, pid, to, proto: pid.map(|_| proto) };
            let explained = control::client::explain(&client.socket()?, request)?;
            print_explained(&explained, client.json)
        }
        Verb::Usage { action: None, client } => {
            let rows = control::client::usage(&client.socket()?)?;
            print_usage(&rows, client.json)
        }
        Verb::Usage { action: Some(UsageAction::Reset { class, instance, client }), .. } => {
            let rows = control::client::usage_reset(&client.socket()?, &class, instance.as_deref())?;
            print_usage(&rows, client.json)
        }
        Verb::Metrics { openmetrics, client } => {
            let metrics = control::client::metrics(&client.socket()?, openmetrics)?;
            if client.json {
                return print_json(&metrics);
            }
            print!("{}", metrics.text);
            Ok(())
        }
        Verb::Completions { shell } => {
            Ok(manual::write_completions(Cli::command(), shell, &mut std::io::stdout())?)
        }
        Verb::Man { dir } => {
            manual::write_man_pages(Cli::command(), &dir)?.iter().for_each(|p| println!("{}", p.display()));
            Ok(())
        }
    }
}

/// `shaper stop --force`: stops a daemon if one runs, then removes whatever
/// shaper left, and says what.
fn force_stop(client: &ClientArgs, pin_dir: Option<PathBuf>, pid_file: Option<PathBuf>) -> Result<()> {
    let (paths, why) =
        supervise::DaemonPaths::resolve(client.config_file(), [client.socket.clone(), pid_file, pin_dir]);
    if let Some(why) = why {
        println!("{why}: using the defaults for the paths not given");
    }
    match supervise::stop_any(&paths.socket, &paths.pid_file)? {
        supervise::Found::Nothing => println!("no daemon running"),
        supervise::Found::Stopped(pid) => println!("stopped the daemon (pid {pid})"),
        supervise::Found::Killed(pid) => println!("killed the daemon (pid {pid}): it did not answer"),
    }
    let summary = teardown::force(&Pins::new(&paths.pin_dir))?;
    if summary.nothing() {
        println!("nothing of shaper's to remove under {} or on the host", paths.pin_dir.display());
    }
    for (title, lines) in [
        ("removed", &summary.removed),
        ("left, not shaper's", &summary.left),
        ("not removed", &summary.failed),
    ] {
        if !lines.is_empty() {
            println!("{title}:");
            lines.iter().for_each(|l| println!("  {l}"));
        }
    }
    if !summary.failed.is_empty() {
        anyhow::bail!("{} things could not be removed (see above)", summary.failed.len());
    }
    Ok(())
}
