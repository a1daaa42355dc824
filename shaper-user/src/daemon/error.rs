//! What can go wrong in the daemon, by area.

use crate::{
    config::ConfigError, control::server::ServerError, datapath::DatapathError, pins::PinError, tc::TcError,
    units::UnitError,
};

use super::{host::HostError, pidfile::PidFileError, quota::QuotaError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    /// The config cannot be applied on this host (its rule table, say).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Control(#[from] ServerError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error("setting up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(
        "the socket hooks cannot attach: they need cgroup v2. To run with process rules decided \
         by the /proc scan only (pyshaper's model: a new connection runs unshaped until the next \
         scan), set `event_driven = false` under [daemon]"
    )]
    NoCgroup2(#[source] crate::cgroupmount::MountError),
    #[error("watching the classifier's event ring buffer")]
    Events(#[source] std::io::Error),
    #[error("quotas")]
    Quota(#[source] Box<QuotaError>),
    #[error(
        "class {class} has max_connections, which needs raw sockets to admit and refuse waiting \
         connections, and this daemon cannot open them (CAP_NET_RAW): {reason}"
    )]
    NoRawSockets { class: String, reason: String },
    #[error("cannot serve metrics on {addr} ([daemon] metrics)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl From<QuotaError> for DaemonError {
    fn from(e: QuotaError) -> Self {
        DaemonError::Quota(Box::new(e))
    }
}

impl From<DatapathError> for DaemonError {
    fn from(e: DatapathError) -> Self {
        DaemonError::Datapath(Box::new(e))
    }
}

/// Why a config file cannot be used as `shaper run` would use it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("looking up the interfaces")]
    Netlink(#[from] TcError),
}

/// A bad `RATE[:CEIL]` of `shaper set`.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error("{text:?}: a rate must be above zero")]
    Zero { text: String },
    #[error("{text:?}: {source}")]
    Rate {
        text: String,
        #[source]
        source: UnitError,
    },
    #[error("the ceil ({ceil}) is below the rate ({rate})")]
    CeilBelowRate { rate: String, ceil: String },
}

/// Why the daemon refused a `reload`, `set` or `move`.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Apply(#[from] DaemonError),
    #[error("no class named {0:?}")]
    UnknownClass(String),
    /// The change would guarantee more than an interface's capacity.
    #[error("class {class:?}: {source}")]
    Overbooked {
        class: String,
        #[source]
        source: crate::config::Overbooked,
    },
    #[error("nothing to change: give --egress, --ingress or --priority")]
    NothingToChange,
    #[error("--{flag} {source}")]
    Limit {
        flag: &'static str,
        #[source]
        source: LimitError,
    },
    #[error("priority must be 0 (served first) to {max}, not {given}")]
    Priority { given: u8, max: u8 },
    #[error("--max-connections must be 1 or more")]
    MaxConnections,
    #[error("{0:?}: give at least 4 digits of a connection id from `shaper conns`")]
    ShortId(String),
    #[error("no connection {0:?} (see `shaper conns`)")]
    NoConnection(String),
    #[error("{id:?} names {count} connections; give more digits")]
    Ambiguous { id: String, count: usize },
    #[error("moving the connection")]
    Pin(#[source] DatapathError),
    #[error(transparent)]
    Quota(#[from] QuotaError),
}
