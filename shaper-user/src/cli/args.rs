//! The arguments the `shaper` verbs share: the daemon's (`run`, `start`)
//! and the clients' (`status`, `reload`, `stop`, …), and the checks that
//! make a malformed value a usage error (exit 2, from clap).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use log::Level;
use shaper_user::{
    config::DEFAULT_CONFIG,
    daemon::{self, RequestError, RunOptions},
    error_chain, logging,
};

#[derive(Args)]
pub(crate) struct DaemonArgs {
    /// The config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub(crate) config: PathBuf,
    /// Control socket to listen on, instead of the config's `control_socket`.
    #[arg(long)]
    pub(crate) socket: Option<PathBuf>,
    /// cgroup v2 directory to attach the socket hooks to, instead of the config's `cgroup`.
    #[arg(long)]
    pub(crate) cgroup: Option<PathBuf>,
    /// Directory on a BPF filesystem to pin the shaping state in, instead of the config's `pin_dir`.
    #[arg(long)]
    pub(crate) pin_dir: Option<PathBuf>,
    /// Pid file, instead of the config's `pid_file`.
    #[arg(long)]
    pub(crate) pid_file: Option<PathBuf>,
}

impl DaemonArgs {
    pub(crate) fn options(&self) -> RunOptions {
        RunOptions {
            config_path: self.config.clone(),
            kernel_log_level: kernel_log_level(),
            socket: self.socket.clone(),
            cgroup: self.cgroup.clone(),
            pin_dir: self.pin_dir.clone(),
            pid_file: self.pid_file.clone(),
        }
    }
}

#[derive(Args)]
pub(crate) struct ClientArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// The daemon's control socket [default: `control_socket` of --config, else of
    /// /etc/shaper/shaper.toml when it exists, else /run/shaper/shaper.sock].
    #[arg(long)]
    pub(crate) socket: Option<PathBuf>,
    /// Read the control socket path from this config file [default: /etc/shaper/shaper.toml, when it
    /// exists].
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
}

impl ClientArgs {
    /// The config the client reads its paths from: --config, else the
    /// default one when it exists.
    pub(crate) fn config_file(&self) -> Option<&Path> {
        self.config.as_deref().or_else(|| Some(Path::new(DEFAULT_CONFIG)).filter(|p| p.exists()))
    }

    /// The control socket to talk to (see [`super::socket`]); says on stderr
    /// when the default config gives none.
    pub(crate) fn socket(&self) -> Result<PathBuf> {
        let (socket, warning) = super::socket::resolve(
            self.socket.as_deref(),
            self.config.as_deref(),
            Path::new(DEFAULT_CONFIG),
        )?;
        if let Some(warning) = warning {
            eprintln!("{}", logging::line(Level::Warn, &format!("shaper: {warning}")));
        }
        Ok(socket)
    }
}

/// `--egress`/`--ingress` of `set`: RATE or RATE:CEIL, checked here so a
/// malformed one is a usage error.
pub(crate) fn limit_arg(text: &str) -> Result<String, String> {
    daemon::parse_limit(text).map(|_| text.to_string()).map_err(|e| error_chain(&e))
}

/// The connection of `move`: at least 4 digits of its ID (as the daemon asks).
pub(crate) fn conn_arg(text: &str) -> Result<String, String> {
    if text.trim().len() < 4 {
        return Err(RequestError::ShortId(text.to_string()).to_string());
    }
    Ok(text.to_string())
}

/// The aya-log level for the kernel programs, from RUST_LOG's `shaper_ebpf` target.
fn kernel_log_level() -> u8 {
    [Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error]
        .into_iter()
        .find(|l| log::log_enabled!(target: "shaper_ebpf", *l))
        .map_or(0, |l| l as u8)
}
