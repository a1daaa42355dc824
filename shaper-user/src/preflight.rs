//! What `shaper check` finds on this host before a daemon runs a config,
//! changing nothing: beyond the interfaces being there (which anyone may
//! look up, see [`Config::check_interfaces_exist`]), whether the pin
//! directory is on a BPF filesystem and whether each interface's root qdisc
//! and IFB name are free or shaper's own. Those read the pin directory and
//! the records in it, which are root's alone: `check` runs [`host`] as root
//! only, and says that it skipped it otherwise.

use crate::{
    config::{Config, ConfigError, Pos},
    daemon::HostError,
    owned,
    pins::{PinPlace, Pins},
    tc::{self, Netlink},
};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// A problem the daemon would refuse to start with, at its place in the file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("looking up the interfaces")]
    Netlink(#[from] tc::TcError),
}

/// What [`host`] found in order.
#[derive(Debug, PartialEq, Eq)]
pub struct HostReport {
    pub pin_place: PinPlace,
    /// The interfaces present, whose root qdisc (and IFB name) shaper may take.
    pub free: Vec<String>,
    /// `optional` interfaces that are absent (shaped when they appear).
    pub absent: Vec<String>,
}

/// The checks that need root: the pin directory is on a BPF filesystem (or
/// under /sys/fs/bpf, where the daemon mounts one), and on each interface
/// present the root qdisc is the kernel's default or the HTB tree shaper
/// recorded there, and for shaped downloads the IFB name is free or
/// shaper's IFB. The first problem is an error at the place in the file
/// that names what has it.
pub fn host(config: &Config, nl: &Netlink) -> Result<HostReport, PreflightError> {
    let pins = Pins::new(&config.daemon.pin_dir);
    let pin_place = pins.check().map_err(|e| at(config, config.daemon.pin_dir_pos, &e))?;
    let records = pins.owned();
    let mut report = HostReport { pin_place, free: Vec::new(), absent: Vec::new() };
    for iface in &config.interfaces {
        let Some(link) = tc::link_by_name(nl, &iface.name)? else {
            report.absent.push(iface.name.clone());
            continue;
        };
        if let Some(root) = owned::foreign_root(nl, &records, link.index)? {
            return Err(at(config, Some(iface.pos), &HostError::foreign_qdisc(&iface.name, &root)).into());
        }
        if iface.ingress_bps.is_some() {
            if let Some(name) = owned::foreign_ifb(nl, &records, link.index)? {
                let error = HostError::ForeignDevice { name, iface: iface.name.clone() };
                return Err(at(config, Some(iface.pos), &error).into());
            }
        }
        report.free.push(iface.name.clone());
    }
    Ok(report)
}

/// `error` at `pos` in the config file (`None`: a default, not written there).
fn at(config: &Config, pos: Option<Pos>, error: &dyn std::error::Error) -> ConfigError {
    let (path, message) = (config.path.clone(), crate::error_chain(error));
    match pos {
        Some(pos) => ConfigError::At { path, pos, message },
        None => ConfigError::InFile { path, message },
    }
}
