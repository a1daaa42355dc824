//! The NETLINK_SOCK_DIAG dump against the sockets a test opens itself in a
//! sandbox namespace: each is found with the key, state, uid, inode and
//! cookie the kernel gives it elsewhere (/proc/net, fstat, SO_COOKIE), and
//! nothing else is (no listener, no unconnected socket, nothing from another
//! namespace).
//!
//! Needs root; says "skipped: needs root" otherwise.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::{
    collections::HashMap,
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use procfs::FromReadSI as _;
use shaper_common::{FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use shaper_user::{
    flows,
    sandbox::{Netns, Sandbox},
    sockdiag::{SockDiag, SockState, Socket, Table},
};

const PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
/// Connected UDP sockets opened to make the dump span several datagrams.
const MANY: usize = 600;
/// A uid no one on the machine has, for sockets made under it.
const OTHER_UID: u32 = 4_242_421;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cookie(fd: RawFd) -> u64 {
    let mut value = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into the buffer of the length given.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, 57, (&mut value as *mut u64).cast(), &mut len) };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    value
}

fn inode(fd: RawFd) -> u64 {
    std::fs::metadata(format!("/proc/thread-self/fd/{fd}")).unwrap().ino()
}

/// Runs `f` on a thread that entered `ns`.
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_current_thread().unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// The far end in namespace `b`: a dual-stack TCP listener that keeps what it
/// accepts until a peer closes (then closes too), and a UDP socket. Runs
/// until `stop`.
fn serve(ns: &Netns, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let path = ns.path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: setns on a valid namespace fd affects only this thread.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let listener = TcpListener::bind(("::", PORT)).unwrap();
        let _udp = UdpSocket::bind(("::", UDP_PORT)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut kept: Vec<TcpStream> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((conn, _)) = listener.accept() {
                conn.set_nonblocking(true).unwrap();
                kept.push(conn);
            }
            // Close what the peer closed: the peer's socket goes to time-wait.
            kept.retain_mut(|c| !matches!(c.read(&mut [0u8; 64]), Ok(0)));
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    handle
}

/// A non-blocking connect to an address nobody answers: the socket stays in syn-sent.
fn syn_sent(target: &str, port: u16) -> TcpStream {
    let addr: std::net::Ipv4Addr = target.parse().unwrap();
    // SAFETY: socket(2) and connect(2) with a sockaddr_in built here; the fd is owned at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
            sin_zero: [0; 8],
        };
        let rc =
            libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as u32);
        assert!(rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS));
        TcpStream::from(owned)
    }
}

/// What /proc/thread-self/net says about the namespace's connected sockets,
/// read as procscan reads /proc/net: key → (state, uid, inode).
fn proc_net() -> HashMap<FlowKey, (SockState, u32, u64)> {
    let info = procfs::current_system_info();
    let mut out = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/thread-self/net/{table}");
        for e in procfs::net::TcpNetEntries::from_file(path, info).unwrap().0 {
            if e.state != procfs::net::TcpState::Listen && e.remote_address.port() != 0 {
                let key = flows::key(PROTO_TCP, e.local_address, e.remote_address);
                out.insert(key, (SockState::from(&e.state), e.uid, e.inode));
            }
        }
    }
    for table in ["udp", "udp6"] {
        let path = format!("/proc/thread-self/net/{table}");
        for e in procfs::net::UdpNetEntries::from_file(path, info).unwrap().0 {
            if e.remote_address.port() != 0 {
                let key = flows::key(PROTO_UDP, e.local_address, e.remote_address);
                out.insert(key, (SockState::Udp, e.uid, e.inode));
            }
        }
    }
    out
}

fn key_of(proto: u8, local: SocketAddr, remote: SocketAddr) -> FlowKey {
    flows::key(proto, local, remote)
}

/// One socket the test made, and what the dump must say about it.
struct Expect {
    what: &'static str,
    key: FlowKey,
    state: SockState,
    uid: u32,
    inode: u64,
    cookie: u64,
}

fn expect_stream(what: &'static str, s: &TcpStream) -> Expect {
    let fd = s.as_raw_fd();
    Expect {
        what,
        key: key_of(PROTO_TCP, s.local_addr().unwrap(), s.peer_addr().unwrap()),
        state: SockState::Established,
        uid: 0,
        inode: inode(fd),
        cookie: cookie(fd),
    }
}

fn expect_udp(what: &'static str, s: &UdpSocket, uid: u32) -> Expect {
    let fd = s.as_raw_fd();
    Expect {
        what,
        key: key_of(PROTO_UDP, s.local_addr().unwrap(), s.peer_addr().unwrap()),
        state: SockState::Udp,
        uid,
        inode: inode(fd),
        cookie: cookie(fd),
    }
}

fn dump_all() -> (Vec<Socket>, shaper_user::sockdiag::DumpStats) {
    let mut diag = SockDiag::open().unwrap();
    let mut sockets = Vec::new();
    let stats = diag.dump(|s| sockets.push(*s)).unwrap();
    // A second dump on the same socket and buffer gives the same sockets.
    let mut again = 0usize;
    diag.dump(|_| again += 1).unwrap();
    assert!(again.abs_diff(sockets.len()) <= 2, "{again} vs {}", sockets.len());
    (sockets, stats)
}

/// The id of the cgroup this process runs in (the inode of its directory).
fn own_cgroup_id() -> Option<u64> {
    let root = shaper_user::cgroups::v2_root().ok()?;
    let path = shaper_user::cgroups::of_process(std::process::id())?;
    Some(std::fs::metadata(root.join(path.trim_start_matches('/'))).ok()?.ino())
}

#[test]
fn the_dump_finds_each_socket_with_its_key_state_uid_inode_and_cookie() {
    if !is_root() {
        println!("skipped: needs root");
        return;
    }
    let sandbox = Sandbox::new("sdiag").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(&sandbox.b, Arc::clone(&stop));
    in_netns(&sandbox.a, || {
        let v4 = TcpStream::connect((Sandbox::ADDR_B4, PORT)).unwrap();
        let v6 = TcpStream::connect((Sandbox::ADDR_B6, PORT)).unwrap();
        // An IPv6 socket talking IPv4: its key is IPv4, as the packets are.
        let mapped = TcpStream::connect(format!("[::ffff:{}]:{PORT}", Sandbox::ADDR_B4)).unwrap();
        assert!(mapped.local_addr().unwrap().is_ipv6());
        let udp4 = UdpSocket::bind((Sandbox::ADDR_A4, 0)).unwrap();
        udp4.connect((Sandbox::ADDR_B4, UDP_PORT)).unwrap();
        // A socket made under another uid (the socket's uid is the fsuid of its maker).
        // SAFETY: setfsuid changes only this thread's filesystem uid; it is set back below.
        unsafe { libc::setfsuid(OTHER_UID) };
        let udp6 = UdpSocket::bind((Sandbox::ADDR_A6, 0));
        // SAFETY: as above.
        unsafe { libc::setfsuid(0) };
        let udp6 = udp6.unwrap();
        udp6.connect((Sandbox::ADDR_B6, UDP_PORT)).unwrap();
        let unconnected = UdpSocket::bind((Sandbox::ADDR_A4, 0)).unwrap();
        let listener = TcpListener::bind((Sandbox::ADDR_A4, 0)).unwrap();
        let pending = syn_sent("198.18.0.99", 9);
        let many: Vec<UdpSocket> = (0..MANY)
            .map(|_| {
                let s = UdpSocket::bind((Sandbox::ADDR_A4, 0)).unwrap();
                s.connect((Sandbox::ADDR_B4, UDP_PORT)).unwrap();
                s
            })
            .collect();
        // Closed first by this side: it stays in time-wait, without inode or uid.
        let closing = TcpStream::connect((Sandbox::ADDR_B4, PORT)).unwrap();
        let mut expect = vec![
            expect_stream("tcp ipv4", &v4),
            expect_stream("tcp ipv6", &v6),
            expect_stream("tcp ipv6 socket to an ipv4 address", &mapped),
            expect_udp("udp ipv4", &udp4, 0),
            expect_udp("udp ipv6, made by another uid", &udp6, OTHER_UID),
            Expect {
                what: "syn-sent",
                key: key_of(PROTO_TCP, pending.local_addr().unwrap(), "198.18.0.99:9".parse().unwrap()),
                state: SockState::SynSent,
                uid: 0,
                inode: inode(pending.as_raw_fd()),
                cookie: cookie(pending.as_raw_fd()),
            },
        ];
        let mut tw = expect_stream("time-wait", &closing);
        (tw.state, tw.inode) = (SockState::TimeWait, 0);
        expect.push(tw);
        drop(closing);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (sockets, stats) = loop {
            let (sockets, stats) = dump_all();
            let tw_seen = sockets.iter().any(|s| s.key == expect[6].key && s.state == SockState::TimeWait);
            if tw_seen || Instant::now() > deadline {
                break (sockets, stats);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let by_key: HashMap<FlowKey, Socket> = sockets.iter().map(|s| (s.key, *s)).collect();
        assert_eq!(by_key.len(), sockets.len(), "a socket listed twice");
        for e in &expect {
            let s = by_key.get(&e.key).unwrap_or_else(|| panic!("{}: not in the dump", e.what));
            assert_eq!(
                (s.state, s.uid, s.inode, s.cookie),
                (e.state, e.uid, e.inode, e.cookie),
                "{}: {s:?}",
                e.what
            );
        }
        assert_eq!(by_key[&expect[2].key].key.family, FAMILY_V4, "the mapped socket's key");
        assert_eq!(by_key[&expect[1].key].key.family, FAMILY_V6);
        // Each socket's cgroup: the one this test runs in.
        if let Some(id) = own_cgroup_id() {
            assert_eq!(by_key[&expect[0].key].cgroup_id, Some(id));
        }
        // Nothing but this namespace's connected sockets: no listener, no
        // unconnected socket, and every local address is namespace a's.
        let local_ports: Vec<u16> = sockets.iter().map(|s| s.key.lport).collect();
        assert!(!local_ports.contains(&listener.local_addr().unwrap().port()), "the listener is listed");
        assert!(!local_ports.contains(&unconnected.local_addr().unwrap().port()), "an unconnected socket");
        for s in &sockets {
            let local = flows::local(&s.key).ip().to_string();
            assert!(local == Sandbox::ADDR_A4 || local == Sandbox::ADDR_A6, "{s:?} is not namespace a's");
        }
        assert_eq!(sockets.len(), expect.len() + MANY, "{stats:?}");
        assert!(stats.datagrams > Table::ALL.len(), "{MANY} sockets in one datagram? {stats:?}");
        assert!(stats.skipped >= 1, "the unconnected socket was not even seen: {stats:?}");
        for s in &many {
            let key = key_of(PROTO_UDP, s.local_addr().unwrap(), s.peer_addr().unwrap());
            assert_eq!(by_key.get(&key).map(|d| d.cookie), Some(cookie(s.as_raw_fd())));
        }
        // The same sockets /proc/net shows, in the same states, uids and inodes.
        let proc = proc_net();
        let ours: HashMap<FlowKey, (SockState, u32, u64)> =
            sockets.iter().map(|s| (s.key, (s.state, s.uid, s.inode))).collect();
        assert_eq!(ours, proc);
        // Everything stays open until the checks are done.
        drop((v4, v6, mapped, udp4, udp6, many, listener, unconnected, pending));
    });
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}
