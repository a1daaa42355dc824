//! What the decider asks of the host outside the BPF maps: the sockets that
//! exist, which processes hold them, what /proc says about a process, and the
//! clocks. A trait, so unit tests can stand in for the kernel and /proc.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use shaper_common::Owner;

use crate::{
    accounts::SystemAccounts,
    cgroups::Cgroups,
    clock,
    proccache::{Freshness, ProcCache},
    process::{self, Needs},
    procnet::{self, ProcNetError},
    rules::{
        compile::{CgroupIndex, NoCgroups},
        pred::ProcessFacts,
    },
    sockdiag::{SockDiag, SockDiagError, Socket, Table},
};

/// Processes whose facts are kept between reconciles.
const PROCESS_CACHE: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("listing the sockets over sock_diag")]
    SockDiag(#[from] SockDiagError),
    #[error(transparent)]
    ProcNet(#[from] ProcNetError),
}

pub trait System: Send {
    /// Every connected socket of the daemon's network namespace, one at a
    /// time. Returns the tables read from /proc/net because the kernel could
    /// not dump them (their sockets have no cookie).
    fn sockets(&mut self, visit: &mut dyn FnMut(&Socket)) -> Result<Vec<Table>, ScanError>;
    /// The processes holding each of these socket inodes (a walk of every
    /// process's descriptors: costly, for sockets no owner record explains).
    fn holders(&self, inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>>;
    /// What /proc tells about `pid` (cached until the process changes);
    /// `owner`, the kernel's record of a socket, stands in for what /proc no
    /// longer shows.
    fn facts(&mut self, pid: u32, owner: Option<&Owner>, needs: Needs) -> ProcessFacts;
    /// Whether process `pid` still runs.
    fn alive(&self, pid: u32) -> bool;
    /// Forgets cached processes nobody asked about for `idle`.
    fn sweep(&mut self, idle: Duration);
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
    /// The sock_diag socket, opened in the daemon's network namespace.
    diag: Option<SockDiag>,
    cache: ProcCache,
}

impl LiveSystem {
    pub fn new(cgroups: Option<Cgroups>) -> Self {
        let diag = match SockDiag::open() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!("{}: the reconcile reads /proc/net instead", crate::error_chain(&e));
                None
            }
        };
        let cache = ProcCache::new(PROCESS_CACHE, Freshness::default());
        Self { accounts: SystemAccounts::default(), cgroups, diag, cache }
    }
}

impl System for LiveSystem {
    fn sockets(&mut self, visit: &mut dyn FnMut(&Socket)) -> Result<Vec<Table>, ScanError> {
        let missing = match &mut self.diag {
            Some(diag) => diag.dump(&mut *visit)?.unavailable,
            None => Table::ALL.to_vec(),
        };
        for table in &missing {
            procnet::connected(*table, visit)?;
        }
        Ok(missing)
    }
    fn holders(&self, inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
        process::socket_holders(inodes)
    }
    fn facts(&mut self, pid: u32, owner: Option<&Owner>, needs: Needs) -> ProcessFacts {
        self.cache.facts(pid, owner, needs, &self.accounts, self.cgroups.as_ref())
    }
    fn alive(&self, pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }
    fn sweep(&mut self, idle: Duration) {
        self.cache.sweep(idle);
    }
    fn cgroups(&self) -> &dyn CgroupIndex {
        match &self.cgroups {
            Some(c) => c,
            None => &NoCgroups,
        }
    }
    fn coarse_ns(&self) -> u64 {
        clock::monotonic_coarse_ns()
    }
    fn monotonic_ns(&self) -> u64 {
        clock::monotonic_ns()
    }
}
