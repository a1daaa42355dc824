//! `shaper run`'s main loop. One thread runs everything: the control socket,
//! the classifier's event ring buffer, the scan and rate timers, the config
//! watch, and the signals (SIGHUP reloads; SIGINT and SIGTERM stop and restore).

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
    time::Instant,
};

use super::{
    error::DaemonError,
    metrics, notify,
    options::RunOptions,
    pidfile::PidFile,
    shaper::{Shaper, StopMode},
    watch::ConfigWatch,
};
use crate::{
    config::Config,
    control::{
        server::{ControlSocket, Handler},
        Command, Reply, Stopping,
    },
    events,
    tc::LinkMonitor,
};

/// How long a report that does not wait for the daemon may wait to be read.
const EVENT_BATCH: Duration = Duration::from_millis(100);
/// Events read per turn of the loop: between batches the state lock is free
/// and the control socket, the timers and the signals get their turn.
const DRAIN_BATCH: usize = 256;
/// Stale flows removed per turn of the loop after a reconcile, likewise.
const PRUNE_BATCH: usize = 1024;

fn lock(state: &Mutex<Shaper>) -> MutexGuard<'_, Shaper> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the daemon until SIGINT, SIGTERM or `shaper stop`.
pub fn run(config: Config, options: RunOptions) -> Result<(), DaemonError> {
    return_freed_memory();
    crate::memlock::raise_for_bpf();
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

/// What the loop listens to besides the control socket.
struct Sources {
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
    events: Option<AsyncFd<RingBuf<MapData>>>,
    watch: Option<AsyncFd<ConfigWatch>>,
    /// Link events: interfaces and IFBs that come and go.
    links: Option<AsyncFd<LinkMonitor>>,
    _logger: Option<tokio::task::JoinHandle<()>>,
    /// The metrics endpoint's task (`[daemon] metrics`).
    _metrics: Option<tokio::task::JoinHandle<()>>,
}

type Stopped = (Arc<Mutex<Shaper>>, StopMode, ControlSocket, PidFile);

async fn run_async(config: Config, options: RunOptions) -> Result<Stopped, DaemonError> {
    let signals = |kind| signal(kind).map_err(DaemonError::Signals);
    let (sigint, sigterm, sighup) = (
        signals(SignalKind::interrupt())?,
        signals(SignalKind::terminate())?,
        signals(SignalKind::hangup())?,
    );
    let (pid_file, socket) = claim(&config.daemon.pid_file, &config.daemon.control_socket)?;
    let endpoint = match config.daemon.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let scan_interval = config.daemon.scan_interval;
    let watched = config.daemon.watch_config.then(|| config.path.clone());
    // Subscribed before the start, so no interface can appear unheard between the two.
    let links = link_monitor();
    let state = Arc::new(Mutex::new(Shaper::start(config, &options)?));
    let events = match lock(&state).take_events() {
        // SAFETY: the ring buffer owns its map fd for as long as it lives, and
        // the AsyncFd owns the ring buffer.
        Some(ring) => Some(
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| DaemonError::Events(e.into_parts().1))?,
        ),
        None => None,
    };
    let watch = watched.and_then(|path| watch_file(&path));
    let logger = if options.kernel_log_level > 0 { kernel_logger(&state) } else { None };
    let metrics = endpoint.map(|server| tokio::spawn(server.serve(render_metrics(&state))));
    let mut sources =
        Sources { sigint, sigterm, sighup, events, watch, links, _logger: logger, _metrics: metrics };
    let first = lock(&state).reconcile();
    log::info!(
        "ready: control socket {}, {} connections found, {} adopted",
        socket.path().display(),
        first.sockets,
        first.adopted
    );
    notify::notify(&format!("READY=1\nSTATUS=shaping, {} connections", first.sockets));
    let mode = serve(&state, &socket, &mut sources, scan_interval).await;
    notify::notify("STOPPING=1");
    drop(sources);
    Ok((state, mode, socket, pid_file))
}

/// Keeps glibc from holding on to memory the daemon has freed. The start
/// makes a few large short-lived buffers (the eBPF object, the kernel's BTF,
/// about 6 MB each); freeing one raises glibc's mmap threshold to its size,
/// after which every buffer below it comes from the heap and stays in the
/// daemon's RSS (measured: 25 MB idle instead of 14). A fixed threshold
/// turns that adjustment off.
fn return_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Takes the pid-file lock, then binds the control socket: a second daemon
/// fails on the lock before it touches the socket path (or anything else), so
/// it can never unlink the socket of the daemon that holds the lock.
fn claim(
    pid_file: &std::path::Path,
    socket: &std::path::Path,
) -> Result<(PidFile, ControlSocket), DaemonError> {
    let pid_file = PidFile::create(pid_file)?;
    let socket = ControlSocket::bind(socket)?;
    Ok((pid_file, socket))
}

/// Watches the config file for `[daemon] watch_config`.
fn watch_file(path: &std::path::Path) -> Option<AsyncFd<ConfigWatch>> {
    // SAFETY: the watch owns its inotify descriptor, and the AsyncFd owns the watch.
    let watch = ConfigWatch::new(path).and_then(|w| {
        unsafe { AsyncFd::register_with_interest(w, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    });
    match watch {
        Ok(w) => {
            log::info!("watching {} for changes (in {})", path.display(), w.get_ref().directories());
            Some(w)
        }
        Err(e) => {
            log::warn!("not watching {}: {e}", path.display());
            None
        }
    }
}

/// The watched config changed: once the writer is done, follow the path
/// again (a ConfigMap's swap moved it to another directory), then reload.
async fn on_config_change(state: &Mutex<Shaper>, watch: &mut Option<AsyncFd<ConfigWatch>>) {
    // Let the editor finish writing (several events, one reload).
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Some(w) = watch.as_mut() {
        let w = w.get_mut();
        w.changed();
        // Before the file is read: a change after this point is seen again.
        match w.rearm() {
            Ok(()) => log::debug!("config watch: now in {}", w.directories()),
            Err(e) => log::warn!("config watch: {e}; later changes may need `shaper reload`"),
        }
    }
    reload(state, "the config file changed");
}

/// The link events of the daemon's network namespace (none if the kernel
/// refuses the subscription: then lost devices are only noticed by reloads).
fn link_monitor() -> Option<AsyncFd<LinkMonitor>> {
    // SAFETY: the monitor owns its socket, and the AsyncFd owns the monitor.
    let monitor =
        LinkMonitor::open().map_err(|e| std::io::Error::other(crate::error_chain(&e))).and_then(|m| {
            unsafe { AsyncFd::register_with_interest(m, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        });
    match monitor {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!(
                "not listening to link events ({e}): a lost IFB or interface is not restored until a reload"
            );
            None
        }
    }
}

/// Reads the waiting link events and lets the shaper act on them; moves the
/// heal forward if they ask for one sooner.
fn on_links(monitor: &mut AsyncFd<LinkMonitor>, state: &Mutex<Shaper>, heal_at: &mut Option<Instant>) {
    match monitor.get_ref().read() {
        Ok(events) if !events.is_empty() => {
            if let Some(after) = lock(state).on_links(&events) {
                let at = Instant::now() + after;
                *heal_at = Some(heal_at.map_or(at, |h| h.min(at)));
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("reading link events: {}", crate::error_chain(&e)),
    }
}

/// The control socket's handler: `stop` goes to the loop, the rest to the
/// shaper; after a `reload` or `set` the loop looks at the schedules again.
fn handler(
    state: &Arc<Mutex<Shaper>>,
    stop_tx: tokio::sync::mpsc::UnboundedSender<StopMode>,
    changed: Arc<tokio::sync::Notify>,
) -> Handler {
    let state = Arc::clone(state);
    Arc::new(move |command| match command {
        Command::Stop { keep } => {
            let mode = if keep { StopMode::Keep } else { StopMode::Restore };
            let _ = stop_tx.send(mode);
            Reply::encode(&Stopping::now(keep))
        }
        other => {
            let rearm = matches!(other, Command::Reload | Command::Set(_));
            let reply = lock(&state).handle(other);
            if rearm {
                changed.notify_one();
            }
            reply
        }
    })
}

/// The metrics endpoint's view of the shaper.
fn render_metrics(state: &Arc<Mutex<Shaper>>) -> crate::metrics::http::Render {
    let state = Arc::clone(state);
    Arc::new(move |format, buffer| {
        lock(&state).metrics_into(format, buffer).map_err(|e| crate::error_chain(&e))
    })
}

/// Serves until a stop is asked for; returns how to stop.
async fn serve(
    state: &Arc<Mutex<Shaper>>,
    socket: &ControlSocket,
    s: &mut Sources,
    scan_interval: Duration,
) -> StopMode {
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel::<StopMode>();
    let mut scan = tokio::time::interval(scan_interval);
    scan.tick().await;
    let mut meter = tokio::time::interval(Duration::from_secs(1));
    let mut quotas = tokio::time::interval(super::quota::CHECK_INTERVAL);
    quotas.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The classifier wakes the daemon only for verdicts that wait for it;
    // the other reports are read on this tick.
    let mut pending = tokio::time::interval(EVENT_BATCH);
    let rearm = Arc::new(tokio::sync::Notify::new());
    let mut clients = Box::pin(socket.serve(handler(state, stop_tx, Arc::clone(&rearm))));
    // When to look at the schedule windows again.
    let mut clock_at = Instant::now() + lock(state).clock_check_in();
    // The ring buffer held more than one batch at the last read.
    let mut more = false;
    // The last reconcile left stale flows to remove.
    let mut pruning = false;
    let mut heal_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut clients => {}
            ready = async { s.links.as_mut()?.readable_mut().await.ok() }, if s.links.is_some() => {
                if let Some(mut guard) = ready {
                    on_links(guard.get_mut(), state, &mut heal_at);
                    guard.clear_ready();
                }
            }
            _ = tokio::time::sleep_until(heal_at.unwrap_or_else(Instant::now)), if heal_at.is_some() => {
                heal_at = lock(state).heal().map(|after| Instant::now() + after);
            }
            ready = async { s.events.as_mut()?.readable_mut().await.ok() }, if s.events.is_some() && !more => {
                if let Some(mut guard) = ready {
                    more = drain(guard.get_inner_mut(), state);
                    guard.clear_ready();
                }
            }
            _ = tokio::task::yield_now(), if more => {
                more = s.events.as_mut().is_some_and(|ring| drain(ring.get_mut(), state));
            }
            ready = async { s.watch.as_mut()?.readable_mut().await.ok() }, if s.watch.is_some() => {
                let changed = ready.is_some_and(|mut guard| {
                    let changed = guard.get_inner_mut().changed();
                    guard.clear_ready();
                    changed
                });
                if changed {
                    on_config_change(state, &mut s.watch).await;
                    clock_at = Instant::now() + lock(state).clock_check_in();
                }
            }
            _ = tokio::time::sleep_until(clock_at) => { clock_at = Instant::now() + lock(state).on_clock(); }
            _ = rearm.notified() => { clock_at = Instant::now() + lock(state).clock_check_in(); }
            _ = pending.tick(), if s.events.is_some() => {
                if let Some(ring) = s.events.as_mut() { more = drain(ring.get_mut(), state); }
            }
            _ = scan.tick() => { lock(state).reconcile(); pruning = true; }
            _ = tokio::task::yield_now(), if pruning => { pruning = lock(state).prune_stale(PRUNE_BATCH); }
            _ = meter.tick() => { lock(state).sample_rates(); }
            _ = quotas.tick() => { lock(state).check_quotas(); }
            _ = s.sighup.recv() => {
                reload(state, "SIGHUP");
                clock_at = Instant::now() + lock(state).clock_check_in();
            }
            mode = stop_rx.recv() => {
                let mode = mode.unwrap_or(StopMode::Restore);
                log::info!("stop requested ({})", if mode == StopMode::Keep { "keeping shaping in place" } else { "restoring" });
                return mode;
            }
            _ = s.sigint.recv() => { log::info!("SIGINT: stopping"); return StopMode::Restore; }
            _ = s.sigterm.recv() => { log::info!("SIGTERM: stopping"); return StopMode::Restore; }
        }
    }
}

/// Hands at most [`DRAIN_BATCH`] events waiting in the ring buffer to the
/// daemon; true when there may be more.
fn drain(ring: &mut RingBuf<MapData>, state: &Mutex<Shaper>) -> bool {
    let mut shaper = lock(state);
    for _ in 0..DRAIN_BATCH {
        let Some(record) = ring.next() else { return false };
        match events::parse(&record) {
            Some(event) => shaper.on_event(&event),
            None => log::warn!("an event record of {} bytes, not a flow event", record.len()),
        }
    }
    true
}

/// A reload on SIGHUP or a config change, with the supervisor told.
fn reload(state: &Mutex<Shaper>, why: &str) {
    log::info!("{why}: reloading the config");
    notify::reloading();
    // The reload logs its own outcome.
    let _ = lock(state).reload();
    notify::notify("READY=1");
}

/// Forwards aya-log records of the kernel programs to the `log` crate.
fn kernel_logger(state: &Arc<Mutex<Shaper>>) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(lock(state).ebpf_mut()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::pidfile::PidFileError;

    /// A daemon between bind and listen, or one whose socket a client cannot
    /// reach for a moment: its socket file is there but refuses connections.
    /// A second daemon must not take the path from it.
    #[test]
    fn a_losing_daemon_leaves_the_winners_socket_alone() {
        let dir = std::env::temp_dir().join(format!("shaper-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (pid_path, sock_path) = (dir.join("shaper.pid"), dir.join("shaper.sock"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let _entered = runtime.enter();
        let winner_lock = PidFile::create(&pid_path).unwrap();
        // Bound, not listening: connect() is refused, as for a stale socket.
        let winner_socket = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
        let before = std::fs::symlink_metadata(&sock_path).map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            m.ino()
        });
        match claim(&pid_path, &sock_path) {
            Err(DaemonError::PidFile(PidFileError::Running { .. })) => {}
            other => panic!("expected the pid-file lock to refuse, got {:?}", other.map(|_| ()).err()),
        }
        let after = std::fs::symlink_metadata(&sock_path).map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            m.ino()
        });
        assert_eq!(before.ok(), after.ok(), "the winner's socket file was replaced or removed");
        drop((winner_socket, winner_lock));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_removed() {
        let dir = std::env::temp_dir().join(format!("shaper-claim-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (pid_path, sock_path) = (dir.join("shaper.pid"), dir.join("shaper.sock"));
        std::fs::write(&sock_path, "someone's file\n").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let _entered = runtime.enter();
        match claim(&pid_path, &sock_path) {
            Err(DaemonError::Control(crate::control::server::ServerError::NotASocket(p))) => {
                assert_eq!(p, sock_path)
            }
            other => panic!("expected NotASocket, got {:?}", other.map(|_| ()).err()),
        }
        assert_eq!(std::fs::read_to_string(&sock_path).unwrap(), "someone's file\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
