//! The control socket: how `shaper status|classes|conns` talk to the daemon.
//!
//! One request per line, one reply per line, both JSON, each carrying the
//! protocol version `v` (see README.md, "Control protocol").

pub mod client;
pub mod connlimit;
pub mod explain;
pub mod protocol;
pub mod server;
pub mod top;

pub use explain::{DryRun, ExplainRequest, Explained};
pub use protocol::{
    Applied, AttachMode, Changes, ClassRow, Command, ConnFilter, ConnRow, ConnSort, Decisions, Direction,
    InstanceCounters, InstanceRow, InterfaceStatus, MapUsage, MetricsText, Moved, Origin, QuotaState,
    ReloadStatus, Reply, Request, ScanReport, SetClass, SockState, Status, Stopping, UsageRow,
    PROTOCOL_VERSION,
};
pub use top::TopReport;
