//! The parts of the `shaper` command beyond its arguments and dispatch.

pub(crate) mod check;
pub(crate) mod print;
