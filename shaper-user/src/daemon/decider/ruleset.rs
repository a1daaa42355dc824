//! The rules in force, compiled once per change of the config: the kernel's
//! table and what the daemon needs to decide with them.

use shaper_common::{rules::eval::Verdict, FlowKey};

use crate::{
    classids::ClassIds,
    config::{Config, ConfigError},
    process::Needs,
    rules::{
        self,
        compile::{CgroupIndex, Compiled},
        pred::{Atom, ProcessFacts},
        Pred,
    },
};

/// The classes' rules in file order with their class indices, and their table.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<(u16, Pred)>,
    pub compiled: Compiled,
    /// What of /proc the rules need beyond the owner record.
    pub needs: Needs,
    /// Some rule tests the process behind a connection.
    pub process: bool,
    /// Some rule tests cgroups or units (their ids change: recompiled each scan).
    pub cgroups: bool,
}

impl RuleSet {
    /// Compiles the rules of `config` with class indices `ids`.
    pub fn compile(config: &Config, ids: &ClassIds, index: &dyn CgroupIndex) -> Result<Self, ConfigError> {
        let compiled = config.compile_rules(ids, index)?;
        let rules: Vec<(u16, Pred)> = config.rules(ids).into_iter().map(|(i, p)| (i, p.clone())).collect();
        let needs = Needs::of(rules.iter().map(|(_, p)| p));
        let process = rules.iter().any(|(_, p)| p.any_atom(&|a| a.is_process()));
        let cgroups =
            rules.iter().any(|(_, p)| p.any_atom(&|a| matches!(a, Atom::Cgroup { .. } | Atom::Unit(_))));
        Ok(Self { rules, compiled, needs, process, cgroups })
    }

    /// The table compiled again against the cgroups as they are now, if that
    /// changed it (a unit restarted with a new cgroup id).
    pub fn recompiled(&self, index: &dyn CgroupIndex) -> Option<Compiled> {
        let refs: Vec<(u16, &Pred)> = self.rules.iter().map(|(i, p)| (*i, p)).collect();
        match rules::compile::compile(&refs, index) {
            Ok(compiled) if compiled != self.compiled => Some(compiled),
            Ok(_) => None,
            Err(e) => {
                log::warn!("compiling the rules again: {e}");
                None
            }
        }
    }

    /// The class every rule gives a flow, knowing the process behind it: a
    /// class index or `CLASS_DEFAULT`.
    pub fn class_of(&self, key: &FlowKey, process: Option<&ProcessFacts>) -> u16 {
        self.verdict_of(key, process).class
    }

    /// The same with the verdict's flags: provisional when a fact that could
    /// not be read (the process exited first) decided it, or could have.
    pub fn verdict_of(&self, key: &FlowKey, process: Option<&ProcessFacts>) -> Verdict {
        self.compiled.decide(key, process)
    }
}
