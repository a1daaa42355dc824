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
    /// A snapshot of the flow map.
    fn flows(&self) -> Vec<(FlowKey, FlowValue)>;
    fn flow(&self, key: &FlowKey) -> Option<FlowValue>;
    fn insert_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DatapathError>;
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DatapathError>;
    /// The daemon's answers to the userspace tests, per process.
    fn set_proc_tests(&mut self, tgid: u32, tests: &ProcTests) -> Result<(), DatapathError>;
    fn proc_tests_pids(&self) -> Vec<u32>;
    fn remove_proc_tests(&mut self, tgid: u32) -> Result<(), DatapathError>;
    /// Owner records: of one socket, and of bound ports.
    fn owner(&self, cookie: u64) -> Option<Owner>;
    fn listeners(&self) -> Vec<(ListenKey, Owner)>;
    fn remove_listener(&mut self, key: &ListenKey) -> Result<(), DatapathError>;
}

impl Tables for Datapath {
    fn rules_gen(&self) -> u32 {
        Datapath::rules_gen(self)
    }
    fn write_rules(&mut self, compiled: &Compiled, flags: u32) -> Result<u32, DatapathError> {
        self.set_flags(flags);
        self.set_rules(&compiled.nodes)
    }
    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        Datapath::flows(self)
    }
    fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        Datapath::flow(self, key)
    }
    fn insert_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DatapathError> {
        Datapath::insert_flow(self, key, value)
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
    fn listeners(&self) -> Vec<(ListenKey, Owner)> {
        Datapath::listeners(self)
    }
    fn remove_listener(&mut self, key: &ListenKey) -> Result<(), DatapathError> {
        Datapath::remove_listener(self, key)
    }
}
