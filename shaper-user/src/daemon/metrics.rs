//! The daemon's side of the metrics: a [`Snapshot`] of what its parts hold,
//! and the endpoint of `[daemon] metrics`, bound before anything is shaped
//! (an address in use stops the start, like a control socket in use).

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use shaper_common::ERROR_NAMES;

use super::{
    error::DaemonError,
    report::{HtbRead, View},
};
use crate::{
    control::protocol::Decisions,
    metrics::{http::Server, Snapshot},
};

/// Binds the metrics endpoint (in a tokio runtime).
pub async fn bind(addr: SocketAddr) -> Result<Server, DaemonError> {
    let server = Server::bind(addr).await.map_err(|source| DaemonError::Metrics { addr, source })?;
    let at = server.local_addr().unwrap_or(addr);
    log::info!("metrics at http://{at}{}", crate::metrics::http::PATH);
    Ok(server)
}

impl View<'_> {
    /// What one scrape shows: every class row (as `shaper classes`, but
    /// HTB's counters from the last rate sample), the maps, the error
    /// counters and the histograms.
    pub fn metrics(&self) -> Result<Snapshot, DaemonError> {
        let errors = self.datapath.errors().unwrap_or_default();
        let started = SystemTime::now().checked_sub(self.started.elapsed()).unwrap_or(UNIX_EPOCH);
        let d = self.decider.stats();
        Ok(Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            // HTB's counters from the last rate sample (at most a second old).
            classes: self.class_rows(HtbRead::Sampled)?,
            flows: self.decider.flows(),
            maps: self.map_usage(),
            errors: ERROR_NAMES.iter().zip(errors).map(|(n, v)| ((*n).to_string(), v)).collect(),
            // Naming them costs a walk of the class indices: only with instances.
            instances: if self.instances.live_slots().is_empty() {
                Default::default()
            } else {
                self.instance_counters().by_class
            },
            decisions: Decisions {
                events: d.events,
                provisional: d.provisional,
                changed: d.changed,
                provisional_bytes: d.provisional_bytes,
                ..Decisions::default()
            },
            scan_durations: self.decider.scan_durations().clone(),
            decision_latency: d.latency.clone(),
        })
    }
}
