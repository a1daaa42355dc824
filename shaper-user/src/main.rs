//! The `shaper` command: the daemon (`run`, `start`, `stop`), config
//! validation (`check`), and the clients of a running daemon (`status`,
//! `classes`, `conns`, `reload`, `set`, `move`).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use shaper_user::{
    cgroups::{self, Cgroups},
    config::{self, Config},
    control::{self, Applied, ClassRow, ConnRow, SetClass, Status},
    daemon::{self, RunOptions},
    error_chain,
    pins::Pins,
    plan,
    rules::SystemEnv,
    supervise,
    table::Table,
    tc, teardown,
    units::{format_bytes, format_rate},
};

const DEFAULT_SOCKET: &str = "/run/shaper/shaper.sock";

#[derive(Parser)]
#[command(
    name = "shaper",
    version,
    about = "Traffic shaping by program, user, port and address, with eBPF and HTB"
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
    /// Re-read the config file and apply the difference live (a bad file changes nothing).
    Reload(ClientArgs),
    /// Change a running class without touching the config file (until the next reload).
    Set {
        /// The class's name.
        class: String,
        /// RATE or RATE:CEIL, e.g. 5mbit or 5mbit:20mbit.
        #[arg(long)]
        egress: Option<String>,
        #[arg(long)]
        ingress: Option<String>,
        /// 0 (served first) to 7.
        #[arg(long)]
        priority: Option<u8>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pin one connection (its ID in `shaper conns`) into a class.
    Move {
        conn: String,
        class: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Validate a config file and summarise its classes (exit 1 on error).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// What the running daemon is doing.
    Status(ClientArgs),
    /// Every class on every interface with its limits, counters and current rate.
    Classes(ClientArgs),
    /// Every flow the classifier knows and the class it is in.
    Conns(ClientArgs),
}

#[derive(Args)]
struct DaemonArgs {
    #[arg(long, short)]
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
    /// The daemon's control socket (default: `control_socket` of --config, else /run/shaper/shaper.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Read the control socket path from this config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shaper: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config> {
    Ok(config::load(path, &SystemEnv::load().env())?)
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
        Verb::Check { config } => check(&config),
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
    }
}

/// `shaper stop --force`: stops a daemon if one runs, then removes whatever
/// shaper left, and says what.
fn force_stop(client: &ClientArgs, pin_dir: Option<PathBuf>, pid_file: Option<PathBuf>) -> Result<()> {
    let (paths, why) =
        supervise::DaemonPaths::resolve(client.config.as_deref(), [client.socket.clone(), pid_file, pin_dir]);
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
    if let Some(socket) = &args.socket {
        return Ok(socket.clone());
    }
    if let Some(config) = &args.config {
        return Ok(load_config(config)?.daemon.control_socket);
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

fn print_applied(applied: &Applied, json: bool) -> Result<()> {
    if json {
        return print_json(applied);
    }
    println!("applied in {} ms: {}", applied.took_ms, applied.changes.summary());
    if !applied.restart_needed.is_empty() {
        println!("take effect at the next start: {}", applied.restart_needed.join(", "));
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn check(path: &Path) -> Result<()> {
    let conf = load_config(path)?;
    if let Ok(netlink) = tc::Netlink::open() {
        conf.check_interfaces_exist(|name| tc::link_by_name(&netlink, name).ok().flatten().is_some())?;
    }
    // Cgroup and unit names resolve against this host's hierarchy, if it has one.
    let ids = conf.class_ids_in_file_order();
    let compiled = match cgroups::v2_root() {
        Ok(root) => conf.compile_rules(&ids, &Cgroups::new(root))?,
        Err(_) => conf.compile_rules(&ids, &shaper_user::rules::compile::NoCgroups)?,
    };
    println!("{}: ok", path.display());
    for iface in &conf.interfaces {
        let ingress = iface.ingress_bps.map_or_else(|| "not shaped".to_string(), format_rate);
        println!("interface {}: egress {}, ingress {}", iface.name, format_rate(iface.egress_bps), ingress);
        let Some(egress) = plan::plan(&conf, &ids, iface, plan::Direction::Egress, 1500) else { continue };
        let mut table = Table::new(&[
            ("CLASS", false),
            ("CLASSID", false),
            ("PRIO", true),
            ("RATE", true),
            ("CEIL", true),
            ("MATCH", false),
        ]);
        for class in &egress.classes {
            let conf_class = conf.class(&class.name);
            let mut name = class.name.clone();
            if class.index == egress.default_class {
                name.push_str(" (default)");
            }
            let rule =
                conf_class.and_then(|c| c.rule.as_ref()).map_or_else(|| "-".to_string(), ToString::to_string);
            table.row(vec![
                name,
                tc::format_handle(shaper_common::classid_of(u32::from(class.index))),
                class.priority.to_string(),
                format_rate(class.rate_bps),
                format_rate(class.ceil_bps),
                rule,
            ]);
        }
        print!("{}", indent(&table.render()));
    }
    let userspace = compiled.nodes.iter().filter(|n| n.op == shaper_common::OP_USERSPACE).count();
    println!(
        "rule table: {} kernel tests (of {}){}",
        compiled.nodes.len(),
        shaper_common::MAX_RULE_NODES,
        if userspace > 0 {
            format!(", {userspace} of them left to the daemon (exe, args, parent, ancestor, patterns)")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn print_status(status: &Status, json: bool) -> Result<()> {
    if json {
        return print_json(status);
    }
    println!(
        "shaper {} (pid {}), up {}s, config {}",
        status.version, status.pid, status.uptime_s, status.config
    );
    for i in &status.interfaces {
        let ingress = match (&i.ifb, i.ingress_bps) {
            (Some(ifb), Some(bps)) => format!("ingress {} through {ifb}", format_rate(bps)),
            _ => "ingress not shaped".to_string(),
        };
        println!(
            "  {} (ifindex {}): egress {}, {ingress}, via {}, default class {}",
            i.name,
            i.ifindex,
            format_rate(i.egress_bps),
            i.attach.as_str(),
            i.default_class
        );
    }
    for name in &status.waiting {
        println!("  {name}: absent; shaped as soon as it appears");
    }
    println!(
        "  classes: {}, rule table: {} nodes (generation {})",
        status.classes, status.rule_nodes, status.rules_gen
    );
    println!("  flows: {} of {}", status.flows, status.max_flows);
    if !status.maps.is_empty() {
        let maps: Vec<String> =
            status.maps.iter().map(|m| format!("{} {}/{}", m.name, m.entries, m.capacity)).collect();
        println!("  maps: {}", maps.join(", "));
    }
    if let Some(scan) = &status.last_scan {
        println!(
            "  last scan: {} sockets, {} adopted, {} corrected, {} stale removed, {} µs (every {} ms)",
            scan.sockets, scan.adopted, scan.corrected, scan.removed, scan.micros, status.scan_interval_ms
        );
        if !scan.from_proc_net.is_empty() {
            println!(
                "  degraded: the kernel cannot list {} sockets over sock_diag; read from /proc/net (no cookies)",
                scan.from_proc_net.join(", ")
            );
        }
    }
    println!("  pinned at {}{}", status.pin_dir, if status.adopted { " (taken over at start)" } else { "" });
    if let Some(r) = &status.last_reload {
        match &r.error {
            None => println!("  last reload: ok"),
            Some(e) => println!("  last reload: refused ({e}); the previous config stays in force"),
        }
    }
    for d in &status.drift {
        println!("  changed by `shaper set` (not in the file): {d}");
    }
    match &status.hooks_cgroup {
        Some(cgroup) => println!("  socket hooks: cgroup {cgroup}"),
        None => println!(
            "  socket hooks: off (process rules are decided by the /proc scan: {})",
            status.scan_only.as_deref().unwrap_or("no cgroup v2")
        ),
    }
    let d = &status.decisions;
    let us = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} µs"));
    println!(
        "  new flows: {} reported, {} provisional, {} moved by the daemon (p50 {}, p99 {}, max {}; {} in provisional classes)",
        d.events,
        d.provisional,
        d.changed,
        us(d.p50_us),
        us(d.p99_us),
        us(d.max_us),
        format_bytes(d.provisional_bytes)
    );
    let errors: Vec<String> =
        status.errors.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "  classifier errors: {}",
        if errors.is_empty() { "none".to_string() } else { errors.join(", ") }
    );
    Ok(())
}

fn print_classes(rows: &[ClassRow], json: bool) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    let mut table = Table::new(&[
        ("CLASS", false),
        ("INTERFACE", false),
        ("DIR", false),
        ("CLASSID", false),
        ("PRIO", true),
        ("RATE", true),
        ("CEIL", true),
        ("NOW", true),
        ("BYTES", true),
        ("PACKETS", true),
        ("DROPS", true),
    ]);
    for r in rows {
        table.row(vec![
            r.name.clone(),
            r.interface.clone(),
            r.direction.as_str().to_string(),
            r.classid.clone(),
            r.priority.to_string(),
            format_rate(r.rate_bps),
            format_rate(r.ceil_bps),
            format_rate(r.rate_now_bps),
            format_bytes(r.bytes),
            r.packets.to_string(),
            r.drops.to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn print_conns(rows: &[ConnRow], json: bool) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    // Received bytes are counted where ingress is shaped; without any, the column says nothing.
    let received = rows.iter().any(|r| r.rx_bytes > 0);
    let mut columns = vec![
        ("ID", false),
        ("PROTO", false),
        ("LOCAL", false),
        ("REMOTE", false),
        ("STATE", false),
        ("PID", true),
        ("USER", false),
        ("CMD", false),
        ("CLASS", false),
        ("BY", false),
        ("SENT", true),
    ];
    if received {
        columns.push(("RECEIVED", true));
    }
    columns.extend([("IDLE", true), ("RULE", false)]);
    let mut table = Table::new(&columns);
    for r in rows {
        let mut cells = vec![
            r.id.clone(),
            r.proto.clone(),
            r.local.clone(),
            r.remote.clone(),
            r.state.to_string(),
            r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            r.user.clone().unwrap_or_else(|| "-".to_string()),
            r.cmd.clone().unwrap_or_else(|| "-".to_string()),
            r.class.clone(),
            r.origin.as_str().to_string(),
            format_bytes(r.tx_bytes),
        ];
        if received {
            cells.push(format_bytes(r.rx_bytes));
        }
        cells.extend([
            format!("{:.1}s", r.idle_ms as f64 / 1000.0),
            r.rule.clone().unwrap_or_else(|| "-".to_string()),
        ]);
        table.row(cells);
    }
    print!("{}", table.render());
    Ok(())
}
