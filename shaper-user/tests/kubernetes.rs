//! shaper on Kubernetes: config/kubernetes/shaper.yaml (a ConfigMap and a
//! DaemonSet) and config/kubernetes/Containerfile cannot run here (no
//! cluster, no container engine), so they are checked against what can:
//! the config loader, the systemd unit's capability set and stop timeout,
//! and each other (no root needed). And `watch_config` under the kubelet's
//! way of updating a ConfigMap, with a real daemon that has exactly the
//! manifest's capabilities (root).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test with a backtrace"
)]

#[path = "kubernetes/checks.rs"]
mod checks;
#[path = "kubernetes/model.rs"]
mod model;

use std::time::{Duration, Instant};

use checks::{problems, Files};
use shaper_testkit::{
    configmap::ConfigMapVolume,
    require_root,
    sandbox::{finish_client, spawn_client, Daemon, IperfServer, Launcher, Sandbox},
};

mod common;

use common::*;

#[test]
fn the_manifest_agrees_with_the_loader_the_unit_and_the_image() {
    let problems = problems(&Files::read());
    assert!(problems.is_empty(), "config/kubernetes does not agree:\n{}", problems.join("\n"));
}

/// Each check fails when what it checks drifts: one edit at a time of the
/// real files, and the problem it must produce.
#[test]
fn each_drift_is_caught() {
    type Edit = (&'static str, fn(&mut Files) -> &mut String, &'static str, &'static str, &'static str);
    fn manifest(f: &mut Files) -> &mut String {
        &mut f.manifest
    }
    fn unit(f: &mut Files) -> &mut String {
        &mut f.unit
    }
    fn image(f: &mut Files) -> &mut String {
        &mut f.containerfile
    }
    let edits: &[Edit] = &[
        ("watch off", manifest, "watch_config = true", "watch_config = false", "watch_config = true"),
        ("a bad config", manifest, "egress = \"10gbit\"", "egress = \"10gbits\"", "does not load"),
        ("an unknown key", manifest, "scan_interval =", "scan_intervall =", "unknown"),
        (
            "another socket",
            manifest,
            "scan_interval = \"5s\"",
            "control_socket = \"/tmp/s.sock\"",
            "control_socket",
        ),
        ("no hostNetwork", manifest, "hostNetwork: true", "hostNetwork: false", "hostNetwork"),
        ("no hostPID", manifest, "hostPID: true", "hostPID: false", "hostPID"),
        ("a cap less", manifest, "\"SYS_PTRACE\", ", "", "capabilities add"),
        ("a cap more", manifest, "\"BPF\", ", "\"BPF\", \"SYS_ADMIN\", ", "capabilities add"),
        ("a cap twice", manifest, "\"BPF\", ", "\"BPF\", \"CAP_BPF\", ", "twice"),
        ("drop less", manifest, "drop: [\"ALL\"]", "drop: [\"NET_RAW\"]", "drop"),
        ("privileged", manifest, "privileged: false", "privileged: true", "privileged"),
        (
            "escalation",
            manifest,
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
            "Escalation",
        ),
        (
            "unit cap more",
            unit,
            "[Service]",
            "[Service]\nCapabilityBoundingSet=CAP_SYS_ADMIN",
            "capabilities add",
        ),
        ("unit timeout", unit, "TimeoutStopSec=", "TimeoutStopSec=120\n#", "terminationGracePeriodSeconds"),
        (
            "short grace",
            manifest,
            "terminationGracePeriodSeconds: 60",
            "terminationGracePeriodSeconds: 5",
            "terminationGrace",
        ),
        ("bpffs", manifest, "path: /sys/fs/bpf\n", "path: /var/lib/shaper\n", "/sys/fs/bpf is not"),
        ("cgroup", manifest, "mountPath: /sys/fs/cgroup", "mountPath: /host/cgroup", "/sys/fs/cgroup is not"),
        ("run dir", manifest, "path: /run/shaper", "path: /tmp/shaper", "/run/shaper is not"),
        (
            "subPath",
            manifest,
            "mountPath: /etc/shaper\n",
            "mountPath: /etc/shaper\n              subPath: shaper.toml\n",
            "subPath",
        ),
        (
            "other map",
            manifest,
            "name: shaper-config\n  namespace",
            "name: shaper-conf\n  namespace",
            "is not the ConfigMap",
        ),
        (
            "namespace",
            manifest,
            "name: shaper-config\n  namespace: shaper",
            "name: shaper-config\n  namespace: default",
            "the ConfigMap is in Some(\"default\")",
        ),
        (
            "probe",
            manifest,
            "[\"/usr/local/bin/shaper\", \"status\"]",
            "[\"/usr/local/bin/shaper\", \"classes\"]",
            "readiness",
        ),
        (
            "command",
            manifest,
            "\"--config\", \"/etc/shaper/shaper.toml\"",
            "\"--config\", \"/etc/shaper.toml\"",
            "not a key",
        ),
        ("misspelt", manifest, "readinessProbe:", "readinesProbe:", "unknown field"),
        ("taints", manifest, "- operator: Exists", "- key: gpu\n          operator: Exists", "toleration"),
        ("surge", manifest, "maxSurge: 0", "maxSurge: 1", "maxSurge"),
        ("image path", image, "/usr/local/bin/shaper\n", "/usr/bin/shaper\n", "binary at"),
        ("own build", image, "RUN cargo xtask build", "RUN cargo build --release", "cargo xtask build"),
        (
            "entrypoint",
            image,
            "CMD [\"run\", \"--config\", \"/etc/shaper/shaper.toml\"]",
            "CMD [\"run\"]",
            "by default",
        ),
        ("fat image", image, "debian:bookworm-slim", "debian:bookworm", "slim"),
    ];
    let files = Files::read();
    for (what, field, from, to, expected) in edits {
        let mut edited = files.clone();
        let text = field(&mut edited);
        assert!(text.contains(from), "{what}: {from:?} is not in the file any more: update this test");
        *text = text.replacen(from, to, 1);
        let found = problems(&edited);
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{what}: want a problem containing {expected:?}, got {found:#?}"
        );
    }
}

/// The manifest's config with `[[interface]]` and `[[class]]` for the sandbox.
fn sandbox_config(sandbox: &Sandbox, bulk: &str) -> String {
    format!(
        "[daemon]\nwatch_config = true\n\n{}\n[[class]]\nname = \"bulk\"\negress = \"{bulk}\"\nmatch = 'rport == 5201'\n",
        interface(sandbox)
    )
}

/// The manifest's capabilities, for setpriv (`+bpf,+perfmon,…`).
fn manifest_capabilities() -> String {
    let objects = model::parse(&Files::read().manifest).unwrap();
    let caps = objects.iter().find_map(|o| match o {
        model::Object::DaemonSet { spec, .. } => {
            Some(spec.template.spec.containers[0].security_context.capabilities.add.clone())
        }
        _ => None,
    });
    caps.unwrap().iter().map(|c| format!("+{}", c.to_lowercase())).collect::<Vec<_>>().join(",")
}

/// As in the pod: the cgroup v2 root read-only (the manifest mounts it so),
/// no new privileges, and the manifest's capabilities and no others.
fn as_in_the_pod() -> Launcher {
    let script = r#"root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts) &&
        mount -o bind,ro "$root" "$root" &&
        exec setpriv --no-new-privs --inh-caps -all --bounding-set "-all,$0" "$@""#;
    Launcher::Wrapped(vec!["sh".into(), "-c".into(), script.into(), manifest_capabilities()])
}

/// The daemon runs as [`as_in_the_pod`] meant: as many effective
/// capabilities as the manifest adds, no new privileges, cgroup v2 read-only.
fn assert_as_in_the_pod(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_string();
    let effective = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    let wanted = manifest_capabilities().split(',').count() as u32;
    assert_eq!((effective.count_ones(), field("NoNewPrivs:").as_str()), (wanted, "1"), "{status}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    // The last mount of it is the one on top.
    let cgroup2 = mounts.lines().rfind(|l| l.split(' ').nth(2) == Some("cgroup2")).unwrap();
    assert!(cgroup2.split(' ').nth(3).unwrap().split(',').any(|o| o == "ro"), "{cgroup2}");
}

/// Polls until the class `bulk` has `rate` (bits/s); how long that took.
fn wait_for_rate(daemon: &Daemon, rate: u64, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(5);
    loop {
        if class(&classes(daemon), "bulk").rate_bps == rate {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "no reload to {rate} bit/s within 5 s:\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_configmap_update_reloads_the_daemon_by_itself() {
    require_root!();
    let sandbox = Sandbox::new("k8s").unwrap();
    let mut daemon = Daemon::prepare(&sandbox, shaper(), "").unwrap();
    let mut volume = ConfigMapVolume::new(&daemon.dir().join("configmap")).unwrap();
    volume.write(&[("shaper.toml", &sandbox_config(&sandbox, "10mbit"))]).unwrap();
    daemon.config = volume.path("shaper.toml");
    daemon.start_prepared(as_in_the_pod()).unwrap();
    let pid = daemon.status().unwrap().pid;
    assert_as_in_the_pod(pid);
    let _server = IperfServer::start(&sandbox.b, Sandbox::ADDR_B4, 5201).unwrap();
    let client = spawn_client(&sandbox.a, Sandbox::ADDR_B4, 5201, &["-t", "22"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let mut report = vec![format!("10 Mbit/s: {:.2}", htb_rate(&daemon, "bulk", 2.0) / MBIT)];

    // Two updates, each seen by the watch the previous one re-armed.
    for mbit in [20, 5] {
        let swapped = Instant::now();
        volume.write(&[("shaper.toml", &sandbox_config(&sandbox, &format!("{mbit}mbit")))]).unwrap();
        let took = wait_for_rate(&daemon, mbit * 1_000_000, swapped);
        // About 0.2 s when idle; the bound leaves room for a loaded CI machine.
        assert!(took < Duration::from_secs(5), "the reload took {took:?}:\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(500));
        let measured = htb_rate(&daemon, "bulk", 2.0);
        report.push(format!(
            "{mbit} Mbit/s: reloaded {} ms after the swap, {:.2}",
            took.as_millis(),
            measured / MBIT
        ));
        assert_near(&format!("after the swap to {mbit} Mbit/s"), measured, mbit as f64 * MBIT, 0.10);
    }

    // A swap to a config the loader refuses: the old one stays, and says why.
    let refused_at = Instant::now();
    volume.write(&[("shaper.toml", &sandbox_config(&sandbox, "5mbit").replace("rport", "rprot"))]).unwrap();
    let status = loop {
        let status = daemon.status().unwrap();
        if status.last_reload.as_ref().is_some_and(|r| !r.ok) {
            break status;
        }
        assert!(refused_at.elapsed() < Duration::from_secs(5), "no refused reload: {}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    let error = status.last_reload.unwrap().error.unwrap_or_default();
    assert!(error.contains("unknown attribute \"rprot\""), "{error}");
    assert!(error.starts_with(&volume.path("shaper.toml").display().to_string()), "{error}");
    assert_eq!(class(&classes(&daemon), "bulk").rate_bps, 5_000_000);
    let measured = htb_rate(&daemon, "bulk", 2.0);
    report.push(format!("refused: still {:.2}", measured / MBIT));
    assert_near("after the refused swap", measured, 5.0 * MBIT, 0.10);

    // The watch goes on: a good swap after the refused one, then an editor
    // that replaces the link with a file (write + rename), then a write in place.
    let swapped = Instant::now();
    volume.write(&[("shaper.toml", &sandbox_config(&sandbox, "8mbit"))]).unwrap();
    report.push(format!(
        "8 Mbit/s after the refusal: {} ms",
        wait_for_rate(&daemon, 8_000_000, swapped).as_millis()
    ));
    let saved = Instant::now();
    let temp = volume.dir().join(".shaper.toml.tmp");
    std::fs::write(&temp, sandbox_config(&sandbox, "12mbit")).unwrap();
    std::fs::rename(&temp, volume.path("shaper.toml")).unwrap();
    report.push(format!("editor save: {} ms", wait_for_rate(&daemon, 12_000_000, saved).as_millis()));
    let written = Instant::now();
    std::fs::write(volume.path("shaper.toml"), sandbox_config(&sandbox, "15mbit")).unwrap();
    report.push(format!("in place: {} ms", wait_for_rate(&daemon, 15_000_000, written).as_millis()));
    // A link to a file in another directory, then that file written in place:
    // seen only if the watch followed the link there.
    let elsewhere = ConfigMapVolume::new(&daemon.dir().join("elsewhere")).unwrap();
    std::fs::write(elsewhere.path("shaper.toml"), sandbox_config(&sandbox, "6mbit")).unwrap();
    let link = volume.dir().join(".link.tmp");
    std::os::unix::fs::symlink(elsewhere.path("shaper.toml"), &link).unwrap();
    let linked = Instant::now();
    std::fs::rename(&link, volume.path("shaper.toml")).unwrap();
    report.push(format!("a new link: {} ms", wait_for_rate(&daemon, 6_000_000, linked).as_millis()));
    let written = Instant::now();
    std::fs::write(elsewhere.path("shaper.toml"), sandbox_config(&sandbox, "7mbit")).unwrap();
    report
        .push(format!("its target in place: {} ms", wait_for_rate(&daemon, 7_000_000, written).as_millis()));

    // Kernel memory the daemon's maps take (the manifest's memory figures).
    let memlock: u64 = daemon
        .pinned()
        .iter()
        .filter(|p| p.contains("/maps/"))
        .filter_map(|p| {
            let path = daemon.pins.join(p);
            let out =
                shaper_testkit::sandbox::run("bpftool", &["-j", "map", "show", "pinned", path.to_str()?])
                    .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["bytes_memlock"].as_u64()
        })
        .sum();
    report.push(format!("maps: {:.1} MiB", memlock as f64 / 1048576.0));

    assert_eq!(daemon.status().unwrap().pid, pid, "the same daemon throughout");
    let run = finish_client(client).unwrap();
    println!(
        "ConfigMap updates: {}; iperf3 {:.2} Mbit/s overall",
        report.join("; "),
        run.received_bps / MBIT
    );
}
