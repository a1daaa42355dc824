//! End to end: `shaper explain` for connections the kernel decided, the
//! daemon decided and an operator pinned, and `explain --pid … --to …` for a
//! connection that does not exist yet, against the class it then gets.
//!
//! Needs root (without it each test reports "skipped: needs root"). Every
//! test builds and removes its own sandbox, cgroups and program copies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use shaper_testkit::{
    require_root,
    sandbox::{spawn_client_cmd, Daemon, IperfServer, Programs, Sandbox},
};
use shaper_user::control::{
    explain::{RuleResult, TestExplained, TestValue, TestedBy},
    ConnRow, Explained, Origin,
};

/// `shaper explain ARGS --json` against the daemon, decoded.
fn explain(daemon: &Daemon, args: &[&str]) -> Explained {
    let out = output(
        Command::new(SHAPER).arg("explain").args(args).arg("--json").arg("--socket").arg(&daemon.socket),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn test(test: &str, fact: &str, value: TestValue, by: TestedBy, evaluated: bool) -> TestExplained {
    TestExplained { test: test.into(), fact: fact.into(), value, by, evaluated }
}

/// The connections to `port`, fewest bytes sent first (iperf3: control, then data).
fn to_port(daemon: &Daemon, port: u16) -> Vec<ConnRow> {
    let mut rows: Vec<ConnRow> =
        conns(daemon).into_iter().filter(|c| c.remote.ends_with(&format!(":{port}"))).collect();
    rows.sort_by_key(|c| c.tx_bytes);
    rows
}

#[test]
fn explain_names_the_rule_and_each_test_for_kernel_daemon_and_pinned_connections() {
    require_root!();
    let sandbox = Sandbox::new("explain").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let app = programs.copy("iperf3", "shpexplained").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"web\"\negress = \"20mbit\"\nmatch = 'rport == 5201'\n\n\
         [[class]]\nname = \"tool\"\negress = \"10mbit\"\nmatch = 'exe ~ \"*/shpexplained\"'\n\n\
         [[class]]\nname = \"bulk\"\negress = \"5mbit\"\n\n[daemon]\nscan_interval = \"1s\"\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _s1 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let _s2 = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5202).unwrap();
    let web =
        spawn_client_cmd(sandbox.client("iperf3").unwrap(), Sandbox::ADDR_B4, 5201, &["-t", "8"]).unwrap();
    let tool = spawn_client_cmd(
        sandbox.client(app.to_str().unwrap()).unwrap(),
        Sandbox::ADDR_B4,
        5202,
        &["-t", "8"],
    )
    .unwrap();
    // A reconcile or two: the kernel-decided flows get their process.
    std::thread::sleep(Duration::from_secs(3));
    let web_data = to_port(&daemon, 5201).pop().unwrap();
    let tool_control = to_port(&daemon, 5202).remove(0);
    assert_eq!((web_data.origin, tool_control.origin), (Origin::Kernel, Origin::Daemon));

    // Kernel-decided: the port rule, the first in the file.
    let e = explain(&daemon, &[&web_data.id]);
    println!("{e:#?}");
    assert_eq!(e.decided.as_ref().map(|d| d.by), Some(Origin::Kernel));
    assert!(e.decided.as_ref().unwrap().when.contains("at its first packet"), "{e:#?}");
    assert_eq!(
        (e.class.as_deref(), e.matched.as_deref(), e.verdict.as_str()),
        (Some("web"), Some("web"), "web")
    );
    assert_eq!(e.process.as_ref().and_then(|p| p.cmd.as_deref()), Some("iperf3"));
    let (first, second) = (&e.rules[0], &e.rules[1]);
    assert_eq!(
        (first.class.as_str(), first.rule.as_str(), first.result),
        ("web", "rport == 5201", RuleResult::Matched)
    );
    assert_eq!(first.tests, [test("rport == 5201", "rport 5201", TestValue::True, TestedBy::Kernel, true)]);
    assert_eq!((second.class.as_str(), second.result), ("tool", RuleResult::NotReached));
    assert_eq!(second.tests.len(), 1);
    assert_eq!((second.tests[0].by, second.tests[0].value), (TestedBy::Daemon, TestValue::False));
    assert_eq!(e.rules.len(), 2, "bulk has no match: {e:#?}");

    // Daemon-decided: the exe rule, which only the daemon can test.
    let e = explain(&daemon, &[&tool_control.id]);
    println!("{e:#?}");
    assert_eq!(e.decided.as_ref().map(|d| d.by), Some(Origin::Daemon));
    assert!(e.decided.as_ref().unwrap().when.contains("after its first packet"), "{e:#?}");
    assert_eq!((e.class.as_deref(), e.matched.as_deref()), (Some("tool"), Some("tool")));
    let exe = app.to_str().unwrap();
    assert_eq!(e.process.as_ref().and_then(|p| p.exe.as_deref()), Some(exe));
    assert_eq!(e.rules[0].tests[0].fact, "rport 5202");
    assert_eq!(e.rules[0].tests[0].value, TestValue::False);
    assert_eq!(e.rules[1].result, RuleResult::Matched);
    assert_eq!(
        e.rules[1].tests,
        [test("exe ~ \"*/shpexplained\"", &format!("exe {exe:?}"), TestValue::True, TestedBy::Daemon, true)]
    );
    // For people: the rule list, with who answered.
    let out =
        output(Command::new(SHAPER).args(["explain", &tool_control.id, "--socket"]).arg(&daemon.socket));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("  2. tool: exe ~ \"*/shpexplained\"  → matched\n"), "{text}");
    assert!(
        text.contains(&format!(
            "       true    exe ~ \"*/shpexplained\"  (exe {exe:?}; kernel could not decide; the daemon answered true)\n"
        )),
        "{text}"
    );
    assert!(text.contains("verdict: tool (the rule of tool)\n"), "{text}");

    // Pinned: moved by hand, the rules still say web.
    let moved = daemon.move_conn(&web_data.id, "bulk").unwrap();
    assert_eq!(moved.class, "bulk");
    let e = explain(&daemon, &[&web_data.id[..6]]);
    println!("{e:#?}");
    assert_eq!(e.decided.as_ref().map(|d| d.by), Some(Origin::Pinned));
    assert!(e.decided.as_ref().unwrap().when.starts_with("with `shaper move` at 20"), "{e:#?}");
    assert_eq!((e.class.as_deref(), e.verdict.as_str()), (Some("bulk"), "web"));
    assert_eq!(e.notes, ["pinned by `shaper move`: the rules do not move it while it lives"]);

    // An id that names nothing is refused, with the reason.
    let out = output(Command::new(SHAPER).args(["explain", "ffffffff", "--socket"]).arg(&daemon.socket));
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()),
        (Some(1), "shaper: the daemon refused: no connection \"ffffffff\" (see `shaper conns`)\n")
    );
    finish(web);
    finish(tool);
}

fn finish(child: std::process::Child) {
    let _ = shaper_testkit::sandbox::finish_client(child);
}

#[test]
fn explain_pid_to_agrees_with_the_class_the_connection_then_gets() {
    require_root!();
    let sandbox = Sandbox::new("explainpid").unwrap();
    let programs = Programs::create(&sandbox.tag).unwrap();
    let waiter = programs.copy("bash", "shpwaiter").unwrap();
    let config = format!(
        "{}\n[[class]]\nname = \"other\"\negress = \"5mbit\"\nmatch = 'rport == 5202'\n\n\
         [[class]]\nname = \"waiters\"\negress = \"10mbit\"\nmatch = 'exe ~ \"*/shpwaiter\" and rport == 5201'\n\n\
         [[class]]\nname = \"plain\"\negress = \"20mbit\"\nmatch = 'rport == 5201'\n",
        interface(&sandbox)
    );
    let daemon = Daemon::start(&sandbox, shaper(), &config).unwrap();
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    // A process that connects once it is told to.
    let script = format!("read go; exec 3<>/dev/tcp/{}/5201; read done", Sandbox::ADDR_B4);
    let mut cmd = sandbox.client(waiter.to_str().unwrap()).unwrap();
    let mut child = cmd.args(["-c", &script]).stdin(Stdio::piped()).spawn().unwrap();
    let pid = wait_for_comm(child.id(), "shpwaiter");
    let to = format!("{}:5201", Sandbox::ADDR_B4);
    let e = explain(&daemon, &["--pid", &pid.to_string(), "--to", &to]);
    println!("{e:#?}");
    assert_eq!(e.flow, format!("tcp {}:? → {to}", Sandbox::ADDR_A4));
    assert_eq!((e.id.as_deref(), e.class.as_deref()), (None, None));
    assert_eq!((e.matched.as_deref(), e.verdict.as_str()), (Some("waiters"), "waiters"));
    assert_eq!(
        e.rules.iter().map(|r| r.result).collect::<Vec<_>>(),
        [RuleResult::Skipped, RuleResult::Matched, RuleResult::NotReached]
    );
    assert!(
        e.notes.contains(&"the local port is not chosen yet: tests on lport are unknown".to_string()),
        "{e:#?}"
    );
    // Now it connects: the class it gets is the one explain gave.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        let found = conns(&daemon).into_iter().find(|c| c.remote == to && c.pid == Some(pid));
        if let Some(conn) = found {
            break conn;
        }
        assert!(Instant::now() < deadline, "no connection of pid {pid} to {to}: {:#?}", conns(&daemon));
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{conn:#?}");
    assert_eq!(conn.class, e.verdict, "{conn:#?}");
    // And explaining the connection itself gives the same rule.
    let made = explain(&daemon, &[&conn.id]);
    assert_eq!((made.matched.as_deref(), made.class.as_deref()), (Some("waiters"), Some("waiters")));
    writeln!(stdin, "done").unwrap();
    drop(stdin);
    let _ = child.wait();
}

/// Waits until process `pid` runs `comm` (the client wrapper execs it).
fn wait_for_comm(pid: u32, comm: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            return pid;
        }
        assert!(Instant::now() < deadline, "process {pid} runs {now:?}, not {comm}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
