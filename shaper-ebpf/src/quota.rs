//! Quotas on the packet path: each packet of a class with a quota is counted
//! in QUOTA_USAGE, and a quota that blocks (`then = "block"`) drops the
//! packet that would take its class past the limit, and all after it.
//!
//! This is the one place where shaper drops packets by design: the operator
//! asked for a class to stop once its allowance is used. Everything else
//! fails open.
//!
//! A class with `per` has a quota per instance: a packet in an instance's
//! leaf is judged against the instance's entry (`QuotaKey::instance` = its
//! slot + 1, written by the daemon when it makes the leaf) and also added to
//! the class's entry, which for such a class is the class total and never
//! acts (the daemon writes it no block flags).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use shaper_common::{
    Direction, QuotaKey, QuotaUsage, GATE_BLOCKED, GATE_BLOCK_AT_LIMIT, QUOTA_CLASS_WIDE, QUOTA_EGRESS,
    QUOTA_INGRESS,
};

use crate::maps::{QUOTA_GATES, QUOTA_USAGE};

#[inline(always)]
fn add(counter: *mut u64, n: u64) {
    // SAFETY: the pointer comes from a live map value; the atomic add keeps
    // concurrent CPUs from losing each other's updates.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Counts a packet of `len` bytes of class `class` (in instance slot
/// `slot_plus_one - 1`, 0: none) against its quota, if it has one; true when
/// the packet must be dropped (the quota blocks and is used up).
#[inline(always)]
pub(crate) fn account(class: u32, slot_plus_one: u64, direction: Direction, len: u64) -> bool {
    let key = QuotaKey { class, _pad: 0, instance: QUOTA_CLASS_WIDE };
    let Some(total) = QUOTA_USAGE.get_ptr_mut(key) else { return false };
    if slot_plus_one != QUOTA_CLASS_WIDE {
        let own = QuotaKey { class, _pad: 0, instance: slot_plus_one };
        if let Some(usage) = QUOTA_USAGE.get_ptr_mut(own) {
            if judge_and_count(own, usage, direction, len) {
                return true;
            }
            // The class total: counted, never judged.
            let bit = bit_of(direction);
            // SAFETY: read-only look at a map value.
            let counted =
                unsafe { QUOTA_GATES.get(key) }.map_or(QUOTA_EGRESS | QUOTA_INGRESS, |g| g.directions);
            if counted & bit != 0 {
                add(counter_of(total, direction), len);
            }
            return false;
        }
    }
    judge_and_count(key, total, direction, len)
}

#[inline(always)]
fn bit_of(direction: Direction) -> u32 {
    match direction {
        Direction::Egress => QUOTA_EGRESS,
        Direction::Ingress => QUOTA_INGRESS,
    }
}

#[inline(always)]
fn counter_of(usage: *mut QuotaUsage, direction: Direction) -> *mut u64 {
    // SAFETY: a value pointer from the map, valid for this program run.
    unsafe {
        match direction {
            Direction::Egress => &raw mut (*usage).egress_bytes,
            Direction::Ingress => &raw mut (*usage).ingress_bytes,
        }
    }
}

/// Counts a packet against the quota `key` (its counters at `usage`); true
/// when it must be dropped.
#[inline(always)]
fn judge_and_count(key: QuotaKey, usage: *mut QuotaUsage, direction: Direction, len: u64) -> bool {
    let bit = bit_of(direction);
    // SAFETY: read-only look at a map value.
    let gate = unsafe { QUOTA_GATES.get(key) }.copied();
    let counted = gate.map_or(QUOTA_EGRESS | QUOTA_INGRESS, |g| g.directions);
    // SAFETY: a value pointer from the map, valid for this program run; the
    // reads may race with other CPUs' adds, which only makes the check late
    // by their packets.
    let used = unsafe {
        let mut used = 0;
        if counted & QUOTA_EGRESS != 0 {
            used += (*usage).egress_bytes;
        }
        if counted & QUOTA_INGRESS != 0 {
            used += (*usage).ingress_bytes;
        }
        used
    };
    let mine = if counted & bit != 0 { len } else { 0 };
    if let Some(gate) = gate {
        let blocked = gate.flags & GATE_BLOCKED != 0
            || (gate.flags & GATE_BLOCK_AT_LIMIT != 0
                && (used >= gate.limit_bytes || used + mine > gate.limit_bytes));
        if blocked {
            // SAFETY: as above.
            add(unsafe { &raw mut (*usage).dropped_bytes }, len);
            return true;
        }
    }
    if mine != 0 {
        add(counter_of(usage, direction), len);
    }
    false
}
