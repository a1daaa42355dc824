//! Bringing the host to a config: the one path for start-up, takeover of an
//! earlier daemon's state, `shaper reload` and `shaper set`.
//!
//! [`Shaper::converge`] first checks everything the new config needs (every
//! interface, its root qdisc, the rule table); an error there changes nothing.
//! Then, in an order where no packet ever meets a class that is not there yet:
//!
//! 1. HTB trees: classes changed in place and added (never rebuilt: queued
//!    packets and HTB's counters stay); IFBs created or taken over;
//! 2. the class names, the interface map, then the rule table, swapped in one
//!    write (the classifier sees the old table or the new one, never a mix);
//! 3. the classifier attached (or its pinned link updated in place);
//! 4. existing connections re-evaluated: the kernel redoes the ones it decided
//!    at their next packet (their rule generation is stale), the daemon redoes
//!    its own now;
//! 5. only then classes, IFBs and interfaces the config dropped are removed,
//!    and the counters of freed class indices zeroed.

use std::collections::{BTreeMap, HashMap, HashSet};

use shaper_common::{IfaceInfo, FLOW_PROVISIONAL, MAX_IFACES, ORIGIN_DAEMON, ORIGIN_KERNEL, ORIGIN_PINNED};

use super::{
    shaper::{ifb_name, l2_len, Ingress, Shaped, IFB_TXQUEUELEN},
    DaemonError, Shaper,
};
pub use crate::control::Changes;
use crate::{
    cgroups::Cgroups,
    config::{ClassConfig, Config},
    plan::{self, Direction, Plan},
    process::Needs,
    rules::compile::{Compiled, NoCgroups},
    tc::{self, Netlink},
};

/// One interface the config shapes, resolved on the host.
struct Target {
    link: tc::Link,
    egress: Plan,
    ingress: Option<Plan>,
    slot: u32,
}

fn compile(config: &Config, cgroups: &Option<Cgroups>) -> Result<Compiled, DaemonError> {
    match cgroups {
        Some(c) => config.compile_rules(c),
        None => config.compile_rules(&NoCgroups),
    }
    .map_err(|e| DaemonError::Rules(Box::new(e)))
}

/// The interface `name`, if shaper may shape it: its root qdisc must be the
/// kernel's default or shaper's own HTB (left by an earlier daemon).
fn resolve(nl: &Netlink, name: &str) -> Result<tc::Link, DaemonError> {
    let link = tc::link_by_name(nl, name)?.ok_or_else(|| DaemonError::NoInterface(name.to_string()))?;
    let root = tc::root_qdisc(nl, link.index)?;
    if let Some(q) = root.as_ref().filter(|q| !q.is_kernel_default() && !tc::is_shapers_root(q)) {
        return Err(DaemonError::ForeignQdisc {
            iface: name.to_string(),
            kind: q.kind.clone(),
            handle: tc::format_handle(q.handle),
        });
    }
    Ok(link)
}

/// An interface whose trees are in place: its link, map slot, egress plan
/// and ingress (IFB and plan).
type SyncedTarget = (tc::Link, u32, Plan, Option<Ingress>);

/// Checks a config against the host without changing anything.
pub(super) fn check(config: &Config, nl: &Netlink, cgroups: &Option<Cgroups>) -> Result<(), DaemonError> {
    for iface in &config.interfaces {
        resolve(nl, &iface.name)?;
    }
    compile(config, cgroups).map(|_| ())
}

/// Whether a class is shaped differently in `b` than in `a`.
fn differs(a: &ClassConfig, b: &ClassConfig) -> bool {
    a.egress != b.egress
        || a.ingress != b.ingress
        || a.priority != b.priority
        || a.rule_source != b.rule_source
        || a.interfaces != b.interfaces
}

impl Shaper {
    /// Brings the host to `new` (see the module documentation).
    pub(super) fn converge(&mut self, mut new: Config) -> Result<Changes, DaemonError> {
        // 0. Everything checked before anything changes.
        let previous_names = self.datapath.class_names();
        new.renumber(&previous_names);
        let compiled = compile(&new, &self.cgroups)?;
        let registered: HashMap<u32, IfaceInfo> = self.datapath.ifaces().into_iter().collect();
        let mut used_slots: HashSet<u32> = registered.values().map(|i| i.slot).collect();
        let mut targets = Vec::new();
        for iface in &new.interfaces {
            let link = resolve(&self.netlink, &iface.name)?;
            let egress = plan::plan(&new, iface, Direction::Egress, link.mtu)
                .ok_or_else(|| DaemonError::NoInterface(iface.name.clone()))?;
            let ingress = plan::plan(&new, iface, Direction::Ingress, link.mtu);
            let slot = match registered.get(&link.index) {
                Some(info) => info.slot,
                None => (0..MAX_IFACES)
                    .find(|s| !used_slots.contains(s))
                    .ok_or(DaemonError::TooManyInterfaces(MAX_IFACES))?,
            };
            used_slots.insert(slot);
            targets.push(Target { link, egress, ingress, slot });
        }

        let mut changes = Changes::default();
        let old_by_name: HashMap<&str, &ClassConfig> =
            self.config.classes.iter().map(|c| (c.name.as_str(), c)).collect();
        for class in &new.classes {
            match old_by_name.get(class.name.as_str()) {
                None => changes.classes_added.push(class.name.clone()),
                Some(old) if differs(old, class) => changes.classes_changed.push(class.name.clone()),
                Some(_) => {}
            }
        }
        // Only a converge after start-up reports against the config in force.
        if self.shaped.is_empty() && registered.is_empty() {
            changes.classes_added.clear();
            changes.classes_changed.clear();
        }
        let new_names: HashSet<&str> = new.classes.iter().map(|c| c.name.as_str()).collect();
        changes.classes_removed =
            previous_names.values().filter(|n| !new_names.contains(n.as_str())).cloned().collect();

        // 1. Trees and IFBs, additions and changes only. Until `shaped` holds
        // the new plans (step 3), the kernel's trees may match neither.
        let trust_applied = !self.applied_unknown;
        self.applied_unknown = true;
        let shaped = self.sync_trees(targets, &registered, &mut changes, trust_applied)?;

        // 2. Names, interface map, rules (what is already in the kernel as it
        // should be is not written again: `set` on one class of 1 000 stays cheap).
        for class in new.classes.iter().filter(|c| previous_names.get(&c.index) != Some(&c.name)) {
            self.datapath.set_class_name(class.index, Some(&class.name))?;
        }
        for (link, slot, egress, ingress) in &shaped {
            let mut info = IfaceInfo::new(*slot, egress.default_class, l2_len(link.arphrd));
            for class in &egress.classes {
                info.add_class(u32::from(class.index));
            }
            info.ifb_ifindex = ingress.as_ref().map_or(0, |i| i.ifb.index);
            self.datapath.set_iface(link.index, &info)?;
        }
        self.needs = Needs::of(new.classes.iter().filter_map(|c| c.rule.as_ref().map(|r| &r.pred)));
        // A daemon's first converge always writes its table (a pinned one may
        // be an older daemon's), and so does one after a failed change.
        let same_rules = trust_applied && !self.shaped.is_empty() && self.compiled == compiled;
        self.config = new;
        self.compiled = compiled;
        if !same_rules {
            self.apply_rules()?;
        }

        // 3. The classifier.
        let previous: Vec<Shaped> = std::mem::take(&mut self.shaped);
        for (link, slot, egress, ingress) in shaped {
            let attach = self.datapath.attach_egress(&link.name, link.index)?;
            if ingress.is_some() {
                self.datapath.attach_ingress(&link.name, link.index)?;
            } else {
                self.datapath.detach_direction(&link.name, Direction::Ingress)?;
            }
            self.shaped.push(Shaped { name: link.name, ifindex: link.index, slot, egress, ingress, attach });
        }
        self.applied_unknown = false;

        // 4. Connections.
        changes.flows_reevaluated = self.reevaluate();

        // 5. What the config dropped.
        for s in &self.shaped {
            tc::prune_htb(&self.netlink, s.ifindex, &s.egress.htb)?;
            if let Some(i) = &s.ingress {
                tc::prune_htb(&self.netlink, i.ifb.index, &i.plan.htb)?;
            }
        }
        for (ifindex, info) in &registered {
            let still = self.shaped.iter().find(|s| s.ifindex == *ifindex);
            match still {
                None => {
                    let name = previous.iter().find(|p| p.ifindex == *ifindex).map(|p| p.name.clone());
                    changes.interfaces_removed.push(name.clone().unwrap_or_else(|| format!("#{ifindex}")));
                    self.unshape(*ifindex, name.as_deref());
                }
                Some(s) if s.ingress.is_none() && info.ifb_ifindex != 0 => {
                    let name = ifb_name(*ifindex);
                    if let Err(e) = tc::delete_link(&self.netlink, info.ifb_ifindex, &name) {
                        log::warn!("{}", crate::error_chain(&e));
                    }
                }
                Some(_) => {}
            }
        }
        let in_use: HashSet<u16> = self.config.classes.iter().map(|c| c.index).collect();
        for index in previous_names.keys().filter(|i| !in_use.contains(i)) {
            self.datapath.set_class_name(*index, None)?;
            self.datapath.clear_class_stats(*index)?;
        }
        Ok(changes)
    }

    /// Step 1 of [`Shaper::converge`]: each target's HTB trees (and IFB).
    /// With `trust_applied`, the trees are as `self.shaped` last planned them,
    /// and only what differs is sent.
    fn sync_trees(
        &self,
        targets: Vec<Target>,
        registered: &HashMap<u32, IfaceInfo>,
        changes: &mut Changes,
        trust_applied: bool,
    ) -> Result<Vec<SyncedTarget>, DaemonError> {
        let mut shaped = Vec::new();
        for t in targets {
            let ifindex = t.link.index;
            if !registered.contains_key(&ifindex) {
                changes.interfaces_added.push(t.link.name.clone());
            }
            let before = self.shaped.iter().find(|s| s.ifindex == ifindex).filter(|_| trust_applied);
            self.sync_tree(ifindex, &t.egress, before.map(|s| &s.egress.htb))?;
            let ingress = match t.ingress {
                Some(plan) => {
                    let name = ifb_name(ifindex);
                    let ifb = match tc::link_by_name(&self.netlink, &name)? {
                        Some(ifb) => ifb,
                        None => tc::create_ifb(&self.netlink, &name, t.link.mtu, IFB_TXQUEUELEN)?,
                    };
                    let applied =
                        before.and_then(|s| s.ingress.as_ref()).filter(|i| i.ifb.index == ifb.index);
                    self.sync_tree(ifb.index, &plan, applied.map(|i| &i.plan.htb))?;
                    Some(Ingress { ifb, plan })
                }
                None => None,
            };
            shaped.push((t.link, t.slot, t.egress, ingress));
        }
        Ok(shaped)
    }

    /// Changes shaper's tree on `ifindex` to `plan`, or builds it; `applied`
    /// is the tree this daemon last applied there.
    fn sync_tree(&self, ifindex: u32, plan: &Plan, applied: Option<&tc::HtbPlan>) -> Result<(), DaemonError> {
        match tc::root_qdisc(&self.netlink, ifindex)? {
            Some(q) if tc::is_shapers_root(&q) => tc::sync_htb(&self.netlink, ifindex, &plan.htb, applied)?,
            _ => tc::install_htb(&self.netlink, ifindex, &plan.htb)?,
        }
        Ok(())
    }

    /// After the rules changed: decides again the flows the daemon decided
    /// (the scan does it, with the process facts it reads once per process),
    /// and hands back to the kernel those it cannot (they are decided again
    /// at their next packet). Flows pinned by `shaper move` stay, unless their
    /// class is gone.
    fn reevaluate(&mut self) -> usize {
        let process_rules = self.has_process_rules();
        if process_rules {
            self.reconcile();
        }
        let classes: HashSet<u16> = self.config.classes.iter().map(|c| c.index).collect();
        let mut n = 0;
        for (key, mut value) in self.datapath.flows() {
            let handback = match value.origin {
                // The scan just decided it if it found the process behind it.
                ORIGIN_DAEMON => {
                    let seen = self.sockets.contains_key(&key)
                        && self.conns.get(&key).is_some_and(|c| c.pid.is_some());
                    if process_rules && seen {
                        n += 1;
                    }
                    !(process_rules && seen)
                }
                ORIGIN_PINNED => !classes.contains(&value.class),
                _ => false,
            };
            if handback {
                value.origin = ORIGIN_KERNEL;
                value.rules_gen = 0;
                value.flags &= !FLOW_PROVISIONAL;
                if self.datapath.insert_flow(&key, &value).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }
}

/// Names of what is shaped, for logs: "eth0 (egress, ingress through shpifb2)".
pub(super) fn describe(shaped: &[Shaped]) -> String {
    let parts: BTreeMap<&str, String> = shaped
        .iter()
        .map(|s| {
            let how = match &s.ingress {
                Some(i) => format!("egress, ingress through {}", i.ifb.name),
                None => "egress".to_string(),
            };
            (s.name.as_str(), how)
        })
        .collect();
    parts.iter().map(|(n, h)| format!("{n} ({h})")).collect::<Vec<_>>().join(", ")
}
