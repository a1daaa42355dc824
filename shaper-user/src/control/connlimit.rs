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
    /// With `per`: the instances holding or waiting for a slot now (the
    /// limit holds for each); 0 for a class without `per`.
    #[serde(default)]
    pub instances: u64,
}

impl ConnLimitRow {
    /// One line for people: "2/4 in service, 3 waiting (max 4/9), 15 admitted, 0 rejected, 1 timed out, longest
    /// wait 2.1 s"; with `per`, "4 in service in 2 instances (at most 2 each), …".
    pub fn summary(&self) -> String {
        let serving = if self.instances == 0 {
            format!("{}/{} in service", self.in_service, self.max_connections)
        } else {
            format!(
                "{} in service in {} (at most {} each)",
                self.in_service,
                plural(self.instances, "instance"),
                self.max_connections
            )
        };
        format!(
            "{serving}, {} waiting (max {}/{}), {} admitted, {} rejected, {} timed out, longest wait {:.1} s",
            self.waiting,
            self.max_in_service,
            self.max_waiting,
            self.admitted,
            self.rejected,
            self.timed_out,
            self.longest_wait_ms as f64 / 1000.0
        )
    }

    /// For a narrow column: "2/4", or with `per` "4 in 2 (2 each)".
    pub fn in_service_of_limit(&self) -> String {
        if self.instances == 0 {
            format!("{}/{}", self.in_service, self.max_connections)
        } else {
            format!("{} in {} ({} each)", self.in_service, self.instances, self.max_connections)
        }
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_per_instance_reads_as_one() {
        let row = ConnLimitRow { max_connections: 2, in_service: 4, waiting: 2, ..ConnLimitRow::default() };
        assert!(row.summary().starts_with("4/2 in service, 2 waiting"), "{}", row.summary());
        let per = ConnLimitRow { instances: 2, ..row };
        assert!(
            per.summary().starts_with("4 in service in 2 instances (at most 2 each), 2 waiting"),
            "{}",
            per.summary()
        );
        assert_eq!(per.in_service_of_limit(), "4 in 2 (2 each)");
    }
}
