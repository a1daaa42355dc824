//! Section 7: limits per instance. A class with `per = "connection"` on an
//! interface shaped both ways (egress and the IFB): 1 000 UDP sockets each
//! send one datagram as fast as a script can, and the daemon makes an HTB
//! leaf per connection in both trees and its map entry. Measured: instances
//! made per second, from the first datagram to the daemon's count reaching
//! 1 000 (`status`), next to the rate the script opened the connections at.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use shaper_testkit::sandbox::{Daemon, Sandbox};
use shaper_user::control::{Command, Status};

use super::{
    call,
    report::{Figure, Report, Row, Unit},
    SHAPER,
};

const S: &str = "7. limits per instance";
const INSTANCES: u64 = 1000;

pub fn run(report: &mut Report) -> Result<()> {
    let sandbox = Sandbox::new("binst")?;
    let config = format!(
        "[daemon]\nscan_interval = \"5s\"\n\n[[interface]]\nname = \"{}\"\negress = \"10gbit\"\ningress = \"10gbit\"\n\n\
         [[class]]\nname = \"each\"\negress = \"5mbit\"\ningress = \"5mbit\"\nmatch = 'rport == 9'\nper = \"connection\"\n",
        sandbox.dev_a
    );
    let daemon = Daemon::start(&sandbox, Path::new(SHAPER), &config)?;
    let flood = format!(
        "import socket, time\nt = time.monotonic()\nfor i in range({INSTANCES}):\n    \
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.bind(('{}', 20000 + i))\n    \
         s.sendto(b'x', ('{}', 9))\n    s.close()\nprint(time.monotonic() - t)\n",
        Sandbox::ADDR_A4,
        Sandbox::ADDR_B4
    );
    let started = Instant::now();
    let out = sandbox.client("python3")?.args(["-c", &flood]).output()?;
    let opened_s: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN);
    let made_s = loop {
        let status: Status = call(&daemon, Command::Status)?;
        if status.instances.created >= INSTANCES {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} of {INSTANCES} instances made after 60 s: {:?}",
                status.instances.created,
                status.instances
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "  {INSTANCES} instances in {made_s:.2} s; the script opened the connections in {opened_s:.2} s"
    );
    report.push(Row::new(
        S,
        format!("instances created per second ({INSTANCES} connections, per = \"connection\", a leaf in each of 2 trees)"),
        Figure::new(INSTANCES as f64 / made_s, Unit::Count),
        "connections opened per second by the script",
        Figure::new(INSTANCES as f64 / opened_s, Unit::Count),
    ));
    Ok(())
}
