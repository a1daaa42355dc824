//! End to end: a port bound in another network namespace never gives its
//! owner to the connections this namespace's servers accept (issue 14, item 3).
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds and removes its own sandbox, namespaces, cgroup, programs and users.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::time::Duration;

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Netns, Programs, Sandbox, TestUser},
};
use shaper_user::control::ConnRow;

#[test]
fn a_bind_in_another_namespace_does_not_take_over_accepted_connections() {
    require_root!();
    let sandbox = Sandbox::new("nsbind").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let server = programs.copy("iperf3", "serverapp").unwrap();
    let thief = programs.copy("iperf3", "thiefapp").unwrap();
    let user = TestUser::create(&format!("shp-{}", sandbox.tag)).unwrap();
    // The thief's own namespace, as `unshare -rn` would give it, with its
    // process in the cgroup the daemon's socket hooks watch.
    let elsewhere = Netns::create(&format!("shp-{}-c", sandbox.tag)).unwrap();
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\n\
         [[class]]\nname = \"served\"\negress = \"5mbit\"\nmatch = 'cmd == \"serverapp\"'\n\n\
         [[class]]\nname = \"stolen\"\negress = \"20mbit\"\nmatch = 'cmd == \"thiefapp\"'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // The real server (dual-stack, bound to ::) in the shaped namespace …
    let _server =
        IperfServer::start_cmd(sandbox.client(server.to_str().unwrap()).unwrap(), &sandbox.a, 5501).unwrap();
    // … then an unprivileged user binds the same port under another name, elsewhere.
    let mut cmd = elsewhere.command_as(thief.to_str().unwrap(), user.uid, user.gid);
    sandbox.cgroup.enter(&mut cmd).unwrap();
    let _thief = IperfServer::start_cmd(cmd, &elsewhere, 5501).unwrap();
    // A download from the real server, over IPv4: its sockets come from accept().
    let client = spawn_client(&sandbox.b, Sandbox::ADDR_A4, 5501, &["-t", "6", "-O", "2", "-R"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let rows = conns(&daemon);
    let served: Vec<&ConnRow> =
        rows.iter().filter(|c| c.local == format!("{}:5501", Sandbox::ADDR_A4)).collect();
    let result = finish_client(client).unwrap();
    println!("download from serverapp: {:.2} Mbit/s; {served:#?}", result.received_bps / MBIT);
    assert!(!served.is_empty(), "{rows:#?}");
    for conn in &served {
        // (The daemon names the owner once it has seen the socket: a short
        // connection may be gone before, and show none.)
        assert!(
            conn.class == "served" && conn.cmd.as_deref().is_none_or(|c| c == "serverapp"),
            "an accepted connection took the owner of a bind in another namespace: {conn:#?}"
        );
    }
    assert_near("a download from serverapp (5 Mbit/s)", result.received_bps, 5.0 * MBIT, 0.10);
}

/// A TCP server that binds `argv[1]`:`argv[2]` (SO_REUSEPORT, so that a
/// wildcard and an exact bind of one port coexist), says "ready", and sends
/// to every connection it accepts until the peer goes.
const SENDER: &str = "#!/usr/bin/python3
import socket, sys, threading
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(8)
print('ready', flush=True)
def send(c):
    try:
        while True:
            c.sendall(b'x' * 65536)
    except OSError:
        pass
while True:
    c, _ = l.accept()
    threading.Thread(target=send, args=(c,), daemon=True).start()
";

/// Reads from `argv[1]`:`argv[2]` for `argv[3]` seconds.
const READER: &str = "#!/usr/bin/python3
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
end = time.time() + float(sys.argv[3])
while time.time() < end and s.recv(65536):
    pass
";

/// Starts `program` (a copy of SENDER) in the sandbox's shaped namespace and
/// cgroup, bound to `addr`:`port`; returns once it listens.
fn start_sender(sandbox: &Sandbox, program: &std::path::Path, addr: &str, port: u16) -> std::process::Child {
    use std::io::BufRead as _;
    let mut child = sandbox
        .client(program.to_str().unwrap())
        .unwrap()
        .args([addr, &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{} did not listen on {addr}:{port}", program.display());
    child
}

#[test]
fn a_connection_takes_the_owner_of_the_exact_address_before_the_wildcard() {
    require_root!();
    let sandbox = Sandbox::new("nsaddr").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let exact = programs.script("exactapp", SENDER).unwrap();
    let wild = programs.script("wildapp", SENDER).unwrap();
    let reader = programs.script("reader", READER).unwrap();
    // A second address in the shaped namespace, which only the wildcard bind serves.
    const OTHER: &str = "198.18.0.3";
    sandbox.a.run("ip", &["addr", "add", &format!("{OTHER}/24"), "dev", &sandbox.dev_a]).unwrap();
    let config = format!(
        "[[interface]]\nname = \"{}\"\negress = \"1gbit\"\n\n\
         [[class]]\nname = \"exact\"\negress = \"5mbit\"\nmatch = 'cmd == \"exactapp\"'\n\n\
         [[class]]\nname = \"wild\"\negress = \"20mbit\"\nmatch = 'cmd == \"wildapp\"'\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    // The exact bind first, the wildcard last (the last bind used to win).
    let mut servers = vec![
        start_sender(&sandbox, &exact, Sandbox::ADDR_A4, 5601),
        start_sender(&sandbox, &wild, "0.0.0.0", 5601),
    ];
    let readers: Vec<std::process::Child> = [Sandbox::ADDR_A4, OTHER]
        .iter()
        .map(|to| sandbox.b.command(reader.to_str().unwrap()).args([to, "5601", "8"]).spawn().unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let rows = conns(&daemon);
    // HTB's own counters of both classes, over the same 3 s.
    let sent = || {
        let rows = classes(&daemon);
        (std::time::Instant::now(), class(&rows, "exact").sent_bytes, class(&rows, "wild").sent_bytes)
    };
    let (t0, e0, w0) = sent();
    std::thread::sleep(Duration::from_secs(3));
    let (t1, e1, w1) = sent();
    let secs = (t1 - t0).as_secs_f64();
    let (exact_rate, wild_rate) = ((e1 - e0) as f64 * 8.0 / secs, (w1 - w0) as f64 * 8.0 / secs);
    for mut child in readers.into_iter().chain(servers.drain(..)) {
        let _ = child.kill();
        let _ = child.wait();
    }
    println!("exact {:.2} Mbit/s, wild {:.2} Mbit/s", exact_rate / MBIT, wild_rate / MBIT);
    for (local, class) in [(format!("{}:5601", Sandbox::ADDR_A4), "exact"), (format!("{OTHER}:5601"), "wild")]
    {
        let mine: Vec<&ConnRow> = rows.iter().filter(|c| c.local == local).collect();
        assert!(!mine.is_empty(), "no connection on {local}: {rows:#?}");
        for conn in mine {
            assert_eq!(conn.class, class, "a connection accepted on {local}: {conn:#?}");
        }
    }
    assert_near("the exact bind's connection (5 Mbit/s)", exact_rate, 5.0 * MBIT, 0.10);
    assert_near("the wildcard bind's connection (20 Mbit/s)", wild_rate, 20.0 * MBIT, 0.10);
}
