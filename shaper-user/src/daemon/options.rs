//! How `shaper run` was asked to run, and the config it reads.

use std::path::PathBuf;

use super::error::LoadError;
use crate::{config::Config, tc};

/// Options of `shaper run` beyond the config file. The paths given on the
/// command line win over the file's `[daemon]` settings, at start and at
/// every reload.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// aya-log level of the kernel programs (0 = off).
    pub kernel_log_level: u8,
    pub socket: Option<PathBuf>,
    pub cgroup: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
}

/// Reads and validates the config file as `shaper run` uses it: the
/// command line's paths applied, every interface checked on the host.
pub fn load_config(options: &RunOptions) -> Result<Config, LoadError> {
    let env = crate::rules::SystemEnv::load();
    let mut conf = crate::config::load(&options.config_path, &env.env())?;
    if let Some(s) = &options.socket {
        conf.daemon.control_socket = s.clone();
    }
    if let Some(c) = &options.cgroup {
        conf.daemon.cgroup = Some(c.clone());
    }
    if let Some(p) = &options.pin_dir {
        conf.daemon.pin_dir = p.clone();
    }
    if let Some(p) = &options.pid_file {
        conf.daemon.pid_file = p.clone();
    }
    let netlink = tc::Netlink::open()?;
    conf.check_interfaces_exist(|name| tc::link_by_name(&netlink, name).ok().flatten().is_some())?;
    Ok(conf)
}
