//! Connection limits, the daemon's side: a thread of its own admits the
//! waiting connections, oldest first, as slots free; refuses the ones over
//! the limit (reject) or past `queue_timeout`; gives back the slots of granted
//! connections that never got established; and keeps the counts `classes`
//! shows. See `shaper_common::connlimit` for the whole mechanism.
//!
//! The thread keeps no line of its own: it reads the waiting connections
//! from the pinned CONN_GATES at every turn, so a restarted daemon carries on
//! where the last one stopped. It looks every [`TICK`] while some class has
//! a limit (the classifier drops a waiting SYN without waking anyone).

mod engine;
mod inject;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use shaper_common::Direction;

use super::{error::DaemonError, host::Host};
use crate::{
    classids::ClassIds,
    config::{connlimit::ConnLimitConfig, Config},
    control::connlimit::ConnLimitRow,
    datapath::ConnMaps,
};

/// How often the thread looks while some class has a limit.
pub const TICK: Duration = Duration::from_millis(5);
/// How often it looks while none has.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// What the daemon tells the thread, and what the thread reports.
#[derive(Default)]
struct Shared {
    /// Class index → its name and limit.
    limits: BTreeMap<u16, (String, ConnLimitConfig)>,
    /// Bumped at each change of `limits`.
    generation: u64,
    /// The generation the thread wrote into CONN_LIMITS.
    applied: u64,
    /// Class name → its counts.
    rows: BTreeMap<String, ConnLimitRow>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The admission thread, stopped on drop.
pub struct ConnLimits {
    /// Why the raw sockets could not be opened (limits then refuse to load).
    unavailable: Option<String>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnLimits {
    /// Starts the thread in the calling thread's network namespace (the
    /// shaped interfaces', where its raw sockets must be).
    pub fn start(maps: Option<ConnMaps>) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let injector = inject::Injector::open();
        let unavailable = injector.unavailable();
        let thread = maps.and_then(|maps| {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("connlimit".into())
                .spawn(move || run(maps, injector, &shared, &stop))
                .map_err(|e| log::error!("connection limits: cannot start their thread: {e}"))
                .ok()
        });
        Self { unavailable, shared, stop, thread }
    }

    /// Refuses a config with limits when the raw sockets are missing: its
    /// waiting connections could be neither admitted nor refused in time.
    pub fn check(&self, config: &Config) -> Result<(), DaemonError> {
        let (Some(reason), Some(class)) =
            (&self.unavailable, config.classes.iter().find(|c| c.conn_limit.is_some()))
        else {
            return Ok(());
        };
        Err(DaemonError::NoRawSockets { class: class.name.clone(), reason: reason.clone() })
    }

    /// Follows the limits of `config`, whose classes get the indices `ids`.
    pub fn sync(&self, config: &Config, ids: &ClassIds) {
        let limits: BTreeMap<u16, (String, ConnLimitConfig)> = config
            .classes
            .iter()
            .filter_map(|c| Some((ids.index(&c.name)?, (c.name.clone(), c.conn_limit?))))
            .collect();
        let generation = {
            let mut shared = lock(&self.shared);
            if shared.limits == limits {
                return;
            }
            shared.limits = limits;
            shared.generation += 1;
            shared.generation
        };
        // In force before the caller goes on (a start reports ready, a set
        // replies): the thread writes the limits at its next turn, woken now.
        let Some(thread) = &self.thread else { return };
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while lock(&self.shared).applied < generation && std::time::Instant::now() < until {
            thread.thread().unpark();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The counts of class `name`, if it has a limit.
    pub fn row(&self, name: &str) -> Option<ConnLimitRow> {
        let shared = lock(&self.shared);
        let (_, limit) = shared.limits.values().find(|(n, _)| n == name)?;
        let mut row = shared.rows.get(name).cloned().unwrap_or_default();
        row.max_connections = limit.max;
        row.on_limit = Some(limit.on_limit);
        row.queue_timeout_ms = limit.queue_timeout.as_millis() as u64;
        Some(row)
    }

    /// Every class with a limit, with its counts.
    pub fn rows(&self) -> BTreeMap<String, ConnLimitRow> {
        let names: Vec<String> = lock(&self.shared).limits.values().map(|(n, _)| n.clone()).collect();
        names.into_iter().filter_map(|n| Some((n.clone(), self.row(&n)?))).collect()
    }
}

impl Drop for ConnLimits {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The devices the gates go on while some class of `config` has a limit:
/// each shaped interface's egress (after the classifier) and its IFB's
/// egress (arriving packets, classified on the interface's ingress).
pub fn gates(host: &Host, config: &Config) -> Vec<(String, u32, Direction)> {
    if config.classes.iter().all(|c| c.conn_limit.is_none()) {
        return Vec::new();
    }
    let mut wanted = Vec::new();
    for shaped in host.shaped() {
        wanted.push((shaped.name().to_string(), shaped.ifindex(), Direction::Egress));
        if let Some(ingress) = &shaped.ingress {
            wanted.push((ingress.ifb.name.clone(), ingress.ifb.index, Direction::Ingress));
        }
    }
    wanted
}

/// The thread: a turn of the engine every tick until told to stop.
fn run(maps: ConnMaps, injector: inject::Injector, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let mut engine = engine::Engine::new(maps, injector);
    let mut generation = 0;
    engine.set_limits(&BTreeMap::new());
    while !stop.load(Ordering::Relaxed) {
        {
            let s = lock(shared);
            if s.generation != generation {
                generation = s.generation;
                engine.set_limits(&s.limits);
            }
        }
        lock(shared).applied = generation;
        // Not before the daemon said which limits hold: a line a killed
        // daemon left would be admitted whole, as if its class had none.
        if generation > 0 {
            engine.turn();
        }
        lock(shared).rows = engine.rows();
        std::thread::park_timeout(if engine.idle() { IDLE_TICK } else { TICK });
    }
}
