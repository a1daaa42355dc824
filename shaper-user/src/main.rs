//! The `shaper` command: the daemon (`run`, `start`, `stop`), config
//! validation (`check`), and the clients of a running daemon (`status`,
//! `classes`, `conns`, `reload`, `set`, `move`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{ArgGroup, Args, CommandFactory as _, Parser, Subcommand};
use log::Level;
use shaper_user::{
    config::DEFAULT_CONFIG,
    control::{self, SetClass, Status},
    daemon::{self, RequestError, RunOptions},
    error_chain, logging, manual,
    pins::Pins,
    supervise, teardown,
};

mod cli;

use cli::print::{print_applied, print_classes, print_conns, print_json, print_status};

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
    Reload(ClientArgs),
    /// Change a running class without touching the config file (until the next reload).
    #[command(group(ArgGroup::new("change").args(["egress", "ingress", "priority"]).required(true).multiple(true)))]
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
    },
    /// What the running daemon is doing.
    Status(ClientArgs),
    /// Every class on every interface with its limits, counters and current rate.
    Classes(ClientArgs),
    /// Every flow the classifier knows and the class it is in.
    Conns(ClientArgs),
    /// Print the shell completion script for SHELL (e.g. `shaper completions bash > /usr/share/bash-completion/completions/shaper`).
    Completions { shell: manual::Shell },
    /// Write the man pages (shaper.8, shaper-VERB.8) into DIR (used by `cargo xtask install`).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Args)]
struct DaemonArgs {
    /// The config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Control socket to listen on, instead of the config's `control_socket`.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// cgroup v2 directory to attach the socket hooks to, instead of the config's `cgroup`.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Directory on a BPF filesystem to pin the shaping state in, instead of the config's `pin_dir`.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Pid file, instead of the config's `pid_file`.
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

impl DaemonArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            config_path: self.config.clone(),
            kernel_log_level: kernel_log_level(),
            socket: self.socket.clone(),
            cgroup: self.cgroup.clone(),
            pin_dir: self.pin_dir.clone(),
            pid_file: self.pid_file.clone(),
        }
    }
}

#[derive(Args)]
struct ClientArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The daemon's control socket [default: `control_socket` of --config, else of
    /// /etc/shaper/shaper.toml when it exists, else /run/shaper/shaper.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Read the control socket path from this config file [default: /etc/shaper/shaper.toml, when it
    /// exists].
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl ClientArgs {
    /// The config the client reads its paths from: --config, else the default one when it exists.
    fn config(&self) -> Option<&Path> {
        self.config.as_deref().or_else(|| Some(Path::new(DEFAULT_CONFIG)).filter(|p| p.exists()))
    }
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

/// `--egress`/`--ingress` of `set`: RATE or RATE:CEIL, checked here so a
/// malformed one is a usage error.
fn limit_arg(text: &str) -> Result<String, String> {
    daemon::parse_limit(text).map(|_| text.to_string()).map_err(|e| error_chain(&e))
}

/// The connection of `move`: at least 4 digits of its ID (as the daemon asks).
fn conn_arg(text: &str) -> Result<String, String> {
    if text.trim().len() < 4 {
        return Err(RequestError::ShortId(text.to_string()).to_string());
    }
    Ok(text.to_string())
}

/// The aya-log level for the kernel programs, from RUST_LOG's `shaper_ebpf` target.
fn kernel_log_level() -> u8 {
    use log::Level;
    [Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error]
        .into_iter()
        .find(|l| log::log_enabled!(target: "shaper_ebpf", *l))
        .map_or(0, |l| l as u8)
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
            let socket = socket_path(&client)?;
            let pid = supervise::stop(&socket, keep)?;
            if keep {
                println!("shaper stopped (pid {pid}); shaping left in place for the next daemon");
            } else {
                println!("shaper stopped (pid {pid}); every interface restored");
            }
            Ok(())
        }
        Verb::Reload(args) => {
            let applied = control::client::reload(&socket_path(&args)?)?;
            print_applied(&applied, args.json)
        }
        Verb::Set { class, egress, ingress, priority, client } => {
            let set = SetClass { class, egress, ingress, priority };
            let applied = control::client::set(&socket_path(&client)?, set)?;
            print_applied(&applied, client.json)
        }
        Verb::Move { conn, class, client } => {
            let moved = control::client::move_conn(&socket_path(&client)?, &conn, &class)?;
            if client.json {
                return print_json(&moved);
            }
            println!("moved {} to {} (pinned until it ends)", moved.conn, moved.class);
            Ok(())
        }
        Verb::Check { config } => cli::check::check(&config),
        Verb::Status(args) => {
            let status = control::client::status(&socket_path(&args)?)?;
            print_status(&status, args.json)
        }
        Verb::Classes(args) => {
            let rows = control::client::classes(&socket_path(&args)?)?;
            print_classes(&rows, args.json)
        }
        Verb::Conns(args) => {
            let rows = control::client::conns(&socket_path(&args)?)?;
            print_conns(&rows, args.json)
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
        supervise::DaemonPaths::resolve(client.config(), [client.socket.clone(), pid_file, pin_dir]);
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

fn socket_path(args: &ClientArgs) -> Result<PathBuf> {
    let (socket, warning) =
        cli::socket::resolve(args.socket.as_deref(), args.config.as_deref(), Path::new(DEFAULT_CONFIG))?;
    if let Some(warning) = warning {
        eprintln!("{}", logging::line(Level::Warn, &format!("shaper: {warning}")));
    }
    Ok(socket)
}
