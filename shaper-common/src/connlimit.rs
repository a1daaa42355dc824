//! Connection limits (`max_connections`): at most N TCP connections of a class
//! (or of each of its instances) in service at once; the others wait in line.
//!
//! The classifier gates only pure SYNs (SYN set, ACK clear) of a class with a
//! limit. A SYN that finds a free slot (and nobody waiting) takes it and
//! passes; any other is recorded in CONN_GATES (the tuple, WAITING, with the
//! SYN's bytes) and dropped. The daemon admits the waiting ones, oldest first,
//! by marking them GRANTED and sending the recorded SYN again through a raw
//! socket; it refuses them (reject mode, queue_timeout) with a RST sent on
//! the peer's behalf. sock_ops turns a GRANTED tuple IN_SERVICE once it is
//! established, and releases its slot when it leaves service.
//!
//! Every counter has one writer: [`ConnKernel`] is written by the programs
//! (atomic adds), [`ConnDaemon`] by the daemon. In service and waiting are
//! derived from both ([`in_service`], [`waiting`]) the same way on both sides.

use crate::{instances::InstanceKey, FlowKey};

/// Entries of CONN_GATES: connections gated (waiting, granted, in service) at once.
pub const MAX_GATED: u32 = 65_536;
/// Entries of CONN_KERNEL and CONN_DAEMON: classes and instances with a limit.
pub const MAX_CONN_COUNTERS: u32 = 16_384;
/// The SYN bytes kept (IP header and TCP header with options; a SYN has no payload).
pub const SYN_BYTES: usize = 128;

/// [`GateEntry::state`]: dropped, waiting for a slot.
pub const GATE_WAITING: u8 = 1;
/// A slot is taken; not established yet.
pub const GATE_GRANTED: u8 = 2;
/// Established: the connection is in service.
pub const GATE_IN_SERVICE: u8 = 3;
/// Over the limit in reject mode: the daemon sends the RST and forgets it.
pub const GATE_REJECT: u8 = 4;

/// [`GateEntry::direction`]: an inbound connection (the SYN arrived).
pub const GATE_INBOUND: u8 = 1;
/// An outbound connection (the SYN left).
pub const GATE_OUTBOUND: u8 = 2;

/// [`ConnLimit::mode`]: excess connections wait.
pub const ON_LIMIT_QUEUE: u32 = 0;
/// Excess connections are refused at once.
pub const ON_LIMIT_REJECT: u32 = 1;

/// A class's limit (CONN_LIMITS, an array of `MAX_CLASSES`), written by the
/// daemon; `max == 0`: no limit (the class is not gated).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnLimit {
    pub max: u32,
    /// `ON_LIMIT_*`.
    pub mode: u32,
}
const _: () = assert!(core::mem::size_of::<ConnLimit>() == 8);

/// A gated connection (CONN_GATES: [`FlowKey`] → this).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateEntry {
    /// `GATE_WAITING` … `GATE_REJECT`.
    pub state: u8,
    /// `GATE_INBOUND` or `GATE_OUTBOUND`.
    pub direction: u8,
    /// Bytes of `syn` in use.
    pub syn_len: u16,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns of the first SYN seen.
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC ns of the last SYN seen (waiting), or of the grant.
    pub last_ns: u64,
    /// The class (and instance) whose slot it waits for or holds.
    pub instance: InstanceKey,
    /// The SYN as it left or arrived, from its IP header on.
    pub syn: [u8; SYN_BYTES],
}
const _: () = assert!(core::mem::size_of::<GateEntry>() == 24 + 48 + SYN_BYTES);

impl Default for GateEntry {
    fn default() -> Self {
        Self {
            state: 0,
            direction: 0,
            syn_len: 0,
            _pad: 0,
            first_seen_ns: 0,
            last_ns: 0,
            instance: InstanceKey { class: 0, per: 0, _pad: [0; 5], data: [0; 40] },
            syn: [0; SYN_BYTES],
        }
    }
}

/// What the programs counted for a class or instance (CONN_KERNEL:
/// [`InstanceKey`] → this), by atomic adds only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnKernel {
    /// Slots taken at the SYN (a free slot, nobody waiting).
    pub granted_fast: u64,
    /// Slots given back (closed, reset, killed).
    pub released: u64,
    /// SYNs that started waiting.
    pub held: u64,
    /// Waiting connections whose socket went away (a local client killed).
    pub abandoned: u64,
    /// SYNs refused at once (reject mode).
    pub rejected: u64,
}
const _: () = assert!(core::mem::size_of::<ConnKernel>() == 40);

/// What the daemon counted for a class or instance (CONN_DAEMON), written by it only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnDaemon {
    /// Waiting connections given a slot.
    pub granted_queued: u64,
    /// Waiting connections that left the line (admitted or timed out).
    pub dequeued: u64,
    /// Waiting connections refused at `queue_timeout`.
    pub timed_out: u64,
    /// Granted slots never established, given back by the daemon.
    pub reaped: u64,
}
const _: () = assert!(core::mem::size_of::<ConnDaemon>() == 32);

/// Connections in service (slots taken): never below 0 even while the two
/// writers' counts pass each other.
#[inline(always)]
pub fn in_service(k: &ConnKernel, d: &ConnDaemon) -> u64 {
    (k.granted_fast.wrapping_add(d.granted_queued))
        .saturating_sub(k.released.wrapping_add(d.reaped))
        .min(u64::from(u32::MAX))
}

/// Connections waiting.
#[inline(always)]
pub fn waiting(k: &ConnKernel, d: &ConnDaemon) -> u64 {
    k.held.saturating_sub(d.dequeued.wrapping_add(k.abandoned)).min(u64::from(u32::MAX))
}

/// The key of a class-wide limit (a class without `per`, or a connection
/// whose instance is not known): the class with `per` and data zero.
#[inline(always)]
pub const fn class_wide(class: u16) -> InstanceKey {
    InstanceKey { class, per: 0, _pad: [0; 5], data: [0; 40] }
}

/// The flow key a gate entry is kept under is the classifier's ([`FlowKey`]:
/// local end first). Its size, for the maps' layout checks.
pub const GATE_KEY_BYTES: usize = core::mem::size_of::<FlowKey>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_derive_without_going_negative() {
        let k = ConnKernel { granted_fast: 3, released: 4, held: 5, abandoned: 1, rejected: 0 };
        let d = ConnDaemon { granted_queued: 2, dequeued: 2, timed_out: 0, reaped: 0 };
        assert_eq!(in_service(&k, &d), 1);
        assert_eq!(waiting(&k, &d), 2);
        let d = ConnDaemon { granted_queued: 0, dequeued: 9, ..d };
        assert_eq!(in_service(&k, &d), 0);
        assert_eq!(waiting(&k, &d), 0);
    }
}
