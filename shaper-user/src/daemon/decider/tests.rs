//! The decider driven with a flow table in memory and a made-up host: no
//! kernel, no netlink, no /proc.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use shaper_common::{
    FlowEvent, FlowKey, FlowValue, ListenKey, Owner, ProcTests, CLASS_DEFAULT, EVENT_OWNER,
    EVENT_PROVISIONAL, ORIGIN_DAEMON, ORIGIN_KERNEL, ORIGIN_PINNED, PROTO_TCP,
};

use super::{Decider, RuleSet, ScanError, System, Tables};
use crate::{
    accounts::SystemAccounts,
    control::protocol::Origin,
    datapath::DatapathError,
    process::Needs,
    rules::{
        compile::{CgroupIndex, Compiled, Found, NoCgroups},
        pred::ProcessFacts,
    },
    sockdiag::{SockState, Socket, Table},
};

#[derive(Default)]
struct FakeTables {
    flows: BTreeMap<(u16, u16), (FlowKey, FlowValue)>,
    proc_tests: HashMap<u32, ProcTests>,
    owners: HashMap<u64, Owner>,
    /// Tables written: the generation of the last one (1 before any).
    writes: usize,
}

fn slot(key: &FlowKey) -> (u16, u16) {
    (key.lport, key.rport)
}

impl Tables for FakeTables {
    fn rules_gen(&self) -> u32 {
        self.writes.max(1) as u32
    }
    fn write_rules(&mut self, _: &Compiled, _: u32) -> Result<u32, DatapathError> {
        self.writes += 1;
        Ok(self.rules_gen())
    }
    fn for_each_flow(&self, visit: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<(), DatapathError> {
        self.flows.values().for_each(|(k, v)| visit(k, v));
        Ok(())
    }
    fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(&slot(key)).map(|(_, v)| *v)
    }
    fn insert_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DatapathError> {
        self.flows.insert(slot(key), (*key, *value));
        Ok(())
    }
    fn adopt_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<bool, DatapathError> {
        if self.flows.contains_key(&slot(key)) {
            return Ok(false);
        }
        self.flows.insert(slot(key), (*key, *value));
        Ok(true)
    }
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DatapathError> {
        self.flows.remove(&slot(key));
        Ok(())
    }
    fn set_proc_tests(&mut self, tgid: u32, tests: &ProcTests) -> Result<(), DatapathError> {
        self.proc_tests.insert(tgid, *tests);
        Ok(())
    }
    fn proc_tests_pids(&self) -> Vec<u32> {
        self.proc_tests.keys().copied().collect()
    }
    fn remove_proc_tests(&mut self, tgid: u32) -> Result<(), DatapathError> {
        self.proc_tests.remove(&tgid);
        Ok(())
    }
    fn owner(&self, cookie: u64) -> Option<Owner> {
        self.owners.get(&cookie).copied()
    }
    fn netns(&self) -> u64 {
        0
    }
    fn listener(&self, _: &ListenKey) -> Option<Owner> {
        None
    }
    fn kept_flows(&self) -> Vec<FlowKey> {
        Vec::new()
    }
    fn forget_kept_if_evicted(&mut self, _: &FlowKey) -> Result<(), DatapathError> {
        Ok(())
    }
}

/// A host with the given sockets (and their holders) and processes.
#[derive(Clone, Default)]
struct FakeSystem {
    sockets: Vec<(Socket, Option<u32>)>,
    processes: HashMap<u32, ProcessFacts>,
    now_ns: Arc<AtomicU64>,
    /// Walks of every process's descriptors.
    walks: Arc<AtomicU64>,
    /// Processes that exit between the check that they live and the read of
    /// their /proc files: they read as the live host reads them then.
    vanishing: HashSet<u32>,
    units: Units,
}

/// Every unit a rule names, at `/system.slice/NAME` with the id the test
/// sets (a restart gives it another).
#[derive(Clone, Default)]
struct Units(Arc<AtomicU64>);

impl CgroupIndex for Units {
    fn lookup(&self, _: &str) -> Option<(u64, u32)> {
        None
    }
    fn units(&self, unit: &str) -> Vec<Found> {
        let id = self.0.load(Ordering::Relaxed);
        vec![Found { path: format!("/system.slice/{unit}"), id, level: 2 }]
    }
}

impl System for FakeSystem {
    fn sockets(&mut self, visit: &mut dyn FnMut(&Socket)) -> Result<Vec<Table>, ScanError> {
        self.sockets.iter().for_each(|(s, _)| visit(s));
        Ok(Vec::new())
    }
    fn holders(&self, inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
        self.walks.fetch_add(1, Ordering::Relaxed);
        self.sockets
            .iter()
            .filter(|(s, _)| inodes.contains(&s.inode))
            .filter_map(|(s, pid)| Some((s.inode, vec![(*pid)?])))
            .collect()
    }
    fn facts(&mut self, pid: u32, owner: Option<&Owner>, needs: Needs) -> ProcessFacts {
        if self.vanishing.contains(&pid) {
            let nothing = crate::process::ProcRead::default();
            return crate::process::assemble(pid, &nothing, owner, needs, &SystemAccounts::default(), None);
        }
        self.processes.get(&pid).cloned().unwrap_or(ProcessFacts { pid, ..ProcessFacts::default() })
    }
    fn alive(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }
    fn sweep(&mut self, _: Duration) {}
    fn cgroups(&self) -> &dyn CgroupIndex {
        &self.units
    }
    fn coarse_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }
    fn monotonic_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }
}

const CONFIG: &str = r#"
[[interface]]
name = "eth0"
egress = "100mbit"
[[class]]
name = "backup"
match = 'cmd == "backupjob"'
[[class]]
name = "fetch"
match = 'args ~ "*--fetch*"'
"#;

fn key(lport: u16) -> FlowKey {
    crate::flows::key(
        PROTO_TCP,
        format!("198.18.0.1:{lport}").parse().unwrap(),
        "198.18.0.2:5201".parse().unwrap(),
    )
}

fn process(pid: u32, cmd: &str, args: &[&str]) -> ProcessFacts {
    ProcessFacts {
        pid,
        uid: Some(0),
        gid: Some(0),
        cmd: Some(cmd.into()),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        ..ProcessFacts::default()
    }
}

/// A decider with CONFIG's rules; class indices: backup 0, fetch 1, default 2.
fn decider(system: FakeSystem, tables: &mut FakeTables) -> Decider {
    decider_with(Box::new(system), tables)
}

fn decider_with(system: Box<dyn System>, tables: &mut FakeTables) -> Decider {
    decider_config(system, tables, CONFIG)
}

fn decider_config(system: Box<dyn System>, tables: &mut FakeTables, config: &str) -> Decider {
    let env = crate::rules::SystemEnv::default();
    let config = crate::config::parse(Path::new("t.toml"), config, &env.env()).unwrap();
    let ids = config.class_ids_in_file_order();
    let rules = RuleSet::compile(&config, &ids, &NoCgroups).unwrap();
    let mut d = Decider::new(system, true, Duration::from_secs(5));
    d.install(tables, rules, true).unwrap();
    d
}

/// A host the test changes while the decider runs.
struct Shared(std::sync::Arc<std::sync::Mutex<FakeSystem>>);

impl System for Shared {
    fn sockets(&mut self, visit: &mut dyn FnMut(&Socket)) -> Result<Vec<Table>, ScanError> {
        self.0.lock().unwrap().sockets(visit)
    }
    fn holders(&self, inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
        self.0.lock().unwrap().holders(inodes)
    }
    fn facts(&mut self, pid: u32, owner: Option<&Owner>, needs: Needs) -> ProcessFacts {
        self.0.lock().unwrap().facts(pid, owner, needs)
    }
    fn alive(&self, pid: u32) -> bool {
        self.0.lock().unwrap().alive(pid)
    }
    fn sweep(&mut self, _: Duration) {}
    fn cgroups(&self) -> &dyn CgroupIndex {
        &NoCgroups
    }
    fn coarse_ns(&self) -> u64 {
        0
    }
    fn monotonic_ns(&self) -> u64 {
        0
    }
}

fn socket(lport: u16, inode: u64, state: SockState) -> Socket {
    Socket { key: key(lport), state, uid: 0, inode, cookie: 0, cgroup_id: None }
}

#[test]
fn a_provisional_flow_gets_the_daemons_class_and_its_process_is_remembered() {
    let mut tables = FakeTables::default();
    let system = FakeSystem {
        processes: HashMap::from([(40, process(40, "curl", &["curl", "--fetch", "x"]))]),
        ..FakeSystem::default()
    };
    let mut d = decider(system, &mut tables);
    assert_eq!(tables.writes, 1, "the table went to the kernel");
    let k = key(41000);
    tables
        .insert_flow(&k, &FlowValue { class: CLASS_DEFAULT, tx_bytes: 900, ..FlowValue::default() })
        .unwrap();
    let event = FlowEvent {
        key: k,
        owner: Owner { tgid: 40, ..Owner::default() },
        class: CLASS_DEFAULT,
        flags: EVENT_OWNER | EVENT_PROVISIONAL,
        ..FlowEvent::default()
    };
    d.on_event(&mut tables, &event);
    let flow = tables.flow(&k).unwrap();
    assert_eq!((flow.class, flow.origin), (1, ORIGIN_DAEMON), "args matched: class fetch");
    assert_eq!(d.stats().provisional_bytes, 900, "what ran in the wrong class is counted");
    assert_eq!(d.conn(&k).map(|c| c.by), Some(Origin::Daemon));
    let answers = tables.proc_tests.get(&40).copied().unwrap();
    assert_eq!((answers.known & 1, answers.values & 1), (1, 1), "the args test is answered for pid 40");
}

#[test]
fn the_reconcile_adopts_corrects_and_drops_stale_flows_but_never_moves_a_pinned_one() {
    let mut tables = FakeTables::default();
    let now = Arc::new(AtomicU64::new(100_000_000_000));
    let t = now.load(Ordering::Relaxed);
    let system = FakeSystem {
        sockets: vec![
            (socket(1, 11, SockState::Established), Some(7)),
            (socket(2, 12, SockState::Established), Some(7)),
            (socket(3, 13, SockState::Established), Some(7)),
            (socket(4, 14, SockState::TimeWait), None),
        ],
        processes: HashMap::from([(7, process(7, "backupjob", &["backupjob"]))]),
        now_ns: Arc::clone(&now),
        ..FakeSystem::default()
    };
    let mut d = decider(system, &mut tables);
    // 2: decided by the kernel before the process exec'd into backupjob; 3: pinned;
    // 9: no socket any more and idle for 6 s.
    let kernel = FlowValue { class: CLASS_DEFAULT, origin: ORIGIN_KERNEL, ..FlowValue::default() };
    tables.insert_flow(&key(2), &FlowValue { last_seen_ns: t, ..kernel }).unwrap();
    tables.insert_flow(&key(3), &FlowValue { origin: ORIGIN_PINNED, last_seen_ns: t, ..kernel }).unwrap();
    tables.insert_flow(&key(9), &FlowValue { last_seen_ns: t - 6_000_000_000, ..kernel }).unwrap();
    let report = d.reconcile(&mut tables);
    assert_eq!((report.sockets, report.adopted, report.corrected, report.removed), (4, 1, 1, 1));
    assert_eq!(tables.flow(&key(1)).map(|f| (f.class, f.origin)), Some((0, ORIGIN_DAEMON)), "adopted");
    assert_eq!(tables.flow(&key(2)).map(|f| (f.class, f.origin)), Some((0, ORIGIN_DAEMON)), "corrected");
    assert_eq!(tables.flow(&key(3)).map(|f| f.class), Some(CLASS_DEFAULT), "pinned stays");
    assert_eq!(tables.flow(&key(4)), None, "time-wait sockets are not adopted");
    assert_eq!(tables.flow(&key(9)), None, "stale");
    assert_eq!(d.conn(&key(2)).map(|c| (c.by, c.pid)), Some((Origin::Scan, 7)));
    assert_eq!(d.conn(&key(4)).map(|c| c.state), Some(SockState::TimeWait));
    // Nothing changed: the next pass decides nothing again.
    let again = d.reconcile(&mut tables);
    assert_eq!((again.adopted, again.corrected, again.removed), (0, 0, 0));
}

#[test]
fn an_exec_is_seen_at_the_next_pass_and_only_that_process_flows_are_decided_again() {
    let mut tables = FakeTables::default();
    let system = FakeSystem {
        sockets: vec![(socket(1, 11, SockState::Established), Some(7))],
        processes: HashMap::from([(7, process(7, "bash", &["bash"]))]),
        ..FakeSystem::default()
    };
    let shared = std::sync::Arc::new(std::sync::Mutex::new(system));
    let mut d = decider_with(Box::new(Shared(std::sync::Arc::clone(&shared))), &mut tables);
    assert_eq!(d.reconcile(&mut tables).adopted, 1);
    assert_eq!(tables.flow(&key(1)).map(|f| f.class), Some(CLASS_DEFAULT));
    // bash becomes backupjob (same pid): the flow moves at the next pass.
    shared.lock().unwrap().processes.insert(7, process(7, "backupjob", &["backupjob"]));
    let report = d.reconcile(&mut tables);
    assert_eq!(report.corrected, 1);
    assert_eq!(tables.flow(&key(1)).map(|f| (f.class, f.origin)), Some((0, ORIGIN_DAEMON)));
}

#[test]
fn a_socket_whose_owner_exited_is_traced_to_the_process_that_holds_it_now() {
    let mut tables = FakeTables::default();
    tables.owners.insert(99, Owner { tgid: 5, ..Owner::default() });
    let mut s = socket(1, 11, SockState::Established);
    s.cookie = 99;
    // Pid 5 made the socket and exited; pid 7 (backupjob) holds it now.
    let system = FakeSystem {
        sockets: vec![(s, Some(7))],
        processes: HashMap::from([(7, process(7, "backupjob", &["backupjob"]))]),
        ..FakeSystem::default()
    };
    let mut d = decider(system, &mut tables);
    d.reconcile(&mut tables);
    assert_eq!(d.conn(&key(1)).map(|c| c.pid), Some(7));
    assert_eq!(tables.flow(&key(1)).map(|f| f.class), Some(0));
}

#[test]
fn a_rule_change_hands_undecidable_flows_back_to_the_kernel() {
    let mut tables = FakeTables::default();
    let mut d = decider(FakeSystem::default(), &mut tables);
    let daemon = FlowValue { class: 0, origin: ORIGIN_DAEMON, rules_gen: 1, ..FlowValue::default() };
    tables.insert_flow(&key(5), &daemon).unwrap();
    tables.insert_flow(&key(6), &FlowValue { class: 7, origin: ORIGIN_PINNED, ..daemon }).unwrap();
    tables.insert_flow(&key(8), &FlowValue { class: 1, origin: ORIGIN_PINNED, ..daemon }).unwrap();
    let n = d.reevaluate(&mut tables, &HashSet::from([0, 1, 2]));
    assert_eq!(n, 2);
    let back = tables.flow(&key(5)).unwrap();
    assert_eq!((back.origin, back.rules_gen), (ORIGIN_KERNEL, 0), "no socket: the kernel decides again");
    assert_eq!(tables.flow(&key(6)).map(|f| f.origin), Some(ORIGIN_KERNEL), "its class is gone");
    assert_eq!(tables.flow(&key(8)).map(|f| f.origin), Some(ORIGIN_PINNED), "its class stays");
}

#[test]
fn a_socket_no_walk_can_trace_does_not_walk_the_descriptors_again() {
    let mut tables = FakeTables::default();
    let walks = Arc::new(AtomicU64::new(0));
    // Nobody holds socket 2 (a process /proc does not show).
    let system = FakeSystem {
        sockets: vec![
            (socket(1, 11, SockState::Established), Some(7)),
            (socket(2, 12, SockState::Established), None),
        ],
        processes: HashMap::from([(7, process(7, "backupjob", &["backupjob"]))]),
        walks: Arc::clone(&walks),
        ..FakeSystem::default()
    };
    let mut d = decider(system, &mut tables);
    for _ in 0..20 {
        d.reconcile(&mut tables);
    }
    assert_eq!(walks.load(Ordering::Relaxed), 1, "one walk at start, none for the same untraceable socket");
    assert_eq!(d.conn(&key(1)).map(|c| c.pid), Some(7));
}

/// Rules on facts a process that exits mid-scan no longer shows: class
/// indices users 0, other 1, default 2.
const UNKNOWABLE: &str = r#"
[[interface]]
name = "eth0"
egress = "100mbit"
[[class]]
name = "users"
match = 'uid >= 1000'
[[class]]
name = "other"
match = 'not cmd == "x" and rport == 5201'
"#;

#[test]
fn a_process_that_exits_mid_scan_leaves_its_flows_in_their_class() {
    let mut tables = FakeTables::default();
    let root_x = process(7, "x", &["x"]);
    let system = FakeSystem {
        sockets: vec![(socket(1, 11, SockState::Established), Some(7))],
        processes: HashMap::from([(7, root_x)]),
        ..FakeSystem::default()
    };
    let shared = Arc::new(std::sync::Mutex::new(system));
    let mut d = decider_config(Box::new(Shared(Arc::clone(&shared))), &mut tables, UNKNOWABLE);
    assert_eq!(d.reconcile(&mut tables).adopted, 1);
    assert_eq!(tables.flow(&key(1)).map(|f| f.class), Some(CLASS_DEFAULT), "root's x: neither rule");
    // Pid 7 exits between the check that it lives and the read of /proc:
    // its uid, gid and name are unknown now, not u32::MAX and "".
    shared.lock().unwrap().vanishing.insert(7);
    let report = d.reconcile(&mut tables);
    let flow = tables.flow(&key(1)).unwrap();
    assert_eq!(
        (report.corrected, flow.class),
        (0, CLASS_DEFAULT),
        "`uid >= 1000` and `not cmd == \"x\"` must not flip on facts that could not be read"
    );
}

#[test]
fn an_unknown_fact_makes_the_daemons_verdict_provisional_not_false() {
    let env = crate::rules::SystemEnv::default();
    let config = crate::config::parse(Path::new("t.toml"), UNKNOWABLE, &env.env()).unwrap();
    let rules = RuleSet::compile(&config, &config.class_ids_in_file_order(), &NoCgroups).unwrap();
    let gone = ProcessFacts { pid: 9, ..ProcessFacts::default() };
    let verdict = rules.verdict_of(&key(1), Some(&gone));
    assert!(verdict.provisional, "{verdict:?}");
    let known = ProcessFacts { uid: Some(1000), gid: Some(1000), cmd: Some("x".into()), ..gone };
    let verdict = rules.verdict_of(&key(1), Some(&known));
    assert_eq!((verdict.class, verdict.provisional), (0, false));
}

/// A uid that was read but has no account: its name is known to be none, so
/// a test on the name is false, not unknown (found by the `rules` fuzz target:
/// such a process's flows stayed provisional for good).
#[test]
fn a_uid_without_an_account_name_matches_no_name_test_and_is_settled() {
    const NAMED: &str = "[[interface]]\nname = \"eth0\"\negress = \"100mbit\"\n[[class]]\nname = \"r\"\n\
                         match = 'user ~ \"r?ync\" or group ~ \"r?ync\"'\n";
    let env = crate::rules::SystemEnv::default();
    let config = crate::config::parse(Path::new("t.toml"), NAMED, &env.env()).unwrap();
    let rules = RuleSet::compile(&config, &config.class_ids_in_file_order(), &NoCgroups).unwrap();
    let nameless = ProcessFacts {
        pid: 9,
        uid: Some(4242),
        gid: Some(4242),
        cmd: Some("x".into()),
        ..Default::default()
    };
    let verdict = rules.verdict_of(&key(1), Some(&nameless));
    assert_eq!((verdict.class, verdict.provisional), (CLASS_DEFAULT, false), "{verdict:?}");
    let unread = ProcessFacts { uid: None, ..nameless };
    assert!(rules.verdict_of(&key(1), Some(&unread)).provisional);
}

#[test]
fn stale_flows_past_one_batch_are_left_to_prune_stale() {
    let mut tables = FakeTables::default();
    let now = Arc::new(AtomicU64::new(100_000_000_000));
    let system = FakeSystem { now_ns: Arc::clone(&now), ..FakeSystem::default() };
    let mut d = decider(system, &mut tables);
    let idle = FlowValue { origin: ORIGIN_KERNEL, ..FlowValue::default() };
    for lport in 1..=3000 {
        tables.insert_flow(&key(lport), &idle).unwrap();
    }
    let report = d.reconcile(&mut tables);
    assert_eq!((report.removed, tables.flows.len()), (1024, 3000 - 1024), "one batch under the reconcile");
    assert_eq!(d.flows(), 3000 - 1024, "status counts what the reconcile walked, less what it removed");
    assert!(d.prune_stale(&mut tables, 1024));
    assert!(!d.prune_stale(&mut tables, 1024), "the last batch");
    assert!(tables.flows.is_empty());
    assert_eq!(d.last_scan().map(|r| r.removed), Some(3000));
    assert_eq!(d.flows(), 0);
}

#[test]
fn answers_follow_a_table_the_reconcile_rewrites_for_a_restarted_unit() {
    let mut tables = FakeTables::default();
    let units = Units(Arc::new(AtomicU64::new(500)));
    let system = FakeSystem {
        sockets: vec![(socket(1, 11, SockState::Established), Some(40))],
        processes: HashMap::from([(40, process(40, "curl", &["curl", "--fetch"]))]),
        units: units.clone(),
        ..FakeSystem::default()
    };
    let config = format!("{CONFIG}[[class]]\nname = \"unit\"\nmatch = 'unit == \"x.service\"'\n");
    let mut d = decider_config(Box::new(system), &mut tables, &config);
    d.reconcile(&mut tables);
    let gen = |t: &FakeTables| t.proc_tests.get(&40).map(|a| a.rules_gen);
    assert_eq!(gen(&tables), Some(tables.rules_gen()), "answers of the table in force");
    // The unit restarts: a new cgroup id, a new table at the next pass.
    units.0.store(501, Ordering::Relaxed);
    let before = tables.writes;
    d.reconcile(&mut tables);
    assert_eq!(tables.writes, before + 1, "the table was written again");
    assert_eq!(gen(&tables), Some(tables.rules_gen()), "the answers are of the new table, not stale");
}
