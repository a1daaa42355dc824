//! Readiness and state for a supervisor: the sd_notify protocol (a datagram
//! to the socket named by `NOTIFY_SOCKET`). systemd's `Type=notify` uses it,
//! and so does `shaper start`, which waits for `READY=1` the same way.

use std::os::unix::net::UnixDatagram;

/// Sends `state` ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=…") to the
/// supervisor, if there is one. Failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let socket = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::debug!("sd_notify: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (systemd's usual choice).
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        log::debug!("sd_notify {state:?}: {e}");
    }
}

/// "RELOADING=1" with the timestamp systemd asks for.
pub fn reloading() {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid timespec buffer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
