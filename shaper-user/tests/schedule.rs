//! Schedule windows and leaf queues, on real traffic between two namespaces:
//! a window that opens at the next minute switches the class's rate within
//! 2 s of its boundary and back when it closes, the first matching window
//! wins, `shaper set` changes the class's own limits (the window still wins
//! while open), `classes` and `status` name the window in force; `queue = "pfifo"`
//! puts a packet FIFO under the class, and fq_codel is refused where the
//! kernel has none (or used where it has it).
//!
//! The daemon runs with TZ=UTC, so the windows' local times are UTC here.
//! Needs root (without it each test reports "skipped: needs root").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shaper_testkit::{
    require_root,
    sandbox::{Daemon, Sandbox, Stream},
};
use shaper_user::control::{ClassRow, SetClass};

mod common;

use common::*;

const PORT: u16 = 5301;
const OWN_BPS: f64 = 20e6;
const WINDOW_BPS: f64 = 5e6;
const SET_BPS: f64 = 10e6;

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// "HH:MM" (UTC) of the minute starting at `secs` since the epoch.
fn hhmm(secs: u64) -> String {
    format!("{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60)
}

/// "mon" … "sun" of the UTC day of `secs` (1 January 1970 was a Thursday).
fn weekday(secs: u64) -> &'static str {
    ["thu", "fri", "sat", "sun", "mon", "tue", "wed"][(secs / 86_400 % 7) as usize]
}

fn row(daemon: &Daemon) -> ClassRow {
    class(&classes(daemon), "bulk").clone()
}

/// Polls `classes` until the HTB rate of "bulk" is `bps`; returns the wall
/// clock then (seconds since the epoch).
fn wait_for_rate(daemon: &Daemon, bps: u64, limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let r = row(daemon);
        if r.rate_bps == bps {
            return unix_now();
        }
        assert!(start.elapsed() < limit, "bulk never got {bps} bit/s: {r:#?}\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sleep_until(unix: f64) {
    let left = unix - unix_now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// The receiver's rate from `from` to `to` (seconds since the epoch, both ahead).
fn rate_between(stream: &Stream, from: f64, to: f64) -> f64 {
    sleep_until(from);
    let t0 = Instant::now();
    sleep_until(to);
    stream.rate(t0, Instant::now())
}

#[test]
fn a_window_switches_the_rate_at_its_boundaries_and_the_first_match_wins() {
    require_root!();
    let sandbox = Sandbox::new("sched").unwrap();
    // The window opens at the next minute at least 12 s away and lasts a minute.
    let now = unix_now() as u64;
    let open = (now + 12).div_ceil(60) * 60;
    let close = open + 60;
    let (day, hours) = (weekday(open), format!("{}-{}", hhmm(open), hhmm(close)));
    // The second window covers the same minute: the first one wins.
    let config = format!(
        "{}[[class]]\nname = \"bulk\"\nmatch = 'rport == {PORT}'\negress = \"20mbit\"\n\
         schedule = [\n  {{ days = \"{day}\", hours = \"{hours}\", egress = \"5mbit\" }},\n  \
         {{ hours = \"{hours}\", egress = \"2mbit\", ingress = \"1mbit\" }},\n]\n",
        interface(&sandbox)
    );
    println!("{config}");
    let mut daemon = Daemon::spawn(&sandbox, shaper(), &config, &[("TZ", "UTC")]).unwrap();
    daemon.ready().unwrap();
    let stream = Stream::start(&sandbox.b, Sandbox::ADDR_B4, PORT, &sandbox.a, 100e6).unwrap();
    let before = row(&daemon);
    assert_eq!((before.rate_bps, before.window.clone()), (OWN_BPS as u64, None));
    let own = rate_between(&stream, open as f64 - 8.0, open as f64 - 1.0);

    let switched = wait_for_rate(&daemon, WINDOW_BPS as u64, Duration::from_secs(90));
    let during = row(&daemon);
    let window = during.window.clone().expect("the window in force");
    assert_eq!(
        (window.window, window.text.as_str(), window.since, window.until),
        (1, format!("{day} {hours}").as_str(), Some(open), Some(close))
    );
    assert_eq!(daemon.status().unwrap().windows, vec![window]);
    let out = output(&mut client(&daemon, "status"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("schedule: bulk in window 1 ({day} {hours})")), "{text}");
    let windowed = rate_between(&stream, open as f64 + 3.0, open as f64 + 10.0);
    // `set` changes the class's own limits: the window still wins while it is open.
    daemon
        .set(SetClass { class: "bulk".into(), egress: Some("10mbit".into()), ..SetClass::default() })
        .unwrap();
    let set = row(&daemon);
    assert_eq!((set.rate_bps, set.window.map(|w| w.window)), (WINDOW_BPS as u64, Some(1)));

    let back = wait_for_rate(&daemon, SET_BPS as u64, Duration::from_secs(70));
    assert_eq!(row(&daemon).window, None);
    let after = rate_between(&stream, close as f64 + 3.0, close as f64 + 10.0);
    println!(
        "switched {:.3} s after {}, back {:.3} s after {}; {:.2} / {:.2} / {:.2} Mbit/s",
        switched - open as f64,
        hhmm(open),
        back - close as f64,
        hhmm(close),
        own / MBIT,
        windowed / MBIT,
        after / MBIT
    );
    assert!((0.0..2.0).contains(&(switched - open as f64)), "switched {switched} for a window at {open}");
    assert!((0.0..2.0).contains(&(back - close as f64)), "back at {back} for a window closing at {close}");
    assert_near("before the window", own, OWN_BPS, 0.1);
    assert_near("in the window", windowed, WINDOW_BPS, 0.1);
    assert_near("after the window (the limit `set` gave)", after, SET_BPS, 0.1);
    daemon.stop().unwrap();
}

/// `shaper VERB --socket` of `daemon`.
fn client(daemon: &Daemon, verb: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(shaper());
    cmd.arg(verb).arg("--socket").arg(&daemon.socket);
    cmd
}

/// Whether the kernel has fq_codel, asked on an IFB device in the sandbox.
fn kernel_has_fq_codel(sandbox: &Sandbox) -> bool {
    sandbox.a.run("ip", &["link", "add", "shp-q", "type", "ifb"]).unwrap();
    let has = sandbox.a.run("tc", &["qdisc", "add", "dev", "shp-q", "root", "fq_codel"]).is_ok();
    sandbox.a.run("ip", &["link", "del", "shp-q"]).unwrap();
    has
}

#[test]
fn leaf_queues_are_the_ones_asked_for_and_fq_codel_only_where_the_kernel_has_it() {
    require_root!();
    let sandbox = Sandbox::new("queue").unwrap();
    let has_fq_codel = kernel_has_fq_codel(&sandbox);
    let config = |queue: &str| {
        format!(
            "{}[[class]]\nname = \"bulk\"\nmatch = 'rport == {PORT}'\negress = \"100mbit\"\nqueue = \"{queue}\"\n",
            interface(&sandbox)
        )
    };
    let daemon = Daemon::start(&sandbox, shaper(), &config("pfifo")).unwrap();
    let default_kind = if has_fq_codel { "fq_codel" } else { "bfifo" };
    // bulk is class index 0 (1:10), the implicit default 1 (1:11): 100 ms at 100 Mbit/s in 1514-byte frames.
    let shown = qdiscs(&sandbox);
    assert!(shown.contains("qdisc pfifo 10: parent 1:10 limit 825p"), "{shown}");
    assert!(shown.contains(&format!("qdisc {default_kind} 11: parent 1:11")), "{shown}");
    let rows = classes(&daemon);
    assert_eq!(
        (class(&rows, "bulk").queue.as_str(), class(&rows, "default").queue.as_str()),
        ("pfifo", default_kind)
    );
    let status = daemon.status().unwrap();
    assert_eq!((status.queues.fq_codel, status.queues.default.as_str()), (has_fq_codel, default_kind));

    // Another kind on a reload: the queue is replaced.
    std::fs::write(&daemon.config, config("bfifo")).unwrap();
    daemon.reload().unwrap();
    let shown = qdiscs(&sandbox);
    assert!(shown.contains("qdisc bfifo 10: parent 1:10 limit"), "{shown}");

    std::fs::write(&daemon.config, config("fq_codel")).unwrap();
    let reloaded = daemon.reload();
    if has_fq_codel {
        reloaded.unwrap();
        assert!(qdiscs(&sandbox).contains("qdisc fq_codel 10: parent 1:10"), "{}", qdiscs(&sandbox));
    } else {
        let refused = reloaded.expect_err("fq_codel refused").to_string();
        let reason = format!(
            "{}:8:9: class \"bulk\": queue \"fq_codel\": this kernel has no fq_codel qdisc (sch_fq_codel)",
            daemon.config.display()
        );
        assert!(refused.contains(&reason), "{refused}\nexpected {reason}");
        // The running config stays.
        assert!(qdiscs(&sandbox).contains("qdisc bfifo 10: parent 1:10"), "{}", qdiscs(&sandbox));
        let out = output(&mut client(&daemon, "status"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("leaf queues: bfifo unless a class names another (this kernel has no fq_codel)"),
            "{text}"
        );
    }
}
