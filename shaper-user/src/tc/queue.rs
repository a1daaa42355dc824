//! The queues under HTB leaves, and what the kernel offers for them.

use super::{
    create_ifb, delete_link, format_handle, htb_handle, netlink::Message, tcmsg, HtbLeaf, Netlink, TcError,
    NLM_F_CREATE, NLM_F_EXCL, RTM_DELQDISC, RTM_NEWQDISC, TCA_KIND, TCA_OPTIONS, TC_H_ROOT,
};
use crate::config::QueueKind;

/// The queue under a leaf class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeafQueue {
    /// A FIFO limited in bytes.
    Bfifo { limit_bytes: u32 },
    /// A FIFO limited in packets.
    Pfifo { limit_packets: u32 },
    /// fq_codel with the kernel's defaults.
    FqCodel,
    /// None: the class is an inner node (a class with `per`), its children queue.
    Inner,
}

impl LeafQueue {
    /// The queue's kind (`None`: an inner node has none).
    pub fn kind(&self) -> Option<QueueKind> {
        match self {
            LeafQueue::Bfifo { .. } => Some(QueueKind::Bfifo),
            LeafQueue::Pfifo { .. } => Some(QueueKind::Pfifo),
            LeafQueue::FqCodel => Some(QueueKind::FqCodel),
            LeafQueue::Inner => None,
        }
    }

    /// As tc's command line takes it: "bfifo limit 131072".
    pub fn tc_spec(&self) -> Option<String> {
        match self {
            LeafQueue::Bfifo { limit_bytes } => Some(format!("bfifo limit {limit_bytes}")),
            LeafQueue::Pfifo { limit_packets } => Some(format!("pfifo limit {limit_packets}")),
            LeafQueue::FqCodel => Some("fq_codel".to_string()),
            LeafQueue::Inner => None,
        }
    }
}

/// The handle of the queue of the leaf with HTB minor `minor`: its major is
/// the class's minor ("qdisc bfifo 10: parent 1:10").
fn queue_handle(minor: u32) -> u32 {
    minor << 16
}

/// Adds (`flags` with NLM_F_EXCL) or changes in place (NLM_F_REPLACE; the
/// kind must stay) the queue of `leaf`; `None` for an inner node.
pub(super) fn leaf_queue_message(ifindex: u32, leaf: &HtbLeaf, flags: u16) -> Option<Message> {
    let kind = leaf.queue.kind()?;
    let parent = htb_handle(leaf.class.minor);
    let mut msg =
        Message::new(RTM_NEWQDISC, flags, format!("adding the queue of class {}", format_handle(parent)));
    msg.push(&tcmsg(ifindex, queue_handle(leaf.class.minor), parent)).attr_str(TCA_KIND, kind.as_str());
    match leaf.queue {
        // struct tc_fifo_qopt { __u32 limit; }
        LeafQueue::Bfifo { limit_bytes: limit } | LeafQueue::Pfifo { limit_packets: limit } => {
            msg.attr(TCA_OPTIONS, &limit.to_ne_bytes());
        }
        LeafQueue::FqCodel | LeafQueue::Inner => {}
    }
    Some(msg)
}

/// Removes the queue of the leaf with HTB minor `minor` (HTB puts a default
/// FIFO in its place until another is added).
pub(super) fn delete_leaf_queue_message(ifindex: u32, minor: u32) -> Message {
    let parent = htb_handle(minor);
    let mut msg =
        Message::new(RTM_DELQDISC, 0, format!("replacing the queue of class {}", format_handle(parent)));
    msg.push(&tcmsg(ifindex, queue_handle(minor), parent));
    msg
}

/// What the kernel offers for leaf queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub fq_codel: bool,
}

impl Kernel {
    /// The queue of a class that names none: fq_codel where the kernel has
    /// it, else a byte FIFO.
    pub fn default_queue(self) -> QueueKind {
        if self.fq_codel {
            QueueKind::FqCodel
        } else {
            QueueKind::Bfifo
        }
    }

    /// Asks the kernel by trying: an fq_codel root qdisc on a device made for
    /// the purpose and deleted at once (an IFB of shaper's own, never an
    /// interface of the host). A kernel that builds it as a module loads it.
    pub fn probe(nl: &Netlink) -> Result<Kernel, TcError> {
        let name = format!("shpq{}", std::process::id());
        let link = create_ifb(nl, &name, 1500, 1000)?;
        let fq_codel = has_root_qdisc(nl, link.index, QueueKind::FqCodel.as_str());
        let deleted = delete_link(nl, link.index, &name);
        let fq_codel = fq_codel?;
        deleted?;
        Ok(Kernel { fq_codel })
    }
}

/// Whether a root qdisc of `kind` can be added on `ifindex`: false when the
/// kernel does not know the kind.
fn has_root_qdisc(nl: &Netlink, ifindex: u32, kind: &str) -> Result<bool, TcError> {
    let add = || {
        let mut msg = Message::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, format!("trying a {kind} qdisc"));
        msg.push(&tcmsg(ifindex, 0x7fff_0000, TC_H_ROOT)).attr_str(TCA_KIND, kind);
        nl.request(msg)
    };
    // EAGAIN: the kernel just loaded the module; ask again.
    let result = match add() {
        Err(TcError::Kernel { errno, .. }) if errno == libc::EAGAIN => add(),
        other => other,
    };
    match result {
        Ok(()) => Ok(true),
        Err(TcError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}
