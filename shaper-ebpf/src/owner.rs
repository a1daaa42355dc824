//! Who owns a socket: cgroup socket hooks record the process behind every new
//! IPv4/IPv6 TCP and UDP socket, keyed by socket cookie, so the classifier can
//! match on program, user and cgroup from a connection's first packet.
//!
//! - `sock_create`: the creating process (every socket gets a record).
//! - `connect4/6`, `sendmsg4/6`: the process that actually uses the socket, when
//!   it is another one (a socket made before a fork or an exec, or passed on).
//! - `post_bind4/6`: the owner of a bound port; connections accepted on it have
//!   sockets no hook sees, and inherit this owner (see `classify`).
//! - `sock_release`: forgets the socket, and the port it bound (listen.rs).
//!
//! Every hook allows the operation (returns 1): shaper observes, never
//! refuses — but for connect() of a class whose quota blocks (refuse.rs).

use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_probe_read_kernel,
    },
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
    EbpfContext as _,
};
use shaper_common::{ListenKey, Owner, ERR_OWNER_INSERT, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use crate::{
    maps::{count_error, OWNERS},
    refuse,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Hooks return this to let the operation go ahead.
const ALLOW: i32 = 1;
/// A sock_addr hook returns this to refuse the call (connect() fails with EPERM).
const DENY: i32 = 0;

/// shaper's family constant for an AF_* value; `None` for other families.
#[inline(always)]
fn family(af: u32) -> Option<u8> {
    match af {
        AF_INET => Some(FAMILY_V4),
        AF_INET6 => Some(FAMILY_V6),
        _ => None,
    }
}

#[inline(always)]
fn shaped_protocol(proto: u32) -> bool {
    proto == u32::from(PROTO_TCP) || proto == u32::from(PROTO_UDP)
}

/// Byte offsets of `task_struct.group_leader` and `task_struct.comm` in the
/// running kernel, set by the daemon at load from the kernel's BTF (0: unknown).
#[unsafe(no_mangle)]
static TASK_GROUP_LEADER_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: u32 = 0;

/// The process's name (its thread group leader's, as /proc/PID/comm shows it)
/// into `comm`: the calling thread may have named itself otherwise (Go runtime
/// threads, a browser's "Socket Thread"), and a rule on `cmd` means the process.
/// Without the offsets, or if a read fails, the thread's own name.
#[inline(always)]
fn process_comm(comm: &mut [u8; 16]) {
    // SAFETY: globals the loader may rewrite; read them as it left them.
    let (leader_at, comm_at) = unsafe {
        (core::ptr::read_volatile(&TASK_GROUP_LEADER_OFFSET), core::ptr::read_volatile(&TASK_COMM_OFFSET))
    };
    if leader_at != 0 && comm_at != 0 {
        // SAFETY: bpf_probe_read_kernel checks the addresses; the current task
        // and its leader live while this hook runs.
        unsafe {
            let task = bpf_get_current_task() as usize;
            let mut leader = 0usize;
            let read_leader = bpf_probe_read_kernel(
                (&mut leader as *mut usize).cast(),
                8,
                (task + leader_at as usize) as *const core::ffi::c_void,
            );
            if read_leader == 0
                && leader != 0
                && bpf_probe_read_kernel(
                    comm.as_mut_ptr().cast(),
                    comm.len() as u32,
                    (leader + comm_at as usize) as *const core::ffi::c_void,
                ) == 0
            {
                return;
            }
        }
    }
    // SAFETY: the buffer is 16 bytes as passed.
    unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), comm.len() as u32) };
}

/// The current process, as the owner of socket `cookie`.
#[inline(always)]
fn current_owner(cookie: u64) -> Owner {
    // SAFETY: helpers without preconditions.
    let mut owner = unsafe {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let uid_gid = bpf_get_current_uid_gid();
        Owner {
            tgid,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            cgroup_id: bpf_get_current_cgroup_id(),
            cookie,
            ..Owner::default()
        }
    };
    process_comm(&mut owner.comm);
    owner
}

#[inline(always)]
fn record(cookie: u64) {
    if OWNERS.insert(cookie, current_owner(cookie), 0).is_err() {
        count_error(ERR_OWNER_INSERT);
    }
}

/// Records the current process as the owner unless it already is.
#[inline(always)]
fn refresh(cookie: u64) {
    // SAFETY: helper without preconditions.
    let tgid = unsafe { (bpf_get_current_pid_tgid() >> 32) as u32 };
    // SAFETY: read-only look at a map value.
    match unsafe { OWNERS.get(cookie) } {
        Some(owner) if owner.tgid == tgid => {}
        _ => record(cookie),
    }
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock; family and protocol are readable here.
    let (af, proto) = unsafe { ((*ctx.sock).family, (*ctx.sock).protocol) };
    if family(af).is_some() && shaped_protocol(proto) {
        // SAFETY: a socket context is what bpf_get_socket_cookie takes here.
        record(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) });
    }
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: as in sock_create.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = OWNERS.remove(cookie);
    crate::listen::release(cookie);
    crate::maps::keep_class_names();
    ALLOW
}

/// The bound address and port of a socket in a post_bind program, with its
/// network namespace: the key connections accepted on it are looked up by.
#[inline(always)]
fn bound_key<const V6: bool>(ctx: &SockContext, family: u8, proto: u32, port: u32) -> ListenKey {
    let mut addr = [0u8; 16];
    // SAFETY: src_ip4 is readable in post_bind4, src_ip6 in post_bind6 (`V6`
    // says which hook runs: the verifier refuses the other field even on a
    // path never taken); both are in network byte order.
    unsafe {
        if !V6 {
            addr[..4].copy_from_slice(&(*ctx.sock).src_ip4.to_ne_bytes());
        } else {
            let ip6 = (*ctx.sock).src_ip6;
            let mut i = 0;
            while i < 4 {
                addr[i * 4..i * 4 + 4].copy_from_slice(&ip6[i].to_ne_bytes());
                i += 1;
            }
        }
    }
    // SAFETY: a socket context is what bpf_get_netns_cookie takes here.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    ListenKey { netns, addr, family, proto: proto as u8, port: port as u16, _pad: 0 }
}

#[inline(always)]
fn post_bind<const V6: bool>(ctx: &SockContext) -> i32 {
    // SAFETY: family, protocol and src_port are readable in post_bind programs.
    let (af, proto, port) = unsafe { ((*ctx.sock).family, (*ctx.sock).protocol, (*ctx.sock).src_port) };
    let Some(family) = family(af) else { return ALLOW };
    if !shaped_protocol(proto) {
        return ALLOW;
    }
    // SAFETY: as in sock_create.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let owner = current_owner(cookie);
    crate::listen::record(&bound_key::<V6>(ctx, family, proto, port), &owner);
    if OWNERS.insert(cookie, owner, 0).is_err() {
        count_error(ERR_OWNER_INSERT);
    }
    ALLOW
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    post_bind::<false>(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    post_bind::<true>(&ctx)
}

#[inline(always)]
fn uses_socket(ctx: &SockAddrContext) -> i32 {
    // SAFETY: protocol is readable in every sock_addr program.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    if shaped_protocol(proto) {
        // SAFETY: a sock_addr context is what bpf_get_socket_cookie takes here.
        refresh(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) });
    }
    ALLOW
}

/// connect(): the owner as for the other hooks, then the quota's word.
#[inline(always)]
fn connects(ctx: &SockAddrContext, family: u8) -> i32 {
    // SAFETY: protocol is readable in every sock_addr program.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    if !shaped_protocol(proto) {
        return ALLOW;
    }
    // SAFETY: a sock_addr context is what bpf_get_socket_cookie takes here.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    refresh(cookie);
    // SAFETY: the destination fields of a connect4/6 context, read whole.
    let key = unsafe {
        let sa = ctx.sock_addr;
        let ip6 = if family == FAMILY_V6 { (*sa).user_ip6 } else { [0; 4] };
        let ip4 = if family == FAMILY_V4 { (*sa).user_ip4 } else { 0 };
        refuse::destination(family, proto as u8, ip4, ip6, (*sa).user_port)
    };
    if refuse::refused(&key, &current_owner(cookie)) {
        return DENY;
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    connects(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    connects(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    uses_socket(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    uses_socket(&ctx)
}
