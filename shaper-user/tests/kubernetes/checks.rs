//! What config/kubernetes/shaper.yaml must agree with: the config loader,
//! the systemd unit's capability set and timeout, and the image recipe. Each
//! check says what is wrong in a line of its own; no line means it agrees.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::model::{self, Container, Object, PodSpec, VolumeMount};

/// Where the daemon keeps its socket and pid file, its pins, and where
/// cgroup v2 is found (the defaults the manifest relies on).
const RUN_DIR: &str = "/run/shaper";
const BPFFS: &str = "/sys/fs/bpf";
const CGROUP: &str = "/sys/fs/cgroup";
/// What `shaper run` reads when no `--config` is given.
const DEFAULT_CONFIG: &str = "/etc/shaper/shaper.toml";
/// systemd's stop timeout when a unit sets none.
const SYSTEMD_STOP_TIMEOUT: u64 = 90;

/// The files checked against each other.
#[derive(Clone)]
pub struct Files {
    pub manifest: String,
    pub unit: String,
    pub containerfile: String,
}

impl Files {
    pub fn read() -> Self {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let read = |p: &str| {
            let path = config.join(p);
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        Self {
            manifest: read("kubernetes/shaper.yaml"),
            unit: read("shaper.service"),
            containerfile: read("kubernetes/Containerfile"),
        }
    }
}

/// Everything that does not agree, one line each.
pub fn problems(files: &Files) -> Vec<String> {
    let objects = match model::parse(&files.manifest) {
        Ok(o) => o,
        Err(e) => return vec![format!("the manifest does not parse: {e}")],
    };
    let mut out = Vec::new();
    let config_maps: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            Object::ConfigMap { metadata, data, .. } => Some((metadata, data)),
            _ => None,
        })
        .collect();
    let pods: Vec<_> = objects
        .iter()
        .filter_map(|o| match o {
            Object::DaemonSet { spec, metadata, .. } => Some((metadata, spec)),
            _ => None,
        })
        .collect();
    let ([(map_meta, data)], [(set_meta, daemon_set)]) = (config_maps.as_slice(), pods.as_slice()) else {
        return vec![format!("want one ConfigMap and one DaemonSet, found {config_maps:?} and {pods:?}")];
    };
    // A pod mounts ConfigMaps of its own namespace only.
    if map_meta.namespace != set_meta.namespace {
        out.push(format!(
            "the ConfigMap is in {:?}, the DaemonSet in {:?}",
            map_meta.namespace, set_meta.namespace
        ));
    }
    let pod = &daemon_set.template.spec;
    let [container] = pod.containers.as_slice() else {
        return vec![format!("want one container, found {}", pod.containers.len())];
    };
    let unit = Unit::parse(&files.unit);
    out.extend(unit.problems.iter().cloned());
    check_pod(&mut out, pod, daemon_set, &unit);
    check_capabilities(&mut out, container, &unit);
    check_mounts(&mut out, pod, container, &map_meta.name);
    check_config(&mut out, pod, container, data);
    check_image(&mut out, container, &files.containerfile);
    out
}

/// What the manifest takes from the systemd unit.
struct Unit {
    capabilities: BTreeSet<String>,
    stop_timeout_s: u64,
    problems: Vec<String>,
}

impl Unit {
    fn parse(text: &str) -> Self {
        let mut unit =
            Self { capabilities: BTreeSet::new(), stop_timeout_s: SYSTEMD_STOP_TIMEOUT, problems: vec![] };
        let mut bounded = false;
        for line in text.lines().map(str::trim) {
            if let Some(caps) = line.strip_prefix("CapabilityBoundingSet=") {
                bounded = true;
                for cap in caps.split_whitespace() {
                    match cap.strip_prefix("CAP_") {
                        Some(name) => {
                            unit.capabilities.insert(name.to_string());
                        }
                        None => unit.problems.push(format!("the unit's capability {cap:?} is not CAP_…")),
                    }
                }
            }
            if let Some(t) = line.strip_prefix("TimeoutStopSec=") {
                match t.trim_end_matches('s').parse() {
                    Ok(s) => unit.stop_timeout_s = s,
                    Err(_) => unit.problems.push(format!("the unit's TimeoutStopSec={t} is not in seconds")),
                }
            }
        }
        if !bounded {
            unit.problems.push("the unit sets no CapabilityBoundingSet".into());
        }
        unit
    }
}

fn check_pod(out: &mut Vec<String>, pod: &PodSpec, daemon_set: &model::DaemonSetSpec, unit: &Unit) {
    if !pod.host_network {
        out.push("hostNetwork is not on: the daemon would shape the pod's own network namespace".into());
    }
    if !pod.host_pid {
        out.push("hostPID is not on: the pids in owner records are the node's, /proc must be too".into());
    }
    if !pod.tolerations.iter().any(|t| t.key.is_none() && t.operator.as_deref() == Some("Exists")) {
        out.push("no toleration of every taint (operator: Exists, no key): some nodes go unshaped".into());
    }
    let strategy = &daemon_set.update_strategy;
    let surge = strategy.rolling_update.as_ref().map(|r| r.max_surge.clone());
    if strategy.kind != "RollingUpdate" || surge != Some(serde_norway::Value::from(0)) {
        out.push(format!(
            "updateStrategy {} with maxSurge {surge:?}: want RollingUpdate, maxSurge 0",
            strategy.kind
        ));
    }
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    if grace < unit.stop_timeout_s {
        out.push(format!(
            "terminationGracePeriodSeconds {grace} is shorter than the unit's TimeoutStopSec {}",
            unit.stop_timeout_s
        ));
    }
    let labels = &daemon_set.selector.match_labels;
    if labels.iter().any(|(k, v)| daemon_set.template.metadata.labels.get(k) != Some(v)) {
        out.push("the selector does not match the pod template's labels".into());
    }
}

fn check_capabilities(out: &mut Vec<String>, container: &Container, unit: &Unit) {
    let security = &container.security_context;
    if security.privileged != Some(false) {
        out.push(format!("privileged is {:?}, want false", security.privileged));
    }
    if security.allow_privilege_escalation != Some(false) {
        out.push(format!(
            "allowPrivilegeEscalation is {:?}, want false",
            security.allow_privilege_escalation
        ));
    }
    let caps = &security.capabilities;
    if caps.drop != ["ALL"] {
        out.push(format!("capabilities drop {:?}, want [\"ALL\"]", caps.drop));
    }
    let added: BTreeSet<String> =
        caps.add.iter().map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_string()).collect();
    if added.len() != caps.add.len() {
        out.push(format!("capabilities add {:?} names one twice", caps.add));
    }
    if added != unit.capabilities {
        out.push(format!(
            "capabilities add {added:?}, the unit's CapabilityBoundingSet {:?}",
            unit.capabilities
        ));
    }
}

/// The mount at `path` and its volume, if the volume exists.
fn mount_at<'a>(
    pod: &'a PodSpec,
    container: &'a Container,
    path: &str,
) -> Option<(&'a VolumeMount, &'a model::Volume)> {
    let mount = container.volume_mounts.iter().find(|m| m.mount_path == path)?;
    Some((mount, pod.volumes.iter().find(|v| v.name == mount.name)?))
}

fn check_mounts(out: &mut Vec<String>, pod: &PodSpec, container: &Container, config_map: &str) {
    for mount in &container.volume_mounts {
        if !pod.volumes.iter().any(|v| v.name == mount.name) {
            out.push(format!("the mount at {} names no volume ({})", mount.mount_path, mount.name));
        }
    }
    for (path, why) in [
        (BPFFS, "the pins must outlive the pod"),
        (CGROUP, "the socket hooks attach to the node's cgroup v2 root (hybrid nodes: its unified/)"),
        (RUN_DIR, "control socket and pid file"),
    ] {
        let host = mount_at(pod, container, path).and_then(|(_, v)| v.host_path.as_ref());
        if host.map(|h| h.path.as_str()) != Some(path) {
            out.push(format!("{path} is not the node's {path} ({why})"));
        }
    }
    let config_dir = Path::new(DEFAULT_CONFIG).parent().map(Path::to_string_lossy).unwrap_or_default();
    match mount_at(pod, container, &config_dir) {
        Some((mount, volume)) => {
            if volume.config_map.as_ref().map(|c| c.name.as_str()) != Some(config_map) {
                out.push(format!("{config_dir} is not the ConfigMap {config_map}"));
            }
            if let Some(sub) = &mount.sub_path {
                out.push(format!("{config_dir} mounts subPath {sub}: the kubelet never updates those"));
            }
        }
        None => out.push(format!("nothing is mounted at {config_dir}")),
    }
}

/// The config file `shaper run` reads, from the container's command.
fn config_path(command: &[String]) -> PathBuf {
    let at = command.iter().position(|a| a == "--config");
    PathBuf::from(at.and_then(|i| command.get(i + 1)).map_or(DEFAULT_CONFIG, String::as_str))
}

fn check_config(
    out: &mut Vec<String>,
    pod: &PodSpec,
    container: &Container,
    data: &std::collections::BTreeMap<String, String>,
) {
    let command = &container.command;
    if command.get(1).map(String::as_str) != Some("run") {
        out.push(format!("the command {command:?} does not run `shaper run`"));
    }
    let probe = container.readiness_probe.as_ref().map(|p| p.exec.command.clone()).unwrap_or_default();
    let binary = command.first().cloned().unwrap_or_default();
    if probe != [binary.clone(), "status".into()] {
        out.push(format!("the readiness probe runs {probe:?}, not `{binary} status`"));
    }
    let path = config_path(command);
    let mount = container.volume_mounts.iter().find(|m| path.starts_with(&m.mount_path));
    let from_map = mount.and_then(|m| pod.volumes.iter().find(|v| v.name == m.name)?.config_map.as_ref());
    let key = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(text) = data.get(&key).filter(|_| from_map.is_some()) else {
        return out.push(format!("the daemon reads {}, which is not a key of the ConfigMap", path.display()));
    };
    let env = shaper_user::rules::SystemEnv::load();
    let config = match shaper_user::config::parse(&path, text, &env.env()) {
        Ok(c) => c,
        Err(e) => return out.push(format!("the ConfigMap's config does not load: {e}")),
    };
    let d = &config.daemon;
    if !d.watch_config {
        out.push(
            "the ConfigMap's config does not set watch_config = true: updates would wait for a restart"
                .into(),
        );
    }
    // `shaper status` without arguments asks the default socket.
    if d.control_socket != Path::new(RUN_DIR).join("shaper.sock") {
        out.push(format!(
            "control_socket {} is not the one `shaper status` asks",
            d.control_socket.display()
        ));
    }
    let on_node = |p: &Path, dir: &str| p.starts_with(dir);
    if !on_node(&d.pid_file, RUN_DIR) {
        out.push(format!("pid_file {} is not under {RUN_DIR}", d.pid_file.display()));
    }
    if !on_node(&d.pin_dir, BPFFS) {
        out.push(format!("pin_dir {} is not under {BPFFS}", d.pin_dir.display()));
    }
    if d.cgroup.as_deref().is_some_and(|c| !on_node(c, CGROUP)) {
        out.push(format!("cgroup {:?} is not under {CGROUP}", d.cgroup));
    }
}

/// The stages of a Containerfile: (FROM line, its instructions).
fn stages(text: &str) -> Vec<(String, Vec<String>)> {
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match (line.strip_prefix("FROM "), stages.last_mut()) {
            (Some(from), _) => stages.push((from.to_string(), vec![])),
            (None, Some(stage)) => stage.1.push(line.to_string()),
            (None, None) => {}
        }
    }
    stages
}

fn check_image(out: &mut Vec<String>, container: &Container, containerfile: &str) {
    let stages = stages(containerfile);
    let [(build_from, build), (run_from, run)] = stages.as_slice() else {
        return out.push(format!("want a build and a runtime stage, found {} stages", stages.len()));
    };
    let Some((build_image, build_name)) = build_from.split_once(" AS ") else {
        return out.push(format!("the build stage is not named: FROM {build_from}"));
    };
    if !build_image.contains("/debian:") {
        out.push(format!("the build stage is not Debian: {build_image}"));
    }
    if !build.iter().any(|i| i == "RUN cargo xtask build") {
        out.push("the build stage does not run `cargo xtask build`".into());
    }
    if !(run_from.contains("/debian:") && run_from.ends_with("-slim")) {
        out.push(format!("the runtime stage is not a slim Debian: {run_from}"));
    }
    let workdir = build.iter().rev().find_map(|i| i.strip_prefix("WORKDIR ")).unwrap_or("/");
    let built = Path::new(workdir).join("target/release/shaper");
    let copy = format!("COPY --from={build_name} {} ", built.display());
    let installed = run.iter().find_map(|i| i.strip_prefix(&copy)).unwrap_or("(not copied)");
    let command = &container.command;
    if command.first().map(String::as_str) != Some(installed) {
        out.push(format!("the manifest runs {:?}, the image has the binary at {installed}", command.first()));
    }
    let entrypoint = run.iter().rev().find_map(|i| i.strip_prefix("ENTRYPOINT "));
    let cmd = run.iter().rev().find_map(|i| i.strip_prefix("CMD "));
    let json = |s: Option<&str>| serde_json::from_str::<Vec<String>>(s.unwrap_or("[]")).unwrap_or_default();
    let image_runs: Vec<String> = json(entrypoint).into_iter().chain(json(cmd)).collect();
    if &image_runs != command {
        out.push(format!("the image runs {image_runs:?} by default, the manifest {command:?}"));
    }
}
