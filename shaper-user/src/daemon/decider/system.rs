//! What the decider asks of the host outside the BPF maps: the sockets that
//! exist, which processes hold them, what /proc says about a process, and the
//! clocks. A trait, so unit tests can stand in for /proc.

use std::collections::{HashMap, HashSet};

use shaper_common::Owner;

use crate::{
    accounts::SystemAccounts,
    cgroups::Cgroups,
    events,
    process::{self, Needs},
    procscan::{self, ScanError, Socket},
    rules::{
        compile::{CgroupIndex, NoCgroups},
        pred::ProcessFacts,
    },
};

pub trait System: Send {
    /// Every connected socket of the daemon's network namespace.
    fn sockets(&self) -> Result<Vec<Socket>, ScanError>;
    /// The processes holding each of these socket inodes.
    fn holders(&self, inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>>;
    /// What /proc tells about `pid`; `owner` is the kernel's record of the
    /// socket, which stands in for what /proc no longer shows.
    fn facts(&self, pid: u32, owner: Option<&Owner>, needs: Needs) -> ProcessFacts;
    /// Whether process `pid` still runs.
    fn alive(&self, pid: u32) -> bool;
    /// Where cgroup paths and unit names of rules are looked up.
    fn cgroups(&self) -> &dyn CgroupIndex;
    /// CLOCK_MONOTONIC_COARSE, the time base of a flow's `last_seen_ns`.
    fn coarse_ns(&self) -> u64;
    /// CLOCK_MONOTONIC, the time base of an event's `ts_ns`.
    fn monotonic_ns(&self) -> u64;
}

/// The host this daemon runs on.
pub struct LiveSystem {
    accounts: SystemAccounts,
    cgroups: Option<Cgroups>,
}

impl LiveSystem {
    pub fn new(cgroups: Option<Cgroups>) -> Self {
        Self { accounts: SystemAccounts::default(), cgroups }
    }
}

impl System for LiveSystem {
    fn sockets(&self) -> Result<Vec<Socket>, ScanError> {
        procscan::connected_sockets()
    }
    fn holders(&self, inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
        process::socket_holders(inodes)
    }
    fn facts(&self, pid: u32, owner: Option<&Owner>, needs: Needs) -> ProcessFacts {
        process::facts(pid, owner, needs, &self.accounts, self.cgroups.as_ref())
    }
    fn alive(&self, pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }
    fn cgroups(&self) -> &dyn CgroupIndex {
        match &self.cgroups {
            Some(c) => c,
            None => &NoCgroups,
        }
    }
    fn coarse_ns(&self) -> u64 {
        procscan::monotonic_coarse_ns()
    }
    fn monotonic_ns(&self) -> u64 {
        events::monotonic_ns()
    }
}
