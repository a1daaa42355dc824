//! shaper's test kit: what the tests, the benchmarks and the demo need and
//! the product does not. Dev-only (`publish = false`); shaper-user uses it as
//! a dev-dependency, the way aya keeps its integration-test crate apart.
//!
//! | module | what lives there |
//! |---|---|
//! | [`configmap`] | a ConfigMap volume written the way the kubelet does (symbolic-link swaps), for `watch_config` |
//! | [`sandbox`] | network namespaces joined by a veth pair, a cgroup of their own, a `shaper run` in them ([`sandbox::Daemon`]), iperf3, test users, raw AF_PACKET frames, BPF filesystems, real sshds for the deploy test |
//! | [`packets`] | hand-built frames (IPv4/IPv6, extension headers, TCP/UDP, broken variants) |
//! | [`testrun`] | BPF_PROG_TEST_RUN of a loaded classifier on such a frame |
//! | [`root`] | [`require_root!`]: a root test run without root says "skipped: needs root" and passes |
//!
//! Everything that touches the kernel needs root; every name carries the
//! process id and a counter, and everything is removed on drop, also when a
//! test fails and unwinds.

pub mod configmap;
pub mod packets;
pub mod root;
pub mod sandbox;
pub mod testrun;

pub use root::{is_root, root_or_skip};
pub use testrun::{TestRun, TestRunExt};
