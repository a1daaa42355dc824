//! The connection-limit maps (see `shaper_common::connlimit`), handed whole to
//! the daemon's admission thread: CONN_LIMITS (each class's limit), CONN_GATES
//! (the gated connections), CONN_KERNEL and CONN_DAEMON (the counters of each
//! writer). All pinned: the line and the counts outlive the daemon.

use std::path::PathBuf;

use aya::{
    maps::{Array, HashMap, MapData, MapError},
    programs::{links::FdLink, TcAttachType},
};
use shaper_common::{
    connlimit::{ConnDaemon, ConnKernel, ConnLimit, GateEntry},
    instances::InstanceKey,
    names, Direction, FlowKey,
};

use super::{is_missing, Datapath, DatapathError};

/// `BPF_EXIST`: update an entry only if it is there.
const BPF_EXIST_FLAG: u64 = 2;

/// A gate attached to a device's egress (tcx, after the classifier).
pub(super) struct GateLink {
    _link: FdLink,
    pin: Option<PathBuf>,
    /// The device's ifindex when attached (an IFB rebuilt under the same
    /// name has another, and needs its gate again).
    ifindex: u32,
}

impl Datapath {
    /// Attaches the connection-limit gates to the hooks `wanted` (device,
    /// its ifindex, and which gate: egress for an interface, ingress for its
    /// IFB) and detaches the others; `&[]` takes them all away. Tcx only.
    pub fn set_gates(&mut self, wanted: &[(String, u32, Direction)]) -> Result<(), DatapathError> {
        let gone: Vec<_> = self
            .gates
            .iter()
            .filter(|((dev, gate), link)| {
                !wanted.iter().any(|(d, i, g)| d == dev && g == gate && *i == link.ifindex)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(GateLink { pin: Some(path), .. }) = self.gates.remove(&key) {
                let _ = std::fs::remove_file(path);
            }
        }
        for (dev, ifindex, direction) in wanted {
            if self.gates.contains_key(&(dev.clone(), *direction)) {
                continue;
            }
            let link = self.attach_gate(dev, *ifindex, *direction)?;
            self.gates.insert((dev.clone(), *direction), link);
        }
        Ok(())
    }

    fn attach_gate(
        &mut self,
        dev: &str,
        ifindex: u32,
        direction: Direction,
    ) -> Result<GateLink, DatapathError> {
        let name = match direction {
            Direction::Egress => names::PROG_TC_GATE_EGRESS,
            Direction::Ingress => names::PROG_TC_GATE_INGRESS,
        };
        let attach_err = |source| DatapathError::Attach { iface: dev.to_string(), direction, source };
        let pin = self.pins.as_ref().map(|p| p.tc_link(name, ifindex));
        let prog = super::program(&mut self.ebpf, name)?;
        // An earlier daemon's gate has its program replaced in place.
        let link = super::attach_tcx(prog, dev, TcAttachType::Egress, pin.as_ref(), attach_err)?;
        Ok(GateLink { _link: link, pin, ifindex })
    }
}

pub struct ConnMaps {
    limits: Array<MapData, ConnLimit>,
    gates: HashMap<MapData, FlowKey, GateEntry>,
    kernel: HashMap<MapData, InstanceKey, ConnKernel>,
    daemon: HashMap<MapData, InstanceKey, ConnDaemon>,
}

fn error(action: &'static str, map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { action, map, source }
}

impl ConnMaps {
    pub(super) fn new(
        limits: Array<MapData, ConnLimit>,
        gates: HashMap<MapData, FlowKey, GateEntry>,
        kernel: HashMap<MapData, InstanceKey, ConnKernel>,
        daemon: HashMap<MapData, InstanceKey, ConnDaemon>,
    ) -> Self {
        Self { limits, gates, kernel, daemon }
    }

    /// Sets class `class`'s limit (`max == 0`: none).
    pub fn set_limit(&mut self, class: u16, limit: ConnLimit) -> Result<(), DatapathError> {
        self.limits.set(u32::from(class), limit, 0).map_err(error("writing a limit", names::MAP_CONN_LIMITS))
    }

    /// Every gated connection.
    pub fn gates(&self) -> Vec<(FlowKey, GateEntry)> {
        self.gates.iter().filter_map(Result::ok).collect()
    }

    /// Replaces the entry of a connection still gated; false when it is gone.
    pub fn update_gate(&mut self, key: &FlowKey, entry: &GateEntry) -> Result<bool, DatapathError> {
        match self.gates.insert(key, entry, BPF_EXIST_FLAG) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(source) => Err(DatapathError::Map { action: "updating", map: names::MAP_CONN_GATES, source }),
        }
    }

    /// Removes a gated connection; false when someone else removed it first.
    pub fn remove_gate(&mut self, key: &FlowKey) -> Result<bool, DatapathError> {
        match self.gates.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(source) => Err(DatapathError::Map { action: "removing", map: names::MAP_CONN_GATES, source }),
        }
    }

    /// The programs' counters of every class (instance) with some.
    pub fn kernel_counts(&self) -> Vec<(InstanceKey, ConnKernel)> {
        self.kernel.iter().filter_map(Result::ok).collect()
    }

    /// The daemon's counters.
    pub fn daemon_counts(&self) -> Vec<(InstanceKey, ConnDaemon)> {
        self.daemon.iter().filter_map(Result::ok).collect()
    }

    pub fn set_daemon_counts(&mut self, key: &InstanceKey, counts: &ConnDaemon) -> Result<(), DatapathError> {
        self.daemon.insert(key, counts, 0).map_err(error("writing counters", names::MAP_CONN_DAEMON))
    }
}
