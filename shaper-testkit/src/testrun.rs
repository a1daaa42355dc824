//! BPF_PROG_TEST_RUN: a loaded classifier run by the kernel on a crafted
//! frame, without any interface ([`crate::packets::Frame`] builds them).
//!
//! [`TestRunExt`] adds the run to shaper-user's [`Datapath`], through the one
//! door the product leaves for this ([`Datapath::program`]).

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use shaper_user::datapath::{Datapath, DatapathError};

use crate::packets::{SKB_CTX_SIZE, SKB_IFINDEX_OFFSET, SKB_INGRESS_IFINDEX_OFFSET, SKB_PRIORITY_OFFSET};

/// What one BPF_PROG_TEST_RUN of a classifier gave.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    /// The `skb->priority` it set (the HTB class id).
    pub priority: u32,
    /// Its return value (`TC_ACT_*`).
    pub verdict: i32,
    /// The kernel's mean run time per repetition.
    pub duration: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error("loading program {name}")]
    Load {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("BPF_PROG_TEST_RUN of {name}")]
    Run {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl From<DatapathError> for TestRunError {
    fn from(e: DatapathError) -> Self {
        Self::Datapath(Box::new(e))
    }
}

/// The `__sk_buff` fields a run starts with (the rest are zero).
#[derive(Clone, Copy, Debug, Default)]
pub struct SkbIn {
    /// The interface the packet crosses.
    pub ifindex: u32,
    /// The interface it arrived on (what a program on an IFB reads).
    pub ingress_ifindex: u32,
    /// `skb->priority` as an earlier program left it (the HTB class id).
    pub priority: u32,
}

/// BPF_PROG_TEST_RUN on the programs of a loaded [`Datapath`].
pub trait TestRunExt {
    /// Loads program `name` of the object if it is not loaded yet: the
    /// programs the daemon does not use (the bench's `tc_passthrough`, an
    /// empty program to compare with) stay unloaded until a test asks.
    fn load_program(&mut self, name: &'static str) -> Result<(), TestRunError>;

    /// Runs classifier `name` `repeat` times on `frame` as if the packet
    /// crossed interface `ifindex`; returns what it set and its mean run time.
    fn test_run(
        &mut self,
        name: &'static str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<TestRun, TestRunError> {
        self.test_run_skb(name, frame, SkbIn { ifindex, ..SkbIn::default() }, repeat)
    }

    /// Likewise, with the context's fields `skb` (the connection-limit
    /// gates read the class an earlier program wrote into `priority`).
    fn test_run_skb(
        &mut self,
        name: &'static str,
        frame: &[u8],
        skb: SkbIn,
        repeat: u32,
    ) -> Result<TestRun, TestRunError>;
}

impl TestRunExt for Datapath {
    fn load_program(&mut self, name: &'static str) -> Result<(), TestRunError> {
        let prog = self.program(name)?;
        if prog.fd().is_ok() {
            return Ok(());
        }
        prog.load().map_err(|source| TestRunError::Load { name, source })
    }

    fn test_run_skb(
        &mut self,
        name: &'static str,
        frame: &[u8],
        skb: SkbIn,
        repeat: u32,
    ) -> Result<TestRun, TestRunError> {
        let mut ctx_in = [0u8; SKB_CTX_SIZE];
        for (at, value) in [
            (SKB_IFINDEX_OFFSET, skb.ifindex),
            (SKB_INGRESS_IFINDEX_OFFSET, skb.ingress_ifindex),
            (SKB_PRIORITY_OFFSET, skb.priority),
        ] {
            ctx_in[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        }
        let mut ctx_out = [0u8; SKB_CTX_SIZE];
        let mut data_out = vec![0u8; frame.len() + 256];
        let result = self
            .program(name)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|source| TestRunError::Run { name, source })?;
        let mut priority = [0u8; 4];
        priority.copy_from_slice(&ctx_out[SKB_PRIORITY_OFFSET..SKB_PRIORITY_OFFSET + 4]);
        Ok(TestRun {
            priority: u32::from_ne_bytes(priority),
            verdict: result.return_value as i32,
            duration: result.duration,
        })
    }
}
