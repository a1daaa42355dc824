//! The time stamped on a flow at each packet (`FlowValue::last_seen_ns`),
//! without a helper call per packet.
//!
//! `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) only moves at the
//! timer tick, like jiffies, and the verifier turns `bpf_jiffies64` into a
//! plain load. So each CPU keeps the coarse time it read at the current
//! jiffy and calls the helper again only when jiffies moves: the stamp is the
//! same coarse clock the daemon reads (`procscan::monotonic_coarse_ns`), at
//! most a tick or so behind, which the staleness test (idle longer than the
//! scan interval, at least 100 ms) cannot notice.

use aya_ebpf::{
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};

/// This CPU's last reading.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Reading {
    jiffies: u64,
    coarse_ns: u64,
}

#[map]
static CLOCK: PerCpuArray<Reading> = PerCpuArray::with_max_entries(1, 0);

/// CLOCK_MONOTONIC_COARSE, in ns.
#[inline(always)]
pub(crate) fn coarse_ns() -> u64 {
    // SAFETY: helper without arguments or side effects (inlined to a load).
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(reading) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: as below.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot, used by no one else while the program runs.
    let reading = unsafe { &mut *reading };
    if reading.jiffies != jiffies {
        reading.jiffies = jiffies;
        // SAFETY: helper without arguments or side effects.
        reading.coarse_ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    reading.coarse_ns
}
