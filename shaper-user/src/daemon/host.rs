//! The host part of the daemon: the interfaces it shapes, their HTB trees and
//! IFB devices (rtnetlink), and the meters of HTB's counters ("rate now").
//!
//! It knows nothing of rules, connections or BPF maps: the daemon hands it
//! plans and asks it to bring the trees to them.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use shaper_common::{Direction, IfaceInfo, MAX_IFACES};

use crate::{
    classids::ClassIds,
    config::{Config, InterfaceConfig},
    datapath::AttachMode,
    owned::{self, OwnedError, Record, Records},
    plan::{self, Plan},
    tc::{self, HtbStats, Netlink},
};

/// Transmit queue of the IFB devices: between the HTB tree and the tasklet that
/// hands packets back to the interface. The kernel's default of 32 stops HTB
/// whenever the tasklet falls behind and costs a fifth of a TCP stream here.
pub const IFB_TXQUEUELEN: u32 = 1000;

pub use crate::owned::ifb_name;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error(
        "interface {iface} already has a root qdisc ({kind} {handle}) that shaper did not create; shaper replaces \
         the root qdisc and could not put yours back exactly, so it leaves it alone. Remove it first \
         (`tc qdisc del dev {iface} root`) or shape another interface"
    )]
    ForeignQdisc { iface: String, kind: String, handle: String },
    #[error(
        "a device named {name} exists that shaper did not create; shaper makes a device of that name for \
         the ingress of {iface} and leaves yours alone. Rename or remove it (`ip link del {name}`), or do \
         not shape the ingress of {iface}"
    )]
    ForeignDevice { name: String, iface: String },
    #[error("shaper shapes at most {0} interfaces")]
    TooManyInterfaces(u32),
    #[error("netlink")]
    Netlink(#[from] tc::TcError),
    #[error("recording what shaper made")]
    Owned(#[from] OwnedError),
}

impl HostError {
    /// Interface `iface` has `root`, a root qdisc shaper did not create.
    pub fn foreign_qdisc(iface: &str, root: &tc::Qdisc) -> Self {
        HostError::ForeignQdisc {
            iface: iface.to_string(),
            kind: root.kind.clone(),
            handle: tc::format_handle(root.handle),
        }
    }
}

/// One interface as shaper set it up.
pub struct Shaped {
    pub link: tc::Link,
    /// The interface's slot in the classifier's counters.
    pub slot: u32,
    pub egress: Plan,
    /// Shaped downloads: the IFB device the interface's ingress traffic goes
    /// through, and the HTB tree on it.
    pub ingress: Option<Ingress>,
    pub attach: AttachMode,
}

impl Shaped {
    pub fn name(&self) -> &str {
        &self.link.name
    }

    pub fn ifindex(&self) -> u32 {
        self.link.index
    }

    /// Each HTB tree of the interface: its direction, plan and the device it is on.
    pub fn trees(&self) -> impl Iterator<Item = (Direction, &Plan, u32)> {
        std::iter::once((Direction::Egress, &self.egress, self.link.index))
            .chain(self.ingress.as_ref().map(|i| (Direction::Ingress, &i.plan, i.ifb.index)))
    }
}

pub struct Ingress {
    pub ifb: tc::Link,
    pub plan: Plan,
}

/// An interface the config shapes, resolved on the host and planned.
pub struct Target {
    pub link: tc::Link,
    pub slot: u32,
    pub egress: Plan,
    pub ingress: Option<Plan>,
}

/// A target whose trees are in place, waiting for its classifier.
pub struct Synced {
    pub link: tc::Link,
    pub slot: u32,
    pub egress: Plan,
    pub ingress: Option<Ingress>,
}

impl Synced {
    /// What the classifier needs to know about the interface.
    pub fn iface_info(&self) -> IfaceInfo {
        let mut info = IfaceInfo::new(self.slot, self.egress.default_class, l2_len(self.link.arphrd));
        for class in &self.egress.classes {
            info.add_class(u32::from(class.index));
        }
        info.ifb_ifindex = self.ingress.as_ref().map_or(0, |i| i.ifb.index);
        info
    }

    pub fn shaped(self, attach: AttachMode) -> Shaped {
        Shaped { link: self.link, slot: self.slot, egress: self.egress, ingress: self.ingress, attach }
    }
}

/// Sent-byte samples of the HTB classes of one device, for "rate now",
/// and the last sample's counters whole (what a metrics scrape shows).
#[derive(Default)]
struct Meter {
    samples: VecDeque<(Instant, HashMap<u32, u64>)>,
    last: Option<(Instant, HashMap<u32, HtbStats>)>,
}

const METER_WINDOW: usize = 4;

impl Meter {
    fn push(&mut self, at: Instant, sent: HashMap<u32, u64>) {
        self.samples.push_back((at, sent));
        while self.samples.len() > METER_WINDOW {
            self.samples.pop_front();
        }
    }

    /// Bits per second class `classid` sent over the sampled window.
    fn rate(&self, classid: u32) -> u64 {
        let (Some((t0, first)), Some((t1, last))) = (self.samples.front(), self.samples.back()) else {
            return 0;
        };
        let secs = t1.duration_since(*t0).as_secs_f64();
        let (Some(a), Some(b)) = (first.get(&classid), last.get(&classid)) else { return 0 };
        if secs <= 0.0 {
            return 0;
        }
        (b.saturating_sub(*a) as f64 * 8.0 / secs) as u64
    }
}

/// The interfaces shaper shapes and the trees on them.
pub struct Host {
    netlink: Netlink,
    /// What shaper made on each interface, in the pin directory: the only
    /// trees and IFBs it changes or removes ([`crate::owned`]).
    records: Records,
    /// Interfaces whose record this daemon wrote (what a failed start undoes).
    made: Vec<u32>,
    /// Records the change under way wrote (taken back with it).
    fresh: Vec<u32>,
    shaped: Vec<Shaped>,
    meters: BTreeMap<u32, Meter>,
    /// A change failed part way: the kernel's trees may differ from `shaped`,
    /// so the next change sends them whole.
    trees_unknown: bool,
    /// Interfaces the config names that are absent (`optional`, or gone
    /// since): shaped when they appear.
    waiting: Vec<String>,
}

impl Host {
    pub fn open(records: Records) -> Result<Self, HostError> {
        Ok(Self {
            netlink: Netlink::open()?,
            records,
            made: Vec::new(),
            fresh: Vec::new(),
            shaped: Vec::new(),
            meters: BTreeMap::new(),
            trees_unknown: false,
            waiting: Vec::new(),
        })
    }

    pub fn shaped(&self) -> &[Shaped] {
        &self.shaped
    }

    /// Whether the kernel's trees are as [`Host::shaped`] says (no change
    /// failed part way since the last [`Host::commit`]).
    pub fn trusted(&self) -> bool {
        !self.trees_unknown
    }

    /// The interface `name`, if shaper may shape it: its root qdisc must be the
    /// kernel's default or the HTB tree shaper recorded there (an earlier daemon's).
    pub fn resolve(&self, name: &str) -> Result<tc::Link, HostError> {
        let nl = &self.netlink;
        let link = tc::link_by_name(nl, name)?.ok_or_else(|| HostError::NoInterface(name.to_string()))?;
        match owned::foreign_root(nl, &self.records, link.index)? {
            Some(q) => Err(HostError::foreign_qdisc(name, &q)),
            None => Ok(link),
        }
    }

    /// Checks that every interface of `config` can be shaped, changing nothing.
    pub fn check(&self, config: &Config) -> Result<(), HostError> {
        config.interfaces.iter().try_for_each(|i| self.resolve_or_wait(i).map(|_| ()))
    }

    /// [`Host::resolve`], where an interface that may be absent (`optional`,
    /// or gone since the daemon shaped it) and is gives `None`.
    fn resolve_or_wait(&self, iface: &InterfaceConfig) -> Result<Option<tc::Link>, HostError> {
        match self.resolve(&iface.name) {
            Err(HostError::NoInterface(_)) if iface.optional || self.waiting.contains(&iface.name) => {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Resolves and plans every interface of `config` that is present (see
    /// [`Host::resolve_or_wait`]; the absent ones are returned by name);
    /// `registered` are the interfaces the classifier knows already (their
    /// slots are kept).
    pub fn targets(
        &self,
        config: &Config,
        ids: &ClassIds,
        registered: &HashMap<u32, IfaceInfo>,
    ) -> Result<(Vec<Target>, Vec<String>), HostError> {
        let mut used_slots: Vec<u32> = registered.values().map(|i| i.slot).collect();
        let mut targets = Vec::new();
        let mut absent = Vec::new();
        for iface in &config.interfaces {
            let Some(link) = self.resolve_or_wait(iface)? else {
                absent.push(iface.name.clone());
                continue;
            };
            let egress = plan::plan(config, ids, iface, Direction::Egress, link.mtu)
                .ok_or_else(|| HostError::NoInterface(iface.name.clone()))?;
            let ingress = plan::plan(config, ids, iface, Direction::Ingress, link.mtu);
            let slot = match registered.get(&link.index) {
                Some(info) => info.slot,
                None => (0..MAX_IFACES)
                    .find(|s| !used_slots.contains(s))
                    .ok_or(HostError::TooManyInterfaces(MAX_IFACES))?,
            };
            used_slots.push(slot);
            targets.push(Target { link, slot, egress, ingress });
        }
        Ok((targets, absent))
    }

    /// The interfaces the config names that are absent, for `status`.
    pub fn waiting(&self) -> &[String] {
        &self.waiting
    }

    /// A change is in force whose absent interfaces are `absent`.
    pub fn set_waiting(&mut self, absent: Vec<String>) {
        for name in absent.iter().filter(|n| !self.waiting.contains(n)) {
            log::info!("{name} is absent; it is shaped as soon as it appears");
        }
        self.waiting = absent;
    }

    /// Whether an interface the config waits for exists now.
    pub fn waited_for_appeared(&self) -> bool {
        self.waiting.iter().any(|n| tc::link_by_name(&self.netlink, n).is_ok_and(|l| l.is_some()))
    }

    /// The shaped interfaces that no longer exist under their name and index
    /// (deleted, or renamed): (ifindex, name).
    pub fn vanished(&self) -> Vec<(u32, String)> {
        self.shaped
            .iter()
            .filter(|s| match tc::link_by_name(&self.netlink, s.name()) {
                Ok(link) => link.is_none_or(|l| l.index != s.ifindex()),
                Err(_) => false,
            })
            .map(|s| (s.ifindex(), s.name().to_string()))
            .collect()
    }

    /// Takes interface `ifindex` off the shaped list (it went away); the
    /// config's interface of that name waits for its return.
    pub fn forget(&mut self, ifindex: u32) -> Option<Shaped> {
        let at = self.shaped.iter().position(|s| s.ifindex() == ifindex)?;
        let shaped = self.shaped.remove(at);
        self.meters.remove(&ifindex);
        if !self.waiting.contains(&shaped.link.name) {
            self.waiting.push(shaped.link.name.clone());
        }
        Some(shaped)
    }

    /// Shaped interfaces whose IFB is down or gone: (interface, its IFB's
    /// name, "down" or "gone").
    pub fn lost_ifbs(&self) -> Vec<(u32, String, &'static str)> {
        self.shaped
            .iter()
            .filter_map(|s| {
                let ifb = &s.ingress.as_ref()?.ifb;
                let state = match tc::link_by_name(&self.netlink, &ifb.name) {
                    Ok(Some(l)) if l.index == ifb.index && l.up => return None,
                    Ok(Some(l)) if l.index == ifb.index => "down",
                    Ok(_) => "gone",
                    Err(_) => return None,
                };
                Some((s.ifindex(), ifb.name.clone(), state))
            })
            .collect()
    }

    /// Whether an event about interface `index` called `name` may concern
    /// shaper: a shaped interface, its IFB, or one the config waits for.
    pub fn concerns(&self, index: u32, name: &str) -> bool {
        self.waiting.iter().any(|w| w == name)
            || self.shaped.iter().any(|s| {
                s.ifindex() == index
                    || s.name() == name
                    || s.ingress.as_ref().is_some_and(|i| i.ifb.index == index || i.ifb.name == name)
            })
    }

    /// Brings each target's HTB trees (and IFB) to its plans: classes changed
    /// in place and added, never rebuilt; classes the plans dropped stay until
    /// [`Host::prune`]. Until [`Host::commit`], the trees may match neither
    /// the old plans nor the new ones.
    ///
    /// All or nothing: when the kernel refuses a request, everything this
    /// call changed is taken back before the error returns. On success, the
    /// returned [`tc::Undo`] takes the whole change back ([`Host::take_back`]).
    pub fn sync_trees(&mut self, targets: Vec<Target>) -> Result<(Vec<Synced>, tc::Undo), HostError> {
        let trust = !self.trees_unknown;
        self.trees_unknown = true;
        let mut undo = tc::Undo::default();
        match self.sync_each(targets, trust, &mut undo) {
            Ok(synced) => Ok((synced, undo)),
            Err(e) => {
                self.take_back(undo, trust);
                Err(e)
            }
        }
    }

    fn sync_each(
        &mut self,
        targets: Vec<Target>,
        trust: bool,
        undo: &mut tc::Undo,
    ) -> Result<Vec<Synced>, HostError> {
        let mut synced = Vec::new();
        for t in targets {
            let ifindex = t.link.index;
            let mut record = self.record_for(&t.link)?;
            let before = self.shaped.iter().find(|s| s.ifindex() == ifindex).filter(|_| trust);
            undo.extend(self.sync_tree(&t.link, &t.egress, before.map(|s| &s.egress.htb), record.tag)?);
            let ingress = match t.ingress {
                Some(plan) => {
                    let ifb = self.ifb_for(&t.link, &mut record, undo)?;
                    let applied =
                        before.and_then(|s| s.ingress.as_ref()).filter(|i| i.ifb.index == ifb.index);
                    undo.extend(self.sync_tree(&ifb, &plan, applied.map(|i| &i.plan.htb), record.tag)?);
                    Some(Ingress { ifb, plan })
                }
                None => None,
            };
            synced.push(Synced { link: t.link, slot: t.slot, egress: t.egress, ingress });
        }
        Ok(synced)
    }

    /// Takes back a change [`Host::sync_trees`] made; the trees are as
    /// [`Host::shaped`] says again if they were before (`trusted`) and the
    /// kernel accepted every step back.
    pub fn take_back(&mut self, undo: tc::Undo, trusted: bool) {
        if undo.run(&self.netlink) && trusted {
            self.trees_unknown = false;
        }
        // The records of interfaces the change would have added.
        for ifindex in std::mem::take(&mut self.fresh) {
            self.made.retain(|i| *i != ifindex);
            if let Err(e) = self.records.remove(ifindex) {
                log::warn!("{}", crate::error_chain(&e));
            }
        }
    }

    /// The record of interface `link`: an earlier daemon's, or a new one,
    /// written before anything is made there.
    fn record_for(&mut self, link: &tc::Link) -> Result<Record, HostError> {
        if let Some(record) = self.records.get(link.index) {
            return Ok(record);
        }
        let record = Record::new(link.index, &link.name);
        self.records.put(&record)?;
        self.made.push(link.index);
        self.fresh.push(link.index);
        Ok(record)
    }

    /// The IFB of interface `link`: the one shaper made earlier (`record`
    /// holds it), or a new one, recorded (and deleted by `undo`). A device of
    /// that name that shaper did not make is refused.
    fn ifb_for(
        &self,
        link: &tc::Link,
        record: &mut Record,
        undo: &mut tc::Undo,
    ) -> Result<tc::Link, HostError> {
        let name = ifb_name(link.index);
        match tc::link_by_name(&self.netlink, &name)? {
            Some(ifb) if record.ifb == Some(ifb.index) && !ifb.up => {
                // Someone set it down: back up (its tree is still there).
                tc::set_up(&self.netlink, ifb.index, &name)?;
                log::info!("{name} brought back up");
                Ok(tc::Link { up: true, ..ifb })
            }
            Some(ifb) if record.ifb == Some(ifb.index) => Ok(ifb),
            Some(_) => Err(HostError::ForeignDevice { name, iface: link.name.clone() }),
            None => {
                let ifb = tc::create_ifb(&self.netlink, &name, link.mtu, IFB_TXQUEUELEN)?;
                record.ifb = Some(ifb.index);
                if let Err(e) = self.records.put(record) {
                    let _ = tc::delete_link(&self.netlink, ifb.index, &name);
                    return Err(e.into());
                }
                undo.delete_link(ifb.index, &name);
                Ok(ifb)
            }
        }
    }

    /// Changes shaper's tree on `dev` to `plan`, or builds it with `tag`;
    /// `applied` is the tree this daemon last applied there. Returns what
    /// takes it back.
    fn sync_tree(
        &self,
        dev: &tc::Link,
        plan: &Plan,
        applied: Option<&tc::HtbPlan>,
        tag: u32,
    ) -> Result<tc::Undo, HostError> {
        let nl = &self.netlink;
        match tc::root_qdisc(nl, dev.index)? {
            Some(q) if tc::is_tagged_htb_root(&q, tag) => {
                Ok(tc::sync_htb(nl, dev.index, &plan.htb, applied, tag)?)
            }
            Some(q) if !q.is_kernel_default() => Err(HostError::foreign_qdisc(&dev.name, &q)),
            _ => {
                tc::install_htb(nl, dev.index, &plan.htb, tag)?;
                let mut undo = tc::Undo::default();
                undo.remove_root(dev.index);
                Ok(undo)
            }
        }
    }

    /// The interfaces are now as `shaped` says; returns what was shaped before.
    pub fn commit(&mut self, shaped: Vec<Shaped>) -> Vec<Shaped> {
        self.trees_unknown = false;
        self.fresh.clear();
        // Counters sampled from the trees before the change: read anew
        // until the next sample.
        for meter in self.meters.values_mut() {
            meter.last = None;
        }
        std::mem::replace(&mut self.shaped, shaped)
    }

    /// Deletes the HTB classes the plans in force no longer have.
    pub fn prune(&self) -> Result<(), HostError> {
        for s in &self.shaped {
            for (_, plan, device) in s.trees() {
                tc::prune_htb(&self.netlink, device, &plan.htb)?;
            }
        }
        Ok(())
    }

    /// Deletes the IFB an earlier config gave interface `ifindex` (if shaper made it).
    pub fn remove_ifb(&self, ifindex: u32, ifb_ifindex: u32) {
        let Some(mut record) = self.records.get(ifindex).filter(|r| r.ifb == Some(ifb_ifindex)) else {
            return log::warn!("{}: not shaper's IFB; leaving it", ifb_name(ifindex));
        };
        if let Err(e) = tc::delete_link(&self.netlink, ifb_ifindex, &ifb_name(ifindex)) {
            return log::warn!("{}", crate::error_chain(&e));
        }
        record.ifb = None;
        if let Err(e) = self.records.put(&record) {
            log::warn!("{}", crate::error_chain(&e));
        }
    }

    /// Takes the next shaped interface off the list (for a full stop).
    pub fn pop(&mut self) -> Option<Shaped> {
        self.shaped.pop()
    }

    /// Removes what shaper recorded on interface `ifindex`: its HTB root
    /// (if it still is shaper's) and its IFB (`shown` names it in logs).
    pub fn unshape(&self, ifindex: u32, shown: &str) {
        let Some(record) = self.records.get(ifindex) else {
            return log::info!("{shown}: shaper made nothing there");
        };
        let done = owned::take_down(&self.netlink, &self.records, &record);
        for left in &done.left {
            log::warn!("leaving {left}");
        }
        for failed in &done.failed {
            log::warn!("removing {failed}");
        }
        let restored = tc::root_qdisc(&self.netlink, ifindex).ok().flatten();
        log::info!("restored {shown}: root qdisc {}", restored.as_ref().map_or("none", |q| q.kind.as_str()));
    }

    /// Interfaces shaper recorded something on (ifindex, name when recorded).
    pub fn recorded(&self) -> Vec<(u32, String)> {
        self.records.all().into_iter().map(|r| (r.ifindex, r.name)).collect()
    }

    /// Interfaces whose record this daemon wrote: what it made from nothing.
    pub fn made_here(&self) -> Vec<(u32, String)> {
        self.recorded().into_iter().filter(|(i, _)| self.made.contains(i)).collect()
    }

    /// Samples the HTB counters of every tree for the "rate now" column.
    pub fn sample_rates(&mut self) {
        let at = Instant::now();
        let devices: Vec<u32> = self.shaped.iter().flat_map(|s| s.trees().map(|(_, _, d)| d)).collect();
        for device in devices {
            match tc::htb_stats(&self.netlink, device) {
                Ok(stats) => {
                    let sent = stats.iter().map(|s| (s.classid, s.bytes)).collect();
                    let meter = self.meters.entry(device).or_default();
                    meter.push(at, sent);
                    meter.last = Some((at, stats.into_iter().map(|s| (s.classid, s)).collect()));
                }
                Err(e) => log::debug!("sampling device {device}: {e}"),
            }
        }
    }

    /// The netlink socket the trees are changed through.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// HTB's counters of the classes on `device`, by class id.
    pub fn htb_stats(&self, device: u32) -> Result<HashMap<u32, HtbStats>, HostError> {
        Ok(tc::htb_stats(&self.netlink, device)?.into_iter().map(|s| (s.classid, s)).collect())
    }

    /// HTB's counters on `device` as the last rate sample read them, when
    /// that was at most `max_age` ago; else read now. A dump of 1 000
    /// classes was a fifth of a metrics scrape.
    pub fn recent_htb_stats(
        &self,
        device: u32,
        max_age: Duration,
    ) -> Result<Cow<'_, HashMap<u32, HtbStats>>, HostError> {
        match self.meters.get(&device).and_then(|m| m.last.as_ref()) {
            Some((at, stats)) if at.elapsed() <= max_age => Ok(Cow::Borrowed(stats)),
            _ => Ok(Cow::Owned(self.htb_stats(device)?)),
        }
    }

    /// Bits per second class `classid` sent on `device` lately.
    pub fn rate_now(&self, device: u32, classid: u32) -> u64 {
        self.meters.get(&device).map_or(0, |m| m.rate(classid))
    }

    /// Names of what is shaped, for logs: "eth0 (egress, ingress through shpifb2)".
    pub fn describe(&self) -> String {
        let parts: BTreeMap<&str, String> = self
            .shaped
            .iter()
            .map(|s| {
                let how = match &s.ingress {
                    Some(i) => format!("egress, ingress through {}", i.ifb.name),
                    None => "egress".to_string(),
                };
                (s.name(), how)
            })
            .collect();
        parts.iter().map(|(n, h)| format!("{n} ({h})")).collect::<Vec<_>>().join(", ")
    }
}

/// Link-layer header length in front of IP for an ARPHRD device type.
fn l2_len(arphrd: u16) -> u16 {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_LOOPBACK: u16 = 772;
    match arphrd {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => 14,
        // tun, WireGuard, PPP, IP tunnels: packets start with the IP header.
        _ => 0,
    }
}
