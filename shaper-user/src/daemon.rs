//! `shaper run`: bring the config to life, keep it alive, and take it all down
//! again.
//!
//! Start-up order matters: everything that can be checked is checked before the
//! first change to the host (config, interfaces, existing qdiscs, the control
//! socket), so a bad config attaches nothing. Then, per interface: the HTB tree
//! first, then the interface entry, then the classifier, so that no packet is
//! ever stamped with a class that does not exist yet. If any step fails, what
//! was done is undone in reverse order (by [`Shaper`]'s `Drop`), and the same
//! happens on SIGINT/SIGTERM.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use shaper_common::{
    FlowKey, FlowValue, IfaceInfo, RuleNode, CLASS_DEFAULT, MAX_CLASSES, ORIGIN_DAEMON, ORIGIN_KERNEL,
    ORIGIN_PINNED,
};

use crate::{
    bpffs,
    config::Config,
    control::{
        self,
        server::{ControlSocket, Handler},
        ClassRow, Command, ConnRow, InterfaceStatus, Reply, Status,
    },
    datapath::{Datapath, DatapathError, LoadOptions},
    flows,
    plan::{self, Direction, Plan},
    procscan::{self, ScanReport, Socket},
    rules,
    tc::{self, Netlink, Qdisc},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error(
        "interface {iface} already has a root qdisc ({kind} {handle}) that shaper did not create; shaper replaces \
         the root qdisc and could not put yours back exactly, so it leaves it alone. Remove it first \
         (`tc qdisc del dev {iface} root`) or shape another interface"
    )]
    ForeignQdisc { iface: String, kind: String, handle: String },
    #[error("netlink")]
    Netlink(#[from] tc::TcError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Control(#[from] control::server::ServerError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("compiling the rules")]
    Rules(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("setting up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Options of `shaper run` beyond the config file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// aya-log level of the kernel programs (0 = off).
    pub kernel_log_level: u8,
}

/// One interface as shaper left it.
struct Shaped {
    name: String,
    ifindex: u32,
    slot: u32,
    egress: Plan,
    attach: &'static str,
    /// The root qdisc before shaper replaced it (a kernel default: it comes back
    /// by itself when shaper's root is deleted).
    original_root: Option<Qdisc>,
}

/// Sent-byte samples of the HTB classes of one interface, for "rate now".
#[derive(Default)]
struct Meter {
    samples: VecDeque<(Instant, HashMap<u32, u64>)>,
}

const METER_WINDOW: usize = 4;

impl Meter {
    fn push(&mut self, at: Instant, sent: HashMap<u32, u64>) {
        self.samples.push_back((at, sent));
        while self.samples.len() > METER_WINDOW {
            self.samples.pop_front();
        }
    }

    /// Bits per second class `classid` sent over the sampled window.
    fn rate(&self, classid: u32) -> u64 {
        let (Some((t0, first)), Some((t1, last))) = (self.samples.front(), self.samples.back()) else {
            return 0;
        };
        let secs = t1.duration_since(*t0).as_secs_f64();
        let (Some(a), Some(b)) = (first.get(&classid), last.get(&classid)) else { return 0 };
        if secs <= 0.0 {
            return 0;
        }
        (b.saturating_sub(*a) as f64 * 8.0 / secs) as u64
    }
}

/// Everything the running daemon owns. Dropping it restores the host.
pub struct Shaper {
    config: Config,
    netlink: Netlink,
    datapath: Datapath,
    shaped: Vec<Shaped>,
    rule_nodes: Vec<RuleNode>,
    started: Instant,
    last_scan: Option<ScanReport>,
    sockets: HashMap<FlowKey, Socket>,
    meters: BTreeMap<u32, Meter>,
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
        let rule_nodes = config.compile_rules().map_err(|e| DaemonError::Rules(Box::new(e)))?;
        if config.sets_ingress() {
            log::warn!("this version shapes egress only: the ingress capacities and limits in the config are not applied");
        }
        bpffs::ensure_mounted()?;
        let datapath = Datapath::load(LoadOptions {
            max_flows: config.daemon.max_flows,
            kernel_log_level: options.kernel_log_level,
        })?;
        let mut shaper = Self {
            config,
            netlink,
            datapath,
            shaped: Vec::new(),
            rule_nodes,
            started: Instant::now(),
            last_scan: None,
            sockets: HashMap::new(),
            meters: BTreeMap::new(),
        };
        let gen = shaper.datapath.set_rules(&shaper.rule_nodes)?;
        log::info!("rule table: {} nodes (generation {gen})", shaper.rule_nodes.len());
        for (slot, (link, root)) in links.into_iter().enumerate() {
            shaper.shape(slot as u32, link, root)?;
        }
        Ok(shaper)
    }

    fn shape(&mut self, slot: u32, link: tc::Link, original_root: Option<Qdisc>) -> Result<(), DaemonError> {
        let Some(iface) = self.config.interfaces.iter().find(|i| i.name == link.name) else {
            return Err(DaemonError::NoInterface(link.name));
        };
        let Some(egress) = plan::plan(&self.config, iface, Direction::Egress, link.mtu) else {
            return Err(DaemonError::NoInterface(link.name));
        };
        tc::install_htb(&self.netlink, link.index, &egress.htb)?;
        // From here on, Drop undoes this interface.
        self.shaped.push(Shaped {
            name: link.name.clone(),
            ifindex: link.index,
            slot,
            egress,
            attach: "tcx",
            original_root,
        });
        let Some(shaped) = self.shaped.last() else { return Ok(()) };
        let mut info = IfaceInfo {
            slot,
            default_class: shaped.egress.default_class,
            l2_len: l2_len(link.arphrd),
            classes: [0; (MAX_CLASSES / 64) as usize],
        };
        for class in &shaped.egress.classes {
            if let Some(word) = info.classes.get_mut(usize::from(class.index / 64)) {
                *word |= 1 << (class.index % 64);
            }
        }
        self.datapath.set_iface(link.index, &info)?;
        let attach = self.datapath.attach_egress(&link.name)?;
        if let Some(shaped) = self.shaped.last_mut() {
            shaped.attach = attach;
        }
        log::info!(
            "shaping {} egress at {}: {} classes, default {}",
            link.name,
            crate::units::format_rate(iface.egress_bps),
            info.classes.iter().map(|w| w.count_ones()).sum::<u32>(),
            self.class_name(info.default_class),
        );
        Ok(())
    }

    /// The name of "the default class" for flows no rule matched: the class's
    /// name when every interface has the same default.
    fn default_name(&self) -> String {
        let mut defaults = self.config.interfaces.iter().map(|i| i.default_class);
        match defaults.next() {
            Some(first) if defaults.all(|d| d == first) => self.class_name(first),
            _ => "(interface default)".to_string(),
        }
    }

    fn class_name(&self, index: u16) -> String {
        self.config.classes.get(usize::from(index)).map_or_else(|| format!("#{index}"), |c| c.name.clone())
    }

    /// Adopts connections the classifier has not seen and drops stale flows.
    pub fn reconcile(&mut self) -> ScanReport {
        let watch = procscan::Stopwatch::start();
        let sockets = match procscan::connected_sockets() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("scan: {e}");
                return ScanReport::default();
            }
        };
        let now = procscan::monotonic_coarse_ns();
        let stale_after = procscan::stale_after(self.config.daemon.scan_interval);
        let mut report = ScanReport { sockets: sockets.len(), ..ScanReport::default() };
        self.sockets = sockets.into_iter().map(|s| (s.key, s)).collect();
        for key in self.sockets.keys() {
            if self.datapath.flow(key).is_some() {
                continue;
            }
            // The same table the kernel walks, walked in userspace: same verdict.
            let class = verdict_class(rules::table::eval(&self.rule_nodes, key));
            let value = FlowValue {
                class,
                origin: ORIGIN_KERNEL,
                rules_gen: self.datapath.rules_gen(),
                last_seen_ns: now,
                ..FlowValue::default()
            };
            match self.datapath.insert_flow(key, &value) {
                Ok(()) => report.adopted += 1,
                Err(e) => log::warn!("scan: adopting {}: {e}", flows::remote(key)),
            }
        }
        for (key, value) in self.datapath.flows() {
            if !self.sockets.contains_key(&key) && now.saturating_sub(value.last_seen_ns) > stale_after {
                match self.datapath.remove_flow(&key) {
                    Ok(()) => report.removed += 1,
                    Err(e) => log::warn!("scan: removing a stale flow: {e}"),
                }
            }
        }
        report.micros = watch.micros();
        log::debug!("scan: {report:?}");
        self.last_scan = Some(report);
        report
    }

    /// Samples the HTB counters for the "rate now" column.
    pub fn sample_rates(&mut self) {
        let at = Instant::now();
        for shaped in &self.shaped {
            match tc::class_stats(&self.netlink, shaped.ifindex) {
                Ok(stats) => {
                    let sent = stats.iter().map(|s| (s.classid, s.bytes)).collect();
                    self.meters.entry(shaped.ifindex).or_default().push(at, sent);
                }
                Err(e) => log::debug!("sampling {}: {e}", shaped.name),
            }
        }
    }

    pub fn status(&self) -> Status {
        let errors = self.datapath.errors().unwrap_or_default();
        let names = ["flow_insert", "rule_eval", "no_interface"];
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            config: self.config.path.display().to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            interfaces: self
                .shaped
                .iter()
                .map(|s| {
                    let conf = self.config.interfaces.iter().find(|i| i.name == s.name);
                    InterfaceStatus {
                        name: s.name.clone(),
                        ifindex: s.ifindex,
                        egress_bps: s.egress.capacity_bps,
                        ingress_bps: conf.and_then(|c| c.ingress_bps),
                        attach: s.attach.to_string(),
                        default_class: self.class_name(s.egress.default_class),
                    }
                })
                .collect(),
            classes: self.config.classes.len(),
            rule_nodes: self.rule_nodes.len(),
            rules_gen: self.datapath.rules_gen(),
            flows: self.datapath.flows().len(),
            max_flows: self.config.daemon.max_flows,
            errors: names.iter().zip(errors).map(|(n, v)| ((*n).to_string(), v)).collect(),
            scan_interval_ms: self.config.daemon.scan_interval.as_millis() as u64,
            last_scan: self.last_scan,
        }
    }

    pub fn classes(&self) -> Result<Vec<ClassRow>, DaemonError> {
        let mut rows = Vec::new();
        for shaped in &self.shaped {
            let htb: HashMap<u32, tc::ClassStats> =
                tc::class_stats(&self.netlink, shaped.ifindex)?.into_iter().map(|s| (s.classid, s)).collect();
            let meter = self.meters.get(&shaped.ifindex);
            for class in &shaped.egress.classes {
                let classid = shaper_common::classid_of(u32::from(class.index));
                let ours = self.datapath.class_stats(shaped.slot, u32::from(class.index))?;
                let sent = htb.get(&classid);
                rows.push(ClassRow {
                    name: class.name.clone(),
                    interface: shaped.name.clone(),
                    direction: Direction::Egress.as_str().to_string(),
                    classid: tc::format_handle(classid),
                    rate_bps: class.rate_bps,
                    ceil_bps: class.ceil_bps,
                    priority: class.priority,
                    bytes: ours.tx_bytes,
                    packets: ours.tx_packets,
                    sent_bytes: sent.map_or(0, |s| s.bytes),
                    sent_packets: sent.map_or(0, |s| s.packets),
                    drops: sent.map_or(0, |s| u64::from(s.drops)),
                    overlimits: sent.map_or(0, |s| u64::from(s.overlimits)),
                    backlog_bytes: sent.map_or(0, |s| u64::from(s.backlog)),
                    rate_now_bps: meter.map_or(0, |m| m.rate(classid)),
                    rule: self
                        .config
                        .classes
                        .get(usize::from(class.index))
                        .and_then(|c| c.rule_source.clone()),
                });
            }
        }
        Ok(rows)
    }

    pub fn conns(&self) -> Vec<ConnRow> {
        let now = procscan::monotonic_coarse_ns();
        let mut rows: Vec<ConnRow> = self
            .datapath
            .flows()
            .into_iter()
            .map(|(key, value)| ConnRow {
                proto: flows::proto_name(key.proto),
                local: flows::endpoint(&key, true),
                remote: flows::endpoint(&key, false),
                class: if value.class == CLASS_DEFAULT {
                    self.default_name()
                } else {
                    self.class_name(value.class)
                },
                origin: match value.origin {
                    ORIGIN_DAEMON => "daemon",
                    ORIGIN_PINNED => "pinned",
                    _ => "rule",
                }
                .to_string(),
                state: self.sockets.get(&key).map_or_else(|| "gone".to_string(), |s| s.state.clone()),
                tx_bytes: value.tx_bytes,
                tx_packets: value.tx_packets,
                rx_bytes: value.rx_bytes,
                rx_packets: value.rx_packets,
                idle_ms: now.saturating_sub(value.last_seen_ns) / 1_000_000,
            })
            .collect();
        rows.sort_by(|a, b| (&a.proto, &a.local, &a.remote).cmp(&(&b.proto, &b.local, &b.remote)));
        rows
    }

    /// Answers a control request.
    fn handle(&self, command: Command) -> Reply {
        let value = match command {
            Command::Status => serde_json::to_value(self.status()),
            Command::Classes => match self.classes() {
                Ok(rows) => serde_json::to_value(rows),
                Err(e) => return Reply::error(crate::error_chain(&e)),
            },
            Command::Conns => serde_json::to_value(self.conns()),
        };
        match value {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::error(format!("encoding the reply: {e}")),
        }
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
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

fn verdict_class(verdict: u16) -> u16 {
    if verdict == shaper_common::TARGET_DEFAULT || verdict < shaper_common::TARGET_VERDICT {
        CLASS_DEFAULT
    } else {
        verdict & !shaper_common::TARGET_VERDICT
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

fn lock(state: &Mutex<Shaper>) -> MutexGuard<'_, Shaper> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DaemonError::Runtime)?;
    runtime.block_on(run_async(config, options))
}

async fn run_async(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    // Bind first: a second daemon must fail before it touches anything.
    let socket = ControlSocket::bind(&config.daemon.control_socket)?;
    let scan_interval = config.daemon.scan_interval;
    let state = Arc::new(Mutex::new(Shaper::start(config, &options)?));
    let logger = if options.kernel_log_level > 0 { kernel_logger(&state) } else { None };
    let first = lock(&state).reconcile();
    log::info!(
        "ready: control socket {}, {} connections found, {} adopted",
        socket.path().display(),
        first.sockets,
        first.adopted
    );
    let handler: Handler = {
        let state = Arc::clone(&state);
        Arc::new(move |command| lock(&state).handle(command))
    };
    let mut scan = tokio::time::interval(scan_interval);
    scan.tick().await;
    let mut meter = tokio::time::interval(Duration::from_secs(1));
    let mut serve = Box::pin(socket.serve(handler));
    loop {
        tokio::select! {
            _ = &mut serve => {}
            _ = scan.tick() => { lock(&state).reconcile(); }
            _ = meter.tick() => { lock(&state).sample_rates(); }
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
        }
    }
    drop(logger);
    drop(serve);
    drop(socket);
    // Last reference: dropping the state detaches and restores every interface.
    match Arc::try_unwrap(state) {
        Ok(mutex) => drop(mutex.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)),
        Err(state) => drop(lock(&state)),
    }
    Ok(())
}

/// Forwards aya-log records of the kernel programs to the `log` crate.
fn kernel_logger(state: &Arc<Mutex<Shaper>>) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(lock(state).datapath.ebpf_mut()) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("kernel logs unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd for as long as it lives, and the
    // AsyncFd owns the logger.
    let registered =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("kernel logs unavailable: {}", e.into_parts().1);
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
