//! Refusing the new connections of a class whose quota blocks (`then =
//! "block"`, used up): the connect hooks decide the class a connection would
//! get, from what is known when the process calls connect() — its process,
//! user and cgroup, and the destination — and answer EPERM when that class
//! is blocked.
//!
//! Only while some quota blocks (the QUOTA_ANY_BLOCKED gate is present) is a
//! connection decided here at all. The local address and port are not known
//! yet (they are 0 for the rules); a connection whose verdict waits for the
//! daemon, or that falls to an interface's default class, is let through
//! (its packets are dropped by the classifier if its class blocks). A hook
//! whose evaluation another task on the same CPU interrupted (and overwrote)
//! lets the connection through too: fail open.

use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
};
use shaper_common::{
    FlowKey, Owner, QuotaKey, CLASS_DEFAULT, FAMILY_V4, GATE_BLOCKED, QUOTA_ANY_BLOCKED, QUOTA_CLASS_WIDE,
};

use crate::{
    maps::{HOOK_SCRATCH, HOOK_TOKEN, QUOTA_GATES, SETTINGS},
    rules::{self, verdict_class, Walk, CGROUP_LEVELS},
};

/// Whether `key`'s class blocks.
#[inline(always)]
fn blocks(key: &QuotaKey) -> bool {
    // SAFETY: read-only look at a map value.
    unsafe { QUOTA_GATES.get(key) }.is_some_and(|g| g.flags & GATE_BLOCKED != 0)
}

/// The destination of a connect() (`user_ip4`/`user_ip6`, `user_port`, both
/// in network byte order) as a flow key with unknown local end.
#[inline(always)]
pub(crate) fn destination(family: u8, proto: u8, ip4: u32, ip6: [u32; 4], port: u32) -> FlowKey {
    let mut key = FlowKey { family, proto, rport: u16::from_be(port as u16), ..FlowKey::default() };
    if family == FAMILY_V4 {
        key.raddr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        let mut i = 0;
        while i < 4 {
            key.raddr[i * 4..i * 4 + 4].copy_from_slice(&ip6[i].to_ne_bytes());
            i += 1;
        }
    }
    key
}

/// Whether a connect() to `key` by `owner` must be refused.
#[inline(always)]
pub(crate) fn refused(key: &FlowKey, owner: &Owner) -> bool {
    if !blocks(&QUOTA_ANY_BLOCKED) {
        return false;
    }
    let rules_gen = SETTINGS.get(0).map_or(0, |s| s.rules_gen);
    let (Some(facts), Some(token)) = (HOOK_SCRATCH.get_ptr_mut(0), HOOK_TOKEN.get_ptr_mut(0)) else {
        return false;
    };
    // SAFETY: helpers without preconditions.
    let me = unsafe { bpf_get_current_pid_tgid() ^ bpf_ktime_get_ns() };
    // SAFETY: this CPU's slots; another task may take them meanwhile, which
    // the token check below detects.
    unsafe {
        *token = me;
        (*facts).owner = *owner;
        (*facts).has_owner = 1;
        (*facts).cgroup = owner.cgroup_id;
        (*facts).has_cgroup = 1;
        (*facts).rules_gen = rules_gen;
        let mut level = 0;
        while level < CGROUP_LEVELS {
            (*facts).ancestors[level] = bpf_get_current_ancestor_cgroup_id(level as i32);
            level += 1;
        }
    }
    let mut walk = Walk::new(key);
    let (verdict, provisional) = rules::evaluate::<rules::Hook>(&mut walk, rules_gen);
    // SAFETY: as above.
    if unsafe { *token } != me || provisional {
        return false;
    }
    let class = verdict_class(verdict);
    class != CLASS_DEFAULT
        && blocks(&QuotaKey { class: u32::from(class), _pad: 0, instance: QUOTA_CLASS_WIDE })
}
