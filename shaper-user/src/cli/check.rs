//! `shaper check`: validate a config file as the daemon would read it on
//! this host, changing nothing, and summarise its classes and rule table.
//! Anyone may run it (an editor's or a config manager's validate step); what
//! only root can read (the pin directory, see [`preflight`]) is checked as
//! root and skipped otherwise, in a line that says so. A problem is one line
//! on stderr, `shaper: FILE:LINE:COL: reason` where it has a place in the file.
//! `--against-running` asks the running daemon what a reload of the file
//! would change instead (see `super::explain`).

use std::path::Path;

use anyhow::{Context as _, Result};
use shaper_user::{
    cgroups::{self, Cgroups},
    config::{self, Config},
    pins::PinPlace,
    plan,
    preflight::{self, HostReport},
    rules::SystemEnv,
    table::Table,
    tc,
    units::format_rate,
};

pub(crate) fn check(path: &Path) -> Result<()> {
    let conf = config::load(path, &SystemEnv::load().env())?;
    let netlink = tc::Netlink::open().context("opening rtnetlink to look up the interfaces")?;
    conf.check_interfaces_exist(|name| tc::link_by_name(&netlink, name).ok().flatten().is_some())?;
    // Cgroup and unit names resolve against this host's hierarchy, if it has one.
    let ids = conf.class_ids_in_file_order();
    let compiled = match cgroups::v2_root() {
        Ok(root) => conf.compile_rules(&ids, &Cgroups::new(root))?,
        Err(_) => conf.compile_rules(&ids, &shaper_user::rules::compile::NoCgroups)?,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let host = if unsafe { libc::geteuid() } == 0 { Some(preflight::host(&conf, &netlink)?) } else { None };
    println!("{}: ok", path.display());
    for iface in &conf.interfaces {
        let ingress = iface.ingress_bps.map_or_else(|| "not shaped".to_string(), format_rate);
        println!("interface {}: egress {}, ingress {}", iface.name, format_rate(iface.egress_bps), ingress);
        let Some(egress) = plan::plan(&conf, &ids, iface, plan::Direction::Egress, 1500) else { continue };
        let mut table = Table::new(&[
            ("CLASS", false),
            ("CLASSID", false),
            ("PRIO", true),
            ("RATE", true),
            ("CEIL", true),
            ("MATCH", false),
        ]);
        for class in &egress.classes {
            let conf_class = conf.class(&class.name);
            let mut name = class.name.clone();
            if class.index == egress.default_class {
                name.push_str(" (default)");
            }
            let rule =
                conf_class.and_then(|c| c.rule.as_ref()).map_or_else(|| "-".to_string(), ToString::to_string);
            table.row(vec![
                name,
                tc::format_handle(shaper_common::classid_of(u32::from(class.index))),
                class.priority.to_string(),
                format_rate(class.rate_bps),
                format_rate(class.ceil_bps),
                rule,
            ]);
        }
        print!("{}", indent(&table.render()));
    }
    let userspace = compiled.nodes.iter().filter(|n| n.op == shaper_common::OP_USERSPACE).count();
    println!(
        "rule table: {} kernel tests (of {}){}",
        compiled.nodes.len(),
        shaper_common::MAX_RULE_NODES,
        if userspace > 0 {
            format!(", {userspace} of them left to the daemon (exe, args, parent, ancestor, patterns)")
        } else {
            String::new()
        }
    );
    match host {
        Some(report) => println!("{}", host_line(&conf, &report)),
        None => println!("{}", skipped_line(&conf)),
    }
    Ok(())
}

/// What the root checks found, in one line.
fn host_line(conf: &Config, report: &HostReport) -> String {
    let pin_dir = conf.daemon.pin_dir.display();
    let mut line = match report.pin_place {
        PinPlace::OnBpffs => format!("host: pin directory {pin_dir} on a BPF filesystem"),
        PinPlace::Unmounted => format!(
            "host: pin directory {pin_dir} (no BPF filesystem at {} yet: the daemon mounts one)",
            shaper_user::pins::BPFFS
        ),
    };
    if !report.free.is_empty() {
        line.push_str(&format!("; root qdiscs and IFB names free or shaper's on {}", report.free.join(", ")));
    }
    if !report.absent.is_empty() {
        line.push_str(&format!("; absent, shaped when they appear: {}", report.absent.join(", ")));
    }
    line
}

/// The root checks, named, for a user who cannot run them.
fn skipped_line(conf: &Config) -> String {
    let names: Vec<&str> = conf.interfaces.iter().map(|i| i.name.as_str()).collect();
    format!(
        "not root: skipped checking that the pin directory {} is on a BPF filesystem and that the root \
         qdiscs and IFB names of {} are free or shaper's (only root can read the pin directory)",
        conf.daemon.pin_dir.display(),
        names.join(", ")
    )
}

/// `shaper check --config F --against-running`: the running daemon reads F
/// and says what a reload of it would change, changing nothing (its errors
/// are the reload's: file:line:col).
pub(crate) fn against_running(path: &Path, socket: Option<&Path>, json: bool) -> Result<()> {
    let file = std::fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (socket, _) = super::socket::resolve(socket, Some(&file), Path::new(config::DEFAULT_CONFIG))?;
    let dry = shaper_user::control::client::dry_run(&socket, Some(&file))?;
    super::explain::print_dry_run(&dry, json)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
