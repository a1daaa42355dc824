//! The cookie of the daemon's network namespace: the key that tells this
//! namespace's bound ports from binds anywhere else (`ListenKey::netns`).

use std::os::fd::AsRawFd as _;

/// `SO_NETNS_COOKIE` (Linux 5.14), not in every libc crate version.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace, as
/// `bpf_get_netns_cookie` gives it to the socket hooks.
pub fn own_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which has them.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_namespace_has_a_cookie() {
        let cookie = super::own_cookie().unwrap_or(0);
        // Every namespace has a non-zero cookie on kernels that have the option.
        assert_ne!(cookie, 0);
        assert_eq!(super::own_cookie().unwrap_or(1), cookie);
    }
}
