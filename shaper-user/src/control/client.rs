//! The CLI side of the control socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{Command, Reply, Request, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the shaper daemon at {}: {source} (is it running? start it with `shaper run --config FILE`)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the shaper daemon at {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon sent a reply this client cannot read: {0}")]
    BadReply(String),
    #[error("the daemon speaks control protocol v{0}; this client speaks v{PROTOCOL_VERSION}")]
    Version(u32),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// Sends one request and decodes the `result` of a successful reply as `T`,
/// the type control/protocol.rs gives that request's result.
pub fn request<T: serde::de::DeserializeOwned>(socket: &Path, command: Command) -> Result<T, ClientError> {
    let value = call(socket, command)?;
    serde_json::from_value(value).map_err(|e| ClientError::BadReply(format!("unexpected result: {e}")))
}

/// Sends one request and returns the `result` of a successful reply.
pub fn call(socket: &Path, command: Command) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io { path: socket.to_path_buf(), source };
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.to_path_buf(), source })?;
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
        return Err(ClientError::BadReply("the daemon closed the connection without replying".into()));
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
