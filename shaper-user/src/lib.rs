//! shaper: a traffic shaper driven by an eBPF classifier and HTB.
//!
//! The daemon and every CLI verb are thin layers over these modules; data flows
//! one way: config → rules → kernel tables, and kernel counters → daemon → CLI.
//! The test kit (network-namespace sandboxes, crafted frames, BPF_PROG_TEST_RUN)
//! is the dev-only crate `shaper-testkit`, not part of this library.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | the TOML config: schema, validation, errors with file:line:col |
//! | [`classids`] | class names ↔ the kernel's class indices (HTB ids, counter slots) |
//! | [`units`] | rates, durations and sizes: parsing and human formatting |
//! | [`rules`] | the `match` language: parser, typing, compiler to the kernel rule table |
//! | [`accounts`] | user and group names ↔ ids |
//! | [`services`] | /etc/services names for `service ==` |
//! | [`plan`] | config → the HTB tree of an interface (rates, bursts, quanta, queues) |
//! | [`schedule`] | schedule windows in local time: which is in force at a moment, the next boundary, a class's limits then |
//! | [`tc`] | rtnetlink: links, qdiscs, HTB classes and their counters |
//! | [`datapath`] | the eBPF object: loading, maps, attaching to interfaces |
//! | [`pins`] | the pin directory: what outlives the daemon, and how the next one finds it |
//! | [`owned`] | which HTB trees and IFBs are shaper's: a record per interface in the pin directory, a tag on each root |
//! | [`procnet`] | /proc/net's socket tables, for what sock_diag cannot dump |
//! | [`sockdiag`] | connected sockets from the kernel (NETLINK_SOCK_DIAG), with their cookies |
//! | [`proccache`] | process facts kept until the process changes (exec, pid reuse, a new parent) |
//! | [`process`] | what /proc tells about a process: the facts rules test, who holds which socket |
//! | [`cgroups`] | the cgroup v2 hierarchy: paths ↔ ids |
//! | [`events`] | the classifier's reports of new flows |
//! | [`daemon`] | `shaper run`: its parts (host: interfaces and HTB trees; decider: connections and decisions; the datapath), sequenced by a thin loop |
//! | [`control`] | the control socket protocol, server and client |
//! | [`metrics`] | Prometheus/OpenMetrics text of the daemon's counters, and its HTTP endpoint |
//! | [`supervise`] | `shaper start` and `stop`: the daemon in the background |
//! | [`manual`] | man pages and shell completions, generated from the command's clap definition |
//! | [`teardown`] | `shaper stop --force`: shaping taken down with no daemon, from the pins and the host |
//! | [`preflight`] | `shaper check` on the host: pin directory, root qdiscs and IFB names free or shaper's |
//! | [`logging`] | log lines on stderr: env_logger's, or `<priority>message` for journald |
//! | [`memlock`] | RLIMIT_MEMLOCK raised for BPF maps on kernels before 5.11 |
//! | [`flows`], [`table`] | small helpers |

pub mod accounts;
pub mod cgroupmount;
pub mod cgroups;
pub mod classids;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod files;
pub mod flows;
pub mod logging;
pub mod manual;
pub mod memlock;
pub mod metrics;
pub mod owned;
pub mod pins;
pub mod plan;
pub mod preflight;
pub mod proccache;
pub mod process;
pub mod procnet;
pub mod rules;
pub mod schedule;
pub mod services;
pub mod sockdiag;
pub mod supervise;
pub mod table;
pub mod taskbtf;
pub mod tc;
pub mod teardown;
pub mod units;

/// An error and its chain of causes on one line: "a: b: c".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
