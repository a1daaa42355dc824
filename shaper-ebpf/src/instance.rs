//! Limits per instance: the HTB leaf of a packet whose class has `per` (see
//! `shaper_common::instances`). A flow remembers its slot in FLOW_INSTANCES;
//! until the daemon has made its instance's leaf, its packets go to the
//! class's shared leaf and the flow is reported once.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::TcContext,
};
use shaper_common::{
    instances::{instance_minor, shared_minor, FlowInstance, InstanceKey, MAX_INSTANCES, PER_NONE},
    Direction, FlowEvent, FlowKey, Owner, ERR_EVENT_LOST, EVENT_INSTANCE, EVENT_OWNER, HTB_LEAF_MINOR_BASE,
};

use crate::{
    listen::listener_ref,
    maps::{count_error, EVENTS, FLOW_INSTANCES, INSTANCES, INSTANCE_SLOTS, INSTANCE_STATS, OWNERS},
};

/// The owner of the packet's socket (egress), or of the local port it belongs to.
#[inline(always)]
pub(crate) fn owner_of(
    ctx: &TcContext,
    direction: Direction,
    key: &FlowKey,
) -> (Option<&'static Owner>, u64) {
    if direction == Direction::Egress {
        // SAFETY: helper on the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
        if cookie != 0 {
            // SAFETY: read-only look at a map value.
            if let Some(owner) = unsafe { OWNERS.get(cookie) } {
                return (Some(owner), cookie);
            }
        }
        return (listener_ref(key), cookie);
    }
    (listener_ref(key), 0)
}

/// Tells the daemon that a flow of `class` has an instance with no leaf yet.
#[inline(always)]
fn report(key: &FlowKey, class: u16, owner: Option<&Owner>, cookie: u64) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count_error(ERR_EVENT_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved ring-buffer slot of the right size;
    // every field is written before the slot is submitted.
    unsafe {
        (*event).key = *key;
        match owner {
            Some(owner) => {
                (*event).owner = *owner;
                (*event).flags = EVENT_INSTANCE | EVENT_OWNER;
            }
            None => {
                (*event).owner = Owner::default();
                (*event).flags = EVENT_INSTANCE;
            }
        }
        (*event).cookie = cookie;
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).class = class;
        (*event)._pad = 0;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}

/// Whether slot `slot` is live and belongs to `class`.
#[inline(always)]
fn live(slot: u32, class: u16) -> bool {
    slot < MAX_INSTANCES && INSTANCE_SLOTS.get(slot).is_some_and(|s| s.class_plus_one == u32::from(class) + 1)
}

#[inline(always)]
fn count(slot: u32, direction: Direction, len: u64) {
    if let Some(stats) = INSTANCE_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, written only by this CPU.
        let stats = unsafe { &mut *stats };
        match direction {
            Direction::Egress => stats.tx_bytes += len,
            Direction::Ingress => stats.rx_bytes += len,
        }
    }
}

/// Slot + 1 of the instance whose leaf is HTB minor `minor` (0: not an instance's).
#[inline(always)]
pub(crate) fn slot_plus_one(minor: u32) -> u64 {
    let first = instance_minor(0);
    if minor >= first && minor < first + MAX_INSTANCES {
        u64::from(minor - first) + 1
    } else {
        0
    }
}

/// The HTB minor of a packet of class `class` (whose `per` mode is `per`)
/// on flow `key` (`None`: not parsed).
#[inline(always)]
pub(crate) fn leaf_minor(
    ctx: &TcContext,
    direction: Direction,
    class: u16,
    per: u8,
    key: Option<&FlowKey>,
    len: u64,
) -> u32 {
    let own = HTB_LEAF_MINOR_BASE + u32::from(class);
    if per == PER_NONE {
        return own;
    }
    let shared = shared_minor(u32::from(class));
    let Some(key) = key else { return shared };
    let cached = FLOW_INSTANCES.get_ptr_mut(key);
    let mut reported = 0;
    if let Some(cached) = cached {
        // SAFETY: a value pointer from the map, valid for this program run.
        let cached = unsafe { &mut *cached };
        if cached.slot_plus_one != 0 && live(cached.slot_plus_one - 1, class) {
            let slot = cached.slot_plus_one - 1;
            count(slot, direction, len);
            return instance_minor(slot);
        }
        reported = cached.reported;
    }
    let (owner, cookie) = owner_of(ctx, direction, key);
    let Some(instance) = InstanceKey::of(class, per, key, owner) else { return shared };
    // SAFETY: read-only look at a map value.
    let found = unsafe { INSTANCES.get(instance) }.copied();
    match found {
        Some(slot) if live(slot, class) => {
            let _ = FLOW_INSTANCES.insert(key, FlowInstance { slot_plus_one: slot + 1, reported: 0 }, 0);
            count(slot, direction, len);
            instance_minor(slot)
        }
        _ => {
            if reported == 0 {
                let _ = FLOW_INSTANCES.insert(key, FlowInstance { slot_plus_one: 0, reported: 1 }, 0);
                report(key, class, owner, cookie);
            }
            shared
        }
    }
}
