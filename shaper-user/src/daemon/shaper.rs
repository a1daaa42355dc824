//! The running shaper: its parts, how it starts (fresh, or taking over what an
//! earlier daemon pinned), the requests it answers, and how it stops.
//!
//! Three parts own their state, and this struct sequences them:
//!
//! | part | owns |
//! |---|---|
//! | [`Host`] | the shaped interfaces, their HTB trees and IFBs, the rate meters |
//! | [`Datapath`] | the BPF programs, maps and links, and the class indices pinned with them |
//! | [`Decider`] | the rules in force, the connections, and the daemon's decisions |
//!
//! Start-up checks everything it can before the first change to the host
//! (config, interfaces, existing qdiscs): a bad config attaches nothing. The
//! changes themselves go through [`apply::converge`], the same path a reload
//! takes. Maps, programs and links are pinned, so shaping continues while no
//! daemon runs; [`Shaper::stop`] either removes everything (`shaper stop`,
//! SIGTERM) or leaves it in place for the next daemon (`shaper stop --keep`).
//! Dropping a `Shaper` without `stop` leaves the pinned state too, as a crash would.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use shaper_common::{FlowEvent, EVENT_INSTANCE};

use super::{
    apply::{self, Parts},
    connlimit::ConnLimits,
    decider::{Decider, LiveSystem},
    dryrun, effective,
    error::{DaemonError, RequestError},
    explain,
    host::Host,
    instances::Instances,
    links,
    live::{ConfigState, Pending},
    options::{self, RunOptions},
    quota::Quotas,
    rates::Rates,
    report::View,
    schedules::{self, Schedules},
};
use crate::{
    cgroupmount::{self, V2Root},
    cgroups::Cgroups,
    config::Config,
    control::{Applied, Command, DryRun, MetricsText, Moved, Reply, ScanReport, SetClass, UsageRow},
    datapath::{Datapath, LoadOptions},
    flows,
    metrics::Format,
    pins::{self, Pins},
    tc::LinkEvent,
};

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
    state: ConfigState,
    /// The config in force as the host has it now (windows, queues).
    schedules: Schedules,
    options: RunOptions,
    host: Host,
    datapath: Datapath,
    decider: Decider,
    instances: Instances,
    /// The cgroup the socket hooks are attached to.
    hooks: Option<PathBuf>,
    started: Instant,
    /// The daemon took over shaping an earlier daemon left pinned.
    adopted: bool,
    /// The cgroup v2 hierarchy (held: a private mount lives while it is open).
    _cgroup_root: Option<V2Root>,
    /// Why process rules wait for the /proc scan, when they do.
    scan_only: Option<String>,
    /// The classes' quotas and their usage.
    quotas: Quotas,
    /// Current rates per class and flow.
    rates: Rates,
    /// The connection limits' admission thread.
    connlimits: ConnLimits,
}

impl Shaper {
    /// Checks everything, then shapes every configured interface, taking over
    /// the pinned state of an earlier daemon if there is one.
    pub fn start(config: Config, options: &RunOptions) -> Result<Self, DaemonError> {
        let host = Host::open(Pins::new(&config.daemon.pin_dir).owned())?;
        let root = match cgroupmount::v2_root() {
            Ok(root) => Some(root),
            // Scan-only matching was asked for: carry on without the hierarchy.
            Err(e) if !config.daemon.event_driven => {
                log::warn!("{e}: rules on cgroups and units never match");
                None
            }
            Err(e) => return Err(DaemonError::NoCgroup2(e)),
        };
        let cgroups = root.as_ref().map(|r| Cgroups::new(r.path().to_path_buf()));
        // The hook cgroup as configured (for status) and as reached from here.
        let hook_dir = match (&config.daemon.cgroup, &root) {
            (Some(dir), Some(root)) => Some((dir.clone(), root.locate(dir).map_err(DaemonError::NoCgroup2)?)),
            (None, Some(root)) => {
                let at = root.path().to_path_buf();
                Some((
                    if root.is_private() { PathBuf::from(cgroupmount::STANDARD_ROOT) } else { at.clone() },
                    at,
                ))
            }
            (_, None) => None,
        }
        .filter(|_| config.daemon.event_driven);
        let scan_only =
            (!config.daemon.event_driven).then(|| "event_driven = false in the config".to_string());
        // What can fail on the config and the host alone fails here, before
        // the kernel sees anything.
        host.check(&config)?;
        let schedules = Schedules::probe();
        schedules.check_queues(&config)?;
        let mut datapath = Datapath::load(LoadOptions {
            max_flows: config.daemon.max_flows,
            kernel_log_level: options.kernel_log_level,
            pins: Some(Pins::new(&config.daemon.pin_dir)),
        })?;
        let adopted = datapath.adopted();
        // In this thread's network namespace (the interfaces'), for its raw sockets.
        let connlimits = ConnLimits::start(datapath.take_connlimit());
        connlimits.check(&config)?;
        if adopted {
            log::info!("taking over the shaping state pinned at {}", config.daemon.pin_dir.display());
        }
        let system = Box::new(LiveSystem::new(cgroups));
        let decider = Decider::new(system, hook_dir.is_some(), config.daemon.scan_interval);
        let quotas = Quotas::open(&config.daemon.state_dir);
        let mut shaper = Self {
            state: ConfigState::new(config),
            schedules,
            options: options.clone(),
            host,
            datapath,
            decider,
            instances: Instances::default(),
            hooks: None,
            started: Instant::now(),
            adopted,
            _cgroup_root: root,
            scan_only,
            quotas,
            rates: Rates::new(),
            connlimits,
        };
        // Before the first converge: a quota a crashed daemon throttled is still throttled.
        let config = shaper.state.config().clone();
        shaper.sync_quotas(&config)?;
        shaper.first_converge(hook_dir)?;
        shaper.sync_connlimits(&config);
        shaper.finish_start();
        Ok(shaper)
    }

    /// Shapes the config's interfaces and attaches the socket hooks. A fresh
    /// start that fails undoes itself; a takeover removes what it made on
    /// interfaces new to it, and leaves the earlier state (still shaping) for
    /// the next attempt.
    fn first_converge(&mut self, hook_dir: Option<(PathBuf, PathBuf)>) -> Result<(), DaemonError> {
        let tz = schedules::local_zone();
        let config = self.state.config().clone();
        self.schedules.advance(&config, &tz, jiff::Timestamp::now());
        self.log_windows(&schedules::Windows::new());
        let config = self.in_force(&config);
        let ready =
            apply::converge(&mut self.parts(), None, &config).map(|_| ()).and_then(|()| match hook_dir {
                Some((shown, dir)) => {
                    self.datapath.attach_cgroup(&dir)?;
                    log::info!("socket hooks attached to cgroup {}", shown.display());
                    self.hooks = Some(shown);
                    Ok(())
                }
                None => Ok(()),
            });
        if let Err(e) = ready {
            if self.adopted {
                for (ifindex, name) in self.host.made_here() {
                    apply::unshape(&mut self.parts(), ifindex, Some(&name));
                }
            } else {
                self.restore();
            }
            return Err(e);
        }
        self.instances.clear_leftovers(&self.host);
        self.configure_instances();
        Ok(())
    }

    /// Pins the programs and drops the pins of older layouts.
    fn finish_start(&mut self) {
        log::info!(
            "shaping {}: {} classes{}",
            self.host.describe(),
            self.state.config().classes.len(),
            if self.adopted { ", taken over without a gap" } else { "" }
        );
        if let Err(e) = self.datapath.pin_programs() {
            log::warn!("{}", crate::error_chain(&e));
        }
        // Pins of an older layout: its links still run its programs next to
        // ours; with the pins gone they detach.
        if let Some(p) = self.datapath.pins() {
            for old in p.other_layouts() {
                log::info!("removing the pins of an earlier layout at {}", old.display());
                pins::remove_layout(&old);
            }
        }
    }

    fn parts(&mut self) -> Parts<'_> {
        Parts { host: &mut self.host, datapath: &mut self.datapath, decider: &mut self.decider }
    }

    fn view(&self) -> View<'_> {
        View {
            host: &self.host,
            datapath: &self.datapath,
            decider: &self.decider,
            instances: &self.instances,
            state: &self.state,
            schedules: &self.schedules,
            started: self.started,
            adopted: self.adopted,
            hooks: self.hooks.as_deref(),
            scan_only: self.scan_only.as_deref(),
            quotas: &self.quotas,
            rates: &self.rates,
            connlimits: &self.connlimits,
        }
    }

    /// The classifier's event ring buffer, for the main loop (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.datapath.take_events()
    }

    /// The loaded object, for the kernel log reader.
    pub fn ebpf_mut(&mut self) -> &mut aya::Ebpf {
        self.datapath.ebpf_mut()
    }

    /// A new flow the classifier reported, or a new instance of a class with `per`.
    pub fn on_event(&mut self, event: &FlowEvent) {
        if event.flags & EVENT_INSTANCE != 0 {
            let slot = self.instances.on_event(&self.host, &mut self.datapath, event);
            if slot.is_some_and(|slot| self.open_instance_quota(slot)) {
                // Used up before it went idle: its new leaf is held at once.
                self.configure_instances();
            }
        } else {
            self.decider.on_event(&mut self.datapath, event);
        }
    }

    /// One pass of the periodic reconcile (idle instances go too).
    pub fn reconcile(&mut self) -> ScanReport {
        let gone = self.instances.expire(&self.host, &mut self.datapath);
        self.close_instance_quotas(&gone);
        self.decider.reconcile(&mut self.datapath)
    }

    /// Removes up to `max` more of the stale flows the reconcile found; true while some are left.
    pub fn prune_stale(&mut self, max: usize) -> bool {
        self.decider.prune_stale(&mut self.datapath, max)
    }

    /// Link events (see [`links`]); returns when to call [`Shaper::heal`].
    pub fn on_links(&mut self, events: &[LinkEvent]) -> Option<Duration> {
        let config = self.in_force(self.state.config());
        let mut parts =
            Parts { host: &mut self.host, datapath: &mut self.datapath, decider: &mut self.decider };
        links::on_events(&mut parts, &config, events)
    }

    /// Restores what link events took away (lost IFBs, interfaces gone and
    /// back); returns when to try again if it failed.
    pub fn heal(&mut self) -> Option<Duration> {
        let config = self.in_force(self.state.config());
        let mut parts =
            Parts { host: &mut self.host, datapath: &mut self.datapath, decider: &mut self.decider };
        match links::heal(&mut parts, &config) {
            Ok(_) => {
                self.instances.restore(&self.host);
                // A rebuilt IFB needs its connection-limit gate again.
                self.sync_connlimits(&config);
                log::info!("shaping {}", self.host.describe());
                None
            }
            Err(e) => {
                log::error!(
                    "restoring shaping: {}; trying again in {:?}",
                    crate::error_chain(&e),
                    links::RETRY
                );
                Some(links::RETRY)
            }
        }
    }

    /// The metrics text in `format` (`shaper metrics`, the HTTP endpoint).
    pub fn metrics(&self, format: Format) -> Result<String, DaemonError> {
        self.metrics_into(format, String::new())
    }

    /// [`Shaper::metrics`], written into `buffer` (the endpoint reuses its bodies).
    pub fn metrics_into(&self, format: Format, buffer: String) -> Result<String, DaemonError> {
        Ok(self.view().metrics()?.render_into(format, buffer))
    }

    /// Samples HTB's counters for the "rate now" column, and the
    /// classifier's for the current rates.
    pub fn sample_rates(&mut self) {
        self.host.sample_rates();
        self.rates.sample(&self.host, &self.datapath);
    }

    /// The limits `config` gives, with what holds right now on top: the
    /// schedule windows in force, then the quotas' throttles (see [`effective`]).
    fn in_force(&self, config: &Config) -> Config {
        effective::in_force(&self.schedules.apply(config), &self.quotas.throttles())
    }

    /// Brings each instance's leaf to its class's limits in force, or to
    /// its quota's rate while that holds it.
    fn configure_instances(&mut self) {
        let ids = self.datapath.class_ids();
        let held = self
            .quotas
            .instance_throttles()
            .into_iter()
            .filter_map(|t| Some(((ids.index(&t.class)?, t.instance?), (t.counted, t.bps))))
            .collect();
        self.instances.hold(held);
        self.instances.configure(&self.host);
    }

    /// The quota of the instance in `slot` (with `per`, each instance has
    /// its own); true when it holds the instance's leaf right away.
    fn open_instance_quota(&mut self, slot: u32) -> bool {
        let Some((class, name)) = self.instances.named(slot) else { return false };
        match self.quotas.open_instance(class, &name, slot, self.datapath.quotas_mut()) {
            Ok(held) => held,
            Err(e) => {
                log::error!("quota of instance {name}: {}", crate::error_chain(&e));
                false
            }
        }
    }

    /// Instances whose leaves went keep their usage, not their kernel entries.
    fn close_instance_quotas(&mut self, gone: &[(u16, String)]) {
        for (class, name) in gone {
            if let Err(e) = self.quotas.close_instance(*class, name, self.datapath.quotas_mut()) {
                log::error!("quota of instance {name}: {}", crate::error_chain(&e));
            }
        }
    }

    /// Follows the connection limits of `config`: the admission thread's
    /// limits, and the gates on the shaped devices while some class has one.
    fn sync_connlimits(&mut self, config: &Config) {
        self.connlimits.sync(config, &self.datapath.class_ids());
        let wanted = super::connlimit::gates(&self.host, config);
        if let Err(e) = self.datapath.set_gates(&wanted) {
            log::error!("connection limits: {}", crate::error_chain(&e));
        }
    }

    /// Follows the quotas of `config`, with the class indices it will get.
    fn sync_quotas(&mut self, config: &Config) -> Result<(), DaemonError> {
        let ids = self.datapath.class_ids().assign(config.class_names());
        Ok(self.quotas.sync(config, &ids, self.datapath.quotas_mut())?)
    }

    /// Reads the quota counters (every `quota::CHECK_INTERVAL`); when a
    /// throttle starts or ends, the class limits follow.
    pub fn check_quotas(&mut self) {
        if self.quotas.is_empty() {
            return;
        }
        let before = self.in_force(self.state.config());
        match self.quotas.check(self.datapath.quotas_mut()) {
            Ok(false) => {}
            Ok(true) => {
                let after = self.in_force(self.state.config());
                if let Err(e) = apply::converge(&mut self.parts(), Some(&before), &after) {
                    log::error!("changing the limits of a quota's class: {}", crate::error_chain(&e));
                }
                // With `per`, each instance's leaf follows its class.
                self.configure_instances();
            }
            Err(e) => log::error!("reading quota usage: {}", crate::error_chain(&e)),
        }
    }

    /// `shaper usage reset CLASS [INSTANCE]`: the quota starts over, its action lifted.
    pub fn reset_usage(
        &mut self,
        class: &str,
        instance: Option<&str>,
    ) -> Result<Vec<UsageRow>, RequestError> {
        let before = self.in_force(self.state.config());
        self.quotas.reset(class, instance, self.datapath.quotas_mut())?;
        let after = self.in_force(self.state.config());
        if after != before {
            apply::converge(&mut self.parts(), Some(&before), &after)?;
        }
        // With `per`, each instance's leaf follows its class (and its own quota).
        self.configure_instances();
        Ok(self.quotas.rows())
    }

    /// Applies `pending`; on success it is the config in force.
    fn apply(&mut self, pending: Pending, reloaded: bool) -> Result<Applied, RequestError> {
        let started = Instant::now();
        self.schedules.check_queues(&pending.config).map_err(DaemonError::from)?;
        self.connlimits.check(&pending.config)?;
        let old = self.in_force(self.state.config());
        let previous = self.state.config().clone();
        self.sync_quotas(&pending.config)?;
        let windows =
            self.schedules.advance(&pending.config, &schedules::local_zone(), jiff::Timestamp::now());
        let new = self.in_force(&pending.config);
        let gone = self.instances.retire(&self.host, &mut self.datapath, &new);
        self.close_instance_quotas(&gone);
        let changes = match apply::converge(&mut self.parts(), Some(&old), &new) {
            Ok(changes) => changes,
            Err(e) => {
                // The quotas and windows of the config that stays.
                self.schedules.restore(windows);
                if let Err(e) = self.sync_quotas(&previous) {
                    log::error!("{}", crate::error_chain(&e));
                }
                return Err(e.into());
            }
        };
        // Instances live before their class got a quota count from now on.
        for slot in self.instances.live_slots() {
            self.open_instance_quota(slot);
        }
        self.configure_instances();
        self.sync_connlimits(&pending.config);
        self.log_windows(&windows);
        let restart_needed = pending.restart_needed.clone();
        self.state.applied(pending, reloaded);
        Ok(Applied { changes, restart_needed, took_ms: started.elapsed().as_millis() as u64 })
    }

    /// Looks at the clock: classes whose schedule window opened or closed get
    /// their new limits. Returns how long until the next look.
    pub fn on_clock(&mut self) -> Duration {
        let (tz, now) = (schedules::local_zone(), jiff::Timestamp::now());
        let config = self.state.config().clone();
        let before = self.in_force(&config);
        let windows = self.schedules.advance(&config, &tz, now);
        if !self.schedules.switched(&windows).is_empty() {
            let after = self.in_force(&config);
            if let Err(e) = apply::converge(&mut self.parts(), Some(&before), &after) {
                log::error!("switching schedule windows: {}; trying again soon", crate::error_chain(&e));
                self.schedules.restore(windows);
                return links::RETRY;
            }
            // Each instance's leaf (classes with `per`) follows its class
            // (an instance held by its own quota stays held).
            self.configure_instances();
            self.log_windows(&windows);
        }
        Schedules::next_check(&config, &tz, now)
    }

    /// How long until the schedule windows should be looked at again.
    pub fn clock_check_in(&self) -> Duration {
        Schedules::next_check(self.state.config(), &schedules::local_zone(), jiff::Timestamp::now())
    }

    /// Says which window each class that switched since `before` is in now.
    fn log_windows(&self, before: &schedules::Windows) {
        for name in self.schedules.switched(before) {
            match self.schedules.window(self.state.config(), &name) {
                Some(w) => log::info!("class {name}: schedule window {} ({}) in force", w.window, w.text),
                None => log::info!("class {name}: outside its schedule windows, its own limits in force"),
            }
        }
    }

    /// Re-reads the config file and applies it. On a bad file nothing changes
    /// and the error is returned.
    pub fn reload(&mut self) -> Result<Applied, RequestError> {
        let result = options::load_config(&self.options)
            .map_err(RequestError::from)
            .and_then(|new| self.apply(self.state.reload(new), true));
        match &result {
            Ok(applied) => {
                log::info!(
                    "reloaded {} in {} ms: {}",
                    self.state.config().path.display(),
                    applied.took_ms,
                    applied.changes.summary()
                );
                if !applied.restart_needed.is_empty() {
                    log::warn!(
                        "changed [daemon] settings take effect at the next start: {}",
                        applied.restart_needed.join(", ")
                    );
                }
            }
            Err(e) => {
                let reason = crate::error_chain(e);
                log::error!("reload refused, the running config stays in force: {reason}");
                self.state.refused(reason);
            }
        }
        result
    }

    /// What a reload of the config file (of `path`, when given) would
    /// change; changes nothing (see [`dryrun`]).
    pub fn dry_run(&mut self, path: Option<&str>) -> Result<DryRun, RequestError> {
        let mut options = self.options.clone();
        if let Some(path) = path {
            options.config_path = path.into();
        }
        let pending = self.state.reload(options::load_config(&options)?);
        self.schedules.check_queues(&pending.config).map_err(DaemonError::from)?;
        let (old, new) = (self.in_force(self.state.config()), self.in_force(&pending.config));
        let dry = dryrun::dry_run(&self.parts(), &old, &new)?;
        let config = options.config_path.display().to_string();
        Ok(DryRun { config, restart_needed: pending.restart_needed, ..dry })
    }

    /// `shaper set`: changes one class of the config in force.
    pub fn set_class(&mut self, set: &SetClass) -> Result<Applied, RequestError> {
        let pending = self.state.set(set)?;
        let applied = self.apply(pending, false)?;
        log::info!("set {}: {}", set.class, self.state.drift().join("; "));
        Ok(applied)
    }

    /// `shaper move`: pins the connection `conn` (its id in `shaper conns`)
    /// into `class`; neither the rules nor the daemon move it again while it lives.
    pub fn move_conn(&mut self, conn: &str, class: &str) -> Result<Moved, RequestError> {
        let index =
            self.datapath.class_ids().index(class).ok_or_else(|| RequestError::UnknownClass(class.into()))?;
        let (key, _) = explain::find_flow(&self.datapath, conn)?;
        self.decider.pin(&mut self.datapath, &key, index).map_err(RequestError::Pin)?;
        let shown = format!(
            "{} {} → {}",
            flows::proto_name(key.proto),
            flows::endpoint(&key, true),
            flows::endpoint(&key, false)
        );
        log::info!("moved {shown} to {class} (pinned)");
        Ok(Moved { id: flows::id(&key), conn: shown, class: class.to_string() })
    }

    /// Answers a control request (`stop` is the main loop's).
    pub fn handle(&mut self, command: Command) -> Reply {
        let refused = |e: RequestError| Reply::error(crate::error_chain(&e));
        match command {
            Command::Reload => self.reload().map_or_else(refused, |a| Reply::encode(&a)),
            Command::Set(set) => self.set_class(&set).map_or_else(refused, |a| Reply::encode(&a)),
            Command::Move { conn, class } => {
                self.move_conn(&conn, &class).map_or_else(refused, |m| Reply::encode(&m))
            }
            Command::Stop { .. } => Reply::error("stop is handled by the daemon's main loop"),
            Command::Status => Reply::encode(&self.view().status()),
            Command::Classes => match self.view().classes() {
                Ok(rows) => Reply::encode(&rows),
                Err(e) => Reply::error(crate::error_chain(&e)),
            },
            Command::Conns(filter) => Reply::encode(&self.view().conns(&filter)),
            Command::Top { n } => match super::top::report(&self.view(), n) {
                Ok(report) => Reply::encode(&report),
                Err(e) => Reply::error(crate::error_chain(&e)),
            },
            Command::Usage => Reply::encode(&self.quotas.rows()),
            Command::Metrics { openmetrics } => {
                let format = if openmetrics { Format::OpenMetrics } else { Format::Text };
                match self.metrics(format) {
                    Ok(text) => {
                        Reply::encode(&MetricsText { content_type: format.content_type().into(), text })
                    }
                    Err(e) => Reply::error(crate::error_chain(&e)),
                }
            }
            Command::Explain(request) => {
                let sources = explain::Sources {
                    decider: &mut self.decider,
                    datapath: &self.datapath,
                    config: self.state.config(),
                };
                explain::explain(sources, &request)
                    .map_or_else(|e| Reply::error(crate::error_chain(&e)), |x| Reply::encode(&x))
            }
            Command::DryRun { config } => {
                self.dry_run(config.as_deref()).map_or_else(refused, |d| Reply::encode(&d))
            }
            Command::UsageReset { class, instance } => self
                .reset_usage(&class, instance.as_deref())
                .map_or_else(refused, |rows| Reply::encode(&rows)),
        }
    }

    /// Stops shaping: either removes everything shaper made (hooks, programs,
    /// qdiscs, IFBs, pins) and restores every interface, or leaves it all
    /// running for the next daemon.
    pub fn stop(mut self, mode: StopMode) {
        if !self.quotas.is_empty() {
            self.quotas.save();
        }
        match mode {
            StopMode::Keep => log::info!(
                "leaving shaping in place (pinned at {}); the next daemon takes it over",
                self.state.config().daemon.pin_dir.display()
            ),
            StopMode::Restore => self.restore(),
        }
    }

    fn restore(&mut self) {
        // The hooks first: no new owner records while the rest goes.
        self.datapath.detach_cgroup();
        if let Err(e) = self.datapath.set_gates(&[]) {
            log::warn!("{}", crate::error_chain(&e));
        }
        while let Some(shaped) = self.host.pop() {
            let name = shaped.name().to_string();
            apply::unshape(&mut self.parts(), shaped.ifindex(), Some(&name));
        }
        // Interfaces an earlier daemon shaped that this one never took over,
        // and trees a failed start built before it could register them.
        for (ifindex, _) in self.datapath.ifaces() {
            apply::unshape(&mut self.parts(), ifindex, None);
        }
        for (ifindex, name) in self.host.recorded() {
            apply::unshape(&mut self.parts(), ifindex, Some(&name));
        }
        if let Some(p) = self.datapath.pins() {
            p.remove_all();
        }
    }
}
