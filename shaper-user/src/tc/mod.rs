//! Traffic control over rtnetlink: interfaces, qdiscs, HTB classes and their
//! counters. No `tc` processes: a whole HTB tree goes to the kernel in one
//! batch of messages (a thousand classes in milliseconds).

mod monitor;
mod netlink;
mod queue;
mod undo;

pub use monitor::{LinkEvent, LinkMonitor};
pub use netlink::Netlink;
use netlink::{attrs, c_string, u32_of, u64_of, Message, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use queue::{delete_leaf_queue_message, leaf_queue_message};
pub use queue::{Kernel, LeafQueue};
use undo::Step;
pub use undo::Undo;

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink")]
    Io(#[source] std::io::Error),
    #[error("{what}: {message}")]
    Kernel { what: String, errno: i32, message: String },
    #[error("malformed netlink reply ({0})")]
    Malformed(&'static str),
}

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTCLASS: u16 = 40;
const RTM_DELTCLASS: u16 = 41;
const RTM_GETTCLASS: u16 = 42;

const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_TXQLEN: u16 = 13;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFF_UP: u32 = 1;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STATS2: u16 = 7;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_STATS_PKT64: u16 = 8;

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// The parent id of a root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// Nanoseconds per psched tick (`PSCHED_TICKS2NS(1)`, fixed in the kernel ABI;
/// /proc/net/psched shows it as its second field).
const NS_PER_TICK: u64 = 64;

/// `major:minor` as tc writes it: hexadecimal, "1:" for a qdisc, "1:10" for a class.
pub fn format_handle(handle: u32) -> String {
    match handle {
        TC_H_ROOT => "root".to_string(),
        h if h & 0xffff == 0 => format!("{:x}:", h >> 16),
        h => format!("{:x}:{:x}", h >> 16, h & 0xffff),
    }
}

/// An interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// ARPHRD_* device type (1 = Ethernet).
    pub arphrd: u16,
    /// IFF_UP: the interface is administratively up.
    pub up: bool,
}

/// A qdisc as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// HTB's `rate2quantum` (`r2q` in `tc -d qdisc show`), where shaper puts
    /// the tag that marks a tree as its own (see [`crate::owned`]); `None` for
    /// other kinds.
    pub r2q: Option<u32>,
}

impl Qdisc {
    /// Whether the kernel created it (handle 0: noqueue, pfifo_fast, mq, or the
    /// `default_qdisc`): deleting shaper's root brings such a qdisc back by itself.
    pub fn is_kernel_default(&self) -> bool {
        self.handle >> 16 == 0
    }
}

/// What HTB counted for one class (sent, dropped, queued), as the kernel keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HtbStats {
    pub classid: u32,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u32,
    pub overlimits: u32,
    /// Bytes queued in the class's leaf right now.
    pub backlog: u32,
}

/// Parameters of one HTB class.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HtbClass {
    /// Minor of the class id (`1:minor`).
    pub minor: u32,
    pub rate_bps: u64,
    pub ceil_bps: u64,
    /// 0 (served first) to 7.
    pub prio: u32,
    /// Bytes the class may send at once above its rate / ceil.
    pub burst_bytes: u32,
    pub cburst_bytes: u32,
    /// Bytes served per round when classes share borrowed bandwidth.
    pub quantum: u32,
}

/// A class under the root: a leaf and its queue, or an inner node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HtbLeaf {
    pub class: HtbClass,
    /// Minor of the parent class: the root, or the class of an instance leaf.
    pub parent: u32,
    pub queue: LeafQueue,
}

/// An HTB tree: qdisc `1:`, root class `1:1`, leaves under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HtbPlan {
    pub default_minor: u32,
    pub root: HtbClass,
    pub leaves: Vec<HtbLeaf>,
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..12].copy_from_slice(&handle.to_ne_bytes());
    m[12..16].copy_from_slice(&parent.to_ne_bytes());
    m
}

fn ifindex_of(tcmsg: &[u8]) -> Option<u32> {
    u32_of(tcmsg.get(4..8)?)
}

/// The interface called `name`, or `None` if there is none.
pub fn link_by_name(nl: &Netlink, name: &str) -> Result<Option<Link>, TcError> {
    let mut msg = Message::new(RTM_GETLINK, 0, format!("looking up interface {name}"));
    msg.push(&[0u8; 16]).attr_str(IFLA_IFNAME, name);
    get_link(nl, msg, name)
}

/// The interface with index `index`, or `None` if there is none.
pub fn link_by_index(nl: &Netlink, index: u32) -> Result<Option<Link>, TcError> {
    let mut msg = Message::new(RTM_GETLINK, 0, format!("looking up interface {index}"));
    msg.push(&ifinfomsg(index, 0, 0));
    get_link(nl, msg, "")
}

fn get_link(nl: &Netlink, msg: Message, name: &str) -> Result<Option<Link>, TcError> {
    let reply = match nl.get(msg) {
        Ok(r) => r,
        Err(TcError::Kernel { errno, .. }) if errno == libc::ENODEV => return Ok(None),
        Err(e) => return Err(e),
    };
    let arphrd =
        reply.get(2..4).map(|b| u16::from_ne_bytes([b[0], b[1]])).ok_or(TcError::Malformed("ifinfomsg"))?;
    let index = reply.get(4..8).and_then(u32_of).ok_or(TcError::Malformed("ifinfomsg"))?;
    let up = reply.get(8..12).and_then(u32_of).is_some_and(|f| f & IFF_UP != 0);
    let mut link = Link { index, name: name.to_string(), mtu: 1500, arphrd, up };
    for (kind, value) in attrs(reply.get(16..).unwrap_or_default()) {
        match kind {
            IFLA_MTU => link.mtu = u32_of(value).unwrap_or(1500),
            IFLA_IFNAME => link.name = c_string(value),
            _ => {}
        }
    }
    Ok(Some(link))
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Creates an IFB device `name` with the given MTU and transmit queue length,
/// brings it up and returns it.
pub fn create_ifb(nl: &Netlink, name: &str, mtu: u32, txqueuelen: u32) -> Result<Link, TcError> {
    let mut msg = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, format!("creating IFB device {name}"));
    msg.push(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name)
        .attr_u32(IFLA_MTU, mtu)
        .attr_u32(IFLA_TXQLEN, txqueuelen);
    let info = msg.begin_nest(IFLA_LINKINFO);
    msg.attr_str(IFLA_INFO_KIND, "ifb");
    msg.end_nest(info);
    nl.request(msg)?;
    let link =
        link_by_name(nl, name)?.ok_or(TcError::Malformed("the IFB device vanished after its creation"))?;
    if let Err(e) = set_up(nl, link.index, name) {
        let _ = delete_link(nl, link.index, name);
        return Err(e);
    }
    Ok(Link { up: true, ..link })
}

/// Brings interface `ifindex` up (`name` is for the error message).
pub fn set_up(nl: &Netlink, ifindex: u32, name: &str) -> Result<(), TcError> {
    let mut up = Message::new(RTM_NEWLINK, 0, format!("bringing {name} up"));
    up.push(&ifinfomsg(ifindex, IFF_UP, IFF_UP));
    nl.request(up)
}

/// Deletes interface `ifindex` (`name` is for the error message).
pub fn delete_link(nl: &Netlink, ifindex: u32, name: &str) -> Result<(), TcError> {
    let mut msg = Message::new(RTM_DELLINK, 0, format!("deleting {name}"));
    msg.push(&ifinfomsg(ifindex, 0, 0));
    nl.request(msg)
}

/// Every qdisc on interface `ifindex`.
pub fn qdiscs(nl: &Netlink, ifindex: u32) -> Result<Vec<Qdisc>, TcError> {
    let mut msg = Message::new(RTM_GETQDISC, 0, "listing qdiscs");
    msg.push(&tcmsg(ifindex, 0, 0));
    let mut out = Vec::new();
    for reply in nl.dump(msg)? {
        if ifindex_of(&reply) != Some(ifindex) {
            continue;
        }
        let handle = reply.get(8..12).and_then(u32_of).unwrap_or(0);
        let parent = reply.get(12..16).and_then(u32_of).unwrap_or(0);
        let mut qdisc = Qdisc { kind: String::new(), handle, parent, r2q: None };
        for (kind, value) in attrs(reply.get(20..).unwrap_or_default()) {
            match kind {
                TCA_KIND => qdisc.kind = c_string(value),
                TCA_OPTIONS => qdisc.r2q = htb_r2q(value),
                _ => {}
            }
        }
        if qdisc.kind != "htb" {
            qdisc.r2q = None;
        }
        out.push(qdisc);
    }
    Ok(out)
}

/// `rate2quantum` in HTB's options (the second field of `struct tc_htb_glob`).
fn htb_r2q(options: &[u8]) -> Option<u32> {
    attrs(options).find(|(k, _)| *k == TCA_HTB_INIT).and_then(|(_, glob)| glob.get(4..8).and_then(u32_of))
}

/// The root qdisc of `ifindex`, if the interface has one.
pub fn root_qdisc(nl: &Netlink, ifindex: u32) -> Result<Option<Qdisc>, TcError> {
    Ok(qdiscs(nl, ifindex)?.into_iter().find(|q| q.parent == TC_H_ROOT))
}

fn ratespec(bps: u64) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = TC_LINKLAYER_ETHERNET;
    // Rates of 2^32 bytes/s and more travel in TCA_HTB_{RATE,CEIL}64; this
    // field must still be non-zero.
    let bytes = (bps / 8).clamp(1, u64::from(u32::MAX)) as u32;
    r[8..12].copy_from_slice(&bytes.to_ne_bytes());
    r
}

/// Time to send `bytes` at `bps`, in psched ticks (how HTB takes its bursts).
fn burst_ticks(bytes: u32, bps: u64) -> u32 {
    let bytes_per_sec = (bps / 8).max(1);
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(bytes_per_sec);
    (ns / u128::from(NS_PER_TICK)).min(u128::from(u32::MAX)) as u32
}

fn class_message(ifindex: u32, class: &HtbClass, parent: u32, flags: u16, what: String) -> Message {
    let handle = htb_handle(class.minor);
    let mut msg = Message::new(RTM_NEWTCLASS, flags, what);
    msg.push(&tcmsg(ifindex, handle, parent)).attr_str(TCA_KIND, "htb");
    let mut opt = Vec::with_capacity(44);
    opt.extend_from_slice(&ratespec(class.rate_bps));
    opt.extend_from_slice(&ratespec(class.ceil_bps));
    opt.extend_from_slice(&burst_ticks(class.burst_bytes, class.rate_bps).to_ne_bytes());
    opt.extend_from_slice(&burst_ticks(class.cburst_bytes, class.ceil_bps).to_ne_bytes());
    opt.extend_from_slice(&class.quantum.to_ne_bytes());
    opt.extend_from_slice(&0u32.to_ne_bytes()); // level: the kernel computes it
    opt.extend_from_slice(&class.prio.to_ne_bytes());
    let nest = msg.begin_nest(TCA_OPTIONS);
    msg.attr(TCA_HTB_PARMS, &opt);
    if class.rate_bps / 8 > u64::from(u32::MAX) {
        msg.attr_u64(TCA_HTB_RATE64, class.rate_bps / 8);
    }
    if class.ceil_bps / 8 > u64::from(u32::MAX) {
        msg.attr_u64(TCA_HTB_CEIL64, class.ceil_bps / 8);
    }
    msg.end_nest(nest);
    msg
}

fn htb_handle(minor: u32) -> u32 {
    (shaper_common::HTB_MAJOR << 16) | minor
}

/// `struct tc_htb_glob`: version, rate2quantum, default class. Every class
/// shaper makes has an explicit quantum, so HTB never uses rate2quantum:
/// it carries `tag`, the mark of shaper's own trees ([`crate::owned`]).
fn htb_glob(default_minor: u32, tag: u32) -> [u8; 20] {
    let mut glob = [0u8; 20];
    glob[0..4].copy_from_slice(&3u32.to_ne_bytes()); // version
    glob[4..8].copy_from_slice(&tag.to_ne_bytes()); // rate2quantum
    glob[8..12].copy_from_slice(&default_minor.to_ne_bytes());
    glob
}

/// The messages that build `plan` on `ifindex`: the HTB qdisc, its root class,
/// then each leaf class and the queue under it.
fn htb_messages(ifindex: u32, plan: &HtbPlan, tag: u32) -> Vec<Message> {
    let qdisc_handle = shaper_common::HTB_MAJOR << 16;
    let mut msgs = Vec::with_capacity(2 + 2 * plan.leaves.len());
    let mut qdisc = Message::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, "adding the HTB root qdisc 1:");
    qdisc.push(&tcmsg(ifindex, qdisc_handle, TC_H_ROOT)).attr_str(TCA_KIND, "htb");
    let nest = qdisc.begin_nest(TCA_OPTIONS);
    qdisc.attr(TCA_HTB_INIT, &htb_glob(plan.default_minor, tag));
    qdisc.end_nest(nest);
    msgs.push(qdisc);
    msgs.push(class_message(
        ifindex,
        &plan.root,
        qdisc_handle,
        NLM_F_CREATE | NLM_F_EXCL,
        "adding the HTB root class".into(),
    ));
    for leaf in &plan.leaves {
        msgs.extend(add_leaf_messages(ifindex, leaf));
    }
    msgs
}

/// The messages that add `leaf` (and its queue) to the tree on `ifindex`.
fn add_leaf_messages(ifindex: u32, leaf: &HtbLeaf) -> Vec<Message> {
    let handle = htb_handle(leaf.class.minor);
    let what = format!("adding HTB class {}", format_handle(handle));
    let mut msgs =
        vec![class_message(ifindex, &leaf.class, htb_handle(leaf.parent), NLM_F_CREATE | NLM_F_EXCL, what)];
    msgs.extend(leaf_queue_message(ifindex, leaf, NLM_F_CREATE | NLM_F_EXCL));
    msgs
}

/// Adds one leaf (an instance's) to the tree on `ifindex`.
pub fn add_leaf(nl: &Netlink, ifindex: u32, leaf: &HtbLeaf) -> Result<(), TcError> {
    nl.batch(&mut add_leaf_messages(ifindex, leaf))
}

/// Deletes class `1:minor` (with its queue) from the tree on `ifindex`.
pub fn delete_class(nl: &Netlink, ifindex: u32, minor: u32) -> Result<(), TcError> {
    nl.request(delete_class_message(ifindex, htb_handle(minor)))
}

/// Builds the HTB tree of `plan` as the root qdisc of `ifindex`, marked with
/// `tag` (in HTB's rate2quantum). The root qdisc must be a kernel default. On
/// failure the half-built tree is removed, and only it: a root qdisc without
/// `tag` is someone else's (the kernel refused ours because it was there).
pub fn install_htb(nl: &Netlink, ifindex: u32, plan: &HtbPlan, tag: u32) -> Result<(), TcError> {
    let mut msgs = htb_messages(ifindex, plan, tag);
    // The qdisc alone first: the kernel applies the rest of a batch after a
    // refusal, and the classes would go into whatever root refused ours.
    let classes = msgs.split_off(1);
    nl.batch(&mut msgs)?;
    let mut msgs = classes;
    if let Err(e) = nl.batch(&mut msgs) {
        // Deleting the root takes every class and queue under it along.
        match root_qdisc(nl, ifindex) {
            Ok(Some(q)) if is_tagged_htb_root(&q, tag) => {
                if let Err(cleanup) = remove_htb_root(nl, ifindex) {
                    log::warn!("removing a half-built HTB tree: {cleanup}");
                }
            }
            Ok(_) => {}
            Err(cleanup) => log::warn!("looking for a half-built HTB tree: {cleanup}"),
        }
        return Err(e);
    }
    Ok(())
}

/// Whether `qdisc` is an HTB root of the shape shaper builds (handle `1:`)
/// carrying `tag` in its rate2quantum.
pub fn is_tagged_htb_root(qdisc: &Qdisc, tag: u32) -> bool {
    qdisc.kind == "htb"
        && qdisc.handle == shaper_common::HTB_MAJOR << 16
        && qdisc.parent == TC_H_ROOT
        && qdisc.r2q == Some(tag)
}

/// Brings the HTB tree shaper left on `ifindex` to `plan` without taking it
/// down: classes that exist are changed in place (their queued packets and
/// counters stay), missing ones are added. Classes the plan no longer has are
/// left for [`prune_htb`], once no flow is sent to them. `previous` is the
/// plan this process last applied to the tree, if any: what it already has,
/// unchanged, is not sent again (one rate changed among 1 000 classes is one
/// message, not 2 000).
///
/// All or nothing: if the kernel refuses a request, what it accepted is taken
/// back (exactly where `previous` says what the tree had) and the refusal is
/// returned. On success, the returned [`Undo`] takes the whole change back.
pub fn sync_htb(
    nl: &Netlink,
    ifindex: u32,
    plan: &HtbPlan,
    previous: Option<&HtbPlan>,
    tag: u32,
) -> Result<Undo, TcError> {
    let existing: std::collections::HashSet<u32> =
        htb_stats(nl, ifindex)?.iter().map(|c| c.classid).collect();
    let mut undo = Undo::default();
    // The default class of unclassified packets (the classifier stamps every
    // packet, so this matters only for what it cannot see). Older kernels
    // cannot change it in place; that is not worth a rebuild.
    if previous.is_none_or(|p| p.default_minor != plan.default_minor) {
        match nl.request(default_message(ifindex, plan.default_minor, tag)) {
            Ok(()) => {
                if let Some(p) = previous {
                    undo.push(default_message(ifindex, p.default_minor, tag));
                }
            }
            Err(e) => log::debug!("{e}"),
        }
    }
    // The queues under the classes now (parent → kind, handle): a queue of
    // another kind cannot be changed into the one planned, only replaced.
    let queues: std::collections::HashMap<u32, (String, u32)> =
        qdiscs(nl, ifindex)?.into_iter().map(|q| (q.parent, (q.kind, q.handle))).collect();
    let steps = sync_steps(ifindex, plan, previous, &existing, &queues);
    match undo::apply(nl, steps) {
        Ok(later) => {
            undo.extend(later);
            Ok(undo)
        }
        Err(e) => {
            undo.run(nl);
            Err(e)
        }
    }
}

fn default_message(ifindex: u32, default_minor: u32, tag: u32) -> Message {
    let mut qdisc = Message::new(RTM_NEWQDISC, 0, "changing the HTB root qdisc 1:");
    qdisc.push(&tcmsg(ifindex, shaper_common::HTB_MAJOR << 16, TC_H_ROOT)).attr_str(TCA_KIND, "htb");
    let nest = qdisc.begin_nest(TCA_OPTIONS);
    qdisc.attr(TCA_HTB_INIT, &htb_glob(default_minor, tag));
    qdisc.end_nest(nest);
    qdisc
}

fn delete_class_message(ifindex: u32, classid: u32) -> Message {
    let mut msg = Message::new(RTM_DELTCLASS, 0, format!("deleting HTB class {}", format_handle(classid)));
    msg.push(&tcmsg(ifindex, classid, 0));
    msg
}

/// The requests of [`sync_htb`], each with its undo.
fn sync_steps(
    ifindex: u32,
    plan: &HtbPlan,
    previous: Option<&HtbPlan>,
    existing: &std::collections::HashSet<u32>,
    queues: &std::collections::HashMap<u32, (String, u32)>,
) -> Vec<Step> {
    let qdisc_handle = shaper_common::HTB_MAJOR << 16;
    let root = htb_handle(plan.root.minor);
    let mut steps = Vec::new();
    if !existing.contains(&root) || previous.is_none_or(|p| p.root != plan.root) {
        let (flags, undo) = if existing.contains(&root) {
            let back = previous.map(|p| {
                class_message(ifindex, &p.root, qdisc_handle, 0, "restoring the HTB root class".into())
            });
            (0, back)
        } else {
            (NLM_F_CREATE | NLM_F_EXCL, Some(delete_class_message(ifindex, root)))
        };
        let request =
            class_message(ifindex, &plan.root, qdisc_handle, flags, "changing the HTB root class".into());
        steps.push(Step { request, undo });
    }
    let applied: std::collections::HashSet<&HtbLeaf> =
        previous.map(|p| p.leaves.iter().collect()).unwrap_or_default();
    // A class that loses `per` turns back into a leaf only once its children
    // are gone (HTB puts a queue under it again): its shared leaf goes first.
    let wanted: std::collections::HashSet<u32> = plan.leaves.iter().map(|l| l.class.minor).collect();
    for gone in previous.map(|p| p.leaves.as_slice()).unwrap_or_default() {
        let parent_stays_a_leaf =
            plan.leaves.iter().any(|l| l.class.minor == gone.parent && l.queue != LeafQueue::Inner);
        if parent_stays_a_leaf
            && !wanted.contains(&gone.class.minor)
            && existing.contains(&htb_handle(gone.class.minor))
        {
            steps.push(Step {
                request: delete_class_message(ifindex, htb_handle(gone.class.minor)),
                undo: None,
            });
        }
    }
    for leaf in &plan.leaves {
        let handle = htb_handle(leaf.class.minor);
        let root = htb_handle(leaf.parent);
        if existing.contains(&handle) && applied.contains(leaf) {
            continue;
        }
        if existing.contains(&handle) {
            let was = previous.and_then(|p| p.leaves.iter().find(|l| l.class.minor == leaf.class.minor));
            let what = format!("changing HTB class {}", format_handle(handle));
            steps.push(Step {
                request: class_message(ifindex, &leaf.class, root, 0, what),
                undo: was.map(|w| {
                    class_message(
                        ifindex,
                        &w.class,
                        root,
                        0,
                        format!("restoring HTB class {}", format_handle(handle)),
                    )
                }),
            });
            steps.extend(queue_steps(ifindex, leaf, was, queues.get(&handle)));
        } else {
            let what = format!("adding HTB class {}", format_handle(handle));
            steps.push(Step {
                request: class_message(ifindex, &leaf.class, root, NLM_F_CREATE | NLM_F_EXCL, what),
                // Deleting the class takes its queue along.
                undo: Some(delete_class_message(ifindex, handle)),
            });
            if let Some(request) = leaf_queue_message(ifindex, leaf, NLM_F_CREATE | NLM_F_EXCL) {
                steps.push(Step { request, undo: None });
            }
        }
    }
    steps
}

/// The requests that bring the queue of the existing class of `leaf` to
/// `leaf.queue`; `was`: the leaf as last applied, `now`: the kind and handle
/// of the queue the class has.
fn queue_steps(
    ifindex: u32,
    leaf: &HtbLeaf,
    was: Option<&HtbLeaf>,
    now: Option<&(String, u32)>,
) -> Vec<Step> {
    // An inner node has no queue (HTB drops a leaf's queue when it gets children).
    let Some(kind) = leaf.queue.kind() else { return Vec::new() };
    let back = |flags| was.and_then(|w| leaf_queue_message(ifindex, w, flags));
    match now {
        // Another kind under the same handle: the kernel changes a qdisc's
        // parameters, never its kind. Out with it, in with the new one.
        Some((other, handle)) if other != kind.as_str() && *handle == leaf.class.minor << 16 => {
            let mut steps = vec![Step {
                request: delete_leaf_queue_message(ifindex, leaf.class.minor),
                undo: back(NLM_F_CREATE | NLM_F_EXCL),
            }];
            steps.extend(leaf_queue_message(ifindex, leaf, NLM_F_CREATE | NLM_F_EXCL).map(|request| Step {
                request,
                undo: Some(delete_leaf_queue_message(ifindex, leaf.class.minor)),
            }));
            steps
        }
        // The same kind is changed in place; under another handle (or none)
        // the new queue is grafted in its place.
        _ => leaf_queue_message(ifindex, leaf, NLM_F_CREATE | NLM_F_REPLACE)
            .map(|request| Step { request, undo: back(NLM_F_CREATE | NLM_F_REPLACE) })
            .into_iter()
            .collect(),
    }
}

/// Deletes the HTB classes of shaper's tree on `ifindex` that `plan` does not
/// have (with their queues). Returns how many went. Instance leaves are the
/// daemon's instance table's to remove, not the plan's.
pub fn prune_htb(nl: &Netlink, ifindex: u32, plan: &HtbPlan) -> Result<usize, TcError> {
    let keep: std::collections::HashSet<u32> = std::iter::once(plan.root.minor)
        .chain(plan.leaves.iter().map(|l| l.class.minor))
        .map(htb_handle)
        .collect();
    let mut msgs: Vec<Message> = htb_stats(nl, ifindex)?
        .into_iter()
        .filter(|c| c.classid & 0xffff < shaper_common::instances::INSTANCE_MINOR_BASE)
        .filter(|c| c.classid >> 16 == shaper_common::HTB_MAJOR && !keep.contains(&c.classid))
        .map(|c| delete_class_message(ifindex, c.classid))
        .collect();
    let n = msgs.len();
    nl.batch(&mut msgs)?;
    Ok(n)
}

/// Changes the parameters of an existing leaf class in place (no packet is lost).
pub fn change_leaf(nl: &Netlink, ifindex: u32, leaf: &HtbLeaf) -> Result<(), TcError> {
    let what = format!("changing HTB class {}", format_handle(htb_handle(leaf.class.minor)));
    let mut msgs = vec![class_message(ifindex, &leaf.class, htb_handle(leaf.parent), 0, what)];
    msgs.extend(leaf_queue_message(ifindex, leaf, NLM_F_CREATE | NLM_F_REPLACE));
    nl.batch(&mut msgs)
}

/// Deletes the root qdisc of `ifindex` if its handle is `1:` (the kernel
/// refuses a root with another handle, and puts its default back). Callers
/// check first that it is shaper's ([`is_tagged_htb_root`]).
pub fn remove_htb_root(nl: &Netlink, ifindex: u32) -> Result<(), TcError> {
    let mut msg = Message::new(RTM_DELQDISC, 0, "removing the HTB root qdisc 1:");
    msg.push(&tcmsg(ifindex, shaper_common::HTB_MAJOR << 16, TC_H_ROOT));
    nl.request(msg)
}

/// Counters of every class on `ifindex`.
pub fn htb_stats(nl: &Netlink, ifindex: u32) -> Result<Vec<HtbStats>, TcError> {
    let mut msg = Message::new(RTM_GETTCLASS, 0, "reading class counters");
    msg.push(&tcmsg(ifindex, 0, 0));
    let mut out = Vec::new();
    for reply in nl.dump(msg)? {
        if ifindex_of(&reply) != Some(ifindex) {
            continue;
        }
        let mut stats =
            HtbStats { classid: reply.get(8..12).and_then(u32_of).unwrap_or(0), ..HtbStats::default() };
        for (kind, value) in attrs(reply.get(20..).unwrap_or_default()) {
            if kind != TCA_STATS2 {
                continue;
            }
            for (k, v) in attrs(value) {
                match k {
                    TCA_STATS_BASIC => {
                        stats.bytes = u64_of(v).unwrap_or(0);
                        stats.packets = v.get(8..12).and_then(u32_of).map_or(0, u64::from);
                    }
                    TCA_STATS_PKT64 => stats.packets = u64_of(v).unwrap_or(stats.packets),
                    TCA_STATS_QUEUE => {
                        stats.backlog = v.get(4..8).and_then(u32_of).unwrap_or(0);
                        stats.drops = v.get(8..12).and_then(u32_of).unwrap_or(0);
                        stats.overlimits = v.get(16..20).and_then(u32_of).unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
        out.push(stats);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_print_as_tc_prints_them() {
        assert_eq!(format_handle(0x0001_0000), "1:");
        assert_eq!(format_handle(0x0001_0010), "1:10");
        assert_eq!(format_handle(0x0005_0000), "5:");
        assert_eq!(format_handle(0x0001_040f), "1:40f");
        assert_eq!(format_handle(TC_H_ROOT), "root");
    }

    #[test]
    fn bursts_become_ticks_of_64_ns() {
        // 125 000 bytes at 1 Gbit/s (125 MB/s) take 1 ms = 15 625 ticks.
        assert_eq!(burst_ticks(125_000, 1_000_000_000), 15_625);
        // Very slow classes do not overflow.
        assert_eq!(burst_ticks(u32::MAX, 8), u32::MAX);
    }

    #[test]
    fn rates_above_32_bits_of_bytes_use_the_64_bit_attributes() {
        let class = HtbClass {
            minor: 0x10,
            rate_bps: 40_000_000_000,
            ceil_bps: 1_000_000,
            prio: 1,
            burst_bytes: 70_000,
            cburst_bytes: 70_000,
            quantum: 1514,
        };
        let mut msg = class_message(3, &class, 0x1_0001, 0, "t".into());
        let bytes = msg.finish(1).to_vec();
        let body = &bytes[16 + 20..];
        let options = attrs(body).find(|(k, _)| *k == TCA_OPTIONS).unwrap().1;
        let kinds: Vec<u16> = attrs(options).map(|(k, _)| k).collect();
        assert_eq!(kinds, [TCA_HTB_PARMS, TCA_HTB_RATE64]);
        let parms = attrs(options).next().unwrap().1;
        assert_eq!(parms.len(), 44);
        assert_eq!(u32_of(&parms[8..12]), Some(u32::MAX)); // rate field saturated
        assert_eq!(u32_of(&parms[20..24]), Some(125_000)); // ceil: 1 Mbit/s = 125 kB/s
        assert_eq!(u32_of(&parms[40..44]), Some(1)); // prio
    }
}
