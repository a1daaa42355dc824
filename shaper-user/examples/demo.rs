//! `cargo xtask demo`: shape live traffic in a throw-away sandbox.
//!
//! Two network namespaces joined by a veth pair; `shaper run` with
//! config/demo.toml in one, iperf3 servers in the other; three streams at once,
//! one per class; then the measured rates next to the limits, shaper's own view
//! of the classes and flows, and a clean stop that restores the interface.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use shaper_user::{
    control::{ClassRow, Command},
    error_chain,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Sandbox},
    table::Table,
    units::format_rate,
};

const SECONDS: u32 = 10;

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn shaper_output(
    sandbox: &Sandbox,
    shaper: &str,
    socket: &std::path::Path,
    verb: &str,
) -> Result<String, String> {
    let out = sandbox
        .a
        .command(shaper)
        .arg(verb)
        .arg("--socket")
        .arg(socket)
        .output()
        .map_err(|e| format!("running shaper {verb}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn demo() -> Result<(), String> {
    let shaper = std::env::args().nth(1).ok_or("usage: demo PATH-TO-SHAPER-BINARY")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let config_path = root.join("config/demo.toml");
    let config =
        std::fs::read_to_string(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let err = |e: shaper_user::sandbox::SandboxError| error_chain(&e);

    step("creating a sandbox: two network namespaces joined by a veth pair (198.18.0.1 ↔ 198.18.0.2)");
    let sandbox = Sandbox::new("demo").map_err(err)?;
    println!(
        "    {} (shaped side, interface {})  ↔  {} (servers)",
        sandbox.a.name(),
        sandbox.dev_a,
        sandbox.b.name()
    );
    let qdisc_before = sandbox.a.run("tc", &["qdisc", "show", "dev", &sandbox.dev_a]).map_err(err)?;

    step(&format!("starting `shaper run --config {}` in the shaped namespace", config_path.display()));
    let mut daemon =
        Daemon::start(&sandbox.a, std::path::Path::new(&shaper), &sandbox.tag, &config).map_err(err)?;
    print!("{}", shaper_output(&sandbox, &shaper, &daemon.socket, "status")?);

    step(&format!("three iperf3 TCP streams at once for {SECONDS} s, one per class"));
    let streams = [
        ("video", 5201u16, "port 5201 → video"),
        ("backup", 5203, "port 5203 → backup"),
        ("everything-else", 6000, "port 6000 → no rule matches"),
    ];
    let mut servers = Vec::new();
    for (_, port, _) in &streams {
        servers.push(IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, *port).map_err(err)?);
    }
    let secs = SECONDS.to_string();
    let clients: Vec<_> = streams
        .iter()
        .map(|(_, port, _)| spawn_client(&sandbox.a, Sandbox::ADDR_B4, *port, &["-t", &secs, "-O", "2"]))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    std::thread::sleep(Duration::from_secs(u64::from(SECONDS) - 2));
    let live = daemon.call(Command::Classes).map_err(err)?;
    let live: Vec<ClassRow> = serde_json::from_value(live).map_err(|e| e.to_string())?;
    let results: Vec<_> = clients.into_iter().map(finish_client).collect::<Result<_, _>>().map_err(err)?;

    step("measured by iperf3 at the receiver, next to each class's limits");
    let mut table = Table::new(&[
        ("STREAM", false),
        ("CLASS", false),
        ("RATE", true),
        ("CEIL", true),
        ("MEASURED", true),
        ("OF CEIL", true),
    ]);
    for ((class, _, label), result) in streams.iter().zip(&results) {
        let row = live.iter().find(|r| r.name == *class);
        let (rate, ceil) = row.map_or((0, 0), |r| (r.rate_bps, r.ceil_bps));
        table.row(vec![
            label.to_string(),
            class.to_string(),
            format_rate(rate),
            format_rate(ceil),
            format_rate(result.received_bps as u64),
            if ceil > 0 { format!("{:.0}%", result.received_bps / ceil as f64 * 100.0) } else { "-".into() },
        ]);
    }
    print!("{}", table.render());
    println!(
        "    video and backup sit at their caps; everything-else borrows what is left of the 100 Mbit/s link."
    );

    step("`shaper classes` (taken while the streams ran; NOW is the rate HTB sent at)");
    let mut classes = Table::new(&[
        ("CLASS", false),
        ("CLASSID", false),
        ("PRIO", true),
        ("RATE", true),
        ("CEIL", true),
        ("NOW", true),
        ("DROPS", true),
    ]);
    for r in &live {
        classes.row(vec![
            r.name.clone(),
            r.classid.clone(),
            r.priority.to_string(),
            format_rate(r.rate_bps),
            format_rate(r.ceil_bps),
            format_rate(r.rate_now_bps),
            r.drops.to_string(),
        ]);
    }
    print!("{}", classes.render());

    step("`shaper conns`: every flow and the class the classifier gave it on its first packet");
    print!("{}", shaper_output(&sandbox, &shaper, &daemon.socket, "conns")?);
    drop(servers);

    step("stopping the daemon (SIGTERM): it detaches and restores the interface");
    let status = daemon.stop().map_err(err)?;
    let qdisc_after = sandbox.a.run("tc", &["qdisc", "show", "dev", &sandbox.dev_a]).map_err(err)?;
    let (before, after) =
        (String::from_utf8_lossy(&qdisc_before.stdout), String::from_utf8_lossy(&qdisc_after.stdout));
    println!("    exit: {status}; qdisc before: {}; after: {}", before.trim(), after.trim());
    if before != after {
        return Err("the interface was not restored".into());
    }
    step("removing the sandbox");
    drop(daemon);
    drop(sandbox);
    println!("    done: nothing is left on the host.");
    Ok(())
}
