//! Limits per instance: the daemon's table of the instances of classes with
//! `per` (see `shaper_common::instances` for the kernel's part).
//!
//! The order of a new instance: the classifier reports a flow whose instance
//! has no leaf (its packets meanwhile go to the class's shared leaf); here the
//! instance gets a free slot, a leaf under the class in every HTB tree that
//! has the class (egress and the IFB's), and only then its INSTANCES entry,
//! so the classifier never sends a packet to a leaf that is not there. Its
//! removal (idle for `instance_idle`, its class gone or changed) goes the other
//! way round: map entries first, then the leaves. Bounded: at most
//! `MAX_INSTANCES_PER_CLASS` per class and `MAX_INSTANCES` in all; a report
//! past either is counted (`capped`) and its traffic stays in the shared leaf.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use shaper_common::{
    instances::{instance_minor, InstanceKey, InstanceStats, MAX_INSTANCES, MAX_INSTANCES_PER_CLASS},
    Direction, FlowEvent, EVENT_OWNER,
};

use super::{effective, host::Host};
use crate::{
    accounts::{Accounts, SystemAccounts},
    config::{Config, Counted, Limit, Per},
    control::{InstanceCounters, InstanceRow},
    datapath::Datapath,
    plan::{self, PlannedClass, PlannedPer},
    tc,
};

/// One live instance.
struct Instance {
    class: u16,
    /// What tells it apart, as shown ("alice", "curl", "sshd.service", …).
    name: String,
    keys: Vec<InstanceKey>,
    /// Bytes at creation (the slot's counters are not reset) and last seen.
    base: InstanceStats,
    last: InstanceStats,
    active: Instant,
    idle: Duration,
}

/// The instance table.
#[derive(Default)]
pub struct Instances {
    slots: Vec<Option<Instance>>,
    by_name: HashMap<(u16, String), u32>,
    counters: InstanceCounters,
    accounts: SystemAccounts,
    /// Instances whose quota holds them to a rate: (class, name) → (counted directions, bits/s).
    held: HashMap<(u16, String), (Counted, u64)>,
}

/// The planned class `class` with `per`, on every tree that has it: (device, mtu, class, per, direction).
fn trees_of(host: &Host, class: u16) -> Vec<(u32, u32, PlannedClass, PlannedPer, Direction)> {
    let mut out = Vec::new();
    for shaped in host.shaped() {
        for (direction, plan, device) in shaped.trees() {
            if let Some(c) = plan.classes.iter().find(|c| c.index == class) {
                if let Some(per) = &c.per {
                    out.push((device, shaped.link.mtu, c.clone(), per.clone(), direction));
                }
            }
        }
    }
    out
}

/// `per`'s limits for an instance, held down by its quota (`held`) in the directions it counts.
fn limits_for(per: &PlannedPer, direction: Direction, held: Option<&(Counted, u64)>) -> PlannedPer {
    let Some(bps) = held.filter(|(counted, _)| counted.counts(direction)).map(|(_, bps)| *bps) else {
        return per.clone();
    };
    let limit = Limit { rate_bps: Some(per.rate_bps), ceil_bps: Some(per.ceil_bps) };
    let held = effective::throttled(Some(limit), bps);
    PlannedPer {
        rate_bps: held.rate_bps.unwrap_or(per.rate_bps),
        ceil_bps: held.ceil_bps.unwrap_or(per.ceil_bps),
        ..per.clone()
    }
}

/// What tells the instance of `event` apart, as shown.
fn instance_name(accounts: &SystemAccounts, per: Per, event: &FlowEvent) -> String {
    let owner = &event.owner;
    match per {
        Per::User => accounts.user_name(owner.uid).unwrap_or_else(|| owner.uid.to_string()),
        Per::Program => {
            let end = owner.comm.iter().position(|b| *b == 0).unwrap_or(owner.comm.len());
            String::from_utf8_lossy(&owner.comm[..end]).into_owned()
        }
        Per::Cgroup => {
            crate::cgroups::of_process(owner.tgid).unwrap_or_else(|| format!("cgroup {}", owner.cgroup_id))
        }
        Per::Unit => crate::cgroups::of_process(owner.tgid)
            .and_then(|path| {
                path.rsplit('/')
                    .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("cgroup {}", owner.cgroup_id)),
        Per::Connection => format!(
            "{} {} → {}",
            crate::flows::proto_name(event.key.proto),
            crate::flows::endpoint(&event.key, true),
            crate::flows::endpoint(&event.key, false)
        ),
    }
}

impl Instances {
    fn count_of(&self, class: u16) -> usize {
        self.slots.iter().flatten().filter(|i| i.class == class).count()
    }

    fn free_slot(&mut self) -> Option<u32> {
        if let Some(at) = self.slots.iter().position(Option::is_none) {
            return Some(at as u32);
        }
        (self.slots.len() < MAX_INSTANCES as usize).then(|| {
            self.slots.push(None);
            (self.slots.len() - 1) as u32
        })
    }

    /// The class and name of the instance in `slot`.
    pub fn named(&self, slot: u32) -> Option<(u16, String)> {
        self.slots.get(slot as usize)?.as_ref().map(|i| (i.class, i.name.clone()))
    }

    /// The slots of the live instances.
    pub fn live_slots(&self) -> Vec<u32> {
        self.slots.iter().enumerate().filter(|(_, i)| i.is_some()).map(|(slot, _)| slot as u32).collect()
    }

    /// Holds these instances (class, name) to their quota's rate from the
    /// next [`Instances::configure`] on, and no others.
    pub fn hold(&mut self, held: HashMap<(u16, String), (Counted, u64)>) {
        self.held = held;
    }

    /// A flow whose instance has no leaf yet (`EVENT_INSTANCE`); returns
    /// the slot of the instance it made.
    pub fn on_event(&mut self, host: &Host, datapath: &mut Datapath, event: &FlowEvent) -> Option<u32> {
        let trees = trees_of(host, event.class);
        let (_, _, _, per, _) = trees.first()?;
        let owner = (event.flags & EVENT_OWNER != 0).then_some(&event.owner);
        let key = InstanceKey::of(event.class, per.per.mode(), &event.key, owner)?;
        let name = instance_name(&self.accounts, per.per, event);
        if let Some(slot) = self.by_name.get(&(event.class, name.clone())).copied() {
            // Known (a report from before its entry was written, or another
            // cgroup of the same unit): one more key for the same leaf.
            if let Some(Some(instance)) = self.slots.get_mut(slot as usize) {
                if !instance.keys.contains(&key) {
                    instance.keys.push(key);
                }
                if let Err(e) = datapath.alias_instance(slot, &key) {
                    log::warn!("instance {name}: {}", crate::error_chain(&e));
                }
            }
            return None;
        }
        if self.count_of(event.class) >= MAX_INSTANCES_PER_CLASS as usize {
            self.counters.capped += 1;
            return None;
        }
        let Some(slot) = self.free_slot() else {
            self.counters.capped += 1;
            return None;
        };
        if let Err(e) = self.create(host, datapath, &trees, slot, key) {
            self.counters.failed += 1;
            log::warn!("instance {name} of class {}: {e}", event.class);
            return None;
        }
        let base = datapath.instance_stats(slot);
        let idle = per.idle;
        self.slots[slot as usize] = Some(Instance {
            class: event.class,
            name: name.clone(),
            keys: vec![key],
            base,
            last: base,
            active: Instant::now(),
            idle,
        });
        self.by_name.insert((event.class, name), slot);
        self.counters.created += 1;
        Some(slot)
    }

    /// The leaves of a new instance in `slot`, then its map entries.
    fn create(
        &self,
        host: &Host,
        datapath: &mut Datapath,
        trees: &[(u32, u32, PlannedClass, PlannedPer, Direction)],
        slot: u32,
        key: InstanceKey,
    ) -> Result<(), String> {
        let minor = instance_minor(slot);
        for (n, (device, mtu, class, per, _)) in trees.iter().enumerate() {
            let leaf = plan::instance_leaf(class, per, minor, *mtu);
            if let Err(e) = tc::add_leaf(host.netlink(), *device, &leaf) {
                for (device, ..) in &trees[..n] {
                    let _ = tc::delete_class(host.netlink(), *device, minor);
                }
                return Err(e.to_string());
            }
        }
        let class = trees.first().map_or(0, |t| t.2.index);
        datapath.open_instance(slot, class, &[key]).map_err(|e| crate::error_chain(&e))
    }

    /// Removes the instance in `slot`: map entries first, then its leaves.
    /// Returns its class and name.
    fn remove(&mut self, host: &Host, datapath: &mut Datapath, slot: u32) -> Option<(u16, String)> {
        let instance = self.slots.get_mut(slot as usize).and_then(Option::take)?;
        self.by_name.remove(&(instance.class, instance.name.clone()));
        if let Err(e) = datapath.close_instance(slot, &instance.keys) {
            log::warn!("removing instance {}: {}", instance.name, crate::error_chain(&e));
        }
        for shaped in host.shaped() {
            for (_, _, device) in shaped.trees() {
                // A tree without the class (or rebuilt since) has no such leaf: fine.
                let _ = tc::delete_class(host.netlink(), device, instance_minor(slot));
            }
        }
        self.counters.removed += 1;
        Some((instance.class, instance.name))
    }

    /// Removes the instances that have been idle for their class's
    /// `instance_idle`; notes which had traffic. Returns the removed ones.
    pub fn expire(&mut self, host: &Host, datapath: &mut Datapath) -> Vec<(u16, String)> {
        let now = Instant::now();
        let mut idle = Vec::new();
        for (slot, instance) in self.slots.iter_mut().enumerate() {
            let Some(instance) = instance else { continue };
            let bytes = datapath.instance_stats(slot as u32);
            if bytes != instance.last {
                instance.last = bytes;
                instance.active = now;
            } else if now.duration_since(instance.active) >= instance.idle {
                idle.push(slot as u32);
            }
        }
        idle.into_iter().filter_map(|slot| self.remove(host, datapath, slot)).collect()
    }

    /// Before a new config: removes the instances of classes that lose `per`
    /// or change it (their leaves would keep the class an inner node).
    /// Returns the removed ones.
    pub fn retire(&mut self, host: &Host, datapath: &mut Datapath, next: &Config) -> Vec<(u16, String)> {
        let ids = datapath.class_ids();
        let gone: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, i)| i.as_ref().map(|i| (slot as u32, i.class)))
            .filter(|(_, class)| {
                let now = trees_of(host, *class).first().map(|t| t.3.per);
                let name = ids.name(*class);
                let next = name.and_then(|n| next.class(n)).and_then(|c| c.per).map(|p| p.per);
                now.is_none() || now != next
            })
            .map(|(slot, _)| slot)
            .collect();
        gone.into_iter().filter_map(|slot| self.remove(host, datapath, slot)).collect()
    }

    /// After a config is in force: each instance's leaf brought to its
    /// class's current limits (the classifier's modes were written by the
    /// change itself, see `apply`).
    pub fn configure(&mut self, host: &Host) {
        for (slot, instance) in self.slots.iter_mut().enumerate() {
            let Some(instance) = instance else { continue };
            let held = self.held.get(&(instance.class, instance.name.clone()));
            for (device, mtu, class, per, direction) in trees_of(host, instance.class) {
                instance.idle = per.idle;
                let per = limits_for(&per, direction, held);
                let leaf = plan::instance_leaf(&class, &per, instance_minor(slot as u32), mtu);
                if let Err(e) = tc::change_leaf(host.netlink(), device, &leaf) {
                    log::warn!("instance {}: {e}", instance.name);
                }
            }
        }
    }

    /// Puts back the leaves of live instances that a rebuilt tree lacks (an
    /// IFB made again, an interface back with a new index).
    pub fn restore(&self, host: &Host) {
        let mut present: HashMap<u32, std::collections::HashSet<u32>> = HashMap::new();
        for (slot, instance) in self.slots.iter().enumerate() {
            let Some(instance) = instance else { continue };
            let minor = instance_minor(slot as u32);
            let held = self.held.get(&(instance.class, instance.name.clone()));
            for (device, mtu, class, per, direction) in trees_of(host, instance.class) {
                let per = limits_for(&per, direction, held);
                let classes = present.entry(device).or_insert_with(|| {
                    host.htb_stats(device)
                        .map(|s| s.keys().map(|id| id & 0xffff).collect())
                        .unwrap_or_default()
                });
                if classes.contains(&minor) {
                    continue;
                }
                let leaf = plan::instance_leaf(&class, &per, minor, mtu);
                match tc::add_leaf(host.netlink(), device, &leaf) {
                    Ok(()) => {
                        classes.insert(minor);
                    }
                    Err(e) => log::warn!("restoring instance {}: {e}", instance.name),
                }
            }
        }
    }

    /// Removes instance leaves an earlier daemon left (its instance table
    /// went with it; instances are found again on sight).
    pub fn clear_leftovers(&self, host: &Host) {
        for shaped in host.shaped() {
            for (_, _, device) in shaped.trees() {
                let Ok(stats) = host.htb_stats(device) else { continue };
                for classid in stats.keys() {
                    let minor = classid & 0xffff;
                    if classid >> 16 == shaper_common::HTB_MAJOR && minor >= instance_minor(0) {
                        let _ = tc::delete_class(host.netlink(), device, minor);
                    }
                }
            }
        }
    }

    /// The live instances of `class` on `device`, for `classes`.
    pub fn rows(
        &self,
        host: &Host,
        tree: (Direction, u32),
        class: u16,
        per: &PlannedPer,
    ) -> Vec<InstanceRow> {
        let (direction, device) = tree;
        let stats = host.htb_stats(device).unwrap_or_default();
        let mut rows: Vec<InstanceRow> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, i)| i.as_ref().filter(|i| i.class == class).map(|i| (slot as u32, i)))
            .map(|(slot, i)| {
                let classid = (shaper_common::HTB_MAJOR << 16) | instance_minor(slot);
                let per = limits_for(per, direction, self.held.get(&(i.class, i.name.clone())));
                InstanceRow {
                    key: i.name.clone(),
                    classid: tc::format_handle(classid),
                    rate_bps: per.rate_bps,
                    ceil_bps: per.ceil_bps,
                    bytes: match direction {
                        Direction::Egress => i.last.tx_bytes.saturating_sub(i.base.tx_bytes),
                        Direction::Ingress => i.last.rx_bytes.saturating_sub(i.base.rx_bytes),
                    },
                    sent_bytes: stats.get(&classid).map_or(0, |s| s.bytes),
                    rate_now_bps: host.rate_now(device, classid),
                    idle_s: i.active.elapsed().as_secs(),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Counters for `status`; `name` names a class index.
    pub fn counters(&self, name: impl Fn(u16) -> String) -> InstanceCounters {
        let mut by_class = std::collections::BTreeMap::new();
        for instance in self.slots.iter().flatten() {
            *by_class.entry(name(instance.class)).or_insert(0) += 1;
        }
        InstanceCounters {
            live: self.slots.iter().flatten().count() as u64,
            by_class,
            ..self.counters.clone()
        }
    }
}
