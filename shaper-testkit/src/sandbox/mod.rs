//! Throw-away network sandboxes for the tests, the demo and the benchmarks.
//!
//! A [`Sandbox`] is two network namespaces joined by a veth pair, with addresses
//! from the benchmarking ranges (198.18.0.0/15 and fd00::/8). Every name carries
//! the process id and a counter, so parallel runs never collide, and dropping the
//! sandbox deletes both namespaces (which destroys the veth pair, its qdiscs and
//! its tc programs), also when a test fails and unwinds.
//!
//! Commands run inside a namespace through `nsenter --net=…`, which keeps the
//! caller's mount namespace (unlike `ip netns exec`, which remounts /sys and
//! hides /sys/fs/bpf).

mod bpffs;
mod cgroup;
mod daemon;
mod iperf;
pub mod raw;
mod sshd;
mod stream;
mod tcx;

pub use bpffs::BpfFs;
pub use cgroup::{Cgroup, Programs, TestUser};
pub use daemon::{Daemon, Launcher};
pub use iperf::{finish_client, run_client, spawn_client, spawn_client_cmd, IperfResult, IperfServer};
pub use sshd::{keygen, Sshd};
pub use stream::Stream;
pub use tcx::TcxPrograms;

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Daemon(String),
    /// A control request failed (a refusal carries the daemon's reason).
    #[error(transparent)]
    Control(#[from] shaper_user::control::client::ClientError),
    #[error("iperf3: {0}")]
    Iperf(String),
    #[error("{action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Runs `program args…` and fails with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output, SandboxError> {
    output(Command::new(program).args(args), format!("{program} {}", args.join(" ")))
}

/// Runs `cmd` to completion; `shown` names it in errors.
fn output(cmd: &mut Command, shown: String) -> Result<Output, SandboxError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SandboxError::Spawn { command: shown.clone(), source })?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(SandboxError::Command { command: shown, detail: format!("{} ({detail})", out.status) });
    }
    Ok(out)
}

/// One network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self, SandboxError> {
        run("ip", &["netns", "add", name])?;
        let ns = Self { name: name.to_string() };
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        // No duplicate address detection: a fresh link-local address would stay
        // tentative for a second or two and delay the first IPv6 packets.
        let no_dad = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"];
        ns.run("sysctl", &[&["-q", "-w"][..], &no_dad].concat())?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// A command that runs `program` inside this namespace as user `uid`/`gid`.
    pub fn command_as(&self, program: &str, uid: u32, gid: u32) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(format!("--setuid={uid}"))
            .arg(format!("--setgid={gid}"))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args…` inside the namespace and fails with its stderr when it
    /// exits non-zero.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output, SandboxError> {
        output(self.command(program).args(args), format!("[{}] {program} {}", self.name, args.join(" ")))
    }

    /// Starts `program args…` inside the namespace in the background.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Child, SandboxError> {
        self.command(program).args(args).stdin(Stdio::null()).spawn().map_err(|source| SandboxError::Spawn {
            command: format!("[{}] {program} {}", self.name, args.join(" ")),
            source,
        })
    }

    /// Moves the calling thread into this namespace. Sockets the thread opens
    /// afterwards (netlink included) belong to the namespace for their lifetime.
    /// Use it from a thread of its own: the thread never returns to the host namespace.
    pub fn enter_current_thread(&self) -> Result<(), SandboxError> {
        Self::enter_path(&self.path())
    }

    /// [`Netns::enter_current_thread`] by the namespace's path (for threads
    /// that do not borrow the namespace).
    pub fn enter_path(path: &std::path::Path) -> Result<(), SandboxError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| SandboxError::Enter { name: name.clone(), source })?;
        // SAFETY: setns on a valid namespace fd affects only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(SandboxError::Enter { name, source: io::Error::last_os_error() });
        }
        Ok(())
    }
}

impl Netns {
    /// Names of the BPF programs attached to `dev`'s tc hooks (tcx links on
    /// either direction, and cls_bpf filters on a clsact qdisc), asked of the kernel.
    pub fn tc_programs(&self, dev: &str) -> Result<Vec<String>, SandboxError> {
        use aya::programs::{tc::SchedClassifier, TcAttachType};
        let tcx = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<Vec<String>, SandboxError> {
                    self.enter_current_thread()?;
                    let mut names = Vec::new();
                    for direction in [TcAttachType::Egress, TcAttachType::Ingress] {
                        let (_, programs) = SchedClassifier::query_tcx(dev, direction).map_err(|e| {
                            SandboxError::Daemon(format!("querying the tcx programs of {dev}: {e}"))
                        })?;
                        names.extend(programs.iter().map(|p| p.name_as_str().unwrap_or("?").to_string()));
                    }
                    Ok(names)
                })
                .join()
                .unwrap_or_else(|_| Err(SandboxError::Daemon("tcx query thread panicked".into())))
        });
        let mut names = tcx?;
        for direction in ["egress", "ingress"] {
            let out = self.run("tc", &["filter", "show", "dev", dev, direction])?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.split_whitespace().find(|w| w.starts_with("tc_")) {
                    names.push(name.split(':').next().unwrap_or(name).to_string());
                }
            }
        }
        Ok(names)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            log::warn!("sandbox cleanup: {e}");
        }
    }
}

/// Two namespaces, `a` (where shaper runs) and `b` (the far end), joined by a veth pair.
#[derive(Debug)]
pub struct Sandbox {
    /// The shaped side: the daemon, its interface `dev_a` and the traffic clients live here.
    pub a: Netns,
    /// The far side: servers live here.
    pub b: Netns,
    /// Name of the veth end in `a`.
    pub dev_a: String,
    /// Name of the veth end in `b`.
    pub dev_b: String,
    /// Unique tag of this sandbox, usable for other per-run names (sockets, pins).
    pub tag: String,
    /// The sandbox's own cgroup: the daemon's socket hooks attach here, and
    /// [`Sandbox::client`] starts processes in it.
    pub cgroup: Cgroup,
}

impl Sandbox {
    /// The veth end in `a`: the interface shaper shapes (config/demo.toml names it).
    pub const DEV_A: &'static str = "shp-a";
    pub const DEV_B: &'static str = "shp-b";
    pub const ADDR_A4: &'static str = "198.18.0.1";
    pub const ADDR_B4: &'static str = "198.18.0.2";
    pub const ADDR_A6: &'static str = "fd00:5ba::1";
    pub const ADDR_B6: &'static str = "fd00:5ba::2";

    /// Creates the pair. `label` (a few lowercase letters) goes into every name.
    pub fn new(label: &str) -> Result<Self, SandboxError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{label}{}x{n}", std::process::id());
        let a = Netns::create(&format!("shp-{tag}-a"))?;
        let b = Netns::create(&format!("shp-{tag}-b"))?;
        // Interface names are per namespace, so fixed names never collide.
        let dev_a = Self::DEV_A.to_string();
        let dev_b = Self::DEV_B.to_string();
        let cgroup = Cgroup::create(&tag)?;
        let sandbox = Self { a, b, dev_a, dev_b, tag, cgroup };
        sandbox.add_link()?;
        sandbox.configure_link()?;
        Ok(sandbox)
    }

    /// Creates the veth pair (down, without addresses): `dev_a` in `a`, `dev_b` in `b`.
    pub fn add_link(&self) -> Result<(), SandboxError> {
        let (a, b) = (self.a.name(), self.b.name());
        run(
            "ip",
            &["-n", a, "link", "add", &self.dev_a, "type", "veth", "peer", "name", &self.dev_b, "netns", b],
        )?;
        Ok(())
    }

    /// Deletes the veth pair (both ends go), as when a USB NIC is unplugged or
    /// a tunnel goes down; [`Sandbox::add_link`] and
    /// [`Sandbox::configure_link`] bring it back (with new interface indices).
    pub fn delete_link(&self) -> Result<(), SandboxError> {
        run("ip", &["-n", self.a.name(), "link", "del", &self.dev_a])?;
        Ok(())
    }

    /// Gives the pair its addresses, brings it up, and waits until both
    /// families answer.
    pub fn configure_link(&self) -> Result<(), SandboxError> {
        for (ns, dev, v4, v6) in [
            (&self.a, &self.dev_a, Self::ADDR_A4, Self::ADDR_A6),
            (&self.b, &self.dev_b, Self::ADDR_B4, Self::ADDR_B6),
        ] {
            run("ip", &["-n", ns.name(), "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            run("ip", &["-n", ns.name(), "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            run("ip", &["-n", ns.name(), "link", "set", dev, "up"])?;
        }
        // Ready when both families answer (the first neighbour resolution after
        // a link comes up can take a second).
        for addr in [Self::ADDR_B4, Self::ADDR_B6] {
            let mut tries = 0;
            while self.a.run("ping", &["-c", "1", "-W", "1", addr]).is_err() {
                tries += 1;
                if tries == 5 {
                    return Err(SandboxError::Command {
                        command: format!("ping {addr}"),
                        detail: "the far end of the sandbox does not answer".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// A command that runs `program` in namespace `a`, inside the sandbox's cgroup.
    pub fn client(&self, program: &str) -> Result<Command, SandboxError> {
        self.client_in(&self.cgroup, program)
    }

    /// Likewise, inside `cgroup` (the sandbox's, or one below it).
    pub fn client_in(&self, cgroup: &Cgroup, program: &str) -> Result<Command, SandboxError> {
        let mut cmd = self.a.command(program);
        cgroup.enter(&mut cmd)?;
        Ok(cmd)
    }

    /// Likewise, as `user`.
    pub fn client_as(&self, user: &TestUser, program: &str) -> Result<Command, SandboxError> {
        let mut cmd = self.a.command_as(program, user.uid, user.gid);
        self.cgroup.enter(&mut cmd)?;
        Ok(cmd)
    }
}
