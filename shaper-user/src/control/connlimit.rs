//! A class's connection limit as `classes` and `status` report it (the
//! counts HAProxy shows as scur, qcur, qmax…).

use serde::{Deserialize, Serialize};

pub use crate::config::connlimit::OnLimit;

/// Where a class's `max_connections` stands (over all its instances with `per`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnLimitRow {
    pub max_connections: u32,
    /// "queue" or "reject".
    pub on_limit: Option<OnLimit>,
    pub queue_timeout_ms: u64,
    /// Connections holding a slot now (granted or established).
    pub in_service: u64,
    /// Connections waiting for a slot now.
    pub waiting: u64,
    /// Highest `in_service` and `waiting` the daemon saw since it started.
    pub max_in_service: u64,
    pub max_waiting: u64,
    /// Connections given a slot (at once, or from the line).
    pub admitted: u64,
    /// Connections refused at once (`on_limit = "reject"`).
    pub rejected: u64,
    /// Connections refused after waiting `queue_timeout`.
    pub timed_out: u64,
    /// Waiting connections whose client went away before their turn.
    pub abandoned: u64,
    /// The longest a connection waited (admitted or timed out) since the daemon started, ms.
    pub longest_wait_ms: u64,
}

impl ConnLimitRow {
    /// One line for people: "2/4 in service, 3 waiting (max 4/9), 15 admitted, 0 rejected, 1 timed out, longest wait 2.1 s".
    pub fn summary(&self) -> String {
        format!(
            "{}/{} in service, {} waiting (max {}/{}), {} admitted, {} rejected, {} timed out, longest wait {:.1} s",
            self.in_service,
            self.max_connections,
            self.waiting,
            self.max_in_service,
            self.max_waiting,
            self.admitted,
            self.rejected,
            self.timed_out,
            self.longest_wait_ms as f64 / 1000.0
        )
    }
}
