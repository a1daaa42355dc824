//! The bench binary, run again inside a sandbox namespace as a traffic helper:
//! a server that reads connections to their end or keeps them open, and
//! clients that open many short connections or hold many long ones.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
};

use anyhow::{bail, Context as _, Result};

/// The first argument that makes the binary a helper.
pub const FLAG: &str = "--shaper-bench-helper";

/// Runs the helper if the command line asks for one.
pub fn run_if_requested() -> Option<Result<()>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == FLAG)?;
    let rest: Vec<&str> = args[at + 1..].iter().map(String::as_str).collect();
    Some(match rest.as_slice() {
        ["sink", port] => sink(port, true),
        ["keep", port] => sink(port, false),
        ["connect", addr, port, count, bytes, ..] => connect(addr, port, count, bytes),
        ["fanout", addr, port, count, bytes, marker] => fanout(addr, port, count, bytes, marker),
        ["hold", addr, port, count] => hold(addr, port, count),
        _ => Err(anyhow::anyhow!("unknown helper command {rest:?}")),
    })
}

/// Lets one process hold as many sockets as its hard limit allows.
fn raise_open_files() -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("reading RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("raising RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Accepts connections on `port` (IPv4 and IPv6); reads each to its end
/// (`drain`), or keeps it open without reading.
fn sink(port: &str, drain: bool) -> Result<()> {
    raise_open_files()?;
    let listener = TcpListener::bind(format!("[::]:{port}")).context("binding the sink")?;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for conn in listener.incoming() {
        let mut conn = conn.context("accepting")?;
        if drain {
            while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
        } else {
            kept.push(conn);
        }
    }
    Ok(())
}

/// Opens `count` connections one after the other, each sending `bytes` and
/// waiting for the server to close.
fn connect(addr: &str, port: &str, count: &str, bytes: &str) -> Result<()> {
    let (count, bytes): (usize, usize) = (count.parse()?, bytes.parse()?);
    let payload = vec![0x5au8; bytes];
    let mut end = [0u8; 1];
    for _ in 0..count {
        let mut s = TcpStream::connect((addr, port.parse::<u16>()?)).context("connecting")?;
        s.write_all(&payload)?;
        s.shutdown(Shutdown::Write)?;
        let _ = s.read(&mut end);
    }
    Ok(())
}

/// Starts `count` processes one after the other, each making one connection
/// (each a process the daemon has not seen).
fn fanout(addr: &str, port: &str, count: &str, bytes: &str, marker: &str) -> Result<()> {
    let exe = std::env::current_exe()?;
    for _ in 0..count.parse::<usize>()? {
        let status = std::process::Command::new(&exe)
            .args([FLAG, "connect", addr, port, "1", bytes, marker])
            .status()?;
        if !status.success() {
            bail!("a fanned-out client failed ({status})");
        }
    }
    Ok(())
}

/// Opens `count` connections and keeps them until standard input closes;
/// prints "ready" once all are open.
fn hold(addr: &str, port: &str, count: &str) -> Result<()> {
    raise_open_files()?;
    let count: usize = count.parse()?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(TcpStream::connect((addr, port.parse::<u16>()?)).context("connecting")?);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).is_ok_and(|n| n > 0) {}
    drop(held);
    Ok(())
}
