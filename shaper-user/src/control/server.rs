//! The daemon side of the control socket: a Unix socket readable by root only
//! (mode 0600 and the peer's uid checked), bounded request lines, idle clients
//! dropped, so no client can block or crash the daemon.
//!
//! The daemon binds it only once it holds the pid-file lock (see
//! `daemon::pidfile`), so two daemons never race for the path. It removes only
//! sockets: a stale one left at the path by a dead daemon when it binds, and
//! at exit its own, if the path still names it; never a file of another kind,
//! never a socket another process put there meanwhile.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::files;

use super::protocol::{Command, Reply, Request, MAX_REQUEST_BYTES, PROTOCOL_VERSION};

/// How long a client may stay silent before the daemon hangs up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another shaper daemon is already listening on {}", .0.display())]
    InUse(PathBuf),
    #[error("{} is not a socket; not removing it to bind the control socket there", .0.display())]
    NotASocket(PathBuf),
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Answers one command; runs on the daemon's runtime, so it must be quick.
pub type Handler = Arc<dyn Fn(Command) -> Reply + Send + Sync>;

/// The bound socket; the socket file is removed on drop if it is still ours.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this daemon made.
    made: Option<files::Identity>,
}

impl ControlSocket {
    /// Binds `path` (creating its directory), refusing if a live daemon owns it
    /// and replacing a stale socket file left by a dead one.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let io_err = |action, source| ServerError::Io { action, path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err("creating the directory of", e))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket(path.to_path_buf()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(|e| io_err("removing the stale socket", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| io_err("binding", e))?;
        let made = files::identity(path);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("restricting the permissions of", e))?;
        Ok(Self { listener, path: path.to_path_buf(), made })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until the task is dropped.
    pub async fn serve(&self, handler: Handler) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let handler = Arc::clone(&handler);
                    tokio::spawn(async move {
                        if let Err(e) = serve_client(stream, handler).await {
                            log::debug!("control client: {e}");
                        }
                    });
                }
                Err(e) => {
                    log::warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        files::remove_if_ours(&self.path, self.made);
    }
}

async fn send(stream: &mut (impl tokio::io::AsyncWrite + Unpin), reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn serve_client(stream: UnixStream, handler: Handler) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let (read, mut write) = stream.into_split();
    if peer.uid() != 0 && peer.uid() != me {
        return send(&mut write, &Reply::error("permission denied: the control socket is for root only"))
            .await;
    }
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        let read =
            tokio::time::timeout(IDLE_TIMEOUT, (&mut reader).take(limit).read_until(b'\n', &mut line)).await;
        let n = match read {
            Err(_) => return Ok(()), // idle: hang up
            Ok(result) => result?,
        };
        if n == 0 {
            return Ok(());
        }
        // A line without its newline is either over the limit or the last
        // request before the end of the stream (answered like any other).
        if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST_BYTES {
            let msg = format!("request longer than {MAX_REQUEST_BYTES} bytes");
            return send(&mut write, &Reply::error(msg)).await;
        }
        let reply = decode(&line).map_or_else(|refused| refused, |command| handler(command));
        send(&mut write, &reply).await?;
    }
}

/// One request line (its newline included or not) → the command it asks
/// for, or the error reply it gets.
pub fn decode(line: &[u8]) -> Result<Command, Reply> {
    let value = serde_json::from_slice::<serde_json::Value>(line)
        .map_err(|e| Reply::error(format!("malformed request (expected one JSON object per line): {e}")))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v != u64::from(PROTOCOL_VERSION) => Err(Reply::error(format!(
            "unsupported protocol version {v}; this daemon speaks v{PROTOCOL_VERSION}"
        ))),
        None => Err(Reply::error("request without a protocol version \"v\"")),
        Some(_) => serde_json::from_value::<Request>(value)
            .map(|request| request.command)
            .map_err(|e| Reply::error(format!("unknown request: {e}"))),
    }
}
