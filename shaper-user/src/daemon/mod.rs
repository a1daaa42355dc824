//! `shaper run`: bring the config to life, keep it alive, change it live, and
//! take it down again (or leave it running for the next daemon).
//!
//! | file | what |
//! |---|---|
//! | [`shaper`] | what the daemon owns on the host; start-up, takeover and stop |
//! | [`apply`] | bringing the host to a config: start-up, reload and `set` share it |
//! | [`live`] | `reload`, `set`, `move` |
//! | [`decide`] | the daemon's decisions: the classifier's events and the /proc scan |
//! | [`report`] | `status`, `classes`, `conns` |
//! | [`notify`], [`pidfile`], [`watch`] | sd_notify readiness, the pid file, the config-file watch |
//!
//! One thread runs everything: the control socket, the classifier's event ring
//! buffer, the scan and rate timers, the config watch, and the signals (SIGHUP
//! reloads; SIGINT and SIGTERM stop and restore).

mod apply;
mod decide;
mod live;
pub mod notify;
pub mod pidfile;
mod report;
mod shaper;
mod watch;

pub use apply::Changes;
pub use live::parse_limit;
pub use shaper::{ifb_name, Shaper, StopMode, IFB_TXQUEUELEN};

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    config::Config,
    control::{
        self,
        server::{ControlSocket, Handler},
        Command, Reply, Stopping,
    },
    datapath::DatapathError,
    events, pins, tc,
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
    #[error("shaper shapes at most {0} interfaces")]
    TooManyInterfaces(u32),
    #[error("netlink")]
    Netlink(#[from] tc::TcError),
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error(transparent)]
    Control(#[from] control::server::ServerError),
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error(transparent)]
    PidFile(#[from] pidfile::PidFileError),
    #[error("compiling the rules")]
    Rules(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("setting up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("watching the classifier's event ring buffer")]
    Events(#[source] std::io::Error),
}

impl From<DatapathError> for DaemonError {
    fn from(e: DatapathError) -> Self {
        DaemonError::Datapath(Box::new(e))
    }
}

/// Options of `shaper run` beyond the config file. The paths given on the
/// command line win over the file's `[daemon]` settings, at start and at
/// every reload.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// aya-log level of the kernel programs (0 = off).
    pub kernel_log_level: u8,
    pub socket: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
}

/// Reads and validates the config file as `shaper run` uses it: the
/// command line's paths applied, every interface checked on the host.
pub fn load_config(options: &RunOptions) -> Result<Config, String> {
    let env = crate::rules::SystemEnv::load();
    let mut conf = crate::config::load(&options.config_path, &env.env()).map_err(|e| e.to_string())?;
    if let Some(s) = &options.socket {
        conf.daemon.control_socket = s.clone();
    }
    if let Some(c) = &options.cgroup {
        conf.daemon.cgroup = Some(c.clone());
    }
    if let Some(p) = &options.pin_dir {
        conf.daemon.pin_dir = p.clone();
    }
    if let Some(p) = &options.pid_file {
        conf.daemon.pid_file = p.clone();
    }
    let netlink = tc::Netlink::open().map_err(|e| crate::error_chain(&e))?;
    conf.check_interfaces_exist(|name| tc::link_by_name(&netlink, name).ok().flatten().is_some())
        .map_err(|e| e.to_string())?;
    Ok(conf)
}

fn lock(state: &Mutex<Shaper>) -> MutexGuard<'_, Shaper> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the daemon until SIGINT, SIGTERM or `shaper stop`.
pub fn run(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DaemonError::Runtime)?;
    let (state, mode, socket, pid_file) = runtime.block_on(run_async(config, options))?;
    // Client tasks end with the runtime; then the shaper is ours alone.
    drop(runtime);
    let shaper = match Arc::try_unwrap(state) {
        Ok(mutex) => mutex.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner),
        Err(_) => {
            log::error!("the daemon's state is still shared; leaving shaping in place");
            return Ok(());
        }
    };
    shaper.stop(mode);
    // Last: whoever waits for the socket or the pid file to go sees a finished stop.
    drop(socket);
    drop(pid_file);
    Ok(())
}

/// Hands every event waiting in the ring buffer to the daemon.
fn drain(ring: &mut RingBuf<MapData>, state: &Mutex<Shaper>) {
    let mut shaper = lock(state);
    while let Some(record) = ring.next() {
        match events::parse(&record) {
            Some(event) => shaper.on_event(&event),
            None => log::warn!("an event record of {} bytes, not a flow event", record.len()),
        }
    }
}

/// A reload on SIGHUP or a config change, with the supervisor told.
fn reload(state: &Mutex<Shaper>, why: &str) {
    log::info!("{why}: reloading the config");
    notify::reloading();
    if let Err(e) = lock(state).reload() {
        log::error!("{e}");
    }
    notify::notify("READY=1");
}

type Stopped = (Arc<Mutex<Shaper>>, StopMode, ControlSocket, pidfile::PidFile);

async fn run_async(config: Config, options: RunOptions) -> Result<Stopped, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    // Bind first: a second daemon must fail before it touches anything.
    let socket = ControlSocket::bind(&config.daemon.control_socket)?;
    let pid_file = pidfile::PidFile::create(&config.daemon.pid_file)?;
    let scan_interval = config.daemon.scan_interval;
    let watch_config = config.daemon.watch_config.then(|| config.path.clone());
    let state = Arc::new(Mutex::new(Shaper::start(config, &options)?));
    let ring = lock(&state).datapath.take_events();
    let mut events = match ring {
        // SAFETY: the ring buffer owns its map fd for as long as it lives, and
        // the AsyncFd owns the ring buffer.
        Some(ring) => Some(
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| DaemonError::Events(e.into_parts().1))?,
        ),
        None => None,
    };
    let mut watch = match watch_config {
        // SAFETY: the watch owns its inotify descriptor, and the AsyncFd owns the watch.
        Some(path) => match watch::ConfigWatch::new(&path).and_then(|w| {
            unsafe { AsyncFd::register_with_interest(w, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("not watching {}: {e}", path.display());
                None
            }
        },
        None => None,
    };
    let logger = if options.kernel_log_level > 0 { kernel_logger(&state) } else { None };
    let first = lock(&state).reconcile();
    log::info!(
        "ready: control socket {}, {} connections found, {} adopted",
        socket.path().display(),
        first.sockets,
        first.adopted
    );
    notify::notify(&format!("READY=1\nSTATUS=shaping, {} connections", first.sockets));
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel::<StopMode>();
    let handler: Handler = {
        let state = Arc::clone(&state);
        Arc::new(move |command| match command {
            Command::Stop { keep } => {
                let mode = if keep { StopMode::Keep } else { StopMode::Restore };
                let _ = stop_tx.send(mode);
                Reply::encode(&Stopping::now(keep))
            }
            other => lock(&state).handle(other),
        })
    };
    let mut scan = tokio::time::interval(scan_interval);
    scan.tick().await;
    let mut meter = tokio::time::interval(Duration::from_secs(1));
    let mut serve = Box::pin(socket.serve(handler));
    let mode = loop {
        tokio::select! {
            _ = &mut serve => {}
            ready = async { events.as_mut()?.readable_mut().await.ok() }, if events.is_some() => {
                if let Some(mut guard) = ready {
                    drain(guard.get_inner_mut(), &state);
                    guard.clear_ready();
                }
            }
            ready = async { watch.as_mut()?.readable_mut().await.ok() }, if watch.is_some() => {
                if let Some(mut guard) = ready {
                    let changed = guard.get_inner().changed();
                    guard.clear_ready();
                    if changed {
                        // Let the editor finish writing (several events, one reload).
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if let Some(w) = watch.as_ref() { w.get_ref().changed(); }
                        reload(&state, "the config file changed");
                    }
                }
            }
            _ = scan.tick() => { lock(&state).reconcile(); }
            _ = meter.tick() => { lock(&state).sample_rates(); }
            _ = sighup.recv() => reload(&state, "SIGHUP"),
            mode = stop_rx.recv() => {
                let mode = mode.unwrap_or(StopMode::Restore);
                log::info!("stop requested ({})", if mode == StopMode::Keep { "keeping shaping in place" } else { "restoring" });
                break mode;
            }
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break StopMode::Restore; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break StopMode::Restore; }
        }
    };
    notify::notify("STOPPING=1");
    drop(logger);
    drop(events);
    drop(watch);
    drop(serve);
    Ok((state, mode, socket, pid_file))
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
    let registered = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
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
