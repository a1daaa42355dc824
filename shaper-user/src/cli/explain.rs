//! What `shaper explain` and the dry runs (`reload --dry-run`, `check
//! --against-running`) print: the daemon's replies for people, or as JSON.

use anyhow::Result;
use shaper_user::control::{
    explain::{ProcessExplained, RuleExplained, TestValue, TestedBy},
    DryRun, Explained, Origin,
};

use super::print::print_json;

pub(crate) fn print_explained(e: &Explained, json: bool) -> Result<()> {
    if json {
        return print_json(e);
    }
    match &e.id {
        Some(id) => println!("connection {id}: {}", e.flow),
        None => println!("a new connection: {}", e.flow),
    }
    if let (Some(class), Some(d)) = (&e.class, &e.decided) {
        let by = match d.by {
            Origin::Pinned => "pinned".to_string(),
            other => format!("decided by the {}", other.as_str()),
        };
        println!("  class {class}, {by} {}", d.when);
    }
    match &e.process {
        Some(p) => print_process(p),
        None => println!("  process: not known"),
    }
    println!("rules, in file order:");
    for (n, rule) in e.rules.iter().enumerate() {
        print_rule(n + 1, rule);
    }
    let by = e
        .matched
        .as_ref()
        .map_or_else(|| "no rule matched: the default class".to_string(), |m| format!("the rule of {m}"));
    println!(
        "verdict: {} ({by}){}",
        e.verdict,
        if e.provisional { ", provisional: a fact that is not known decided it" } else { "" }
    );
    for note in &e.notes {
        println!("note: {note}");
    }
    Ok(())
}

fn print_process(p: &ProcessExplained) {
    let id = |name: &Option<String>, num: Option<u32>| match (name, num) {
        (Some(n), Some(i)) => format!("{n} ({i})"),
        (None, Some(i)) => i.to_string(),
        _ => "unknown".to_string(),
    };
    println!(
        "  process {} {}, user {}, group {}",
        p.pid,
        p.cmd.as_deref().unwrap_or("(name unknown)"),
        id(&p.user, p.uid),
        id(&p.group, p.gid)
    );
    if let Some(exe) = &p.exe {
        println!("  exe {exe}");
    }
    if let Some(args) = &p.args {
        println!("  args {}", args.join(" "));
    }
    if let Some(cgroup) = &p.cgroup {
        let units =
            if p.units.is_empty() { String::new() } else { format!(" (units {})", p.units.join(", ")) };
        println!("  cgroup {cgroup}{units}");
    }
    if let Some(ancestors) = &p.ancestors {
        println!(
            "  ancestry {}",
            if ancestors.is_empty() { "none".to_string() } else { ancestors.join(" ← ") }
        );
    }
}

fn print_rule(n: usize, rule: &RuleExplained) {
    println!("  {n}. {}: {}  → {}", rule.class, rule.rule, rule.result.as_str());
    for t in &rule.tests {
        let by = match (t.by, t.value) {
            (TestedBy::Kernel, _) => "kernel".to_string(),
            (TestedBy::Daemon, TestValue::Unknown) => "daemon: could not tell".to_string(),
            (TestedBy::Daemon, v) => format!("kernel could not decide; the daemon answered {}", v.as_str()),
        };
        let read = if t.evaluated { "" } else { ", not evaluated" };
        let fact = if t.fact.is_empty() { String::new() } else { format!("{}; ", t.fact) };
        println!("       {:<7} {}  ({fact}{by}{read})", t.value.as_str(), t.test);
    }
}

pub(crate) fn print_dry_run(d: &DryRun, json: bool) -> Result<()> {
    if json {
        return print_json(d);
    }
    println!("dry run of {}: nothing was changed; a reload would do this:", d.config);
    let c = &d.changes;
    let mut any = false;
    for (what, list) in [
        ("classes added", &c.classes_added),
        ("classes removed", &c.classes_removed),
        ("interfaces added", &c.interfaces_added),
        ("interfaces removed", &c.interfaces_removed),
    ] {
        if !list.is_empty() {
            println!("  {what}: {}", list.join(", "));
            any = true;
        }
    }
    for change in &d.how {
        println!("  class {} changes: {}", change.class, change.how.join("; "));
        any = true;
    }
    if !any {
        println!("  no class or interface changes");
    }
    let moving: usize = d.moves.iter().map(|m| m.count).sum();
    println!("  connections that would change class: {moving} of {}", d.flows);
    for m in &d.moves {
        println!("    {} from {} to {}", m.count, m.from, m.to);
    }
    println!("  flows the daemon would decide again: {}", c.flows_reevaluated);
    if !d.restart_needed.is_empty() {
        println!("  take effect at the next start: {}", d.restart_needed.join(", "));
    }
    Ok(())
}
