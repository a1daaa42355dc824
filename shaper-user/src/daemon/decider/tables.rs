//! The kernel tables the decider reads and writes, as a trait: the daemon
//! passes its [`Datapath`], unit tests a table in memory.

use shaper_common::{FlowKey, FlowValue, ListenKey, Owner, ProcTests};

use crate::{
    datapath::{Datapath, DatapathError},
    rules::compile::Compiled,
};

/// What the decider needs of the classifier's maps.
pub trait Tables {
    /// The rule generation in force (0: no rules yet).
    fn rules_gen(&self) -> u32;
    /// Writes a rule table and the `SETTING_*` flags with it; returns its generation.
    fn write_rules(&mut self, compiled: &Compiled, flags: u32) -> Result<u32, DatapathError>;
    /// Every flow entry, in batches (no snapshot of one instant: see `datapath::batch`).
    fn for_each_flow(&self, visit: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<(), DatapathError>;
    fn flow(&self, key: &FlowKey) -> Option<FlowValue>;
    fn insert_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DatapathError>;
    /// Enters a flow unless the classifier has one for it already (returns false then).
    fn adopt_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<bool, DatapathError>;
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DatapathError>;
    /// The daemon's answers to the userspace tests, per process.
    fn set_proc_tests(&mut self, tgid: u32, tests: &ProcTests) -> Result<(), DatapathError>;
    fn proc_tests_pids(&self) -> Vec<u32>;
    fn remove_proc_tests(&mut self, tgid: u32) -> Result<(), DatapathError>;
    /// Owner records: of one socket, and of one bound port.
    fn owner(&self, cookie: u64) -> Option<Owner>;
    /// Cookie of the network namespace whose bound ports count (`ListenKey::netns`).
    fn netns(&self) -> u64;
    fn listener(&self, key: &ListenKey) -> Option<Owner>;
    /// The flows whose decided class is kept (KEPT_FLOWS).
    fn kept_flows(&self) -> Vec<FlowKey>;
    /// Forgets the kept decision of flow `key` if FLOWS has no entry for it.
    fn forget_kept_if_evicted(&mut self, key: &FlowKey) -> Result<(), DatapathError>;
}

impl Tables for Datapath {
    fn rules_gen(&self) -> u32 {
        Datapath::rules_gen(self)
    }
    fn write_rules(&mut self, compiled: &Compiled, flags: u32) -> Result<u32, DatapathError> {
        self.set_flags(flags);
        self.set_rules(compiled)
    }
    fn for_each_flow(&self, visit: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<(), DatapathError> {
        Datapath::for_each_flow(self, visit).map(|_| ())
    }
    fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        Datapath::flow(self, key)
    }
    fn insert_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DatapathError> {
        Datapath::insert_flow(self, key, value)
    }
    fn adopt_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<bool, DatapathError> {
        Datapath::adopt_flow(self, key, value)
    }
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DatapathError> {
        Datapath::remove_flow(self, key)
    }
    fn set_proc_tests(&mut self, tgid: u32, tests: &ProcTests) -> Result<(), DatapathError> {
        Datapath::set_proc_tests(self, tgid, tests)
    }
    fn proc_tests_pids(&self) -> Vec<u32> {
        Datapath::proc_tests_pids(self)
    }
    fn remove_proc_tests(&mut self, tgid: u32) -> Result<(), DatapathError> {
        Datapath::remove_proc_tests(self, tgid)
    }
    fn owner(&self, cookie: u64) -> Option<Owner> {
        Datapath::owner(self, cookie)
    }
    fn netns(&self) -> u64 {
        Datapath::netns(self)
    }
    fn listener(&self, key: &ListenKey) -> Option<Owner> {
        Datapath::listener(self, key)
    }
    fn kept_flows(&self) -> Vec<FlowKey> {
        Datapath::kept_flows(self)
    }
    fn forget_kept_if_evicted(&mut self, key: &FlowKey) -> Result<(), DatapathError> {
        Datapath::forget_kept_if_evicted(self, key)
    }
}
