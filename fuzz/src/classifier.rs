//! The classifier in the kernel: random and mutated frames through
//! BPF_PROG_TEST_RUN of `tc_egress` and `tc_ingress` with a random rule
//! table. Every frame must pass (never `TC_ACT_SHOT`), no error counter may
//! move, and the class it is given must be the user-side evaluator's (the
//! same table, the key read from the frame by [`crate::frames::flow_key`]).
//! Needs root.
//!
//! Inbound packets get an owner from the listeners (LISTENERS) and its
//! answers from PROC_TESTS, as after the socket hooks and the daemon ran:
//! each rule set comes with a few listeners (exact address, wildcard, IPv6
//! wildcard, another namespace) and answers (some for a stale generation),
//! drawn from the rules' text, so an input replays alike. A flow already in
//! FLOWS for this generation keeps its class (its first packet, in either
//! direction, decided it), and the user side reads it from there.
//!
//! Input: `match` rules, one per line, then a line `--`, then the frame's
//! bytes (without the rules part, the frame is classified by the last rules).

use std::collections::HashMap;

use anyhow::Context as _;
use shaper_common::{
    classid_of,
    names::{PROG_TC_EGRESS, PROG_TC_INGRESS},
    rules::{KernelView, SocketFacts},
    target_class, Direction, FlowKey, IfaceInfo, ListenKey, Owner, ProcTests, CLASS_DEFAULT, ERROR_NAMES,
    HTB_ACK_MINOR, HTB_MAJOR, ORIGIN_KERNEL, SETTING_CGROUP_RULES, SETTING_PROCESS_RULES, TARGET_DEFAULT,
};
use shaper_testkit::TestRunExt as _;
use shaper_user::{
    datapath::{Datapath, LoadOptions},
    rules::{
        compile::{self, Mode, NoCgroups},
        first_match,
        pred::Facts,
        Pred, Rule,
    },
};

use crate::{
    frames,
    rules::{evaluate, owner_of, Tables},
    world::{self, World},
    Rng, Target,
};

/// ifindex of `lo`, which BPF_PROG_TEST_RUN gives the packet; it also
/// serves as the IFB ingress redirects to (the test run does not send it).
const IFINDEX: u32 = 1;
/// Classes the rules give, and the interface's default.
const CLASSES: u16 = 9;
const DEFAULT_CLASS: u16 = 9;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_REDIRECT: i32 = 7;
const SEPARATOR: &[u8] = b"\n--\n";
/// Frames per rule set when generating.
const FRAMES_PER_RULES: u64 = 200;

pub struct Classifier {
    world: World,
    datapath: Datapath,
    /// The rules in the kernel now, as text, parsed and compiled.
    rules_text: String,
    rules: Vec<Rule>,
    tables: Tables,
    rules_gen: u32,
    generated: u64,
    next_rules: String,
    /// What LISTENERS and PROC_TESTS hold for these rules.
    listeners: HashMap<ListenKey, Owner>,
    answers: HashMap<u32, ProcTests>,
    /// The classifier's event ring, drained after each run so it never fills.
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
}

impl Classifier {
    /// Loads the classifier (needs root) with an empty rule table.
    pub fn new() -> anyhow::Result<Self> {
        let mut datapath = Datapath::load(LoadOptions { max_flows: 4096, kernel_log_level: 0, pins: None })
            .context("loading the classifier (needs root)")?;
        let mut info = IfaceInfo::new(0, DEFAULT_CLASS, 14);
        info.ifb_ifindex = IFINDEX;
        for class in 0..=CLASSES {
            info.add_class(u32::from(class));
        }
        datapath.set_iface(IFINDEX, &info).context("registering the interface")?;
        datapath.set_flags(SETTING_PROCESS_RULES | SETTING_CGROUP_RULES);
        datapath.load_program(PROG_TC_INGRESS).context("loading tc_ingress")?;
        let empty = compile::compile(&[], &NoCgroups).context("compiling no rules")?;
        let events = datapath.take_events();
        let mut me = Self {
            world: World::new(),
            datapath,
            rules_text: String::new(),
            rules: Vec::new(),
            tables: Tables {
                linear: empty.clone().with_mode(Mode::Linear),
                indexed: empty.with_mode(Mode::Indexed),
            },
            rules_gen: 0,
            generated: 0,
            next_rules: String::new(),
            listeners: HashMap::new(),
            answers: HashMap::new(),
            events,
        };
        me.set_rules("")?;
        Ok(me)
    }

    /// Puts the rules of `text` (the lines that parse) in the kernel.
    fn set_rules(&mut self, text: &str) -> anyhow::Result<()> {
        let env = self.world.env();
        let rules: Vec<Rule> = text.lines().take(32).filter_map(|l| Rule::parse(l, &env).ok()).collect();
        let list: Vec<(u16, &Pred)> =
            rules.iter().enumerate().map(|(i, r)| ((i as u16) % CLASSES, &r.pred)).collect();
        // Cgroup tests compile against no hierarchy: the test run's packets have no socket anyway.
        let table = compile::compile(&list, &NoCgroups).context("compiling")?;
        self.rules_gen = self.datapath.set_rules(&table).context("writing the rule table")?;
        self.tables =
            Tables { linear: table.clone().with_mode(Mode::Linear), indexed: table.with_mode(Mode::Indexed) };
        self.rules = rules;
        self.rules_text = text.to_string();
        self.populate(text)
    }

    /// New listeners and answers for the rules of `text`.
    fn populate(&mut self, text: &str) -> anyhow::Result<()> {
        for key in std::mem::take(&mut self.listeners).keys() {
            self.datapath.remove_listener(key).context("removing a listener")?;
        }
        for tgid in std::mem::take(&mut self.answers).keys() {
            self.datapath.remove_proc_tests(*tgid).context("removing answers")?;
        }
        let mut rng = Rng::from_bytes(text.as_bytes());
        let netns = self.datapath.netns();
        for _ in 0..rng.below(10) {
            let [exact, wildcard, dual] = ListenKey::accepting(&world::flow_key(&mut rng), netns);
            let key = match rng.below(5) {
                0 | 1 => exact,
                2 => wildcard,
                3 => dual,
                _ => ListenKey { netns: netns ^ 1, ..exact }, // bound in another namespace
            };
            let process = world::process(&mut rng, &self.world.tree);
            let owner = owner_of(&process).unwrap_or(Owner { tgid: process.pid, ..Owner::default() });
            self.datapath.insert_listener(&key, &owner).context("writing a listener")?;
            self.listeners.insert(key, owner);
            if rng.one_in(2) {
                let rules_gen = if rng.one_in(4) { self.rules_gen.wrapping_sub(1) } else { self.rules_gen };
                let tests = ProcTests {
                    rules_gen,
                    known: rng.next_u64(),
                    values: rng.next_u64(),
                    ..ProcTests::default()
                };
                self.datapath.set_proc_tests(owner.tgid, &tests).context("writing answers")?;
                self.answers.insert(owner.tgid, tests);
            }
        }
        Ok(())
    }

    /// What the classifier knows about the socket of a test-run packet: the
    /// owner of the port the flow's local end is bound to. Inbound, as for
    /// any packet; outbound, because BPF_PROG_TEST_RUN gives the packet a
    /// dummy socket that no hook saw (OWNERS has no record of it), which the
    /// classifier takes for an accepted connection.
    fn socket(&self, key: &FlowKey) -> SocketFacts {
        let mut socket = SocketFacts { rules_gen: self.rules_gen, ..SocketFacts::default() };
        let found =
            ListenKey::accepting(key, self.datapath.netns()).iter().find_map(|k| self.listeners.get(k));
        if let Some(owner) = found {
            (socket.owner, socket.has_owner) = (*owner, 1);
            if let Some(tests) = self.answers.get(&owner.tgid).filter(|t| t.rules_gen == self.rules_gen) {
                (socket.known, socket.values, socket.has_answers) = (tests.known, tests.values, 1);
            }
        }
        socket
    }

    fn drain_events(&mut self) {
        if let Some(ring) = self.events.as_mut() {
            while ring.next().is_some() {}
        }
    }

    fn errors(&self) -> Vec<u64> {
        self.datapath.errors().unwrap_or_else(|e| panic!("reading the error counters: {e}"))
    }

    /// The class the user side gives `frame` in `direction`: the flow's
    /// class when FLOWS has it for this generation, else the table's verdict.
    fn expected(&self, frame: &[u8], direction: Direction) -> u16 {
        let Some(key) = frames::flow_key(frame, direction) else { return DEFAULT_CLASS };
        let cached =
            self.datapath.flow(&key).filter(|f| f.origin == ORIGIN_KERNEL && f.rules_gen == self.rules_gen);
        let class = match cached {
            Some(flow) => flow.class,
            None => self.verdict(&key),
        };
        if class == CLASS_DEFAULT {
            DEFAULT_CLASS
        } else {
            class
        }
    }

    /// The table's verdict on a new flow, also held to the predicates when
    /// it is not provisional.
    fn verdict(&self, key: &FlowKey) -> u16 {
        let socket = self.socket(key);
        let (target, provisional) = evaluate(&self.tables, &KernelView { key, socket: &socket });
        if !provisional && socket.has_owner == 0 {
            let list: Vec<(u16, &Pred)> =
                self.rules.iter().enumerate().map(|(i, r)| ((i as u16) % CLASSES, &r.pred)).collect();
            let by_pred = first_match(&list, &Facts { key, process: None });
            assert_eq!(target, by_pred.map_or(TARGET_DEFAULT, target_class), "table ≠ predicates on {key:?}");
        }
        if target == TARGET_DEFAULT {
            CLASS_DEFAULT
        } else {
            target & !shaper_common::TARGET_VERDICT
        }
    }
}

impl Target for Classifier {
    fn name(&self) -> &'static str {
        "classifier"
    }

    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "\u{0}",
            "\u{ff}",
            "\u{8}\u{0}",
            "\u{86}\u{dd}",
            "E",
            "`",
            "\u{6}",
            "\u{11}",
            "\u{2c}",
            "\u{3c}",
            "--",
        ]
    }

    fn max_len(&self) -> usize {
        1600
    }

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        if self.generated.is_multiple_of(FRAMES_PER_RULES) {
            let count = rng.below(12);
            self.next_rules = (0..count).map(|_| world::match_rule(rng, 1)).collect::<Vec<_>>().join("\n");
        }
        self.generated += 1;
        let mut input = self.next_rules.clone().into_bytes();
        input.extend_from_slice(SEPARATOR);
        input.extend(frames::generate(rng));
        input
    }

    fn run(&mut self, input: &[u8]) -> bool {
        let frame = match input.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                let text = String::from_utf8_lossy(&input[..at]).into_owned();
                if text != self.rules_text {
                    self.set_rules(&text).unwrap_or_else(|e| panic!("{e:#}"));
                }
                &input[at + SEPARATOR.len()..]
            }
            None => input,
        };
        // BPF_PROG_TEST_RUN takes frames of an Ethernet header and up to a page.
        if frame.len() < 14 || frame.len() > 1514 {
            return false;
        }
        let before = self.errors();
        let mut ran = false;
        for (program, direction, passes) in [
            (PROG_TC_EGRESS, Direction::Egress, &[TC_ACT_UNSPEC, TC_ACT_OK][..]),
            (PROG_TC_INGRESS, Direction::Ingress, &[TC_ACT_REDIRECT][..]),
        ] {
            // Before the run: it creates the flow's entry.
            let expected = self.expected(frame, direction);
            let run = match self.datapath.test_run(program, frame, IFINDEX, 1) {
                Ok(run) => run,
                // The kernel refuses IP frames too short for their IP header before the program runs.
                Err(_) if frame.len() < 14 + 40 => continue,
                Err(e) => panic!("{program} on a {}-byte frame: {e:?}", frame.len()),
            };
            ran = true;
            self.drain_events();
            assert!(passes.contains(&run.verdict), "{program} returned {} (a drop is 2)", run.verdict);
            // Bare ACKs go ahead of every queue, to the ACK leaf.
            let expected_id = if frames::bare_ack(frame) {
                (HTB_MAJOR << 16) | HTB_ACK_MINOR
            } else {
                classid_of(u32::from(expected))
            };
            assert_eq!(
                run.priority,
                expected_id,
                "{program}: class {:#x}, the user side says {expected} (key {:?})",
                run.priority,
                frames::flow_key(frame, direction)
            );
        }
        let after = self.errors();
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_eq!(a, b, "error counter {} moved", ERROR_NAMES.get(i).unwrap_or(&"?"));
        }
        ran
    }
}
