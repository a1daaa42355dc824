//! The CLI side of the control socket, typed: one function per request,
//! returning its result type from [`super::protocol`] ([`request`] underneath).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use super::protocol::{
    Applied, ClassRow, Command, ConnFilter, ConnRow, MetricsText, Moved, Reply, Request, SetClass, Status,
    Stopping, UsageRow, PROTOCOL_VERSION,
};
use super::top::TopReport;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cause is part of the message (before the hint), not a source.
    #[error("cannot reach the shaper daemon at {}: {cause} (is it running? start it with `shaper start` or `systemctl start shaper`)", path.display())]
    Connect { path: PathBuf, cause: std::io::Error },
    #[error("talking to the shaper daemon at {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the shaper daemon at {} closed the connection without replying", path.display())]
    Closed { path: PathBuf },
    #[error("the daemon sent a reply this client cannot read: {0}")]
    BadReply(String),
    #[error("the daemon speaks control protocol v{0}; this client speaks v{PROTOCOL_VERSION}")]
    Version(u32),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

impl ClientError {
    /// Whether no daemon answered: no socket, a refused connection, a
    /// connection dropped or silent before the reply (`shaper`'s exit code
    /// 3), as opposed to a daemon that answered with a refusal or with a
    /// reply this client cannot read.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Closed { .. })
    }
}

/// `status`: what the daemon is doing.
pub fn status(socket: &Path) -> Result<Status, ClientError> {
    request(socket, Command::Status)
}

/// `classes`: one row per class, interface and direction.
pub fn classes(socket: &Path) -> Result<Vec<ClassRow>, ClientError> {
    request(socket, Command::Classes)
}

/// `conns`: one row per flow.
pub fn conns(socket: &Path) -> Result<Vec<ConnRow>, ClientError> {
    request(socket, Command::Conns(ConnFilter::default()))
}

/// `conns` with filters, an order and a limit.
pub fn conns_filtered(socket: &Path, filter: ConnFilter) -> Result<Vec<ConnRow>, ClientError> {
    request(socket, Command::Conns(filter))
}

/// `top`: the classes and the busiest `n` of each kind.
pub fn top(socket: &Path, n: usize) -> Result<TopReport, ClientError> {
    request(socket, Command::Top { n })
}

/// `reload`: re-read the config file and apply it.
pub fn reload(socket: &Path) -> Result<Applied, ClientError> {
    request(socket, Command::Reload)
}

/// `set`: change a running class without touching the file.
pub fn set(socket: &Path, set: SetClass) -> Result<Applied, ClientError> {
    request(socket, Command::Set(set))
}

/// `move`: pin connection `conn` (an id prefix from `conns`) into `class`.
pub fn move_conn(socket: &Path, conn: &str, class: &str) -> Result<Moved, ClientError> {
    request(socket, Command::Move { conn: conn.to_string(), class: class.to_string() })
}

/// `usage`: every quota and where it stands.
pub fn usage(socket: &Path) -> Result<Vec<UsageRow>, ClientError> {
    request(socket, Command::Usage)
}

/// `usage reset`: starts the period of `class` (`instance`) over.
pub fn usage_reset(socket: &Path, class: &str, instance: Option<&str>) -> Result<Vec<UsageRow>, ClientError> {
    request(socket, Command::UsageReset { class: class.to_string(), instance: instance.map(str::to_string) })
}

/// `metrics`: the exposition text (`openmetrics`: OpenMetrics 1.0.0, else Prometheus text 0.0.4).
pub fn metrics(socket: &Path, openmetrics: bool) -> Result<MetricsText, ClientError> {
    request(socket, Command::Metrics { openmetrics })
}

/// `explain`: why a connection is in its class (or which one it would get).
pub fn explain(socket: &Path, asked: super::ExplainRequest) -> Result<super::Explained, ClientError> {
    request(socket, Command::Explain(asked))
}

/// `dry_run`: what a reload of the daemon's config file (or of `config`) would change.
pub fn dry_run(socket: &Path, config: Option<&Path>) -> Result<super::DryRun, ClientError> {
    request(socket, Command::DryRun { config: config.map(|c| c.display().to_string()) })
}

/// `stop`: the daemon replies, then exits (`keep`: leaving shaping in place).
pub fn stop(socket: &Path, keep: bool) -> Result<Stopping, ClientError> {
    request(socket, Command::Stop { keep })
}

/// Sends one request and decodes the `result` of a successful reply as `T`
/// (the functions above pair each command with its type).
pub fn request<T: DeserializeOwned>(socket: &Path, command: Command) -> Result<T, ClientError> {
    let result = exchange(socket, command)?;
    serde_json::from_value(result).map_err(|e| ClientError::BadReply(e.to_string()))
}

/// Sends one request and returns the `result` of a successful reply.
fn exchange(socket: &Path, command: Command) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io { path: socket.to_path_buf(), source };
    let mut stream = UnixStream::connect(socket)
        .map_err(|cause| ClientError::Connect { path: socket.to_path_buf(), cause })?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io)?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    let mut line =
        serde_json::to_string(&Request::new(command)).map_err(|e| ClientError::BadReply(e.to_string()))?;
    line.push('\n');
    // A daemon that refuses a client replies at once and hangs up, so a failed
    // write may still have a reply waiting: read it before giving up.
    let written = stream.write_all(line.as_bytes());
    let mut reply = String::new();
    let read = BufReader::new(&stream).read_line(&mut reply);
    if reply.is_empty() {
        written.map_err(io)?;
        read.map_err(io)?;
    }
    if reply.is_empty() {
        return Err(ClientError::Closed { path: socket.to_path_buf() });
    }
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if reply.v != PROTOCOL_VERSION {
        return Err(ClientError::Version(reply.v));
    }
    match (reply.ok, reply.result, reply.error) {
        (true, Some(result), _) => Ok(result),
        (_, _, Some(error)) => Err(ClientError::Refused(error)),
        _ => Err(ClientError::BadReply("a reply with neither a result nor an error".into())),
    }
}
