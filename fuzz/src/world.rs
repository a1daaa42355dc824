//! The host the targets pretend to run on: its services, accounts and cgroup
//! tree, and random flows, processes and `match` rules drawn from them.

use shaper_common::{FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use shaper_user::{
    accounts::StaticAccounts,
    rules::{
        compile::{CgroupIndex, Found},
        pred::ProcessFacts,
        Env,
    },
    services::Services,
};

use crate::Rng;

const USERS: &[(&str, u32)] = &[("root", 0), ("backup", 34), ("alice", 1000), ("nobody", 65534)];
const GROUPS: &[(&str, u32)] = &[("root", 0), ("users", 100)];

pub struct World {
    pub services: Services,
    pub accounts: StaticAccounts,
    pub tree: CgroupTree,
}

impl World {
    pub fn new() -> Self {
        Self {
            services: Services::parse(
                "ssh 22/tcp\ndomain 53/tcp\ndomain 53/udp\nhttp 80/tcp www\nhttps 443/tcp\nhttps 443/udp\n",
            ),
            accounts: StaticAccounts::new(USERS, GROUPS),
            tree: CgroupTree::standard(),
        }
    }

    pub fn env(&self) -> Env<'_> {
        Env { services: &self.services, accounts: &self.accounts }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// A fixed cgroup tree: ids are positions in the list, plus one.
pub struct CgroupTree(pub Vec<&'static str>);

impl CgroupTree {
    fn standard() -> Self {
        Self(vec![
            "/",
            "/system.slice",
            "/system.slice/sshd.service",
            "/system.slice/backup.service",
            "/user.slice",
            "/user.slice/user-1000.slice",
            "/user.slice/user-1000.slice/user@1000.service",
            "/user.slice/user-1000.slice/user@1000.service/app.slice",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service",
            "/deep.slice",
            "/deep.slice/a",
            "/deep.slice/a/b",
            "/deep.slice/a/b/c",
            "/deep.slice/a/b/c/d",
            "/deep.slice/a/b/c/d/e",
            "/deep.slice/a/b/c/d/e/f",
            "/deep.slice/a/b/c/d/e/f/g",
            "/deep.slice/a/b/c/d/e/f/g/h",
            "/deep.slice/a/b/c/d/e/f/g/h/job.service",
        ])
    }

    fn level(path: &str) -> u32 {
        path.split('/').filter(|c| !c.is_empty()).count() as u32
    }

    /// The kernel's view of a process in `path`: its cgroup id and its
    /// ancestors by level (0 for levels it does not have or the tree lacks).
    pub fn ancestry(&self, path: &str) -> (u64, [u64; shaper_common::rules::CGROUP_LEVELS]) {
        let mut ancestors = [0u64; shaper_common::rules::CGROUP_LEVELS];
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (level, slot) in ancestors.iter_mut().enumerate().take(parts.len() + 1) {
            let prefix = format!("/{}", parts.get(..level).unwrap_or_default().join("/"));
            *slot = self.lookup(&prefix).map_or(0, |(id, _)| id);
        }
        (self.lookup(path).map_or(0, |(id, _)| id), ancestors)
    }
}

impl CgroupIndex for CgroupTree {
    fn lookup(&self, path: &str) -> Option<(u64, u32)> {
        self.0.iter().position(|p| *p == path).map(|i| (i as u64 + 1, Self::level(path)))
    }
    fn units(&self, unit: &str) -> Vec<Found> {
        // As the real index (cgroups.rs): only unit names name units.
        if !shaper_user::rules::pred::is_unit(unit) {
            return Vec::new();
        }
        self.0
            .iter()
            .filter(|p| p.rsplit('/').next() == Some(unit))
            .filter_map(|p| self.lookup(p).map(|(id, level)| Found { path: p.to_string(), id, level }))
            .collect()
    }
}

const NAMES: &[&str] = &["rsync", "iperf3", "sshd", "make", "job", "a-very-long-process-name", "", "r*", "ü"];

fn maybe<T>(rng: &mut Rng, value: T) -> Option<T> {
    (!rng.one_in(6)).then_some(value)
}

/// A process with random facts, some of them unknown (it exited mid-scan).
pub fn process(rng: &mut Rng, tree: &CgroupTree) -> ProcessFacts {
    let (uid, gid) =
        (*rng.pick(&[0u32, 34, 100, 1000, 1001, 65534, u32::MAX]), *rng.pick(&[0u32, 100, 1000, u32::MAX]));
    let (uid, gid) = (maybe(rng, uid), maybe(rng, gid));
    let cmd = rng.pick(NAMES).to_string();
    let args: Vec<String> =
        (0..rng.below(4)).map(|_| rng.pick(&["sync", "-a", "", "x y"]).to_string()).collect();
    let cgroup = rng.pick(&tree.0).to_string();
    let ancestors: Vec<String> = (0..rng.below(3)).map(|_| rng.pick(NAMES).to_string()).collect();
    ProcessFacts {
        pid: *rng.pick(&[1u32, 77, 4000, 4242, 4999, 5000, u32::MAX]),
        uid,
        gid,
        // The names the accounts give, as the daemon reads them (none for ids without one).
        user: uid.and_then(|u| USERS.iter().find(|(_, id)| *id == u)).map(|(n, _)| n.to_string()),
        group: gid.and_then(|g| GROUPS.iter().find(|(_, id)| *id == g)).map(|(n, _)| n.to_string()),
        exe: maybe(rng, format!("/usr/bin/{cmd}")),
        cmd: maybe(rng, cmd),
        args: maybe(rng, args),
        cgroup: maybe(rng, cgroup),
        ancestors: maybe(rng, ancestors),
    }
}

/// Addresses the rules below ask about, and some they do not.
const V4: &[[u8; 4]] = &[
    [198, 18, 0, 1],
    [198, 18, 0, 2],
    [198, 18, 1, 7],
    [198, 19, 255, 255],
    [10, 0, 0, 1],
    [0, 0, 0, 0],
    [255; 4],
];
const V6: &[[u8; 16]] = &[
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2],
    [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [0; 16],
    [0xff; 16],
];
pub const PORTS: &[u16] = &[0, 1, 22, 53, 80, 443, 873, 1023, 1024, 1500, 5201, 40000, 65535];

/// A random flow key, as the classifier builds it.
pub fn flow_key(rng: &mut Rng) -> FlowKey {
    let mut key =
        FlowKey { proto: *rng.pick(&[PROTO_TCP, PROTO_TCP, PROTO_UDP, 1, 58, 132]), ..FlowKey::default() };
    if key.proto == PROTO_TCP || key.proto == PROTO_UDP {
        key.lport = if rng.one_in(2) { *rng.pick(PORTS) } else { rng.next_u64() as u16 };
        key.rport = if rng.one_in(2) { *rng.pick(PORTS) } else { rng.next_u64() as u16 };
    }
    if rng.one_in(2) {
        key.family = FAMILY_V4;
        key.laddr[..4].copy_from_slice(&rng.pick(V4)[..]);
        key.raddr[..4].copy_from_slice(&rng.pick(V4)[..]);
    } else {
        key.family = FAMILY_V6;
        key.laddr = *rng.pick(V6);
        key.raddr = *rng.pick(V6);
    }
    key
}

/// Atoms of every kind the language has, with values at the edges.
fn atom(rng: &mut Rng) -> String {
    let port = |rng: &mut Rng| {
        rng.pick(&["0", "22", "80", "443", "873", "1024", "5201", "65535", "65536", "40000"]).to_string()
    };
    let cmp = |rng: &mut Rng| rng.pick(&["==", "!=", "<", "<=", ">", ">="]).to_string();
    let v4 = |rng: &mut Rng| {
        rng.pick(&["198.18.0.1", "198.18.1.7", "198.19.255.255", "10.0.0.1", "0.0.0.0", "255.255.255.255"])
            .to_string()
    };
    let v6 = |rng: &mut Rng| {
        rng.pick(&[
            "fd00::1",
            "fd00::1:2",
            "2001:db8::1",
            "::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:198.18.0.1",
        ])
        .to_string()
    };
    let text = |rng: &mut Rng| {
        rng.pick(&["rsync", "iperf*", "r?ync", "[a-z]*", "*", "", "a-very-long-process-name", "ü*", "\\\\*"])
            .to_string()
    };
    match rng.below(22) {
        0 => format!("rport {} {}", cmp(rng), port(rng)),
        1 => format!("lport {} {}", cmp(rng), port(rng)),
        2 => format!("rport in {}..{}", port(rng), port(rng)),
        3 => format!("lport in [{}, {}, {}]", port(rng), port(rng), port(rng)),
        4 => format!("raddr in {}/{}", v4(rng), rng.pick(&["0", "8", "15", "24", "31", "32", "33"])),
        5 => format!("raddr in {}/{}", v6(rng), rng.pick(&["0", "8", "64", "112", "127", "128", "129"])),
        6 => format!("laddr == {}", if rng.one_in(2) { v4(rng) } else { v6(rng) }),
        7 => format!("raddr in {}..{}", v4(rng), v4(rng)),
        8 => format!("proto == \"{}\"", rng.pick(&["tcp", "udp", "icmp", "sctp", "TCP"])),
        9 => format!(
            "uid {} {}",
            cmp(rng),
            rng.pick(&["0", "34", "1000", "65534", "4294967295", "4294967296"])
        ),
        10 => format!("user == \"{}\"", rng.pick(&["root", "alice", "backup", "nobody", "mallory"])),
        11 => format!("gid {} {}", cmp(rng), rng.pick(&["0", "100", "1000"])),
        12 => {
            format!("pid in {}..{}", rng.pick(&["1", "4000", "4999"]), rng.pick(&["1", "4999", "4294967295"]))
        }
        13 => format!("cmd {} \"{}\"", rng.pick(&["==", "~", "!="]), text(rng)),
        14 => format!(
            "cgroup {} \"{}\"",
            rng.pick(&["==", "~"]),
            rng.pick(&[
                "/system.slice/sshd.service",
                "/user.slice/*",
                "/",
                "/deep.slice/a/b/c/d/e/f/g/h/*",
                "/missing"
            ])
        ),
        15 => format!(
            "unit == \"{}\"",
            rng.pick(&[
                "backup.service",
                "job.service",
                "user@1000.service",
                "sshd.service",
                "missing.service"
            ])
        ),
        16 => format!(
            "exe {} \"{}\"",
            rng.pick(&["==", "~"]),
            rng.pick(&["/usr/bin/rs*", "/usr/bin/iperf3", "*"])
        ),
        17 => format!(
            "args[{}] {} \"{}\"",
            rng.pick(&["0", "1", "2", "4294967295"]),
            rng.pick(&["==", "~"]),
            text(rng)
        ),
        18 => format!("ancestor {} \"{}\"", rng.pick(&["==", "~"]), text(rng)),
        19 => format!("service == \"{}\"", rng.pick(&["https", "ssh", "domain", "www", "gopher"])),
        20 => format!("parent == \"{}\"", text(rng)),
        _ => rng.pick(&["true", "false"]).to_string(),
    }
}

/// A random `match`: atoms under `not`, in `and`/`or` chains, nested.
pub fn match_rule(rng: &mut Rng, depth: u32) -> String {
    let term = |rng: &mut Rng| -> String {
        match rng.below(8) {
            0 => format!("not {}", atom(rng)),
            1 if depth > 0 => format!("({})", match_rule(rng, depth - 1)),
            _ => atom(rng),
        }
    };
    let mut s = term(rng);
    for _ in 0..rng.below(4) {
        s.push_str(if rng.below(3) != 0 { " and " } else { " or " });
        s.push_str(&term(rng));
    }
    s
}
