//! The kernel-side sources of the reconcile, checked against what the kernel
//! says elsewhere:
//! - the NETLINK_SOCK_DIAG dump, against sockets a test opens itself in a
//!   sandbox namespace: each is found with the key, state, uid, inode and
//!   cookie that /proc/net, fstat and SO_COOKIE give it, and nothing else is
//!   (no listener, no unconnected socket, nothing from another namespace);
//! - the batched dumps of FLOWS and OWNERS, against aya's per-entry walk, and
//!   a dump while another thread writes the map;
//! - the join: a socket's cookie from the dump finds the owner record the
//!   socket hooks wrote for the process that made it.
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

use aya::maps::{HashMap as AyaHashMap, MapData};
use procfs::FromReadSI as _;
use shaper_common::{FlowKey, FlowValue, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use shaper_testkit::{
    require_root,
    sandbox::{Netns, Sandbox},
};
use shaper_user::{
    datapath::{batch, Datapath, LoadOptions},
    flows,
    sockdiag::{SockDiag, SockState, Socket, Table},
};

const PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
/// Connected UDP sockets opened to make the dump span several datagrams.
const MANY: usize = 600;
/// A uid no one on the machine has, for sockets made under it.
const OTHER_UID: u32 = 4_242_421;

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
    require_root!();
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

fn load_datapath() -> Datapath {
    Datapath::load(LoadOptions { max_flows: 131_072, kernel_log_level: 0, pins: None }).unwrap()
}

fn flow_key(i: u32) -> FlowKey {
    shaper_testkit::packets::synthetic_flow(i)
}

#[test]
fn the_batched_flow_dump_gives_what_the_per_entry_walk_gives() {
    require_root!();
    const N: u32 = 20_000;
    let mut dp = load_datapath();
    for i in 0..N {
        let value = FlowValue {
            class: (i % 7) as u16,
            tx_bytes: u64::from(i) * 1000,
            last_seen_ns: u64::from(i),
            ..FlowValue::default()
        };
        dp.insert_flow(&flow_key(i), &value).unwrap();
    }
    let mut batched = HashMap::new();
    let walked = dp.for_each_flow(|k, v| assert!(batched.insert(*k, *v).is_none(), "{k:?} twice")).unwrap();
    let per_entry: HashMap<FlowKey, FlowValue> = dp.flows().into_iter().collect();
    assert_eq!(per_entry.len(), N as usize);
    assert_eq!(batched, per_entry);
    assert!(walked.batched, "{walked:?}");
    assert_eq!(walked.entries, N as usize);
    assert!(walked.syscalls <= N as usize / batch::CHUNK + 2, "{walked:?}");
    assert_eq!(batched[&flow_key(1234)].tx_bytes, 1_234_000);
}

#[test]
fn a_bucket_larger_than_a_chunk_and_the_per_entry_fallback_lose_nothing() {
    require_root!();
    // A plain hash map of 1 000 entries in 1 024 buckets: many buckets hold
    // two or more, more than a chunk of one.
    let mut map = AyaHashMap::<MapData, u32, u64>::create(1024, 0).unwrap();
    for i in 0..1000u32 {
        map.insert(i * 7919, u64::from(i), 0).unwrap();
    }
    for (mode, chunk) in [(batch::Mode::Batched, 1), (batch::Mode::Batched, 4096), (batch::Mode::PerEntry, 1)]
    {
        let mut seen = HashMap::new();
        let walked = batch::for_each(&map, mode, chunk, &mut |k: &u32, v: &u64| {
            assert!(seen.insert(*k, *v).is_none(), "{k} twice");
        })
        .unwrap();
        assert_eq!(
            (seen.len(), walked.entries, walked.batched),
            (1000, 1000, mode == batch::Mode::Batched),
            "{mode:?} {chunk}"
        );
        assert!((0..1000u32).all(|i| seen.get(&(i * 7919)) == Some(&u64::from(i))));
    }
}

/// While another thread keeps inserting and deleting keys, every batched dump
/// lists each key that stayed in the map exactly once.
#[test]
fn a_batched_dump_while_the_map_changes_lists_every_lasting_entry_once() {
    require_root!();
    const LASTING: u32 = 10_000;
    const CHURNING: u32 = 10_000;
    let mut map = AyaHashMap::<MapData, FlowKey, FlowValue>::create(32_768, 0).unwrap();
    for i in 0..LASTING {
        map.insert(flow_key(i), FlowValue { tx_bytes: 1, ..FlowValue::default() }, 0).unwrap();
    }
    let id = aya::maps::IterableMap::map(&map).info().unwrap().id();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let data = MapData::from_id(id).unwrap();
            let mut other =
                AyaHashMap::<MapData, FlowKey, FlowValue>::try_from(aya::maps::Map::HashMap(data)).unwrap();
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in LASTING..LASTING + CHURNING {
                    other.insert(flow_key(i), FlowValue::default(), 0).unwrap();
                }
                for i in LASTING..LASTING + CHURNING {
                    other.remove(&flow_key(i)).unwrap();
                }
                rounds += 1;
            }
            rounds
        })
    };
    let (mut batched_twice, mut per_entry_twice, mut per_entry_missed) = (0, 0, 0);
    for round in 0..20 {
        let mode = if round % 2 == 0 { batch::Mode::Batched } else { batch::Mode::PerEntry };
        let mut seen: HashMap<FlowKey, u32> = HashMap::new();
        batch::for_each(&map, mode, batch::CHUNK, &mut |k: &FlowKey, _| *seen.entry(*k).or_default() += 1)
            .unwrap();
        let twice = seen.values().filter(|n| **n > 1).count();
        let lasting = (0..LASTING).filter(|i| seen.contains_key(&flow_key(*i))).count();
        match mode {
            batch::Mode::PerEntry => {
                per_entry_twice += twice;
                per_entry_missed += LASTING as usize - lasting;
            }
            _ => {
                batched_twice += twice;
                assert_eq!(lasting, LASTING as usize, "a lasting entry missing from a batched dump");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    println!(
        "{rounds} churn rounds; keys listed twice: batched {batched_twice}, per entry {per_entry_twice}; \
         lasting keys the per-entry walk missed: {per_entry_missed}"
    );
    assert!(rounds > 0, "the other thread never changed the map during the dumps");
    assert_eq!(batched_twice, 0, "a batched dump listed a key twice");
}

/// Set in the environment of this test binary run again as a helper process.
const HOLD_ENV: &str = "SHAPER_TEST_HOLD_UDP";
/// Sockets the helper holds: more than one batch of OWNERS.
const HELD: usize = 5_000;

/// The helper: when run with [`HOLD_ENV`] set to a count, connects that many
/// UDP sockets to the far end of the sandbox, prints "ready" and keeps them
/// until its standard input closes. Run normally, it does nothing.
#[test]
fn helper_holding_udp_sockets() {
    let Some(count) = std::env::var(HOLD_ENV).ok().and_then(|c| c.parse::<usize>().ok()) else { return };
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let held: Vec<UdpSocket> = (0..count)
        .map(|_| {
            let s = UdpSocket::bind((Sandbox::ADDR_A4, 0)).unwrap();
            s.connect((Sandbox::ADDR_B4, UDP_PORT)).unwrap();
            s
        })
        .collect();
    println!("ready");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held);
}

/// The join the reconcile makes: a socket from the dump → its owner record by
/// cookie → the process that made it.
#[test]
fn each_dumped_socket_finds_its_owner_record_by_cookie() {
    use std::io::BufRead as _;
    require_root!();
    let sandbox = Sandbox::new("sdown").unwrap();
    let mut dp = load_datapath();
    dp.attach_cgroup(sandbox.cgroup.dir()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = sandbox
        .client(exe.to_str().unwrap())
        .unwrap()
        .args(["--exact", "helper_holding_udp_sockets", "--nocapture", "--test-threads=1"])
        .env(HOLD_ENV, HELD.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kept open until the helper exits (it prints more as it ends).
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.by_ref().map_while(Result::ok).any(|l| l.trim_end().ends_with("ready"));
    assert!(ready, "the helper did not open its sockets");
    let pid = child.id();
    // The record names the process (what /proc/PID/comm shows: the test
    // binary's file name), not the thread that made the socket, which the
    // harness names after the test ("helper_holding_").
    let process = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim_end().to_string();
    assert_ne!(process, "helper_holding_");

    let mut cookies = Vec::new();
    in_netns(&sandbox.a, || {
        SockDiag::open().unwrap().dump(|s| cookies.push(s.cookie)).unwrap();
    });
    let mut owners = HashMap::new();
    let walked = dp.for_each_owner(|cookie, owner| assert!(owners.insert(cookie, *owner).is_none())).unwrap();
    let per_entry: HashMap<u64, shaper_common::Owner> = dp.owners().into_iter().collect();
    drop(child.stdin.take());
    let _ = lines.count();
    let _ = child.wait();
    dp.detach_cgroup();

    assert!(walked.batched && walked.syscalls >= 2, "{walked:?}");
    assert_eq!(owners, per_entry, "the batched and the per-entry walks differ");
    assert_eq!(cookies.len(), HELD);
    for cookie in &cookies {
        let owner = owners.get(cookie).unwrap_or_else(|| panic!("no owner record for cookie {cookie}"));
        let name = String::from_utf8_lossy(&owner.comm).trim_end_matches('\0').to_string();
        assert_eq!((owner.tgid, owner.cookie, name.as_str()), (pid, *cookie, process.as_str()));
    }
}

/// A map of type `map_type` made with a raw BPF_MAP_CREATE (aya 0.14 makes
/// only some types by itself).
fn create_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapData {
    let mut attr = [0u32; 30];
    attr[..4].copy_from_slice(&[map_type, key_size, value_size, max_entries]);
    // SAFETY: BPF_MAP_CREATE (0) reads a zero-padded bpf_attr of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), std::mem::size_of_val(&attr) as u32) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }).unwrap()
}

/// A map type the kernel has no batch lookup for (a DEVMAP_HASH, read through
/// the same typed handle): the walk falls back to one entry at a time and
/// still gives every entry once.
#[test]
fn a_map_without_batch_lookups_is_walked_entry_by_entry() {
    require_root!();
    const BPF_MAP_TYPE_DEVMAP_HASH: u32 = 25;
    let data = create_map(BPF_MAP_TYPE_DEVMAP_HASH, 4, 4, 256);
    let mut map = AyaHashMap::<MapData, u32, u32>::try_from(aya::maps::Map::HashMap(data)).unwrap();
    // Every entry redirects to the loopback device (ifindex 1, in every namespace).
    for key in 0..200u32 {
        map.insert(key * 3, 1, 0).unwrap();
    }
    let refused = batch::for_each(&map, batch::Mode::Batched, batch::CHUNK, &mut |_, _| {});
    assert!(refused.is_err(), "the kernel now dumps DEVMAP_HASH in batches: {refused:?}");
    let mut seen = HashMap::new();
    let walked = batch::for_each(&map, batch::Mode::Auto, batch::CHUNK, &mut |k: &u32, v: &u32| {
        assert!(seen.insert(*k, *v).is_none(), "{k} twice");
    })
    .unwrap();
    assert!(!walked.batched, "{walked:?}");
    assert_eq!(walked.entries, 200);
    assert!((0..200u32).all(|k| seen.get(&(k * 3)) == Some(&1)));
}
