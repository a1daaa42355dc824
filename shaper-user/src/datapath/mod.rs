//! The kernel side as the daemon sees it: the embedded eBPF object, its maps with
//! their shaper-common types, the classifier's attachments to interfaces, and
//! (cgroup.rs) the socket hooks' attachment to a cgroup.

pub mod batch;
mod cgroup;
mod classstats;
mod connlimit;
mod ifaces;
mod instances;
mod netns;
mod occupancy;
mod quota;

pub use connlimit::ConnMaps;
pub use occupancy::Occupancy;
pub use quota::QuotaMaps;

use shaper_common::{
    instances::{ClassMode, InstanceKey, InstanceStats},
    Direction,
};

use crate::classids::ClassIds;

use std::collections::BTreeMap;

use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use shaper_common::{
    class_stats_index, names,
    rules::{CgroupKey, ListRef, PrefixKey, RuleBound, RuleChunk, RuleEntry, RuleHead},
    ClassName, ClassStats, FlowKey, FlowValue, IfaceInfo, ListenKey, Owner, ProcTests, QuotaGate, QuotaKey,
    QuotaUsage, RuleNode, Settings, ERR_COUNT, MAX_CLASSES, MAX_IFACES, ORIGIN_DAEMON, ORIGIN_KERNEL,
    RULE_BANKS,
};

use crate::{
    pins::{PinError, Pins},
    rules::compile::Compiled,
};

mod rules;
use rules::RuleMaps;

/// Entries of KEPT_FLOWS the daemon's own decisions leave to `shaper move`
/// pins: this many, or an eighth of the map when that is fewer.
const PIN_RESERVE: usize = 1024;

/// The eBPF object built from `shaper-ebpf` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shaper-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("this shaper binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild it")]
    NoObject,
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing { kind: &'static str, name: &'static str },
    #[error("loading program {name} into the kernel")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("opening map {name}")]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{action} in map {map}")]
    Map {
        action: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching the classifier to {iface} ({})", direction.as_str())]
    Attach {
        iface: String,
        direction: Direction,
        #[source]
        source: ProgramError,
    },
    #[error("adding the clsact qdisc to {iface}")]
    Clsact {
        iface: String,
        #[source]
        source: tc::TcError,
    },
    #[error("the rule table needs {count} {what}; it holds {max}")]
    RulesTooLarge { what: &'static str, count: usize, max: u32 },
    #[error("opening cgroup {}", path.display())]
    Cgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("{action} {}", path.display())]
    Pin {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("taking over the pinned link {}", path.display())]
    PinnedLink {
        path: std::path::PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("attaching {name} to cgroup {}", path.display())]
    AttachCgroup {
        name: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: ProgramError,
    },
}

/// Options fixed for the lifetime of a load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the flow map.
    pub max_flows: u32,
    /// aya-log level of the kernel programs (0 = off, 5 = trace).
    pub kernel_log_level: u8,
    /// Pin maps, programs and links here, and take over what an earlier daemon
    /// pinned there. `None`: nothing outlives this process (benchmarks, tests
    /// of the programs alone).
    pub pins: Option<Pins>,
}

/// How the classifier hangs on an interface, as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// A tcx link (kernel 6.6 and later): pinned, it outlives the daemon.
    Tcx,
    /// A cls_bpf filter on a clsact qdisc (older kernels).
    Clsact,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Clsact => "clsact",
        }
    }
}

/// How the classifier hangs on an interface.
#[derive(Debug)]
enum Attachment {
    /// A tcx link (kernel >= 6.6): independent of qdiscs. Pinned, it stays
    /// attached when the daemon exits; unpinned, it goes with its descriptor.
    Tcx { _link: FdLink, pin: Option<std::path::PathBuf> },
    /// A cls_bpf filter on a clsact qdisc; `added_clsact` when shaper created the clsact.
    Netlink { link: aya::programs::tc::SchedClassifierLinkId, added_clsact: bool },
}

/// The layout a pinned map must have to be reused: key and value sizes, and
/// the capacity when it is set from the config or grows within a layout
/// version (the error counters); other capacities are part of the layout
/// version.
struct Layout {
    key: usize,
    value: usize,
    max_entries: Option<u32>,
}

fn layout_of(name: &str, max_flows: u32) -> Option<Layout> {
    use std::mem::size_of;
    let (key, value, max_entries) = match name {
        names::MAP_FLOWS => (size_of::<FlowKey>(), size_of::<FlowValue>(), Some(max_flows)),
        names::MAP_KEPT_FLOWS => (size_of::<FlowKey>(), size_of::<FlowValue>(), Some(max_flows)),
        names::MAP_OWNERS => (size_of::<u64>(), size_of::<Owner>(), Some(max_flows)),
        names::MAP_RULES => (4, size_of::<RuleNode>(), None),
        names::MAP_RULE_ENTRIES => (4, size_of::<RuleEntry>(), None),
        names::MAP_RULE_HEADS => (4, size_of::<RuleHead>(), None),
        names::MAP_RULE_LISTS => (4, size_of::<RuleChunk>(), None),
        names::MAP_RULE_BOUNDS => (4, size_of::<RuleBound>(), None),
        names::MAP_RULE_PREFIXES => (4 + size_of::<PrefixKey>(), size_of::<ListRef>(), None),
        names::MAP_RULE_CGROUPS => (size_of::<CgroupKey>(), size_of::<ListRef>(), None),
        names::MAP_SETTINGS => (4, size_of::<Settings>(), None),
        names::MAP_IFACES => (4, size_of::<IfaceInfo>(), None),
        names::MAP_IFACE_TABLE => (4, size_of::<IfaceInfo>(), None),
        names::MAP_CLASS_STATS => (4, size_of::<ClassStats>(), None),
        // Grows with each new counter: a smaller pinned one is replaced.
        names::MAP_ERRORS => (4, 8, Some(ERR_COUNT)),
        names::MAP_LISTENERS => (size_of::<ListenKey>(), size_of::<Owner>(), None),
        names::MAP_BOUND => (8, size_of::<ListenKey>(), None),
        names::MAP_LISTEN_COUNTS => (4, 4, None),
        names::MAP_PROC_TESTS => (4, size_of::<ProcTests>(), None),
        names::MAP_CLASS_NAMES => (4, size_of::<ClassName>(), None),
        names::MAP_QUOTA_USAGE => (size_of::<QuotaKey>(), size_of::<QuotaUsage>(), None),
        names::MAP_QUOTA_GATES => (size_of::<QuotaKey>(), size_of::<QuotaGate>(), None),
        names::MAP_CONN_LIMITS => (4, size_of::<shaper_common::connlimit::ConnLimit>(), None),
        names::MAP_CONN_GATES => {
            (size_of::<FlowKey>(), size_of::<shaper_common::connlimit::GateEntry>(), None)
        }
        names::MAP_CONN_KERNEL => {
            (size_of::<InstanceKey>(), size_of::<shaper_common::connlimit::ConnKernel>(), None)
        }
        names::MAP_CONN_DAEMON => {
            (size_of::<InstanceKey>(), size_of::<shaper_common::connlimit::ConnDaemon>(), None)
        }
        _ => return None,
    };
    Some(Layout { key, value, max_entries })
}

/// Checks the maps an earlier daemon pinned. A map whose capacity changed
/// (`max_flows`) is unpinned and returned, to be copied into its new self.
fn check_pinned_maps(pins: &Pins, max_flows: u32) -> Result<Vec<(&'static str, MapData)>, DatapathError> {
    let mut resized = Vec::new();
    for name in names::PINNED_MAPS {
        let path = pins.map(name);
        let Some(layout) = layout_of(name, max_flows) else { continue };
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::OpenMap { name, source })?;
        if info.key_size() as usize != layout.key || info.value_size() as usize != layout.value {
            return Err(PinError::Incompatible {
                path,
                detail: format!(
                    "key {} and value {} bytes, expected {} and {}",
                    info.key_size(),
                    info.value_size(),
                    layout.key,
                    layout.value
                ),
            }
            .into());
        }
        if let Some(max) = layout.max_entries.filter(|m| *m != info.max_entries()) {
            let old = MapData::from_pin(&path).map_err(|source| DatapathError::OpenMap { name, source })?;
            std::fs::remove_file(&path).map_err(|source| DatapathError::Pin {
                action: "unpinning",
                path: path.clone(),
                source,
            })?;
            log::info!("{name}: capacity {} → {max}; copying its entries", info.max_entries());
            resized.push((name, old));
        }
    }
    Ok(resized)
}

/// Copies the entries of a map pinned with another capacity into its successor
/// (aya reads an LRU and a plain hash alike).
fn copy_entries<K: aya::Pod, V: aya::Pod>(old: MapData, new: &mut HashMap<MapData, K, V>) -> usize {
    let Ok(old) = HashMap::<MapData, K, V>::try_from(Map::LruHashMap(old)) else { return 0 };
    old.iter().filter_map(Result::ok).filter(|(k, v)| new.insert(k, v, 0).is_ok()).count()
}

/// The loaded programs and maps.
pub struct Datapath {
    ebpf: Ebpf,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    /// The flows the daemon or an operator decided (see `names::MAP_KEPT_FLOWS`).
    kept: HashMap<MapData, FlowKey, FlowValue>,
    rules: RuleMaps,
    settings: Array<MapData, Settings>,
    ifaces: ifaces::Ifaces,
    class_stats: PerCpuArray<MapData, ClassStats>,
    errors: PerCpuArray<MapData, u64>,
    owners: HashMap<MapData, u64, Owner>,
    listeners: HashMap<MapData, ListenKey, Owner>,
    proc_tests: HashMap<MapData, u32, ProcTests>,
    class_names: Array<MapData, ClassName>,
    quotas: QuotaMaps,
    instances: instances::InstanceMaps,
    /// The connection-limit maps, until the admission thread takes them.
    connlimit: Option<ConnMaps>,
    /// The connection-limit gates attached (see connlimit.rs).
    gates: BTreeMap<(String, Direction), connlimit::GateLink>,
    /// What CLASS_NAMES holds (index → name): the class indices in force.
    recorded_classes: BTreeMap<u16, String>,
    events: Option<RingBuf<MapData>>,
    rules_gen: u32,
    /// `SETTING_*` flags written with the rule generation.
    settings_flags: u32,
    /// Cookie of the daemon's network namespace (see [`Settings::netns`]).
    netns: u64,
    /// Capacity of FLOWS, KEPT_FLOWS and OWNERS.
    max_flows: u32,
    /// Map fills remembered for `status` (see occupancy.rs).
    occupancy: occupancy::Remembered,
    cgroup_links: Vec<cgroup::HookLink>,
    /// (interface name, direction) → the attached program and how it hangs.
    attachments: BTreeMap<(String, Direction), (&'static str, Attachment)>,
    pins: Option<Pins>,
    /// The maps were taken over from an earlier daemon.
    adopted: bool,
}

fn take_map<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DatapathError> {
    let map = ebpf.take_map(name).ok_or(DatapathError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| DatapathError::OpenMap { name, source })
}

/// Where the kernel keeps a process's name, for the socket hooks; zeros (the
/// hooks then record the thread's name) when the kernel's BTF cannot tell.
fn task_offsets() -> crate::taskbtf::TaskOffsets {
    crate::taskbtf::task_offsets().unwrap_or_else(|e| {
        log::warn!(
            "{}: {e}; connections are recorded under the name of the thread that made them",
            crate::taskbtf::VMLINUX_BTF
        );
        crate::taskbtf::TaskOffsets { group_leader: 0, comm: 0 }
    })
}

impl Datapath {
    /// Loads the object and its programs into the kernel. Nothing is attached yet.
    pub fn load(options: LoadOptions) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let level = options.kernel_log_level;
        let mut adopted = false;
        let mut resized = Vec::new();
        let map_pins: Vec<(&str, std::path::PathBuf)> = match &options.pins {
            Some(pins) => {
                pins.prepare()?;
                adopted = pins.has_state();
                resized = check_pinned_maps(pins, options.max_flows)?;
                names::PINNED_MAPS.iter().map(|n| (*n, pins.map(n))).collect()
            }
            None => Vec::new(),
        };
        let task = task_offsets();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::MAP_FLOWS, options.max_flows)
            .map_max_entries(names::MAP_OWNERS, options.max_flows)
            .map_max_entries(names::MAP_KEPT_FLOWS, options.max_flows)
            .override_global(names::GLOBAL_LOG_LEVEL, &level, true)
            .override_global(names::GLOBAL_TASK_GROUP_LEADER, &task.group_leader, true)
            .override_global(names::GLOBAL_TASK_COMM, &task.comm, true);
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(DatapathError::Load)?;
        // Only what the daemon runs: the object's other classifier (the bench's
        // empty `tc_passthrough`) stays unloaded unless the test kit loads it.
        for name in [names::PROG_TC_EGRESS, names::PROG_TC_INGRESS] {
            program(&mut ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        for name in [names::PROG_TC_GATE_EGRESS, names::PROG_TC_GATE_INGRESS] {
            program(&mut ebpf, name)?.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        cgroup::load(&mut ebpf)?;
        let flows = take_map(&mut ebpf, names::MAP_FLOWS)?;
        let mut kept = take_map(&mut ebpf, names::MAP_KEPT_FLOWS)?;
        let rules = RuleMaps {
            nodes: take_map(&mut ebpf, names::MAP_RULES)?,
            entries: take_map(&mut ebpf, names::MAP_RULE_ENTRIES)?,
            heads: take_map(&mut ebpf, names::MAP_RULE_HEADS)?,
            lists: take_map(&mut ebpf, names::MAP_RULE_LISTS)?,
            bounds: take_map(&mut ebpf, names::MAP_RULE_BOUNDS)?,
            prefixes: take_map::<LpmTrie<MapData, PrefixKey, ListRef>>(&mut ebpf, names::MAP_RULE_PREFIXES)?,
            cgroups: take_map(&mut ebpf, names::MAP_RULE_CGROUPS)?,
            written: Default::default(),
        };
        let settings: Array<MapData, Settings> = take_map(&mut ebpf, names::MAP_SETTINGS)?;
        let ifaces = ifaces::Ifaces::new(
            take_map(&mut ebpf, names::MAP_IFACES)?,
            take_map(&mut ebpf, names::MAP_IFACE_TABLE)?,
        );
        let class_stats = take_map(&mut ebpf, names::MAP_CLASS_STATS)?;
        let errors = take_map(&mut ebpf, names::MAP_ERRORS)?;
        let owners = take_map(&mut ebpf, names::MAP_OWNERS)?;
        let listeners = take_map(&mut ebpf, names::MAP_LISTENERS)?;
        let proc_tests = take_map(&mut ebpf, names::MAP_PROC_TESTS)?;
        let class_names = take_map(&mut ebpf, names::MAP_CLASS_NAMES)?;
        let quotas = QuotaMaps::new(
            take_map(&mut ebpf, names::MAP_QUOTA_USAGE)?,
            take_map(&mut ebpf, names::MAP_QUOTA_GATES)?,
        );
        let events = Some(take_map(&mut ebpf, names::MAP_EVENTS)?);
        let instances = instances::InstanceMaps {
            modes: take_map(&mut ebpf, names::MAP_CLASS_MODES)?,
            keys: take_map(&mut ebpf, names::MAP_INSTANCES)?,
            slots: take_map(&mut ebpf, names::MAP_INSTANCE_SLOTS)?,
            stats: take_map(&mut ebpf, names::MAP_INSTANCE_STATS)?,
        };
        let connlimit = Some(ConnMaps::new(
            take_map(&mut ebpf, names::MAP_CONN_LIMITS)?,
            take_map(&mut ebpf, names::MAP_CONN_GATES)?,
            take_map(&mut ebpf, names::MAP_CONN_KERNEL)?,
            take_map(&mut ebpf, names::MAP_CONN_DAEMON)?,
        ));
        let mut flows = flows;
        let mut owners = owners;
        for (name, old) in resized {
            let copied = match name {
                names::MAP_FLOWS => copy_entries(old, &mut flows),
                names::MAP_OWNERS => copy_entries(old, &mut owners),
                names::MAP_KEPT_FLOWS => copy_entries(old, &mut kept),
                _ => 0,
            };
            log::info!("{name}: {copied} entries kept");
        }
        // Continue the rule generations of the table in force: the next table
        // goes to the bank the classifier is not reading.
        let current: Settings = settings.get(&0, 0).unwrap_or_default();
        let recorded_classes = read_class_names(&class_names);
        let netns = netns::own_cookie().unwrap_or_else(|e| {
            log::warn!("reading the network namespace's cookie: {e}; accepted connections get no owner");
            0
        });
        Ok(Self {
            ebpf,
            flows,
            kept,
            rules,
            settings,
            ifaces,
            class_stats,
            errors,
            owners,
            listeners,
            proc_tests,
            class_names,
            quotas,
            instances,
            connlimit,
            gates: BTreeMap::new(),
            recorded_classes,
            events,
            rules_gen: current.rules_gen,
            settings_flags: current.flags,
            netns,
            max_flows: options.max_flows,
            occupancy: Default::default(),
            cgroup_links: Vec::new(),
            attachments: BTreeMap::new(),
            pins: options.pins,
            adopted,
        })
    }

    /// Whether the maps came from an earlier daemon's pins (shaping state,
    /// counters and owner records carried over).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pins(&self) -> Option<&Pins> {
        self.pins.as_ref()
    }

    /// Pins the programs the links run (replacing an earlier daemon's pins of
    /// its programs, which go away with their last link).
    pub fn pin_programs(&mut self) -> Result<(), DatapathError> {
        let Some(pins) = self.pins.clone() else { return Ok(()) };
        let mut names: Vec<&'static str> = vec![names::PROG_TC_EGRESS, names::PROG_TC_INGRESS];
        names.extend(cgroup::HOOKS);
        for name in names {
            let path = pins.prog(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|source| DatapathError::Pin {
                    action: "unpinning",
                    path: path.clone(),
                    source,
                })?;
            }
            let prog = self.ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
            prog.pin(&path).map_err(|e| DatapathError::Pin {
                action: "pinning",
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        }
        Ok(())
    }

    /// Interfaces an earlier daemon registered (ifindex → what it wrote).
    pub fn ifaces(&self) -> Vec<(u32, IfaceInfo)> {
        self.ifaces.all()
    }

    /// The class indices in force: pinned with the counters, so a restarted
    /// daemon gives each class its old index (see [`crate::classids`]).
    pub fn class_ids(&self) -> ClassIds {
        ClassIds::from_recorded(self.recorded_classes.clone())
    }

    /// Records the class indices of a new config before any rule can send
    /// traffic to them: names that changed are written, and an index that
    /// passes from one class to another starts from zeroed counters. Indices
    /// `next` no longer uses stay recorded until [`Datapath::release_classes`].
    pub fn record_class_ids(&mut self, next: &ClassIds) -> Result<(), DatapathError> {
        for (index, name) in next.iter() {
            match self.recorded_classes.get(&index) {
                Some(old) if old == name => continue,
                Some(_) => self.clear_class_stats(index)?,
                None => {}
            }
            self.set_class_name(index, Some(name))?;
            self.recorded_classes.insert(index, name.to_string());
        }
        Ok(())
    }

    /// Forgets the indices `next` does not use (once no flow can reach them):
    /// their names are cleared and their counters zeroed. Returns their names.
    pub fn release_classes(&mut self, next: &ClassIds) -> Result<Vec<String>, DatapathError> {
        let released: Vec<u16> =
            self.recorded_classes.keys().copied().filter(|i| next.name(*i).is_none()).collect();
        let mut names = Vec::new();
        for index in released {
            self.set_class_name(index, None)?;
            self.clear_class_stats(index)?;
            names.extend(self.recorded_classes.remove(&index));
        }
        Ok(names)
    }

    /// Records which class name index `index` stands for (`None`: unused).
    fn set_class_name(&mut self, index: u16, name: Option<&str>) -> Result<(), DatapathError> {
        let mut entry = ClassName::default();
        if let Some(name) = name {
            entry.used = 1;
            let bytes = name.as_bytes();
            let n = bytes.len().min(entry.name.len());
            entry.name[..n].copy_from_slice(&bytes[..n]);
        }
        self.class_names.set(u32::from(index), entry, 0).map_err(|source| DatapathError::Map {
            action: "writing a class name",
            map: names::MAP_CLASS_NAMES,
            source,
        })
    }

    /// Zeroes the counters of class `class` on every interface slot (before its
    /// index is given to another class).
    fn clear_class_stats(&mut self, class: u16) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            action: "counting CPUs for",
            map: names::MAP_CLASS_STATS,
            source: MapError::IoError(e),
        })?;
        for slot in 0..MAX_IFACES {
            let zeros =
                aya::maps::PerCpuValues::try_from(vec![ClassStats::default(); cpus]).map_err(|e| {
                    DatapathError::Map {
                        action: "zeroing",
                        map: names::MAP_CLASS_STATS,
                        source: MapError::IoError(e),
                    }
                })?;
            self.class_stats.set(class_stats_index(slot, u32::from(class)), zeros, 0).map_err(|source| {
                DatapathError::Map { action: "zeroing", map: names::MAP_CLASS_STATS, source }
            })?;
        }
        Ok(())
    }

    /// Hands the connection-limit maps over (once) to the admission thread.
    pub fn take_connlimit(&mut self) -> Option<ConnMaps> {
        self.connlimit.take()
    }

    /// The quota maps (see [`QuotaMaps`]).
    pub fn quotas(&self) -> &QuotaMaps {
        &self.quotas
    }

    pub fn quotas_mut(&mut self) -> &mut QuotaMaps {
        &mut self.quotas
    }

    /// The underlying object, for the aya-log reader.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// A classifier program of the object by name (see `shaper_common::names`),
    /// loaded or not. For tools beside the daemon: the test kit runs it with
    /// BPF_PROG_TEST_RUN (and loads the programs the daemon leaves unloaded),
    /// the benchmarks read its run-time statistics.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        program(&mut self.ebpf, name)
    }

    /// Attaches the egress classifier to `iface` (tcx when the kernel has it,
    /// a cls_bpf filter on clsact otherwise); returns which.
    pub fn attach_egress(&mut self, iface: &str, ifindex: u32) -> Result<AttachMode, DatapathError> {
        self.attach(names::PROG_TC_EGRESS, iface, ifindex, Direction::Egress)
    }

    /// Attaches the ingress classifier to `iface` (it redirects to the
    /// interface's IFB, set with [`Datapath::set_iface`]).
    pub fn attach_ingress(&mut self, iface: &str, ifindex: u32) -> Result<AttachMode, DatapathError> {
        self.attach(names::PROG_TC_INGRESS, iface, ifindex, Direction::Ingress)
    }

    /// Attaches classifier `name` to `iface`'s hook in `direction` (see
    /// [`Datapath::attach_egress`]). With a pin directory the tcx link is
    /// pinned; if an earlier daemon pinned one there, its program is replaced
    /// in place (one atomic link update: no packet goes unclassified).
    pub fn attach(
        &mut self,
        name: &'static str,
        iface: &str,
        ifindex: u32,
        direction: Direction,
    ) -> Result<AttachMode, DatapathError> {
        let key = (iface.to_string(), direction);
        if self.attachments.get(&key).is_some_and(|(attached, _)| *attached == name) {
            return Ok(self.attachment_kind(&key));
        }
        self.detach_one(&key)?;
        let hook = tc_hook(direction);
        let attach_err = |source| DatapathError::Attach { iface: iface.to_string(), direction, source };
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let pin = self.pins.as_ref().map(|p| p.tc_link(name, ifindex));
        let prog = program(&mut self.ebpf, name)?;
        let attachment = if tcx {
            let link = attach_tcx(prog, iface, hook, pin.as_ref(), attach_err)?;
            Attachment::Tcx { _link: link, pin }
        } else {
            let added_clsact = match tc::qdisc_add_clsact(iface) {
                Ok(()) => true,
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
                Err(source) => return Err(DatapathError::Clsact { iface: iface.to_string(), source }),
            };
            let link = prog
                .attach_with_options(iface, hook, TcAttachOptions::Netlink(NlOptions::default()))
                .map_err(attach_err)?;
            Attachment::Netlink { link, added_clsact }
        };
        self.attachments.insert(key.clone(), (name, attachment));
        Ok(self.attachment_kind(&key))
    }

    fn attachment_kind(&self, key: &(String, Direction)) -> AttachMode {
        match self.attachments.get(key) {
            Some((_, Attachment::Netlink { .. })) => AttachMode::Clsact,
            _ => AttachMode::Tcx,
        }
    }

    /// Detaches one classifier (and unpins its link).
    fn detach_one(&mut self, key: &(String, Direction)) -> Result<(), DatapathError> {
        let Some((name, attachment)) = self.attachments.remove(key) else { return Ok(()) };
        match attachment {
            Attachment::Tcx { _link, pin } => {
                if let Some(path) = pin {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => return Err(DatapathError::Pin { action: "unpinning", path, source }),
                    }
                }
                // Dropping the last descriptor of an unpinned link detaches it.
                drop(_link);
                Ok(())
            }
            Attachment::Netlink { link, added_clsact } => {
                let result = program(&mut self.ebpf, name)?.detach(link).map_err(|source| {
                    DatapathError::Attach { iface: key.0.clone(), direction: key.1, source }
                });
                if added_clsact {
                    remove_clsact(&key.0);
                }
                result
            }
        }
    }

    /// Detaches the classifier of `iface` in `direction` (and unpins its link).
    pub fn detach_direction(&mut self, iface: &str, direction: Direction) -> Result<(), DatapathError> {
        self.detach_one(&(iface.to_string(), direction))
    }

    /// Detaches the classifiers from `iface`, both directions, unpinning their
    /// links (and removes the clsact qdisc if shaper added it).
    pub fn detach(&mut self, iface: &str) -> Result<(), DatapathError> {
        let keys: Vec<_> = self.attachments.keys().filter(|(name, _)| name == iface).cloned().collect();
        let mut first_error = None;
        for key in keys {
            if let Err(e) = self.detach_one(&key) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the pinned links an earlier daemon left on interface `ifindex`
    /// (which this daemon does not shape): with their pins gone, they detach.
    pub fn unpin_iface_links(&mut self, ifindex: u32) {
        let Some(pins) = &self.pins else { return };
        for name in [names::PROG_TC_EGRESS, names::PROG_TC_INGRESS] {
            let path = pins.tc_link(name, ifindex);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("unpinning {}: {e}", path.display());
                }
            }
        }
    }

    /// Writes a new rule table into the idle bank, then makes it the active one
    /// with a single write of the generation: no packet ever sees a mix.
    pub fn set_rules(&mut self, compiled: &Compiled) -> Result<u32, DatapathError> {
        let mut next_gen = self.rules_gen.wrapping_add(1);
        if next_gen == 0 {
            next_gen = RULE_BANKS; // 0 means "no rules"; keep the bank parity sequence going.
        }
        self.rules.write(next_gen % RULE_BANKS, compiled)?;
        let settings = Settings { rules_gen: next_gen, flags: self.settings_flags, netns: self.netns };
        self.settings.set(0, settings, 0).map_err(|source| DatapathError::Map {
            action: "switching the rule bank",
            map: names::MAP_SETTINGS,
            source,
        })?;
        self.rules_gen = next_gen;
        Ok(next_gen)
    }

    pub fn rules_gen(&self) -> u32 {
        self.rules_gen
    }

    /// Sets the `SETTING_*` flags; they take effect with the next [`Datapath::set_rules`].
    pub fn set_flags(&mut self, flags: u32) {
        self.settings_flags = flags;
    }

    /// Takes the EVENTS ring buffer for a reader (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The owner record of socket `cookie`.
    pub fn owner(&self, cookie: u64) -> Option<Owner> {
        self.owners.get(&cookie, 0).ok()
    }

    /// Every owner record (socket cookie, owner).
    pub fn owners(&self) -> Vec<(u64, Owner)> {
        self.owners.iter().filter_map(Result::ok).collect()
    }

    /// Cookie of the network namespace the daemon shapes in.
    pub fn netns(&self) -> u64 {
        self.netns
    }

    /// The owner of a bound port.
    pub fn listener(&self, key: &ListenKey) -> Option<Owner> {
        self.listeners.get(key, 0).ok()
    }

    /// Leaves the daemon's answers to the userspace tests for process `tgid`.
    pub fn set_proc_tests(&mut self, tgid: u32, tests: &ProcTests) -> Result<(), DatapathError> {
        self.proc_tests.insert(tgid, tests, 0).map_err(|source| DatapathError::Map {
            action: "writing answers",
            map: names::MAP_PROC_TESTS,
            source,
        })
    }

    /// The processes PROC_TESTS has answers for.
    pub fn proc_tests_pids(&self) -> Vec<u32> {
        self.proc_tests.keys().filter_map(Result::ok).collect()
    }

    pub fn remove_proc_tests(&mut self, tgid: u32) -> Result<(), DatapathError> {
        match self.proc_tests.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => {
                Err(DatapathError::Map { action: "removing answers", map: names::MAP_PROC_TESTS, source })
            }
        }
    }

    /// Removes the record of a bound port (the fuzz target's, between rule sets).
    pub fn remove_listener(&mut self, key: &ListenKey) -> Result<(), DatapathError> {
        match self.listeners.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => {
                Err(DatapathError::Map { action: "removing a listener", map: names::MAP_LISTENERS, source })
            }
        }
    }

    /// Records `owner` as bound to `key`, as the socket hooks do (for the
    /// classifier fuzz target and tests, which bind nothing).
    pub fn insert_listener(&mut self, key: &ListenKey, owner: &Owner) -> Result<(), DatapathError> {
        self.listeners.insert(key, owner, 0).map_err(|source| DatapathError::Map {
            action: "writing a listener",
            map: names::MAP_LISTENERS,
            source,
        })
    }

    /// Registers interface `ifindex` with the classifier (or changes what is
    /// registered); `info.ifindex` is filled in here.
    pub fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), DatapathError> {
        self.ifaces.set(ifindex, info)
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.ifaces.remove(ifindex)
    }

    /// Counters of class `class` on interface slot `slot`, summed over CPUs.
    pub fn class_stats(&self, slot: u32, class: u32) -> Result<ClassStats, DatapathError> {
        if class >= MAX_CLASSES {
            return Ok(ClassStats::default());
        }
        let per_cpu = self.class_stats.get(&class_stats_index(slot, class), 0).map_err(|source| {
            DatapathError::Map { action: "reading counters", map: names::MAP_CLASS_STATS, source }
        })?;
        Ok(classstats::sum(&per_cpu))
    }

    /// Sets each class index's mode (`modes[index]`, see `ClassMode`).
    pub fn set_class_modes(&mut self, modes: &[ClassMode]) -> Result<(), DatapathError> {
        self.instances.set_modes(modes)
    }

    /// Makes instance slot `slot` live for `class`, found by `keys`.
    pub fn open_instance(
        &mut self,
        slot: u32,
        class: u16,
        keys: &[InstanceKey],
    ) -> Result<(), DatapathError> {
        self.instances.open(slot, class, keys)
    }

    /// Points one more key at a live instance slot.
    pub fn alias_instance(&mut self, slot: u32, key: &InstanceKey) -> Result<(), DatapathError> {
        self.instances.alias(slot, key)
    }

    /// Frees instance slot `slot` and its keys.
    pub fn close_instance(&mut self, slot: u32, keys: &[InstanceKey]) -> Result<(), DatapathError> {
        self.instances.close(slot, keys)
    }

    /// Bytes the classifier put into instance slot `slot`.
    pub fn instance_stats(&self, slot: u32) -> InstanceStats {
        self.instances.stats(slot)
    }

    /// The classifier's error counters (`ERR_*`), summed over CPUs.
    pub fn errors(&self) -> Result<Vec<u64>, DatapathError> {
        (0..ERR_COUNT)
            .map(|i| {
                self.errors.get(&i, 0).map(|v| v.iter().sum()).map_err(|source| DatapathError::Map {
                    action: "reading",
                    map: names::MAP_ERRORS,
                    source,
                })
            })
            .collect()
    }

    /// A snapshot of the flow map. Entries that vanish during the walk are skipped.
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let mut out = Vec::new();
        if self.for_each_flow(|k, v| out.push((*k, *v))).is_err() {
            // The dump failed part way: the per-entry walk, which skips what vanishes.
            out = self.flows.iter().filter_map(Result::ok).collect();
        }
        out
    }

    /// How many entries the flow map holds (0 when it cannot be read).
    pub fn flow_count(&self) -> usize {
        self.for_each_flow(|_, _| {}).map_or(0, |w| w.entries)
    }

    /// Every flow entry, handed to `visit` in batches (see [`batch`] for what a
    /// dump guarantees while the classifier writes).
    pub fn for_each_flow(
        &self,
        mut visit: impl FnMut(&FlowKey, &FlowValue),
    ) -> Result<batch::Walked, DatapathError> {
        batch::for_each(&self.flows, batch::Mode::Auto, batch::CHUNK, &mut visit)
            .map_err(|source| DatapathError::Map { action: "dumping", map: names::MAP_FLOWS, source })
    }

    /// Every owner record (socket cookie, owner), in batches.
    pub fn for_each_owner(&self, mut visit: impl FnMut(u64, &Owner)) -> Result<batch::Walked, DatapathError> {
        batch::for_each(&self.owners, batch::Mode::Auto, batch::CHUNK, &mut |cookie: &u64, owner: &Owner| {
            visit(*cookie, owner)
        })
        .map_err(|source| DatapathError::Map { action: "dumping", map: names::MAP_OWNERS, source })
    }

    /// The entry of flow `key`: FLOWS', or else the decision kept for it (a
    /// flow FLOWS evicted that has sent nothing since).
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(key, 0).ok().or_else(|| self.kept.get(key, 0).ok())
    }

    /// Writes a flow entry. A class the daemon or an operator decided is kept
    /// in KEPT_FLOWS too (first, so that no packet finds FLOWS' entry gone and
    /// none kept); a flow handed to the kernel leaves it. FLOWS is written even
    /// when a pin could not be kept (the error says so).
    pub fn insert_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DatapathError> {
        let kept = self.keep(key, value);
        self.flows.insert(key, value, 0).map_err(|source| DatapathError::Map {
            action: "writing a flow",
            map: names::MAP_FLOWS,
            source,
        })?;
        kept
    }

    /// KEPT_FLOWS' side of writing flow `key`. The daemon's own decisions
    /// leave the last [`PIN_RESERVE`] entries to operator pins; one that finds
    /// no room stays in FLOWS alone (as every decision did before KEPT_FLOWS).
    fn keep(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DatapathError> {
        if value.origin == ORIGIN_KERNEL {
            return self.forget_kept(key);
        }
        let pin = value.origin != ORIGIN_DAEMON;
        let new = self.kept.get(key, 0).is_err();
        let capacity = self.max_flows as usize;
        let room = capacity - PIN_RESERVE.min(capacity / 8);
        if new && !pin && self.occupancy.kept.get() >= room {
            log::debug!("{}: no room left for the daemon's decisions", names::MAP_KEPT_FLOWS);
            return Ok(());
        }
        let kept = FlowValue { class: value.class, origin: value.origin, ..FlowValue::default() };
        match self.kept.insert(key, kept, 0) {
            Ok(()) => {
                self.occupancy.kept.set(self.occupancy.kept.get() + usize::from(new));
                Ok(())
            }
            Err(e) if !pin => {
                log::debug!("{}: {e}", names::MAP_KEPT_FLOWS);
                Ok(())
            }
            Err(source) => Err(DatapathError::Map {
                action: "keeping a pinned flow",
                map: names::MAP_KEPT_FLOWS,
                source,
            }),
        }
    }

    fn forget_kept(&mut self, key: &FlowKey) -> Result<(), DatapathError> {
        match self.kept.remove(key) {
            Ok(()) => {
                self.occupancy.kept.set(self.occupancy.kept.get().saturating_sub(1));
                Ok(())
            }
            Err(e) if is_missing(&e) => Ok(()),
            Err(source) => Err(DatapathError::Map { action: "removing", map: names::MAP_KEPT_FLOWS, source }),
        }
    }

    /// The flows with a kept decision (one batched walk; their count is
    /// remembered for `status`).
    pub fn kept_flows(&self) -> Vec<FlowKey> {
        let mut keys = Vec::new();
        if let Err(e) =
            batch::for_each(&self.kept, batch::Mode::Auto, batch::CHUNK, &mut |k, _| keys.push(*k))
        {
            log::debug!("walking {}: {e}", names::MAP_KEPT_FLOWS);
        }
        self.occupancy.kept.set(keys.len());
        keys
    }

    /// Forgets the kept decision of flow `key` unless FLOWS has an entry for it.
    pub fn forget_kept_if_evicted(&mut self, key: &FlowKey) -> Result<(), DatapathError> {
        match self.flows.get(key, 0) {
            Ok(_) => Ok(()),
            Err(_) => self.forget_kept(key),
        }
    }

    /// Enters a flow the classifier has not seen (a connection that predates
    /// the daemon); returns false, changing nothing, when the classifier has
    /// made an entry for it meanwhile.
    pub fn adopt_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<bool, DatapathError> {
        const BPF_NOEXIST: u64 = 1;
        match self.flows.insert(key, value, BPF_NOEXIST) {
            Ok(()) => self.keep(key, value).map(|()| true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(source) => {
                Err(DatapathError::Map { action: "adopting a flow", map: names::MAP_FLOWS, source })
            }
        }
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DatapathError> {
        self.forget_kept(key)?;
        match self.flows.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(source) => {
                Err(DatapathError::Map { action: "removing a flow", map: names::MAP_FLOWS, source })
            }
        }
    }

    /// Names of the interfaces the classifier is attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attachments.keys().map(|(name, _)| name.as_str())
    }
}

/// Whether a map operation failed only because the key was not there (aya
/// reports a delete of a missing key as the syscall's ENOENT).
fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// What CLASS_NAMES holds: index → name of every index in use.
fn read_class_names(map: &Array<MapData, ClassName>) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    for index in 0..MAX_CLASSES {
        let Ok(entry) = map.get(&index, 0) else { continue };
        if entry.used == 0 {
            continue;
        }
        let end = entry.name.iter().position(|b| *b == 0).unwrap_or(entry.name.len());
        out.insert(index as u16, String::from_utf8_lossy(&entry.name[..end]).into_owned());
    }
    out
}

/// Attaches `prog` to `iface`'s `hook` with tcx and pins the link at `pin`.
/// If an earlier daemon pinned a link there, its program is replaced in
/// place instead (one atomic link update: no packet misses the program).
fn attach_tcx(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    pin: Option<&std::path::PathBuf>,
    attach_err: impl Fn(ProgramError) -> DatapathError,
) -> Result<FdLink, DatapathError> {
    let pinned_err = |path: &std::path::PathBuf| {
        let path = path.clone();
        move |source| DatapathError::PinnedLink { path, source }
    };
    let id = match pin.filter(|p| p.exists()) {
        Some(path) => {
            let old = PinnedLink::from_pin(path).map_err(pinned_err(path))?;
            let old = SchedClassifierLink::try_from(FdLink::from(old)).map_err(pinned_err(path))?;
            prog.attach_to_link(old).map_err(&attach_err)?
        }
        None => prog
            .attach_with_options(iface, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(&attach_err)?,
    };
    let link = prog.take_link(id).map_err(&attach_err)?;
    let link = FdLink::try_from(link).map_err(pinned_err(&pin.cloned().unwrap_or_default()))?;
    match pin {
        Some(path) if !path.exists() => Ok(FdLink::from(link.pin(path).map_err(|e| DatapathError::Pin {
            action: "pinning",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?)),
        _ => Ok(link),
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Missing { kind: "program", name })?;
    prog.try_into().map_err(|source| DatapathError::Program { name, source })
}

fn tc_hook(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Egress => TcAttachType::Egress,
        Direction::Ingress => TcAttachType::Ingress,
    }
}

/// Removes the clsact qdisc shaper added on a pre-tcx kernel.
fn remove_clsact(iface: &str) {
    let result = std::process::Command::new("tc")
        .args(["qdisc", "del", "dev", iface, "clsact"])
        .stderr(std::process::Stdio::null())
        .status();
    if !result.is_ok_and(|s| s.success()) {
        log::warn!("could not remove the clsact qdisc shaper added on {iface}");
    }
}

impl Drop for Datapath {
    /// Closes the descriptors: links without a pin detach, pinned links stay
    /// (see [`Datapath::detach`] and [`Datapath::detach_cgroup`] to remove them).
    /// cls_bpf filters do not go by themselves; they are removed here.
    fn drop(&mut self) {
        let netlink: Vec<_> = self
            .attachments
            .iter()
            .filter(|(_, (_, a))| matches!(a, Attachment::Netlink { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for key in netlink {
            if let Err(e) = self.detach_one(&key) {
                log::warn!("detaching from {}: {e}", key.0);
            }
        }
    }
}
