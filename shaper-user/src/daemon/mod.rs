//! `shaper run`: bring the config to life, keep it alive, and take it all down
//! again.
//!
//! | file | what |
//! |---|---|
//! | [`shaper`] | what the daemon owns on the host; start-up and teardown |
//! | [`decide`] | the daemon's decisions: the classifier's events and the /proc scan |
//! | [`report`] | `status`, `classes`, `conns` |
//!
//! One thread runs everything: the control socket, the classifier's event ring
//! buffer, the scan and rate timers, and the signals that stop it.

mod decide;
mod report;
mod shaper;

pub use shaper::{ifb_name, Shaper, IFB_TXQUEUELEN};

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    bpffs,
    config::Config,
    control::{
        self,
        server::{ControlSocket, Handler},
    },
    datapath::DatapathError,
    events, tc,
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
    #[error(
        "an interface named {ifb} exists already; shaper shapes the ingress of {iface} through an IFB of \
         that name. If a shaper that stopped uncleanly left it, remove it (`ip link del {ifb}`)"
    )]
    IfbExists { iface: String, ifb: String },
    #[error("netlink")]
    Netlink(#[from] tc::TcError),
    #[error(transparent)]
    Datapath(Box<DatapathError>),
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
    #[error("watching the classifier's event ring buffer")]
    Events(#[source] std::io::Error),
}

impl From<DatapathError> for DaemonError {
    fn from(e: DatapathError) -> Self {
        DaemonError::Datapath(Box::new(e))
    }
}

/// Options of `shaper run` beyond the config file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// aya-log level of the kernel programs (0 = off).
    pub kernel_log_level: u8,
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

async fn run_async(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    // Bind first: a second daemon must fail before it touches anything.
    let socket = ControlSocket::bind(&config.daemon.control_socket)?;
    let scan_interval = config.daemon.scan_interval;
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
            ready = async { events.as_mut()?.readable_mut().await.ok() }, if events.is_some() => {
                if let Some(mut guard) = ready {
                    drain(guard.get_inner_mut(), &state);
                    guard.clear_ready();
                }
            }
            _ = scan.tick() => { lock(&state).reconcile(); }
            _ = meter.tick() => { lock(&state).sample_rates(); }
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
        }
    }
    drop(logger);
    drop(events);
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
