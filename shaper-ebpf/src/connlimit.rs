//! Connection limits on the packet path (see `shaper_common::connlimit`):
//! the gate programs drop the pure SYNs of a class with `max_connections`
//! while it is full, and give back the slot of a granted connection that a
//! RST ends before it was established. sock_ops (`conn_sock_ops`) does the
//! rest of the accounting.
//!
//! The gates are programs of their own, run after the classifier, which they
//! leave untouched: `tc_gate_egress` next to it on the interface's egress,
//! `tc_gate_ingress` on the egress of the interface's IFB, where arriving
//! packets go. Each reads the class the classifier wrote into
//! `skb->priority`. (Inlined into the classifier, the gate's branches
//! multiplied its paths past what the verifier accepts.) The daemon attaches
//! them only while some class has a limit: other traffic pays nothing.
//!
//! This is the second place where shaper drops packets by design (the first
//! is a quota that blocks, quota.rs): a SYN over the limit is dropped while
//! its connection waits, and every retransmission of it, until the daemon
//! admits it (it re-sends the recorded SYN) or refuses it (a RST).

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_STATE_CB_FLAG},
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map, sock_ops},
    maps::{Array, HashMap, PerCpuArray},
    programs::{SockOpsContext, TcContext},
};
use shaper_common::{
    connlimit::{
        class_wide, ConnDaemon, ConnKernel, ConnLimit, GateEntry, GATE_GRANTED, GATE_INBOUND,
        GATE_IN_SERVICE, GATE_OUTBOUND, GATE_REJECT, GATE_WAITING, MAX_CONN_COUNTERS, MAX_GATED,
        ON_LIMIT_REJECT, SYN_BYTES,
    },
    instances::{InstanceKey, INSTANCE_MINOR_BASE, PER_NONE, SHARED_MINOR_BASE},
    Direction, FlowKey, FAMILY_V4, FAMILY_V6, HTB_LEAF_MINOR_BASE, HTB_MAJOR, MAX_CLASSES, PROTO_TCP,
};

use crate::{
    iface,
    instance::owner_of,
    maps::{CLASS_MODES, INSTANCE_SLOTS},
    packet::{flow_key, tcp_shape, KeyBuf, Shape, PURE_SYN, RST},
    TC_ACT_SHOT, TC_ACT_UNSPEC,
};

/// Class index → its limit (`max == 0`: none).
#[map]
static CONN_LIMITS: Array<ConnLimit> = Array::with_max_entries(MAX_CLASSES, 0);

/// Gated connections.
#[map]
static CONN_GATES: HashMap<FlowKey, GateEntry> = HashMap::with_max_entries(MAX_GATED, 0);

/// The programs' counters per class (instance).
#[map]
static CONN_KERNEL: HashMap<InstanceKey, ConnKernel> = HashMap::with_max_entries(MAX_CONN_COUNTERS, 0);

/// The daemon's counters per class (instance), read here.
#[map]
static CONN_DAEMON: HashMap<InstanceKey, ConnDaemon> = HashMap::with_max_entries(MAX_CONN_COUNTERS, 0);

/// The gate entry being made (too large for the classifier's stack), per CPU
/// like the classifier's SCRATCH.
#[map]
static GATE_SCRATCH: PerCpuArray<GateEntry> = PerCpuArray::with_max_entries(1, 0);

/// The class of a packet from the HTB class id the classifier gave it.
#[inline(always)]
fn class_of(priority: u32) -> Option<u16> {
    if priority >> 16 != HTB_MAJOR {
        return None;
    }
    let minor = priority & 0xffff;
    let class = if minor >= INSTANCE_MINOR_BASE {
        let slot = INSTANCE_SLOTS.get(minor - INSTANCE_MINOR_BASE)?;
        slot.class_plus_one.checked_sub(1)?
    } else if (SHARED_MINOR_BASE..SHARED_MINOR_BASE + MAX_CLASSES).contains(&minor) {
        minor - SHARED_MINOR_BASE
    } else if (HTB_LEAF_MINOR_BASE..HTB_LEAF_MINOR_BASE + MAX_CLASSES).contains(&minor) {
        minor - HTB_LEAF_MINOR_BASE
    } else {
        return None;
    };
    Some(class as u16)
}

/// A gate: the packet's interface is `ifindex` (the shaped one: on the IFB,
/// the one the packet arrived on).
#[inline(always)]
fn gate_hook(ctx: &TcContext, direction: Direction, ifindex: u32) -> i32 {
    let Some(iface) = iface::lookup(ifindex) else { return TC_ACT_UNSPEC };
    let l2_len = iface.l2_len;
    let Some((shape, l3)) = tcp_shape(ctx, l2_len as usize) else { return TC_ACT_UNSPEC };
    if shape & (PURE_SYN | RST) == 0 {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: reading a field of the context the kernel passed in.
    let Some(class) = class_of(unsafe { (*ctx.skb.skb).priority }) else { return TC_ACT_UNSPEC };
    let mut buf = KeyBuf::new();
    let Some((key, _)) = flow_key(ctx, l2_len as usize, direction, &mut buf) else { return TC_ACT_UNSPEC };
    if gate(ctx, direction, class, key, shape, l3) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

#[classifier]
pub fn tc_gate_egress(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    gate_hook(&ctx, Direction::Egress, ifindex)
}

#[classifier]
pub fn tc_gate_ingress(ctx: TcContext) -> i32 {
    // SAFETY: as above; on the IFB, the interface the packet arrived on.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    gate_hook(&ctx, Direction::Ingress, ifindex)
}

#[inline(always)]
fn add(counter: *mut u64, n: u64) {
    // SAFETY: the pointer comes from a live map value; the atomic add keeps
    // concurrent CPUs from losing each other's updates.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// The kernel counters of `key`, made on first use.
#[inline(always)]
fn kernel_counts(key: &InstanceKey) -> Option<*mut ConnKernel> {
    if let Some(counts) = CONN_KERNEL.get_ptr_mut(key) {
        return Some(counts);
    }
    // Another CPU may make it meanwhile (EEXIST): then use that one.
    let _ = CONN_KERNEL.insert(key, ConnKernel::default(), BPF_NOEXIST as u64);
    CONN_KERNEL.get_ptr_mut(key)
}

/// The instance whose slot a connection of `class` on `key` takes, into `out`.
#[inline(always)]
fn instance_of(ctx: &TcContext, direction: Direction, class: u16, key: &FlowKey, out: &mut InstanceKey) {
    *out = class_wide(class);
    let per = CLASS_MODES.get(u32::from(class)).map_or(PER_NONE, |m| m.per);
    if per == PER_NONE {
        return;
    }
    let (owner, _) = owner_of(ctx, direction, key);
    if let Some(instance) = InstanceKey::of(class, per, key, owner) {
        *out = instance;
    }
}

/// Copies the packet's IP and TCP headers (at most `SYN_BYTES`) into `entry`.
#[inline(always)]
fn keep_syn(ctx: &TcContext, l3: u16, entry: *mut GateEntry) {
    let len = (ctx.len() as usize).saturating_sub(l3 as usize);
    if len == 0 {
        return;
    }
    // 1 to SYN_BYTES in a form the verifier follows (the compiler would
    // otherwise fold the bounds into a test it cannot relate to `len`).
    let len = (core::hint::black_box(len - 1) & (SYN_BYTES - 1)) + 1;
    let len = if ctx.len() as usize - l3 as usize > SYN_BYTES { SYN_BYTES } else { len };
    // SAFETY: `entry` is a live map value; the helper writes `len` (1 to
    // SYN_BYTES) bytes into its `syn` array, which holds SYN_BYTES.
    unsafe {
        let ret = bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            u32::from(l3),
            (&raw mut (*entry).syn).cast(),
            len as u32,
        );
        if ret == 0 {
            (*entry).syn_len = len as u16;
        }
    }
}

/// Whether a free slot of `instance` (limit `max`) was taken for a new connection.
#[inline(always)]
fn take_slot(counts: *mut ConnKernel, instance: &InstanceKey, max: u64) -> bool {
    // SAFETY: read-only look at a map value.
    let daemon = unsafe { CONN_DAEMON.get(instance) };
    let (queued, dequeued, reaped) = daemon.map_or((0, 0, 0), |d| (d.granted_queued, d.dequeued, d.reaped));
    // SAFETY: a live map value; the reads may race with other CPUs' adds,
    // which the check after the add catches.
    let (held, abandoned) = unsafe { ((*counts).held, (*counts).abandoned) };
    if held > dequeued.wrapping_add(abandoned) {
        return false;
    }
    // SAFETY: as above.
    let in_service = |counts: *mut ConnKernel| unsafe {
        ((*counts).granted_fast.wrapping_add(queued)).saturating_sub((*counts).released.wrapping_add(reaped))
    };
    if in_service(counts) >= max {
        return false;
    }
    // SAFETY: as above.
    add(unsafe { &raw mut (*counts).granted_fast }, 1);
    if in_service(counts) > max {
        // Another CPU took the last slot meanwhile: give it back.
        // SAFETY: as above.
        add(unsafe { &raw mut (*counts).granted_fast }, u64::MAX);
        return false;
    }
    true
}

/// Gates a SYN or RST of class `class` on flow `key`; true when the packet
/// must be dropped (a SYN that waits, or is refused).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference: a copy of the value would go on the BPF stack"
)]
#[inline(always)]
fn gate(ctx: &TcContext, direction: Direction, class: u16, key: &FlowKey, shape: Shape, l3: u16) -> bool {
    if key.proto != PROTO_TCP {
        return false;
    }
    let Some(limit) = CONN_LIMITS.get(u32::from(class)) else { return false };
    if limit.max == 0 {
        return false;
    }
    if shape & RST != 0 {
        released_by_rst(key);
        return false;
    }
    if shape & PURE_SYN == 0 {
        return false;
    }
    if let Some(entry) = CONN_GATES.get_ptr_mut(key) {
        // SAFETY: a live map value, valid for this program run.
        let state = unsafe { (*entry).state };
        if state == GATE_WAITING {
            // A retransmission: keep its bytes (fresh timestamps), drop it.
            keep_syn(ctx, l3, entry);
            // SAFETY: as above.
            unsafe { (*entry).last_ns = bpf_ktime_get_ns() };
        }
        return state == GATE_WAITING || state == GATE_REJECT;
    }
    let (mode, max) = (limit.mode, u64::from(limit.max));
    let Some(entry) = GATE_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot, used by nothing else during this run; every
    // field the insert copies is written here or below.
    let entry = unsafe { &mut *entry };
    instance_of(ctx, direction, class, key, &mut entry.instance);
    let Some(counts) = kernel_counts(&entry.instance) else { return false };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    entry.direction = if direction == Direction::Ingress { GATE_INBOUND } else { GATE_OUTBOUND };
    entry.first_seen_ns = now;
    entry.last_ns = now;
    entry.syn_len = 0;
    entry._pad = 0;
    if take_slot(counts, &entry.instance, max) {
        entry.state = GATE_GRANTED;
        if CONN_GATES.insert(key, &*entry, BPF_NOEXIST as u64).is_err() {
            // Full (or raced): fail open, the slot goes back.
            // SAFETY: a live map value.
            add(unsafe { &raw mut (*counts).granted_fast }, u64::MAX);
        }
        return false;
    }
    entry.state = if mode == ON_LIMIT_REJECT { GATE_REJECT } else { GATE_WAITING };
    keep_syn(ctx, l3, entry);
    if CONN_GATES.insert(key, &*entry, BPF_NOEXIST as u64).is_err() {
        // The table is full: fail open (the connection goes uncounted).
        return false;
    }
    // SAFETY: a live map value.
    unsafe {
        if mode == ON_LIMIT_REJECT {
            add(&raw mut (*counts).rejected, 1);
        } else {
            add(&raw mut (*counts).held, 1);
        }
    }
    true
}

/// A RST on a connection granted a slot but never established (a remote
/// client gone while it waited answers the re-sent handshake with a RST):
/// the slot goes back.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference: a copy of the value would go on the BPF stack"
)]
#[inline(always)]
fn released_by_rst(key: &FlowKey) {
    let Some(entry) = CONN_GATES.get_ptr(key) else { return };
    // SAFETY: a live map value; the counters' key is read in place.
    let granted = unsafe { (*entry).state } == GATE_GRANTED;
    // SAFETY: as above; the element stays readable for this run (RCU).
    if granted && CONN_GATES.remove(key).is_ok() {
        if let Some(counts) = CONN_KERNEL.get_ptr_mut(unsafe { &(*entry).instance }) {
            // SAFETY: a live map value.
            add(unsafe { &raw mut (*counts).released }, 1);
        }
    }
}

/// TCP states (`bpf_sock_ops.state`, args of `BPF_SOCK_OPS_STATE_CB`).
const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

const OP_TCP_CONNECT: u32 = 3;
const OP_ACTIVE_ESTABLISHED: u32 = 4;
const OP_PASSIVE_ESTABLISHED: u32 = 5;
const OP_STATE: u32 = 10;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// The socket's tuple as the classifier keys it (local end first).
#[inline(always)]
fn sock_key(ctx: &SockOpsContext) -> Option<FlowKey> {
    let ops = ctx.ops;
    // SAFETY: sock_ops context fields, all read up front with constant
    // offsets: loads in the family's branches get merged through a moved ctx
    // pointer, which the verifier refuses.
    let (family, lport, rport, l4, r4, l6, r6) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).family),
            core::ptr::read_volatile(&raw const (*ops).local_port),
            core::ptr::read_volatile(&raw const (*ops).remote_port),
            core::ptr::read_volatile(&raw const (*ops).local_ip4),
            core::ptr::read_volatile(&raw const (*ops).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
                core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
                core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
                core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    let mut key = FlowKey {
        proto: PROTO_TCP,
        lport: lport as u16,
        // In network byte order, in the field's upper half on little-endian hosts.
        rport: u16::from_be((rport >> 16) as u16),
        ..FlowKey::default()
    };
    match family {
        AF_INET => {
            key.family = FAMILY_V4;
            key.laddr[..4].copy_from_slice(&l4.to_ne_bytes());
            key.raddr[..4].copy_from_slice(&r4.to_ne_bytes());
        }
        AF_INET6 => {
            key.family = FAMILY_V6;
            let mut i = 0;
            while i < 4 {
                key.laddr[i * 4..i * 4 + 4].copy_from_slice(&l6[i].to_ne_bytes());
                key.raddr[i * 4..i * 4 + 4].copy_from_slice(&r6[i].to_ne_bytes());
                i += 1;
            }
        }
        _ => return None,
    }
    Some(key)
}

/// Established: a granted connection is in service, and its socket reports
/// its state changes from now on.
#[inline(always)]
fn established(ctx: &SockOpsContext, key: &FlowKey) {
    let Some(entry) = CONN_GATES.get_ptr_mut(key) else { return };
    // SAFETY: a live map value, valid for this program run.
    unsafe {
        if (*entry).state == GATE_GRANTED {
            (*entry).state = GATE_IN_SERVICE;
        }
    }
    let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// A socket of a gated connection leaving service: to CLOSE (closed, reset,
/// timed out, its process killed), TIME_WAIT, LAST_ACK or CLOSING (both
/// ends closed their side). A half-closed connection (CLOSE_WAIT, FIN_WAIT)
/// stays in service: data may still flow one way. A waiting connection whose
/// socket goes (a local client killed in SYN_SENT) leaves the line.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference: a copy of the value would go on the BPF stack"
)]
#[inline(always)]
fn left(key: &FlowKey, new_state: u32) {
    if !matches!(new_state, TCP_CLOSE | TCP_TIME_WAIT | TCP_LAST_ACK | TCP_CLOSING) {
        return;
    }
    let Some(entry) = CONN_GATES.get_ptr(key) else { return };
    // SAFETY: a live map value, readable for this run (RCU) even once removed.
    let state = unsafe { (*entry).state };
    if state == GATE_REJECT {
        return;
    }
    // Only the one who removes the entry counts (the daemon may admit it meanwhile).
    if CONN_GATES.remove(key).is_err() {
        return;
    }
    // SAFETY: as above.
    let Some(counts) = CONN_KERNEL.get_ptr_mut(unsafe { &(*entry).instance }) else { return };
    // SAFETY: a live map value.
    unsafe {
        if state == GATE_WAITING {
            add(&raw mut (*counts).abandoned, 1);
        } else {
            add(&raw mut (*counts).released, 1);
        }
    }
}

#[sock_ops]
pub fn conn_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if !matches!(op, OP_TCP_CONNECT | OP_ACTIVE_ESTABLISHED | OP_PASSIVE_ESTABLISHED | OP_STATE) {
        return 1;
    }
    let Some(key) = sock_key(&ctx) else { return 1 };
    match op {
        // A local client's SYN_SENT socket: watch it, so a client killed
        // while it waits is seen leaving the line.
        OP_TCP_CONNECT => {
            let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        OP_ACTIVE_ESTABLISHED | OP_PASSIVE_ESTABLISHED => established(&ctx, &key),
        _ => left(&key, ctx.arg(1)),
    }
    1
}
