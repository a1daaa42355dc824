//! `queue = "fq_codel" | "bfifo" | "pfifo"`: the queue under a class's HTB
//! leaf. Without it a class gets fq_codel where the kernel has it, else a
//! byte FIFO (the daemon finds out which; see `tc::Kernel`).

/// A leaf queue kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// Flow queueing with CoDel (sch_fq_codel): flows share the class fairly.
    FqCodel,
    /// A FIFO limited in bytes.
    Bfifo,
    /// A FIFO limited in packets.
    Pfifo,
}

impl QueueKind {
    pub const ALL: [QueueKind; 3] = [QueueKind::FqCodel, QueueKind::Bfifo, QueueKind::Pfifo];

    /// The qdisc's name, as tc and the config write it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::FqCodel => "fq_codel",
            QueueKind::Bfifo => "bfifo",
            QueueKind::Pfifo => "pfifo",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.as_str() == text).ok_or_else(|| {
            format!("unknown queue \"{text}\" (one of \"fq_codel\", \"bfifo\", \"pfifo\"; leave it out for the default)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_kinds_are_tc_names() {
        assert_eq!(QueueKind::parse("pfifo"), Ok(QueueKind::Pfifo));
        assert_eq!(QueueKind::parse("fq_codel"), Ok(QueueKind::FqCodel));
        assert!(QueueKind::parse("sfq").unwrap_err().starts_with("unknown queue \"sfq\""));
    }
}
