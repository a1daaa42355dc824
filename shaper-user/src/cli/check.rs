//! `shaper check`: validate a config file as the daemon would read it on
//! this host, and summarise its classes and rule table.

use std::path::Path;

use anyhow::Result;
use shaper_user::{
    cgroups::{self, Cgroups},
    config, plan,
    rules::SystemEnv,
    table::Table,
    tc,
    units::format_rate,
};

pub(crate) fn check(path: &Path) -> Result<()> {
    let conf = config::load(path, &SystemEnv::load().env())?;
    if let Ok(netlink) = tc::Netlink::open() {
        conf.check_interfaces_exist(|name| tc::link_by_name(&netlink, name).ok().flatten().is_some())?;
    }
    // Cgroup and unit names resolve against this host's hierarchy, if it has one.
    let ids = conf.class_ids_in_file_order();
    let compiled = match cgroups::v2_root() {
        Ok(root) => conf.compile_rules(&ids, &Cgroups::new(root))?,
        Err(_) => conf.compile_rules(&ids, &shaper_user::rules::compile::NoCgroups)?,
    };
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
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
