//! The running shaper: what it owns on the host, how it sets it up, and how
//! dropping it restores the host.
//!
//! Start-up order matters: everything that can be checked is checked before the
//! first change to the host (config, interfaces, existing qdiscs), so a bad
//! config attaches nothing. Then, per interface: the HTB tree first, then the
//! interface entry, then the classifier, so that no packet is ever stamped with
//! a class that does not exist yet; the socket hooks last. If any step fails,
//! what was done is undone in reverse order (by `Drop`), and the same happens
//! on SIGINT/SIGTERM.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Instant,
};

use shaper_common::{FlowKey, IfaceInfo, CLASS_DEFAULT, SETTING_CGROUP_RULES, SETTING_PROCESS_RULES};

use super::{
    decide::{ConnInfo, DecisionStats},
    report::Meter,
    DaemonError, RunOptions,
};
use crate::{
    accounts::SystemAccounts,
    bpffs,
    cgroups::{self, Cgroups},
    config::Config,
    datapath::{Datapath, LoadOptions},
    plan::{self, Direction, Plan},
    process::Needs,
    procscan::{ScanReport, Socket},
    rules::{compile::Compiled, Pred},
    tc::{self, Netlink, Qdisc},
};

/// One interface as shaper left it.
pub(super) struct Shaped {
    pub name: String,
    pub ifindex: u32,
    pub slot: u32,
    pub egress: Plan,
    /// Shaped downloads: the IFB device the interface's ingress traffic goes
    /// through, and the HTB tree on it.
    pub ingress: Option<Ingress>,
    pub attach: &'static str,
    /// The root qdisc before shaper replaced it (a kernel default: it comes back
    /// by itself when shaper's root is deleted).
    pub original_root: Option<Qdisc>,
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

/// Where the socket hooks are attached.
pub(super) struct Hooks {
    /// The cgroup directory (filesystem path).
    pub dir: PathBuf,
}

/// Everything the running daemon owns. Dropping it restores the host.
pub struct Shaper {
    pub(super) config: Config,
    pub(super) accounts: SystemAccounts,
    pub(super) netlink: Netlink,
    pub(super) datapath: Datapath,
    pub(super) shaped: Vec<Shaped>,
    pub(super) compiled: Compiled,
    /// The cgroup v2 hierarchy, when it is mounted.
    pub(super) cgroups: Option<Cgroups>,
    pub(super) hooks: Option<Hooks>,
    /// The classifier tests owner records and reports new flows (socket hooks
    /// are attached); off, process rules are left to the scan.
    pub(super) event_driven: bool,
    pub(super) needs: Needs,
    pub(super) started: Instant,
    pub(super) last_scan: Option<ScanReport>,
    pub(super) sockets: HashMap<FlowKey, Socket>,
    pub(super) meters: BTreeMap<u32, Meter>,
    /// Who is behind each flow, and how its class was decided.
    pub(super) conns: HashMap<FlowKey, ConnInfo>,
    pub(super) decisions: DecisionStats,
}

impl Shaper {
    /// Checks everything, then shapes every configured interface.
    pub fn start(config: Config, options: &RunOptions) -> Result<Self, DaemonError> {
        let netlink = Netlink::open()?;
        // Check every interface and its root qdisc before touching any of them.
        let mut links = Vec::new();
        for iface in &config.interfaces {
            let link = tc::link_by_name(&netlink, &iface.name)?
                .ok_or_else(|| DaemonError::NoInterface(iface.name.clone()))?;
            let root = tc::root_qdisc(&netlink, link.index)?;
            if let Some(q) = root.as_ref().filter(|q| !q.is_kernel_default()) {
                return Err(DaemonError::ForeignQdisc {
                    iface: iface.name.clone(),
                    kind: q.kind.clone(),
                    handle: tc::format_handle(q.handle),
                });
            }
            links.push((link, root));
        }
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
        let compiled = match &cgroups {
            Some(c) => config.compile_rules(c),
            None => config.compile_rules(&crate::rules::compile::NoCgroups),
        }
        .map_err(|e| DaemonError::Rules(Box::new(e)))?;
        bpffs::ensure_mounted()?;
        let datapath = Datapath::load(LoadOptions {
            max_flows: config.daemon.max_flows,
            kernel_log_level: options.kernel_log_level,
        })?;
        let needs = Needs::of(config.classes.iter().filter_map(|c| c.rule.as_ref().map(|r| &r.pred)));
        let mut shaper = Self {
            config,
            accounts: SystemAccounts::default(),
            netlink,
            datapath,
            shaped: Vec::new(),
            compiled,
            cgroups,
            hooks: None,
            event_driven: hook_dir.is_some(),
            needs,
            started: Instant::now(),
            last_scan: None,
            sockets: HashMap::new(),
            meters: BTreeMap::new(),
            conns: HashMap::new(),
            decisions: DecisionStats::default(),
        };
        shaper.apply_rules()?;
        for (slot, (link, root)) in links.into_iter().enumerate() {
            shaper.shape(slot as u32, link, root)?;
        }
        if let Some(dir) = hook_dir {
            shaper.datapath.attach_cgroup(&dir)?;
            log::info!("socket hooks attached to cgroup {}", dir.display());
            shaper.hooks = Some(Hooks { dir });
        }
        Ok(shaper)
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
        let gen = self.datapath.set_rules(&self.compiled.nodes)?;
        log::info!("rule table: {} nodes (generation {gen})", self.compiled.nodes.len());
        Ok(())
    }

    fn shape(&mut self, slot: u32, link: tc::Link, original_root: Option<Qdisc>) -> Result<(), DaemonError> {
        let Some(iface) = self.config.interfaces.iter().find(|i| i.name == link.name) else {
            return Err(DaemonError::NoInterface(link.name));
        };
        let Some(egress) = plan::plan(&self.config, iface, Direction::Egress, link.mtu) else {
            return Err(DaemonError::NoInterface(link.name));
        };
        let ingress = plan::plan(&self.config, iface, Direction::Ingress, link.mtu);
        let ifb = ifb_name(link.index);
        if ingress.is_some() && tc::link_by_name(&self.netlink, &ifb)?.is_some() {
            return Err(DaemonError::IfbExists { iface: link.name.clone(), ifb });
        }
        let (egress_bps, ingress_bps) = (iface.egress_bps, iface.ingress_bps);
        tc::install_htb(&self.netlink, link.index, &egress.htb)?;
        let mut info = IfaceInfo::new(slot, egress.default_class, l2_len(link.arphrd));
        for class in &egress.classes {
            info.add_class(u32::from(class.index));
        }
        // From here on, Drop undoes this interface.
        self.shaped.push(Shaped {
            name: link.name.clone(),
            ifindex: link.index,
            slot,
            egress,
            ingress: None,
            attach: "tcx",
            original_root,
        });
        if let Some(plan) = ingress {
            let device = tc::create_ifb(&self.netlink, &ifb, link.mtu, IFB_TXQUEUELEN)?;
            info.ifb_ifindex = device.index;
            let index = device.index;
            if let Some(shaped) = self.shaped.last_mut() {
                shaped.ingress = Some(Ingress { ifb: device, plan });
            }
            if let Some(Ingress { plan, .. }) = self.shaped.last().and_then(|s| s.ingress.as_ref()) {
                tc::install_htb(&self.netlink, index, &plan.htb)?;
            }
        }
        self.datapath.set_iface(link.index, &info)?;
        let attach = self.datapath.attach_egress(&link.name)?;
        if info.ifb_ifindex != 0 {
            self.datapath.attach_ingress(&link.name)?;
        }
        if let Some(shaped) = self.shaped.last_mut() {
            shaped.attach = attach;
        }
        let downloads = match ingress_bps {
            Some(bps) if info.ifb_ifindex != 0 => {
                format!("ingress at {} through {ifb}", crate::units::format_rate(bps))
            }
            _ => "ingress not shaped".to_string(),
        };
        log::info!(
            "shaping {}: egress at {}, {downloads}: {} classes, default {}",
            link.name,
            crate::units::format_rate(egress_bps),
            info.classes.iter().map(|w| w.count_ones()).sum::<u32>(),
            self.class_name(info.default_class),
        );
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
        self.config.classes.get(usize::from(index)).map_or_else(|| format!("#{index}"), |c| c.name.clone())
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        // The hooks first: no new owner records while the rest goes.
        self.datapath.detach_cgroup();
        while let Some(shaped) = self.shaped.pop() {
            if let Err(e) = self.datapath.detach(&shaped.name) {
                log::warn!("{}: {}", shaped.name, crate::error_chain(&e));
            }
            if let Err(e) = self.datapath.remove_iface(shaped.ifindex) {
                log::warn!("{}: {}", shaped.name, crate::error_chain(&e));
            }
            // Delete the root only if it is still ours.
            match tc::root_qdisc(&self.netlink, shaped.ifindex) {
                Ok(Some(q)) if q.kind == "htb" && q.handle == shaper_common::HTB_MAJOR << 16 => {
                    if let Err(e) = tc::remove_root_qdisc(&self.netlink, shaped.ifindex) {
                        log::warn!("{}: removing the HTB root: {}", shaped.name, crate::error_chain(&e));
                    }
                }
                Ok(_) => log::warn!("{}: the root qdisc is no longer shaper's; leaving it", shaped.name),
                Err(e) => log::warn!("{}: {}", shaped.name, crate::error_chain(&e)),
            }
            if let Some(ingress) = &shaped.ingress {
                if let Err(e) = tc::delete_link(&self.netlink, ingress.ifb.index, &ingress.ifb.name) {
                    log::warn!("{}: {}", shaped.name, crate::error_chain(&e));
                }
            }
            let restored = tc::root_qdisc(&self.netlink, shaped.ifindex).ok().flatten();
            log::info!(
                "restored {}: root qdisc {} (was {})",
                shaped.name,
                restored.as_ref().map_or("none".to_string(), |q| q.kind.clone()),
                shaped.original_root.as_ref().map_or("none".to_string(), |q| q.kind.clone()),
            );
        }
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
