//! Changes that apply wholly or not at all: each request of a batch is sent
//! with the request that takes it back, and when the kernel refuses one, the
//! ones it accepted are taken back (newest first), so the tree is left as it
//! was before the batch.

use super::{
    netlink::{Message, Netlink},
    TcError,
};

/// Requests that take back changes the kernel accepted, in the order they were made.
#[derive(Debug, Default)]
pub struct Undo {
    msgs: Vec<Message>,
}

impl Undo {
    pub(super) fn push(&mut self, msg: Message) {
        self.msgs.push(msg);
    }

    /// Takes back a tree built from scratch: its root qdisc goes (with every
    /// class and queue under it). The kernel checks the handle: a root that
    /// is not `1:` stays.
    pub fn remove_root(&mut self, ifindex: u32) {
        let mut msg = Message::new(super::RTM_DELQDISC, 0, "removing the HTB root qdisc 1:");
        msg.push(&super::tcmsg(ifindex, shaper_common::HTB_MAJOR << 16, super::TC_H_ROOT));
        self.msgs.push(msg);
    }

    /// Takes back a device shaper created (an IFB).
    pub fn delete_link(&mut self, ifindex: u32, name: &str) {
        let mut msg = Message::new(super::RTM_DELLINK, 0, format!("deleting {name}"));
        msg.push(&super::ifinfomsg(ifindex, 0, 0));
        self.msgs.push(msg);
    }

    /// Appends the undo of a later change.
    pub fn extend(&mut self, later: Undo) {
        self.msgs.extend(later.msgs);
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Takes the changes back, newest first. Returns whether the kernel
    /// accepted every request (a refused one is logged).
    pub fn run(mut self, nl: &Netlink) -> bool {
        self.msgs.reverse();
        match nl.batch_each(&mut self.msgs) {
            Ok(outcomes) => {
                let refused: Vec<TcError> = outcomes.into_iter().flatten().collect();
                for e in &refused {
                    log::error!("taking back a refused change: {e}");
                }
                refused.is_empty()
            }
            Err(e) => {
                log::error!("taking back a refused change: {e}");
                false
            }
        }
    }
}

/// A request and, if it can be taken back, the request that does.
pub struct Step {
    pub request: Message,
    pub undo: Option<Message>,
}

/// Sends `steps` in one batch. If the kernel refuses any, the accepted ones are
/// taken back and the first refusal returned; otherwise their undo is returned.
pub fn apply(nl: &Netlink, steps: Vec<Step>) -> Result<Undo, TcError> {
    let (mut requests, undos): (Vec<Message>, Vec<Option<Message>>) =
        steps.into_iter().map(|s| (s.request, s.undo)).unzip();
    let outcomes = nl.batch_each(&mut requests)?;
    let mut undo = Undo::default();
    let mut refused = None;
    for (outcome, back) in outcomes.into_iter().zip(undos) {
        match outcome {
            None => undo.msgs.extend(back),
            Some(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    match refused {
        None => Ok(undo),
        Some(e) => {
            undo.run(nl);
            Err(e)
        }
    }
}
