//! Bringing the host to a config: the one path for start-up, takeover of an
//! earlier daemon's state, `shaper reload` and `shaper set`.
//!
//! [`converge`] first checks everything the new config needs (every
//! interface, its root qdisc, the rule table); an error there changes nothing.
//! Then, in an order where no packet ever meets a class that is not there yet:
//!
//! 1. HTB trees: classes changed in place and added (never rebuilt: queued
//!    packets and HTB's counters stay); IFBs created or taken over;
//! 2. the class indices and what the classifier must do for each (modes),
//!    the interface map, then the rule table, swapped in
//!    one write (the classifier sees the old table or the new one, never a mix);
//! 3. the classifier attached (or its pinned link updated in place);
//! 4. existing connections re-evaluated: the kernel redoes the ones it decided
//!    at their next packet (their rule generation is stale), the daemon redoes
//!    its own now;
//! 5. only then classes, IFBs and interfaces the config dropped are removed,
//!    and the counters of freed class indices zeroed.
//!
//! The rules are compiled once per change, with the class indices the
//! datapath gives the new config.

use std::collections::{HashMap, HashSet};

use shaper_common::{instances::ClassMode, Direction, IfaceInfo};

use super::{
    decider::{Decider, RuleSet},
    error::DaemonError,
    host::{Host, Shaped, Synced, Target},
    modes::class_modes,
};
use crate::{
    classids::ClassIds,
    config::{ClassConfig, Config, Limit, QueueKind},
    control::protocol::Changes,
    datapath::Datapath,
};

/// The parts of the daemon a change goes through.
pub struct Parts<'a> {
    pub host: &'a mut Host,
    pub datapath: &'a mut Datapath,
    pub decider: &'a mut Decider,
}

/// Everything a change needs, worked out before the host is touched.
struct Prepared {
    ids: ClassIds,
    rules: RuleSet,
    targets: Vec<Target>,
    /// Interfaces of the config that are absent (and may be: see `Host::targets`).
    absent: Vec<String>,
    /// The interfaces the classifier knew before (ifindex → what it had).
    registered: HashMap<u32, IfaceInfo>,
    changes: Changes,
}

/// Brings the host from `old` (the config in force; `None` at start-up) to
/// `new` (see the module documentation). Steps 1 to 3 apply wholly or not at
/// all: if one fails, what the earlier ones changed is taken back (trees,
/// class indices, interface map, rule table, attachments) before the error
/// returns, and the config in force stays.
pub fn converge(parts: &mut Parts<'_>, old: Option<&Config>, new: &Config) -> Result<Changes, DaemonError> {
    // 0. Everything checked before anything changes.
    let prepared = prepare(parts, old, new)?;
    let Prepared { ids, rules, targets, absent, registered, mut changes } = prepared;
    let write_rules =
        parts.host.shaped().is_empty() || !parts.host.trusted() || !parts.decider.same_table(&rules);
    let modes = class_modes(new, &ids);
    let before = Before {
        modes: old.map(|old| class_modes(old, &parts.datapath.class_ids())).unwrap_or_default(),
        ids: parts.datapath.class_ids(),
        rules: parts.decider.rules().clone(),
        registered: registered.clone(),
        trusted: parts.host.trusted(),
    };
    // 1. Trees and IFBs, additions and changes only (undone by sync_trees itself on failure).
    let (synced, undo) = parts.host.sync_trees(targets)?;
    // 2. and 3.
    let previous = match switch(parts, &ids, &modes, rules, write_rules, synced) {
        Ok(previous) => previous,
        Err(e) => {
            log::error!("{}; taking the change back", crate::error_chain(&e));
            roll_back(parts, before, write_rules, undo);
            return Err(e);
        }
    };
    parts.host.set_waiting(absent);
    // 4. Connections.
    let in_use: HashSet<u16> = ids.iter().map(|(i, _)| i).collect();
    changes.flows_reevaluated = parts.decider.reevaluate(parts.datapath, &in_use);
    // 5. What the config dropped.
    parts.host.prune()?;
    changes.interfaces_removed = remove_dropped(parts, &registered, &previous);
    let released = parts.datapath.release_classes(&ids)?;
    add_missing(&mut changes.classes_removed, released);
    Ok(changes)
}

/// What a change replaces, to take it back.
struct Before {
    ids: ClassIds,
    modes: Vec<ClassMode>,
    rules: RuleSet,
    registered: HashMap<u32, IfaceInfo>,
    trusted: bool,
}

/// Steps 2 and 3: class indices and modes, interface map, rules, the
/// classifier. Returns the interfaces shaped before.
fn switch(
    parts: &mut Parts<'_>,
    ids: &ClassIds,
    modes: &[ClassMode],
    rules: RuleSet,
    write_rules: bool,
    synced: Vec<Synced>,
) -> Result<Vec<Shaped>, DaemonError> {
    parts.datapath.record_class_ids(ids)?;
    parts.datapath.set_class_modes(modes)?;
    for s in &synced {
        parts.datapath.set_iface(s.link.index, &s.iface_info())?;
    }
    parts.decider.install(parts.datapath, rules, write_rules)?;
    attach(parts, synced)
}

/// Takes back steps 1 to 3 of a change that failed in step 2 or 3: the
/// classifier as it was on each interface, the interface map, the rule
/// table (written again: a new generation of the same rules), the class
/// indices, then the trees. Failures here are logged.
fn roll_back(parts: &mut Parts<'_>, before: Before, write_rules: bool, undo: crate::tc::Undo) {
    let shaped: Vec<(String, u32, bool)> = parts
        .host
        .shaped()
        .iter()
        .map(|s| (s.name().to_string(), s.ifindex(), s.ingress.is_some()))
        .collect();
    let added: Vec<String> =
        parts.datapath.attached().filter(|n| !shaped.iter().any(|s| s.0 == *n)).map(str::to_string).collect();
    let mut failures = Vec::new();
    for name in added {
        failures.extend(parts.datapath.detach(&name).err());
    }
    for (name, ifindex, ingress) in &shaped {
        failures.extend(parts.datapath.attach_egress(name, *ifindex).err());
        let back = match ingress {
            true => parts.datapath.attach_ingress(name, *ifindex).map(|_| ()),
            false => parts.datapath.detach_direction(name, Direction::Ingress),
        };
        failures.extend(back.err());
    }
    for (ifindex, _) in parts.datapath.ifaces() {
        if !before.registered.contains_key(&ifindex) {
            parts.datapath.unpin_iface_links(ifindex);
            failures.extend(parts.datapath.remove_iface(ifindex).err());
        }
    }
    for (ifindex, info) in &before.registered {
        failures.extend(parts.datapath.set_iface(*ifindex, info).err());
    }
    if write_rules {
        failures.extend(parts.decider.install(parts.datapath, before.rules, true).err());
    }
    failures.extend(parts.datapath.set_class_modes(&before.modes).err());
    failures.extend(parts.datapath.release_classes(&before.ids).err());
    for e in failures {
        log::error!("taking a change back: {}", crate::error_chain(&e));
    }
    parts.host.take_back(undo, before.trusted);
}

/// Step 0: class indices, the rule table, the interfaces' plans, and what
/// changes against `old`.
fn prepare(parts: &Parts<'_>, old: Option<&Config>, new: &Config) -> Result<Prepared, DaemonError> {
    let ids = parts.datapath.class_ids().assign(new.class_names());
    let rules = RuleSet::compile(new, &ids, parts.decider.cgroups())?;
    let registered: HashMap<u32, IfaceInfo> = parts.datapath.ifaces().into_iter().collect();
    let (targets, absent) = parts.host.targets(new, &ids, &registered)?;
    let mut changes = Changes::default();
    if let Some(old) = old {
        let before: HashMap<&str, &ClassConfig> = old.classes.iter().map(|c| (c.name.as_str(), c)).collect();
        for class in &new.classes {
            match before.get(class.name.as_str()) {
                None => changes.classes_added.push(class.name.clone()),
                Some(was) if differs(was, class) => changes.classes_changed.push(class.name.clone()),
                Some(_) => {}
            }
        }
        // By name: a new class may take over a removed one's index, which
        // then is not released.
        changes.classes_removed =
            old.classes.iter().filter(|c| new.class(&c.name).is_none()).map(|c| c.name.clone()).collect();
    }
    changes.interfaces_added = targets
        .iter()
        .filter(|t| !registered.contains_key(&t.link.index))
        .map(|t| t.link.name.clone())
        .collect();
    Ok(Prepared { ids, rules, targets, absent, registered, changes })
}

/// Appends the names of `more` not in `list` yet.
fn add_missing(list: &mut Vec<String>, more: Vec<String>) {
    for name in more {
        if !list.contains(&name) {
            list.push(name);
        }
    }
}

/// Whether a class is shaped differently in `b` than in `a`.
fn differs(a: &ClassConfig, b: &ClassConfig) -> bool {
    !class_diff(a, b).is_empty()
}

/// How class `a` becomes `b`, one line per setting that differs (the
/// settings a reload reports a class changed for): "egress 10 Mbit/s → 20 Mbit/s".
pub fn class_diff(a: &ClassConfig, b: &ClassConfig) -> Vec<String> {
    let limit = |l: &Option<Limit>| match l {
        None => "none".to_string(),
        Some(l) => {
            let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), crate::units::format_rate);
            format!("rate {} ceil {}", show(l.rate_bps), show(l.ceil_bps))
        }
    };
    let text = |v: &Option<String>| v.as_deref().map_or_else(|| "none".to_string(), |s| format!("'{s}'"));
    let list = |v: &Option<Vec<String>>| v.as_ref().map_or_else(|| "all".to_string(), |l| l.join(", "));
    let queue = |q: &Option<QueueKind>| q.map_or_else(|| "default".to_string(), |q| q.as_str().to_string());
    let mut how = Vec::new();
    if a.egress != b.egress {
        how.push(format!("egress {} → {}", limit(&a.egress), limit(&b.egress)));
    }
    if a.ingress != b.ingress {
        how.push(format!("ingress {} → {}", limit(&a.ingress), limit(&b.ingress)));
    }
    if a.priority != b.priority {
        how.push(format!("priority {} → {}", a.priority, b.priority));
    }
    if a.rule_source != b.rule_source {
        how.push(format!("match {} → {}", text(&a.rule_source), text(&b.rule_source)));
    }
    if a.interfaces != b.interfaces {
        how.push(format!("interfaces {} → {}", list(&a.interfaces), list(&b.interfaces)));
    }
    if a.queue != b.queue {
        how.push(format!("queue {} → {}", queue(&a.queue), queue(&b.queue)));
    }
    how
}

/// What [`converge`] from `old` to `new` would report, worked out by its
/// step 0 with nothing changed (no tree, map or attachment touched), with
/// the class indices and rules `new` would get. `flows_reevaluated` is left
/// to the caller.
pub fn preview(
    parts: &Parts<'_>,
    old: &Config,
    new: &Config,
) -> Result<(Changes, ClassIds, RuleSet), DaemonError> {
    let Prepared { ids, rules, targets, registered, mut changes, .. } = prepare(parts, Some(old), new)?;
    // As `Datapath::release_classes` and `remove_dropped` would find them.
    let recorded = parts.datapath.class_ids();
    let released = recorded.iter().filter(|(i, _)| ids.name(*i).is_none()).map(|(_, n)| n.to_string());
    add_missing(&mut changes.classes_removed, released.collect());
    let mut gone: Vec<u32> =
        registered.keys().copied().filter(|i| !targets.iter().any(|t| t.link.index == *i)).collect();
    gone.sort_unstable();
    changes.interfaces_removed = gone
        .into_iter()
        .map(|i| {
            let shaped = parts.host.shaped().iter().find(|s| s.ifindex() == i);
            shaped.map_or_else(|| format!("#{i}"), |s| s.name().to_string())
        })
        .collect();
    Ok((changes, ids, rules))
}

/// Step 3: the classifier on every interface (egress always, ingress where
/// shaped); returns the interfaces shaped before.
fn attach(parts: &mut Parts<'_>, synced: Vec<Synced>) -> Result<Vec<Shaped>, DaemonError> {
    let mut shaped = Vec::new();
    for s in synced {
        let (name, ifindex) = (s.link.name.clone(), s.link.index);
        let mode = parts.datapath.attach_egress(&name, ifindex)?;
        if s.ingress.is_some() {
            parts.datapath.attach_ingress(&name, ifindex)?;
        } else {
            parts.datapath.detach_direction(&name, Direction::Ingress)?;
        }
        shaped.push(s.shaped(mode));
    }
    Ok(parts.host.commit(shaped))
}

/// Step 5: interfaces the config no longer shapes are restored, IFBs of
/// interfaces whose ingress is no longer shaped removed. Returns the names of
/// the interfaces restored.
fn remove_dropped(
    parts: &mut Parts<'_>,
    registered: &HashMap<u32, IfaceInfo>,
    previous: &[Shaped],
) -> Vec<String> {
    let mut removed = Vec::new();
    for (ifindex, info) in registered {
        let still = parts.host.shaped().iter().find(|s| s.ifindex() == *ifindex).map(|s| s.ingress.is_some());
        match still {
            None => {
                let name = previous.iter().find(|p| p.ifindex() == *ifindex).map(|p| p.name().to_string());
                removed.push(name.clone().unwrap_or_else(|| format!("#{ifindex}")));
                unshape(parts, *ifindex, name.as_deref());
            }
            Some(false) if info.ifb_ifindex != 0 => parts.host.remove_ifb(*ifindex, info.ifb_ifindex),
            Some(_) => {}
        }
    }
    removed
}

/// Takes shaping off interface `ifindex`: the classifier, its entry in the
/// interface map, the HTB root (if still shaper's) and the IFB.
pub fn unshape(parts: &mut Parts<'_>, ifindex: u32, name: Option<&str>) {
    let shown = name.map_or_else(|| format!("interface {ifindex}"), str::to_string);
    if let Some(name) = name {
        if let Err(e) = parts.datapath.detach(name) {
            log::warn!("{shown}: {}", crate::error_chain(&e));
        }
    }
    parts.datapath.unpin_iface_links(ifindex);
    if let Err(e) = parts.datapath.remove_iface(ifindex) {
        log::warn!("{shown}: {}", crate::error_chain(&e));
    }
    parts.host.unshape(ifindex, &shown);
}
