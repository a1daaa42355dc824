//! From a validated config to the HTB tree of one interface and direction:
//! guaranteed rates, ceilings, bursts, quanta and leaf queues.
//!
//! - A class without a rate reserves nothing; it gets an equal share of the
//!   capacity left unreserved as its HTB rate (HTB needs one) and may borrow up
//!   to its ceil.
//! - Ceilings above the interface capacity are clamped to it; a class without
//!   a ceil may use the whole capacity.
//! - Bursts cover [`BURST_TIME`] at the class's rate: tc's defaults shrink the
//!   burst at high rates until HTB cannot keep a multi-gigabit class busy
//!   between timer wake-ups. Slower classes get [`BURST_SLACK`] of traffic, up
//!   to one GSO packet, and at least two frames: enough to ride out a late
//!   timer, and never half a second at line rate for a 1 Mbit/s class (a
//!   packet larger than the burst still goes; the class waits it off).
//! - Quanta follow the rate (weighted sharing of borrowed bandwidth), clamped to
//!   [one frame, [`MAX_QUANTUM`]].
//! - A class with `per` is an inner node (rate: its rate; ceil: `total`, else
//!   the capacity) with a shared leaf for traffic whose instance has no leaf
//!   yet; each instance's leaf (made by the daemon on first sight, see
//!   [`instance_leaf`]) has the class's rate and ceil, or with `total` a
//!   guaranteed rate of `total / MAX_INSTANCES_PER_CLASS` (so the guarantees
//!   never add up past `total`) and the ceil capped at `total`: instances then
//!   share `total` equally by borrowing.
//! - Every tree has a leaf for bare TCP acknowledgements
//!   ([`shaper_common::HTB_ACK_MINOR`], priority 0, rate 1/100 and ceil 1/20
//!   of the capacity): the classifier sends them there, so the ACKs of a
//!   download are never queued behind an upload that fills their class.
//! - Leaves queue in the class's `queue`: fq_codel (the kernel's defaults), or
//!   a FIFO of [`QUEUE_TIME_US`] at the ceil (a pfifo counts it in frames of the
//!   MTU: a FIFO of 1000 GSO packets would hold seconds). A class that names
//!   none has the queue the daemon chose for the kernel (a byte FIFO where it
//!   has no fq_codel; see [`crate::tc::Kernel`]).

use shaper_common::{
    instances::{shared_minor, MAX_INSTANCES_PER_CLASS},
    HTB_ACK_MINOR, HTB_LEAF_MINOR_BASE, HTB_ROOT_MINOR, MAX_CLASSES,
};

use crate::{
    classids::ClassIds,
    config::{ClassConfig, Config, InterfaceConfig, Per, QueueKind},
    tc::{HtbClass, HtbLeaf, HtbPlan, LeafQueue},
};

/// Time of traffic at the class rate a burst may carry.
pub const BURST_TIME_US: u64 = 4_000;
/// Below that, a burst covers this much time (up to one GSO packet): a class
/// whose timer fires late loses what its burst cannot hold (a 20 Mbit/s class
/// with 4 ms delivered 16.5 Mbit/s beside busy classes on a 2-core VM).
pub const BURST_SLACK_US: u64 = 25_000;
/// Largest segmentation-offload packet HTB may see at once.
pub const GSO_MAX_BYTES: u64 = 65_536;
/// Upper bound of a class quantum.
pub const MAX_QUANTUM: u64 = 256 * 1024;
/// Time of traffic at the class ceil a leaf queue holds.
pub const QUEUE_TIME_US: u64 = 100_000;
pub const MIN_QUEUE_BYTES: u64 = 128 * 1024;
pub const MAX_QUEUE_BYTES: u64 = 16 * 1024 * 1024;
/// HTB needs a rate above zero even for classes that reserve nothing.
pub const MIN_RATE_BPS: u64 = 8_000;

pub use shaper_common::Direction;

/// One leaf as planned, with the class it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedClass {
    pub index: u16,
    pub name: String,
    pub rate_bps: u64,
    pub ceil_bps: u64,
    pub priority: u8,
    pub queue: QueueKind,
    /// With `per`: what each instance's leaf gets.
    pub per: Option<PlannedPer>,
}

/// The leaves of a class's instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPer {
    pub per: Per,
    pub rate_bps: u64,
    pub ceil_bps: u64,
    pub idle: std::time::Duration,
}

/// The tree for one interface and direction.
#[derive(Clone, Debug)]
pub struct Plan {
    pub direction: Direction,
    pub capacity_bps: u64,
    pub default_class: u16,
    pub classes: Vec<PlannedClass>,
    pub htb: HtbPlan,
}

/// HTB minor of class index `class`.
pub fn leaf_minor(class: u16) -> u32 {
    HTB_LEAF_MINOR_BASE + u32::from(class)
}

fn bytes_per_sec(bps: u64) -> u64 {
    bps / 8
}

fn time_bytes(bps: u64, micros: u64) -> u64 {
    (u128::from(bytes_per_sec(bps)) * u128::from(micros) / 1_000_000) as u64
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
}

/// HTB parameters of a class at `rate_bps`/`ceil_bps`.
fn htb_class(minor: u32, rate_bps: u64, ceil_bps: u64, priority: u8, mtu: u32) -> HtbClass {
    let frame = u64::from(mtu) + 14;
    let burst = |bps| {
        let slack = time_bytes(bps, BURST_SLACK_US).min(GSO_MAX_BYTES + frame);
        clamp_u32(time_bytes(bps, BURST_TIME_US).max(slack).max(2 * frame))
    };
    let quantum = time_bytes(rate_bps, 1_000).clamp(frame, MAX_QUANTUM);
    HtbClass {
        minor,
        rate_bps,
        ceil_bps,
        prio: u32::from(priority),
        burst_bytes: burst(rate_bps),
        cburst_bytes: burst(ceil_bps),
        quantum: clamp_u32(quantum),
    }
}

/// A leaf queue of `kind` for a leaf whose ceil is `ceil_bps`: the FIFOs
/// hold [`QUEUE_TIME_US`] at the ceil (a pfifo in frames of the MTU).
fn leaf_queue(kind: QueueKind, ceil_bps: u64, mtu: u32) -> LeafQueue {
    let bytes = time_bytes(ceil_bps, QUEUE_TIME_US).clamp(MIN_QUEUE_BYTES, MAX_QUEUE_BYTES);
    match kind {
        QueueKind::Bfifo => LeafQueue::Bfifo { limit_bytes: clamp_u32(bytes) },
        QueueKind::Pfifo => LeafQueue::Pfifo { limit_packets: clamp_u32(bytes / (u64::from(mtu) + 14)) },
        QueueKind::FqCodel => LeafQueue::FqCodel,
    }
}

/// HTB parameters and queue of one leaf.
pub fn leaf(class: &PlannedClass, mtu: u32) -> HtbLeaf {
    HtbLeaf {
        class: htb_class(leaf_minor(class.index), class.rate_bps, class.ceil_bps, class.priority, mtu),
        parent: HTB_ROOT_MINOR,
        queue: leaf_queue(class.queue, class.ceil_bps, mtu),
    }
}

/// The HTB classes of one class: its leaf, or with `per` its inner node and
/// shared leaf.
fn class_tree(class: &PlannedClass, mtu: u32) -> Vec<HtbLeaf> {
    let mut own = leaf(class, mtu);
    let Some(per) = &class.per else { return vec![own] };
    own.queue = LeafQueue::Inner;
    vec![own, instance_leaf(class, per, shared_minor(u32::from(class.index)), mtu)]
}

/// The leaf of one instance of `class` (minor `minor`), under the class.
pub fn instance_leaf(class: &PlannedClass, per: &PlannedPer, minor: u32, mtu: u32) -> HtbLeaf {
    HtbLeaf {
        class: htb_class(minor, per.rate_bps, per.ceil_bps, class.priority, mtu),
        parent: leaf_minor(class.index),
        queue: leaf_queue(class.queue, per.ceil_bps, mtu),
    }
}

/// The leaf of bare TCP acknowledgements: served first, at most 1/20 of the capacity.
fn ack_leaf(capacity: u64, mtu: u32) -> HtbLeaf {
    let rate = (capacity / 100).max(MIN_RATE_BPS);
    let ceil = (capacity / 20).max(rate);
    HtbLeaf {
        class: htb_class(HTB_ACK_MINOR, rate, ceil, 0, mtu),
        parent: HTB_ROOT_MINOR,
        queue: leaf_queue(QueueKind::Bfifo, ceil, mtu),
    }
}

/// What each instance of a class with `rate`/`ceil` and `per` gets.
fn planned_per(class: &ClassConfig, rate: u64, ceil: u64, capacity: u64) -> Option<(u64, u64, PlannedPer)> {
    let per = class.per?;
    let (node, each) = match per.total_bps {
        Some(total) => {
            let total = total.min(capacity);
            let guaranteed = (total / u64::from(MAX_INSTANCES_PER_CLASS)).max(MIN_RATE_BPS);
            let each_ceil = ceil.min(total);
            ((rate.min(total), total), (rate.min(guaranteed).min(each_ceil), each_ceil))
        }
        None => ((rate, capacity), (rate, ceil)),
    };
    Some((node.0, node.1, PlannedPer { per: per.per, rate_bps: each.0, ceil_bps: each.1, idle: per.idle }))
}

/// The plan for `iface` in `direction` with the class indices `ids`, or
/// `None` when the interface has no capacity set for that direction (ingress
/// is optional) or `ids` has no index for its default class.
pub fn plan(
    config: &Config,
    ids: &ClassIds,
    iface: &InterfaceConfig,
    direction: Direction,
    mtu: u32,
) -> Option<Plan> {
    let capacity = match direction {
        Direction::Egress => iface.egress_bps,
        Direction::Ingress => iface.ingress_bps?,
    };
    let default_class = ids.index(&iface.default_class)?;
    let classes: Vec<&ClassConfig> = config.classes_on(iface).collect();
    // Validated rates cannot overflow this sum; saturating keeps any other tree sane.
    let reserved = classes
        .iter()
        .filter_map(|c| c.limit(direction).and_then(|l| l.rate_bps))
        .fold(0u64, u64::saturating_add);
    let unrated =
        classes.iter().filter(|c| c.limit(direction).and_then(|l| l.rate_bps).is_none()).count() as u64;
    let share = capacity.saturating_sub(reserved).checked_div(unrated).unwrap_or(0).max(MIN_RATE_BPS);
    let planned: Vec<PlannedClass> = classes
        .iter()
        .take(MAX_CLASSES as usize)
        .filter_map(|c| {
            let l = c.limit(direction);
            let ceil = l.and_then(|l| l.ceil_bps).unwrap_or(capacity).min(capacity);
            let rate = l.and_then(|l| l.rate_bps).unwrap_or(share).min(ceil);
            let (rate, ceil, per) = match planned_per(c, rate, ceil, capacity) {
                Some((rate, ceil, per)) => (rate, ceil, Some(per)),
                None => (rate, ceil, None),
            };
            Some(PlannedClass {
                index: ids.index(&c.name)?,
                name: c.name.clone(),
                rate_bps: rate,
                ceil_bps: ceil,
                priority: c.priority,
                per,
                queue: c.queue.unwrap_or(QueueKind::Bfifo),
            })
        })
        .collect();
    let htb = HtbPlan {
        // A default class with `per` takes unclassified packets in its shared leaf.
        default_minor: match planned.iter().find(|c| c.index == default_class) {
            Some(PlannedClass { per: Some(_), .. }) => shared_minor(u32::from(default_class)),
            _ => leaf_minor(default_class),
        },
        root: htb_class(HTB_ROOT_MINOR, capacity, capacity, 0, mtu),
        leaves: planned.iter().flat_map(|c| class_tree(c, mtu)).chain([ack_leaf(capacity, mtu)]).collect(),
    };
    Some(Plan { direction, capacity_bps: capacity, default_class, classes: planned, htb })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config;

    fn plan_of(text: &str) -> Plan {
        let env = crate::rules::SystemEnv::default();
        let conf = config::parse(Path::new("t.toml"), text, &env.env()).unwrap();
        plan(&conf, &conf.class_ids_in_file_order(), &conf.interfaces[0], Direction::Egress, 1500).unwrap()
    }

    #[test]
    fn unrated_classes_share_what_the_rated_ones_leave() {
        let p = plan_of(
            "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n\
             [[class]]\nname = \"a\"\negress = \"40mbit\"\n\
             [[class]]\nname = \"b\"\negress = { ceil = \"500mbit\" }\n",
        );
        let limits: Vec<(&str, u64, u64)> =
            p.classes.iter().map(|c| (c.name.as_str(), c.rate_bps, c.ceil_bps)).collect();
        // b and the implicit default split the 60 Mbit/s a leaves; ceilings stop at the capacity.
        assert_eq!(
            limits,
            [
                ("a", 40_000_000, 40_000_000),
                ("b", 30_000_000, 100_000_000),
                ("default", 30_000_000, 100_000_000)
            ]
        );
        assert_eq!(p.htb.default_minor, 0x12);
        assert_eq!((p.htb.root.rate_bps, p.htb.root.ceil_bps), (100_000_000, 100_000_000));
    }

    #[test]
    fn rates_no_file_can_give_never_overflow_the_plan() {
        // Validation keeps each rate below 10^15 bits/s; the plan still sums
        // with checked arithmetic, whatever it is handed.
        let env = crate::rules::SystemEnv::default();
        let text = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n\
                    [[class]]\nname = \"a\"\negress = \"1mbit\"\n[[class]]\nname = \"b\"\negress = \"1mbit\"\n";
        let mut conf = config::parse(Path::new("t.toml"), text, &env.env()).unwrap();
        conf.interfaces[0].egress_bps = u64::MAX;
        for class in &mut conf.classes[..2] {
            class.egress = Some(config::Limit { rate_bps: Some(u64::MAX), ceil_bps: None });
        }
        let ids = conf.class_ids_in_file_order();
        let p = plan(&conf, &ids, &conf.interfaces[0], Direction::Egress, 1500).unwrap();
        let rates: Vec<(u64, u64)> = p.classes.iter().map(|c| (c.rate_bps, c.ceil_bps)).collect();
        assert_eq!(rates, [(u64::MAX, u64::MAX), (u64::MAX, u64::MAX), (MIN_RATE_BPS, u64::MAX)]);
    }

    #[test]
    fn bursts_and_quanta_follow_the_rate() {
        let class = |bps| PlannedClass {
            index: 0,
            name: "c".into(),
            rate_bps: bps,
            ceil_bps: bps,
            priority: 4,
            per: None,
            queue: QueueKind::Bfifo,
        };
        // 5 Gbit/s: 4 ms of traffic (2.5 MB), where tc's default would be a few kB.
        let fast = leaf(&class(5_000_000_000), 1500);
        assert_eq!((fast.class.burst_bytes, fast.class.cburst_bytes), (2_500_000, 2_500_000));
        assert_eq!(fast.class.quantum, MAX_QUANTUM as u32);
        assert_eq!(fast.queue, LeafQueue::Bfifo { limit_bytes: 16 * 1024 * 1024 });
        // 1 Mbit/s: 25 ms of traffic, a quantum of one frame.
        let slow = leaf(&class(1_000_000), 1500);
        assert_eq!(slow.class.burst_bytes, 3_125);
        // 20 Mbit/s: 25 ms; 100 Mbit/s: one GSO packet and a frame (5 ms).
        assert_eq!(leaf(&class(20_000_000), 1500).class.burst_bytes, 62_500);
        assert_eq!(leaf(&class(100_000_000), 1500).class.burst_bytes, 65_536 + 1514);
        assert_eq!(slow.class.quantum, 1514);
        assert_eq!(slow.queue, LeafQueue::Bfifo { limit_bytes: 128 * 1024 });
        assert_eq!(slow.class.minor, 0x10);
        // A packet FIFO holds as many frames of the MTU: 100 ms at 100 Mbit/s.
        let pfifo = PlannedClass { queue: QueueKind::Pfifo, ..class(100_000_000) };
        assert_eq!(leaf(&pfifo, 1500).queue, LeafQueue::Pfifo { limit_packets: 1_250_000 / 1514 });
        assert_eq!(
            leaf(&PlannedClass { queue: QueueKind::Pfifo, ..class(1_000_000) }, 1500).queue,
            LeafQueue::Pfifo { limit_packets: 86 }
        );
    }

    #[test]
    fn a_class_with_per_is_an_inner_node_with_a_shared_leaf() {
        let p = plan_of(
            "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n\
             [[class]]\nname = \"a\"\negress = \"5mbit\"\nper = \"user\"\n\
             [[class]]\nname = \"b\"\negress = \"5mbit\"\nper = \"program\"\ntotal = \"6mbit\"\n",
        );
        let tree: Vec<(u32, u32, u64, u64, bool)> = p.htb.leaves[..4]
            .iter()
            .map(|l| {
                (l.class.minor, l.parent, l.class.rate_bps, l.class.ceil_bps, l.queue == LeafQueue::Inner)
            })
            .collect();
        assert_eq!(
            tree,
            [
                (0x10, 1, 5_000_000, 100_000_000, true),
                (0x800, 0x10, 5_000_000, 5_000_000, false),
                (0x11, 1, 5_000_000, 6_000_000, true),
                (0x801, 0x11, MIN_RATE_BPS, 5_000_000, false),
            ]
        );
        let per = p.classes[1].per.clone().unwrap();
        assert_eq!((per.per, per.rate_bps, per.ceil_bps), (Per::Program, MIN_RATE_BPS, 5_000_000));
    }
}
