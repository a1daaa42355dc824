//! The running shaper: what it owns on the host, how it starts (fresh, or
//! taking over what an earlier daemon pinned), and how it stops.
//!
//! Start-up checks everything it can before the first change to the host
//! (config, interfaces, existing qdiscs): a bad config attaches nothing. The
//! changes themselves are [`Shaper::converge`]'s (apply.rs), the same code a
//! reload runs. Maps, programs and links are pinned, so shaping continues while
//! no daemon runs; [`Shaper::stop`] either removes everything (`shaper stop`,
//! SIGTERM) or leaves it in place for the next daemon (`shaper stop --keep`).
//! Dropping a `Shaper` without `stop` leaves the pinned state too, as a crash would.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use shaper_common::{FlowKey, CLASS_DEFAULT, SETTING_CGROUP_RULES, SETTING_PROCESS_RULES};

use super::{
    decide::{ConnInfo, DecisionStats},
    live::{ClassOverride, LastReload},
    report::Meter,
    DaemonError, RunOptions,
};
use crate::{
    accounts::SystemAccounts,
    cgroups::{self, Cgroups},
    config::Config,
    datapath::{Datapath, LoadOptions},
    pins::{self, Pins},
    plan::Plan,
    process::Needs,
    procscan::{ScanReport, Socket},
    rules::{compile::Compiled, Pred},
    tc::{self, Netlink},
};

/// One interface as shaper set it up.
pub(super) struct Shaped {
    pub name: String,
    pub ifindex: u32,
    pub slot: u32,
    pub egress: Plan,
    /// Shaped downloads: the IFB device the interface's ingress traffic goes
    /// through, and the HTB tree on it.
    pub ingress: Option<Ingress>,
    pub attach: &'static str,
}

pub(super) struct Ingress {
    pub ifb: tc::Link,
    pub plan: Plan,
}

/// Transmit queue of the IFB devices: between the HTB tree and the tasklet that
/// hands packets back to the interface. The kernel's default of 32 stops HTB
/// whenever the tasklet falls behind and costs a fifth of a TCP stream here.
pub const IFB_TXQUEUELEN: u32 = 1000;

/// The name of the IFB device shaper makes for interface `ifindex`.
pub fn ifb_name(ifindex: u32) -> String {
    format!("shpifb{ifindex}")
}

/// How the daemon leaves the host when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Remove everything shaper made and restore every interface.
    Restore,
    /// Leave qdiscs, programs and pins in place for the next daemon (upgrades).
    Keep,
}

/// Everything the running daemon owns.
pub struct Shaper {
    /// The config in force: the file's, with `shaper set` changes applied.
    pub(super) config: Config,
    /// The config as the file has it (for `status` to show drift).
    pub(super) file_config: Config,
    pub(super) options: RunOptions,
    pub(super) overrides: BTreeMap<String, ClassOverride>,
    pub(super) accounts: SystemAccounts,
    pub(super) netlink: Netlink,
    pub(super) datapath: Datapath,
    pub(super) shaped: Vec<Shaped>,
    pub(super) compiled: Compiled,
    /// The cgroup v2 hierarchy, when it is mounted.
    pub(super) cgroups: Option<Cgroups>,
    /// The cgroup the socket hooks are attached to.
    pub(super) hooks: Option<std::path::PathBuf>,
    /// The classifier tests owner records and reports new flows (socket hooks
    /// are attached); off, process rules are left to the scan.
    pub(super) event_driven: bool,
    pub(super) needs: Needs,
    pub(super) started: Instant,
    /// The daemon took over shaping an earlier daemon left pinned.
    pub(super) adopted: bool,
    pub(super) last_reload: Option<LastReload>,
    pub(super) last_scan: Option<ScanReport>,
    pub(super) sockets: HashMap<FlowKey, Socket>,
    pub(super) meters: BTreeMap<u32, Meter>,
    /// Who is behind each flow, and how its class was decided.
    pub(super) conns: HashMap<FlowKey, ConnInfo>,
    pub(super) decisions: DecisionStats,
    /// A change failed part way: the kernel's HTB trees and rule table may
    /// differ from `shaped` and `compiled`, so the next change writes them all.
    pub(super) applied_unknown: bool,
}

impl Shaper {
    /// Checks everything, then shapes every configured interface, taking over
    /// the pinned state of an earlier daemon if there is one.
    pub fn start(config: Config, options: &RunOptions) -> Result<Self, DaemonError> {
        let netlink = Netlink::open()?;
        let cgroups = match cgroups::v2_root() {
            Ok(root) => Some(Cgroups::new(root)),
            Err(e) => {
                log::warn!("{e}: rules on cgroups and units never match, and processes are matched by the /proc scan only");
                None
            }
        };
        let hook_dir = match (&config.daemon.cgroup, &cgroups) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(c)) => Some(c.root().to_path_buf()),
            (None, None) => None,
        }
        .filter(|_| config.daemon.event_driven);
        // Everything that can fail on the config alone fails here, before the
        // kernel sees anything.
        super::apply::check(&config, &netlink, &cgroups)?;
        let datapath = Datapath::load(LoadOptions {
            max_flows: config.daemon.max_flows,
            kernel_log_level: options.kernel_log_level,
            pins: Some(Pins::new(&config.daemon.pin_dir)),
        })?;
        let adopted = datapath.adopted();
        if adopted {
            log::info!("taking over the shaping state pinned at {}", config.daemon.pin_dir.display());
        }
        let needs = Needs::of(config.classes.iter().filter_map(|c| c.rule.as_ref().map(|r| &r.pred)));
        let mut shaper = Self {
            file_config: config.clone(),
            config,
            options: options.clone(),
            overrides: BTreeMap::new(),
            accounts: SystemAccounts::default(),
            netlink,
            datapath,
            shaped: Vec::new(),
            compiled: Compiled::default(),
            cgroups,
            hooks: None,
            event_driven: hook_dir.is_some(),
            needs,
            started: Instant::now(),
            adopted,
            last_reload: None,
            last_scan: None,
            sockets: HashMap::new(),
            meters: BTreeMap::new(),
            conns: HashMap::new(),
            decisions: DecisionStats::default(),
            applied_unknown: false,
        };
        let target = shaper.config.clone();
        let ready = shaper.converge(target).and_then(|_| shaper.attach_hooks(hook_dir));
        if let Err(e) = ready {
            // A fresh start undoes itself; a takeover leaves the earlier state
            // (still shaping) for the next attempt.
            if !adopted {
                shaper.stop(StopMode::Restore);
            }
            return Err(e);
        }
        shaper.file_config = shaper.config.clone();
        log::info!(
            "shaping {}: {} classes{}",
            super::apply::describe(&shaper.shaped),
            shaper.config.classes.len(),
            if adopted { ", taken over without a gap" } else { "" }
        );
        if let Err(e) = shaper.datapath.pin_programs() {
            log::warn!("{}", crate::error_chain(&e));
        }
        // Pins of an older layout: its links still run its programs next to
        // ours; with the pins gone they detach.
        if let Some(p) = shaper.datapath.pins() {
            for old in p.other_layouts() {
                log::info!("removing the pins of an earlier layout at {}", old.display());
                pins::remove_layout(&old);
            }
        }
        Ok(shaper)
    }

    fn attach_hooks(&mut self, dir: Option<std::path::PathBuf>) -> Result<(), DaemonError> {
        if let Some(dir) = dir {
            self.datapath.attach_cgroup(&dir)?;
            log::info!("socket hooks attached to cgroup {}", dir.display());
            self.hooks = Some(dir);
        }
        Ok(())
    }

    /// Writes the compiled rules and the settings that go with them.
    pub(super) fn apply_rules(&mut self) -> Result<(), DaemonError> {
        let mut flags = 0;
        if self.event_driven {
            flags |= SETTING_PROCESS_RULES;
        }
        if self.compiled.cgroups {
            flags |= SETTING_CGROUP_RULES;
        }
        self.datapath.set_flags(flags);
        let gen = self.datapath.set_rules(&self.compiled)?;
        log::info!("rule table: {} nodes (generation {gen})", self.compiled.nodes.len());
        Ok(())
    }

    /// The classes' rules in file order, for evaluation.
    pub(super) fn rules(&self) -> Vec<(u16, &Pred)> {
        self.config.classes.iter().filter_map(|c| c.rule.as_ref().map(|r| (c.index, &r.pred))).collect()
    }

    /// Whether any rule tests the process behind a connection.
    pub(super) fn has_process_rules(&self) -> bool {
        self.rules().iter().any(|(_, p)| p.any_atom(&|a| a.is_process()))
    }

    /// The name of "the default class" for flows no rule matched: the class's
    /// name when every interface has the same default.
    pub(super) fn default_name(&self) -> String {
        let mut defaults = self.config.interfaces.iter().map(|i| i.default_class);
        match defaults.next() {
            Some(first) if defaults.all(|d| d == first) => self.class_name(first),
            _ => "(interface default)".to_string(),
        }
    }

    pub(super) fn class_name(&self, index: u16) -> String {
        if index == CLASS_DEFAULT {
            return self.default_name();
        }
        self.config.class_by_index(index).map_or_else(|| format!("#{index}"), |c| c.name.clone())
    }

    /// Stops shaping: either removes everything shaper made (hooks, programs,
    /// qdiscs, IFBs, pins) and restores every interface, or leaves it all
    /// running for the next daemon.
    pub fn stop(mut self, mode: StopMode) {
        if mode == StopMode::Keep {
            log::info!(
                "leaving shaping in place (pinned at {}); the next daemon takes it over",
                self.config.daemon.pin_dir.display()
            );
            return;
        }
        // The hooks first: no new owner records while the rest goes.
        self.datapath.detach_cgroup();
        while let Some(shaped) = self.shaped.pop() {
            self.unshape(shaped.ifindex, Some(&shaped.name));
        }
        // Interfaces an earlier daemon shaped that this one never took over.
        for (ifindex, _) in self.datapath.ifaces() {
            self.unshape(ifindex, None);
        }
        if let Some(p) = self.datapath.pins() {
            p.remove_all();
        }
    }

    /// Takes shaping off interface `ifindex`: the classifier, its entry in the
    /// interface map, the HTB root (if still shaper's) and the IFB.
    pub(super) fn unshape(&mut self, ifindex: u32, name: Option<&str>) {
        let shown = name.map_or_else(|| format!("interface {ifindex}"), str::to_string);
        if let Some(name) = name {
            if let Err(e) = self.datapath.detach(name) {
                log::warn!("{shown}: {}", crate::error_chain(&e));
            }
        }
        self.datapath.unpin_iface_links(ifindex);
        if let Err(e) = self.datapath.remove_iface(ifindex) {
            log::warn!("{shown}: {}", crate::error_chain(&e));
        }
        match tc::root_qdisc(&self.netlink, ifindex) {
            Ok(Some(q)) if tc::is_shapers_root(&q) => {
                if let Err(e) = tc::remove_root_qdisc(&self.netlink, ifindex) {
                    log::warn!("{shown}: removing the HTB root: {}", crate::error_chain(&e));
                }
            }
            Ok(Some(_)) => log::warn!("{shown}: the root qdisc is no longer shaper's; leaving it"),
            Ok(None) => {}
            Err(e) => log::debug!("{shown}: {}", crate::error_chain(&e)),
        }
        let ifb = ifb_name(ifindex);
        match tc::link_by_name(&self.netlink, &ifb) {
            Ok(Some(link)) => {
                if let Err(e) = tc::delete_link(&self.netlink, link.index, &ifb) {
                    log::warn!("{shown}: {}", crate::error_chain(&e));
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("{shown}: {}", crate::error_chain(&e)),
        }
        let restored = tc::root_qdisc(&self.netlink, ifindex).ok().flatten();
        log::info!(
            "restored {shown}: root qdisc {}",
            restored.as_ref().map_or("none".to_string(), |q| q.kind.clone()),
        );
    }
}

/// Link-layer header length in front of IP for an ARPHRD device type.
pub(super) fn l2_len(arphrd: u16) -> u16 {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_LOOPBACK: u16 = 772;
    match arphrd {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => 14,
        // tun, WireGuard, PPP, IP tunnels: packets start with the IP header.
        _ => 0,
    }
}
