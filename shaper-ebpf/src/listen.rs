//! LISTENERS' bookkeeping: which entry each bound socket holds (so that its
//! release removes it at once) and how many each user holds (so that no one
//! user can fill the map: at most `MAX_LISTENERS_PER_UID`, root excepted).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::HashMap};
use shaper_common::{
    FlowKey, ListenKey, Owner, ERR_LISTENER_CAP, ERR_OWNER_INSERT, MAX_LISTENERS, MAX_LISTENERS_PER_UID,
    MAX_LISTEN_UIDS,
};

use crate::maps::{count_error, LISTENERS, SETTINGS};

/// The owner of the port `key` is bound to locally, in the shaped interfaces'
/// network namespace (see `ListenKey::accepting`).
#[inline(always)]
pub(crate) fn listener(key: &FlowKey) -> Option<Owner> {
    listener_ref(key).copied()
}

/// The same, in place in the map (no copy of a maybe-absent value, which the
/// verifier may see as a read of an unset register).
#[inline(always)]
pub(crate) fn listener_ref(key: &FlowKey) -> Option<&'static Owner> {
    let netns = SETTINGS.get(0).map_or(0, |s| s.netns);
    let [exact, wildcard, dual] = ListenKey::accepting(key, netns);
    // SAFETY: read-only looks at map values.
    unsafe { LISTENERS.get(exact).or_else(|| LISTENERS.get(wildcard)).or_else(|| LISTENERS.get(dual)) }
}

/// Bound socket cookie → the LISTENERS key it holds.
#[map]
static BOUND: HashMap<u64, ListenKey> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// uid → how many LISTENERS entries its sockets hold.
#[map]
static LISTEN_COUNTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LISTEN_UIDS, 0);

/// Adds `delta` (1, or `u32::MAX` for −1) to `uid`'s count.
#[inline(always)]
fn adjust(uid: u32, delta: u32) {
    if let Some(count) = LISTEN_COUNTS.get_ptr_mut(uid) {
        // SAFETY: a live map value; the atomic add keeps concurrent binds' updates.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, delta) };
    } else if delta == 1 && LISTEN_COUNTS.insert(uid, 1, BPF_NOEXIST as u64).is_err() {
        // Another CPU made the entry meanwhile (or the map is full).
        if let Some(count) = LISTEN_COUNTS.get_ptr_mut(uid) {
            // SAFETY: as above.
            unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, 1) };
        }
    }
}

/// Records `owner` (whose `cookie` is the bound socket) as the owner of `key`,
/// unless its user holds its share already.
#[inline(always)]
pub(crate) fn record(key: &ListenKey, owner: &Owner) {
    // SAFETY: read-only looks at map values.
    let held = unsafe { LISTEN_COUNTS.get(owner.uid) }.copied().unwrap_or(0);
    if owner.uid != 0 && held >= MAX_LISTENERS_PER_UID {
        count_error(ERR_LISTENER_CAP);
        return;
    }
    // A socket that held the key before (SO_REUSEPORT) gives it up.
    // SAFETY: as above.
    if let Some((uid, cookie)) = unsafe { LISTENERS.get(key) }.map(|o| (o.uid, o.cookie)) {
        let _ = BOUND.remove(cookie);
        adjust(uid, u32::MAX);
    }
    if LISTENERS.insert(key, owner, 0).is_err() {
        count_error(ERR_OWNER_INSERT);
        return;
    }
    if BOUND.insert(owner.cookie, key, 0).is_err() {
        // Its release could not find it: better no record than one that stays.
        let _ = LISTENERS.remove(key);
        count_error(ERR_OWNER_INSERT);
        return;
    }
    adjust(owner.uid, 1);
}

/// Forgets what socket `cookie` holds in LISTENERS, if anything (at its release).
#[inline(always)]
pub(crate) fn release(cookie: u64) {
    // SAFETY: read-only looks at map values.
    let Some(key) = unsafe { BOUND.get(cookie) }.copied() else { return };
    let _ = BOUND.remove(cookie);
    // SAFETY: as above.
    if let Some(uid) = unsafe { LISTENERS.get(key) }.filter(|o| o.cookie == cookie).map(|o| o.uid) {
        let _ = LISTENERS.remove(key);
        adjust(uid, u32::MAX);
    }
}
