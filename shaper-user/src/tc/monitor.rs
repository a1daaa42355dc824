//! Link events: an rtnetlink socket subscribed to RTNLGRP_LINK, which the
//! kernel tells of every interface created, changed (up, down, renamed) or
//! deleted. The daemon polls its descriptor in its main loop: no timer asks
//! whether an interface has come or gone.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use super::{
    netlink::{attrs, c_string, route_socket, u32_of},
    TcError, IFF_UP, IFLA_IFNAME, RTM_DELLINK, RTM_NEWLINK,
};

/// `RTMGRP_LINK`: the multicast group of link events.
const RTMGRP_LINK: u32 = 1;
const NLMSG_HDRLEN: usize = 16;

/// What a link event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Interface `index` exists as `name` (created, or changed: up, down, renamed).
    Present { index: u32, name: String, up: bool },
    /// Interface `index` (last called `name`) is gone.
    Gone { index: u32, name: String },
    /// The kernel dropped events (the socket's buffer overflowed): anything may have changed.
    Lost,
}

/// A socket that receives link events.
pub struct LinkMonitor {
    fd: OwnedFd,
}

impl AsRawFd for LinkMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl LinkMonitor {
    /// Subscribes to the link events of the calling thread's network namespace.
    pub fn open() -> Result<Self, TcError> {
        // A large buffer: a burst of events (a hundred containers starting)
        // that overflows it costs a full check (`LinkEvent::Lost`).
        Ok(Self { fd: route_socket(libc::SOCK_NONBLOCK, RTMGRP_LINK, 1024 * 1024)? })
    }

    /// Every event waiting on the socket (none when there is none).
    pub fn read(&self) -> Result<Vec<LinkEvent>, TcError> {
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(events),
                    Some(libc::ENOBUFS) => events.push(LinkEvent::Lost),
                    Some(libc::EINTR) => {}
                    _ => return Err(TcError::Io(e)),
                }
                continue;
            }
            parse(buf.get(..n as usize).unwrap_or_default(), &mut events);
        }
    }
}

/// The link events in one datagram.
fn parse(mut data: &[u8], events: &mut Vec<LinkEvent>) {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if let Some(event) = link_event(kind, &data[NLMSG_HDRLEN..len]) {
            events.push(event);
        }
        data = data.get((len + 3) & !3..).unwrap_or_default();
    }
}

/// An RTM_NEWLINK or RTM_DELLINK message's event.
fn link_event(kind: u16, payload: &[u8]) -> Option<LinkEvent> {
    let index = payload.get(4..8).and_then(u32_of)?;
    let flags = payload.get(8..12).and_then(u32_of)?;
    let name = attrs(payload.get(16..)?).find(|(k, _)| *k == IFLA_IFNAME).map(|(_, v)| c_string(v))?;
    match kind {
        RTM_NEWLINK => Some(LinkEvent::Present { index, name, up: flags & IFF_UP != 0 }),
        RTM_DELLINK => Some(LinkEvent::Gone { index, name }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, index: u32, flags: u32, name: &str) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        body[8..12].copy_from_slice(&flags.to_ne_bytes());
        let attr_len = 4 + name.len() + 1;
        body.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        body.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.resize((body.len() + 3) & !3, 0);
        let mut msg = vec![0u8; NLMSG_HDRLEN];
        msg[0..4].copy_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&kind.to_ne_bytes());
        msg.extend(body);
        msg
    }

    #[test]
    fn link_messages_become_events() {
        let mut data = message(RTM_NEWLINK, 7, IFF_UP, "wg0");
        data.extend(message(RTM_NEWLINK, 8, 0, "shpifb7"));
        data.extend(message(RTM_DELLINK, 7, 0, "wg0"));
        data.extend(message(RTM_NEWLINK + 20, 9, 0, "other")); // not a link message
        let mut events = Vec::new();
        parse(&data, &mut events);
        assert_eq!(
            events,
            [
                LinkEvent::Present { index: 7, name: "wg0".into(), up: true },
                LinkEvent::Present { index: 8, name: "shpifb7".into(), up: false },
                LinkEvent::Gone { index: 7, name: "wg0".into() },
            ]
        );
        let mut cut = Vec::new();
        parse(&data[..10], &mut cut);
        assert!(cut.is_empty());
    }
}
