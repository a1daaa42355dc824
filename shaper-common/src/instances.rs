//! Limits per instance (`per = "user" | "program" | "unit" | "cgroup" |
//! "connection"`): every distinct user, program name, cgroup or connection in
//! a class gets its own HTB leaf under the class, which becomes an inner node.
//!
//! The classifier keys an instance by [`InstanceKey`] (class and what tells
//! instances apart) and finds its slot in INSTANCES; a slot `s` is the HTB
//! leaf `1:(INSTANCE_MINOR_BASE + s)` under the class. On a miss the packet
//! goes to the class's shared leaf (`1:(SHARED_MINOR_BASE + class)`) and the
//! flow is reported once (`EVENT_INSTANCE`); the daemon creates the leaf and
//! the map entry, and the flow's next packets find it. The same key function
//! ([`InstanceKey::of`]) runs in the kernel and in the daemon.

use crate::{FlowKey, Owner, MAX_CLASSES};

/// [`ClassMode::per`]: no instances (the class is one leaf).
pub const PER_NONE: u8 = 0;
/// One instance per real uid.
pub const PER_USER: u8 = 1;
/// One instance per process name (comm).
pub const PER_PROGRAM: u8 = 2;
/// One instance per systemd unit: the kernel keys by cgroup, the daemon maps
/// the cgroups of one unit to one slot.
pub const PER_UNIT: u8 = 3;
/// One instance per cgroup.
pub const PER_CGROUP: u8 = 4;
/// One instance per connection (flow).
pub const PER_CONNECTION: u8 = 5;

/// Instance slots (leaves) there are, over all classes: the size of
/// INSTANCES, INSTANCE_SLOTS and INSTANCE_STATS.
pub const MAX_INSTANCES: u32 = 4096;
/// Instances one class may hold at once; further ones share the class's
/// shared leaf (counted as `instance_cap` by the daemon).
pub const MAX_INSTANCES_PER_CLASS: u32 = 1024;

/// HTB minor of class index `c`'s shared leaf (instances not known yet, or
/// over the cap): `0x800 + c`.
pub const SHARED_MINOR_BASE: u32 = 0x800;
/// HTB minor of instance slot `s`: `0x1000 + s`.
pub const INSTANCE_MINOR_BASE: u32 = 0x1000;
const _: () = assert!(SHARED_MINOR_BASE >= crate::HTB_LEAF_MINOR_BASE + MAX_CLASSES);
const _: () = assert!(INSTANCE_MINOR_BASE >= SHARED_MINOR_BASE + MAX_CLASSES);
const _: () = assert!(INSTANCE_MINOR_BASE + MAX_INSTANCES <= 0xffff);

/// HTB minor of the shared leaf of class index `class`.
#[inline(always)]
pub const fn shared_minor(class: u32) -> u32 {
    SHARED_MINOR_BASE + class
}

/// HTB minor of instance slot `slot`.
#[inline(always)]
pub const fn instance_minor(slot: u32) -> u32 {
    INSTANCE_MINOR_BASE + slot
}

/// What the classifier needs about a class (CLASS_MODES, an array of
/// [`MAX_CLASSES`]), written by the daemon before the classifier can meet
/// the class: its `per` mode, and which per-packet work the class needs
/// (`MODE_*` bits), so that a class without a quota pays no quota lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClassMode {
    /// One of the `PER_*` constants.
    pub per: u8,
    /// `MODE_*` bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}
/// [`ClassMode::flags`]: the class has a quota (QUOTA_USAGE has its entry).
pub const MODE_QUOTA: u8 = 1;
const _: () = assert!(core::mem::size_of::<ClassMode>() == 4);

/// Key of INSTANCES: a class and what tells its instances apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    /// Class index.
    pub class: u16,
    /// [`ClassMode::per`] of the class.
    pub per: u8,
    pub _pad: [u8; 5],
    /// user: uid (4 bytes, host order); program: comm (16 bytes);
    /// unit and cgroup: the cgroup id (8 bytes, host order); connection: the
    /// flow key (40 bytes). Zero-padded.
    pub data: [u8; 40],
}
const _: () = assert!(core::mem::size_of::<InstanceKey>() == 48);

impl InstanceKey {
    /// The instance of a flow of class `class` with mode `per`, from the flow's
    /// key and its socket's owner (`None` when no owner is known: then only
    /// `connection` has an instance).
    #[inline(always)]
    pub fn of(class: u16, per: u8, flow: &FlowKey, owner: Option<&Owner>) -> Option<InstanceKey> {
        let mut key = InstanceKey { class, per, _pad: [0; 5], data: [0; 40] };
        match (per, owner) {
            (PER_CONNECTION, _) => {
                // SAFETY: FlowKey is repr(C), 40 bytes, no implicit padding.
                key.data = unsafe { core::mem::transmute::<FlowKey, [u8; 40]>(*flow) };
            }
            (PER_USER, Some(o)) => key.data[..4].copy_from_slice(&o.uid.to_ne_bytes()),
            (PER_PROGRAM, Some(o)) => key.data[..16].copy_from_slice(&o.comm),
            (PER_UNIT | PER_CGROUP, Some(o)) => key.data[..8].copy_from_slice(&o.cgroup_id.to_ne_bytes()),
            _ => return None,
        }
        Some(key)
    }
}

/// A live instance slot (INSTANCE_SLOTS, an array of [`MAX_INSTANCES`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InstanceSlot {
    /// Class index + 1 of the instance in the slot; 0 when the slot is free.
    pub class_plus_one: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<InstanceSlot>() == 8);

/// A flow's instance as the classifier last found it (FLOW_INSTANCES: flow key
/// → this, an LRU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowInstance {
    /// Slot + 1 of the flow's instance; 0 while it has none.
    pub slot_plus_one: u32,
    /// 1 once the flow reported its missing instance (reported once).
    pub reported: u32,
}
const _: () = assert!(core::mem::size_of::<FlowInstance>() == 8);

/// Bytes the classifier put into an instance (INSTANCE_STATS, a per-CPU
/// array of [`MAX_INSTANCES`]), as in [`crate::ClassStats`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InstanceStats {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<InstanceStats>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_mode() {
        let owner =
            Owner { uid: 1000, cgroup_id: 77, comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0", ..Owner::default() };
        let flow = FlowKey { lport: 5, rport: 6, ..FlowKey::default() };
        let user = InstanceKey::of(3, PER_USER, &flow, Some(&owner)).map(|k| (k.class, k.per, k.data));
        let mut data = [0u8; 40];
        data[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(user, Some((3, PER_USER, data)));
        assert_eq!(InstanceKey::of(3, PER_PROGRAM, &flow, Some(&owner)).map(|k| k.data[0]), Some(b'c'));
        assert_eq!(InstanceKey::of(3, PER_USER, &flow, None), None);
        assert!(InstanceKey::of(3, PER_CONNECTION, &flow, None).is_some());
        assert_eq!(InstanceKey::of(3, PER_NONE, &flow, Some(&owner)), None);
        assert_eq!(shared_minor(2), 0x802);
        assert_eq!(instance_minor(0), 0x1000);
    }
}
