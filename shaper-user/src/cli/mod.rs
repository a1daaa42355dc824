//! The parts of the `shaper` command beyond its arguments and dispatch.

pub(crate) mod args;
pub(crate) mod check;
pub(crate) mod conns;
pub(crate) mod exit;
pub(crate) mod explain;
pub(crate) mod print;
pub(crate) mod socket;
pub(crate) mod top;
pub(crate) mod usage;
pub(crate) mod watch;
