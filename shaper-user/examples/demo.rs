//! `cargo xtask demo`: shape live traffic in a throw-away sandbox.
//!
//! Two network namespaces joined by a veth pair; `shaper run` with
//! config/demo.toml in one, iperf3 servers in the other; three streams at once,
//! one per class; then the measured rates next to the limits, shaper's own view
//! of the classes and flows, and a clean stop that restores the interface.

use std::{path::Path, process::ExitCode, time::Duration};

use shaper_testkit::sandbox::{finish_client, spawn_client_cmd, Daemon, IperfServer, Programs, Sandbox};
use shaper_user::{config, error_chain, plan, rules::SystemEnv, table::Table, units::format_rate};

const SECONDS: u32 = 10;
/// Which way a demo stream goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Up,
    Down,
}
use Way::{Down, Up};

/// A full TCP segment over IPv4 with timestamps: 1448 bytes of payload in a 1514-byte frame.
const WIRE_PER_PAYLOAD: f64 = 1514.0 / 1448.0;

/// What each of several greedy streams gets on a link of `capacity` when
/// stream `i` may use at most `ceils[i]`: equal shares, and what a capped
/// stream leaves goes to the others.
fn fair_shares(capacity: u64, ceils: &[u64]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..ceils.len()).collect();
    order.sort_by_key(|&i| ceils[i]);
    let mut shares = vec![0; ceils.len()];
    let mut left = capacity;
    for (done, &i) in order.iter().enumerate() {
        let share = (left / (ceils.len() - done) as u64).min(ceils[i]);
        shares[i] = share;
        left -= share;
    }
    shares
}

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
    if !shaper_testkit::is_root() {
        return Err("the demo needs root: run `sudo -E cargo xtask demo`".into());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace directory")?;
    let config_path = root.join("config/demo.toml");
    let config =
        std::fs::read_to_string(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let err = |e: shaper_testkit::sandbox::SandboxError| error_chain(&e);

    step("creating a sandbox: two network namespaces joined by a veth pair (198.18.0.1 ↔ 198.18.0.2)");
    let sandbox = Sandbox::new("demo").map_err(err)?;
    println!(
        "    {} (shaped side, interface {})  ↔  {} (servers)",
        sandbox.a.name(),
        sandbox.dev_a,
        sandbox.b.name()
    );
    let qdisc_before = sandbox.a.run("tc", &["qdisc", "show", "dev", &sandbox.dev_a]).map_err(err)?;

    step("starting `shaper run` with config/demo.toml in the shaped namespace");
    let mut daemon = Daemon::start(&sandbox, std::path::Path::new(&shaper), &config).map_err(err)?;
    print!("{}", shaper_output(&sandbox, &shaper, &daemon.socket, "status")?);

    step(&format!("four iperf3 TCP streams at once for {SECONDS} s, one per class: three up, one down"));
    // The backup job is iperf3 under another name: the rule matches the program.
    let programs = Programs::create(&sandbox.tag).map_err(err)?;
    let backupjob = programs.copy("iperf3", "backupjob").map_err(err)?;
    let streams = [
        ("video", 5201u16, "upload: iperf3 to port 5201 → video", "iperf3".to_string(), Up),
        ("backup", 6001, "upload: backupjob to port 6001 → backup", backupjob.display().to_string(), Up),
        ("everything-else", 6000, "upload: iperf3 to port 6000 → no rule", "iperf3".to_string(), Up),
        ("updates", 6002, "download: iperf3 -R from port 6002 → updates", "iperf3".to_string(), Down),
    ];
    let mut servers = Vec::new();
    for (_, port, _, _, _) in &streams {
        servers.push(IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, *port).map_err(err)?);
    }
    let secs = SECONDS.to_string();
    let clients: Vec<_> = streams
        .iter()
        .map(|(_, port, _, program, way)| {
            let mut args = vec!["-t", secs.as_str(), "-O", "2"];
            if *way == Down {
                args.push("-R");
            }
            spawn_client_cmd(sandbox.client(program)?, Sandbox::ADDR_B4, *port, &args)
        })
        .collect::<Result<_, _>>()
        .map_err(err)?;
    std::thread::sleep(Duration::from_secs(u64::from(SECONDS) - 2));
    let classes_live = shaper_output(&sandbox, &shaper, &daemon.socket, "classes")?;
    let conns_live = shaper_output(&sandbox, &shaper, &daemon.socket, "conns")?;
    let results: Vec<_> = clients.into_iter().map(finish_client).collect::<Result<_, _>>().map_err(err)?;

    step("measured by iperf3 at the receiver, next to what the classes allow");
    let conf = config::parse(&config_path, &config, &SystemEnv::load().env()).map_err(|e| e.to_string())?;
    let iface = conf.interfaces.first().ok_or("the demo config has no interface")?;
    // What each stream may get: the fair share under the ceilings, per direction.
    let mut limits = vec![(0, 0); streams.len()];
    let mut expected = vec![0; streams.len()];
    for (way, direction) in [(Up, plan::Direction::Egress), (Down, plan::Direction::Ingress)] {
        let Some(plan) = plan::plan(&conf, &conf.class_ids_in_file_order(), iface, direction, 1500) else {
            continue;
        };
        let mine: Vec<usize> = (0..streams.len()).filter(|i| streams[*i].4 == way).collect();
        for &i in &mine {
            limits[i] = plan
                .classes
                .iter()
                .find(|c| c.name == streams[i].0)
                .map_or((0, 0), |c| (c.rate_bps, c.ceil_bps));
        }
        let shares = fair_shares(plan.capacity_bps, &mine.iter().map(|&i| limits[i].1).collect::<Vec<_>>());
        for (&i, share) in mine.iter().zip(shares) {
            expected[i] = share;
        }
    }
    let mut table = Table::new(&[
        ("STREAM", false),
        ("CLASS", false),
        ("RATE", true),
        ("CEIL", true),
        ("EXPECTED", true),
        ("MEASURED", true),
        ("OF EXPECTED", true),
    ]);
    for ((((class, _, label, _, _), result), (rate, ceil)), expected) in
        streams.iter().zip(&results).zip(&limits).zip(&expected)
    {
        let on_wire = result.received_bps * WIRE_PER_PAYLOAD;
        table.row(vec![
            label.to_string(),
            class.to_string(),
            format_rate(*rate),
            format_rate(*ceil),
            format_rate(*expected),
            format_rate(on_wire as u64),
            format!("{:.0}%", on_wire / *expected as f64 * 100.0),
        ]);
    }
    print!("{}", table.render());
    println!("    video and backup sit at their ceilings; everything-else borrows the rest of the 100 Mbit/s uplink;");
    println!(
        "    the download is held at its class's ceiling on the 200 Mbit/s downlink, through an IFB device."
    );
    println!(
        "    (limits count whole frames; MEASURED is iperf3's payload rate × 1514/1448 for the TCP/IP/Ethernet headers)"
    );

    step("`shaper classes`, taken while the streams ran (NOW: the rate HTB sent at)");
    print!("{classes_live}");

    step("`shaper conns`, taken while the streams ran: each flow got its class on its first packet");
    print!("{conns_live}");
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
