//! The per-packet path shared by the egress (and later ingress) classifiers.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns, programs::TcContext};
use aya_log_ebpf::debug;
use shaper_common::{
    class_stats_index, classid_of, FlowKey, FlowValue, CLASS_DEFAULT, ERR_FLOW_INSERT, ERR_NO_IFACE,
    ORIGIN_KERNEL, TARGET_VERDICT,
};

use crate::{
    maps::{count_error, CLASS_STATS, FLOWS, IFACES, SETTINGS},
    packet::{flow_key, Side},
    rules, TC_ACT_UNSPEC,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Egress,
}

/// Maps a rule-table verdict to a flow's class (`CLASS_DEFAULT` for "no match").
#[inline(always)]
fn verdict_class(verdict: u16) -> u16 {
    if verdict == shaper_common::TARGET_DEFAULT || verdict < TARGET_VERDICT {
        CLASS_DEFAULT
    } else {
        verdict & !TARGET_VERDICT
    }
}

#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // SAFETY: the pointer comes from a live map value; the atomic add keeps
    // concurrent CPUs from losing each other's updates.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// The class of the flow `key`, creating its flow entry on first sight.
#[inline(always)]
fn flow_class(ctx: &TcContext, key: &FlowKey, len: u64) -> u16 {
    let rules_gen = SETTINGS.get(0).map(|s| s.rules_gen).unwrap_or(0);
    // SAFETY: helper without side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a value pointer from the map, valid for this program run.
        let flow = unsafe { &mut *flow };
        if flow.origin == ORIGIN_KERNEL && flow.rules_gen != rules_gen {
            flow.class = verdict_class(rules::evaluate(key, rules_gen));
            flow.rules_gen = rules_gen;
        }
        flow.last_seen_ns = now;
        add(&mut flow.tx_bytes, len);
        add(&mut flow.tx_packets, 1);
        return flow.class;
    }
    let class = verdict_class(rules::evaluate(key, rules_gen));
    debug!(ctx, "new flow proto {} lport {} rport {}: class {}", key.proto, key.lport, key.rport, class);
    let flow = FlowValue {
        class,
        origin: ORIGIN_KERNEL,
        rules_gen,
        last_seen_ns: now,
        tx_bytes: len,
        tx_packets: 1,
        ..FlowValue::default()
    };
    // Another CPU may have inserted the same flow meanwhile (EEXIST): fine, same verdict.
    if let Err(e) = FLOWS.insert(key, flow, BPF_NOEXIST as u64) {
        if e != -17 {
            count_error(ERR_FLOW_INSERT);
        }
    }
    class
}

#[inline(always)]
pub(crate) fn classify(ctx: &TcContext, _direction: Direction) -> i32 {
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: read-only use of a value the daemon writes rarely.
    let Some(iface) = (unsafe { IFACES.get(ifindex) }) else {
        count_error(ERR_NO_IFACE);
        return TC_ACT_UNSPEC;
    };
    let len = ctx.len() as u64;
    let mut class = match flow_key(ctx, iface.l2_len as usize, Side::SourceLocal) {
        Some(key) => flow_class(ctx, &key, len),
        None => CLASS_DEFAULT,
    };
    if class == CLASS_DEFAULT || !iface.has_class(class as u32) {
        class = iface.default_class;
    }
    if let Some(stats) = CLASS_STATS.get_ptr_mut(class_stats_index(iface.slot, class as u32)) {
        // SAFETY: per-CPU slot, written only by this CPU.
        let stats = unsafe { &mut *stats };
        stats.tx_bytes += len;
        stats.tx_packets += 1;
    }
    // SAFETY: tc programs may write skb->priority; HTB reads it as the class id.
    unsafe { (*ctx.skb.skb).priority = classid_of(class as u32) };
    TC_ACT_UNSPEC
}
