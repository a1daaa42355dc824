//! `shaper run`: bring the config to life, keep it alive, change it live, and
//! take it down again (or leave it running for the next daemon).
//!
//! Modules import only downward, in this order:
//!
//! | module | what |
//! |---|---|
//! | [`runloop`] | the main loop: control socket, events, timers, signals |
//! | [`shaper`] | the running daemon: its parts, start-up, requests, stop |
//! | [`links`] | devices that come and go: lost IFBs, interfaces gone and back |
//! | [`apply`], [`modes`], [`live`], [`report`] | bringing the host to a config; what the classifier does per class; the config in force and its changes; `status`, `classes`, `conns` |
//! | [`metrics`] | what a scrape shows, and the endpoint of `[daemon] metrics` |
//! | [`explain`], [`dryrun`] | `shaper explain`: why a connection is in its class; what a reload would change, changing nothing |
//! | [`host`], [`decider`], [`instances`] | the parts: interfaces and HTB trees; connections and decisions; the instances of classes with `per` (the datapath is [`crate::datapath`]) |
//! | [`quota`], [`effective`] | quotas: usage, periods, the state file; the class limits in force under a throttle |
//! | [`connlimit`] | connection limits: the admission thread (the line, raw-socket re-sends and refusals, the counts) |
//! | [`options`], [`error`], [`notify`], [`pidfile`], [`watch`] | command-line options and the config they load; errors; sd_notify; the pid file; the config-file watch |

mod apply;
mod connlimit;
mod conns;
mod decider;
mod dryrun;
mod effective;
mod error;
mod explain;
mod host;
mod instances;
mod links;
mod live;
mod metrics;
mod modes;
pub mod notify;
mod options;
pub mod pidfile;
mod quota;
mod rates;
mod report;
mod runloop;
mod schedules;
mod shaper;
mod top;
mod watch;

pub use error::{DaemonError, LimitError, LoadError, RequestError};
pub use host::{ifb_name, HostError, IFB_TXQUEUELEN};
pub use live::parse_limit;
pub use options::{load_config, RunOptions};
pub use runloop::run;
pub use shaper::{Shaper, StopMode};
