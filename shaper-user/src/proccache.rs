//! Process facts read from /proc once and kept until the process changes.
//!
//! [`process::facts`] reads five to ten files under /proc/PID (more with
//! ancestors) every time it is asked. [`ProcCache::facts`] returns the same
//! [`ProcessFacts`] and reads them again only when the process is another one
//! or has changed. Whether it has is one read of /proc/PID/stat, made at most
//! once per `check_every` per process (not per socket, nor per event):
//!
//! - **another process under the same pid**: the start time (field 22)
//!   differs. Gone: the read fails, and the entry is dropped.
//! - **exec**: keeps pid and start time but gives the process a new memory
//!   image and, usually, a new name. The check compares the name (field 2)
//!   and the image's addresses: start and end of code, start of the stack,
//!   start and end of the arguments (fields 26–28, 48–49). With address space
//!   randomisation (the default) the stack and the arguments move at every
//!   exec, so an exec of the same program with other arguments is seen too.
//!   (Without randomisation, an exec of the same non-PIE program with
//!   arguments of the same length keeps every address and goes unseen until
//!   `max_age`. Readers without ptrace access to the process see the
//!   addresses as 0; root, the daemon, has it.)
//! - **a new parent** (the old one exited): field 4 changes; ancestors are
//!   read again.
//!
//! What changes without exec and without any of the above (a setuid, a move
//! to another cgroup, a process rewriting its own arguments as setproctitle
//! does, an ancestor renaming itself) is read again once the entry is
//! `max_age` old: that bounds how stale a fact can be. The name comes from
//! the stat read itself, so a `prctl(PR_SET_NAME)` is seen at the next check.
//!
//! The cache is bounded: when full it drops entries unused for `max_age`,
//! then the least recently used half. [`ProcCache::sweep`] drops entries
//! nobody asked for lately (exited processes among them).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use shaper_common::Owner;

use crate::{
    accounts::Accounts,
    cgroups::Cgroups,
    process::{self, Needs, ProcRead},
    rules::pred::ProcessFacts,
};

/// When entries are checked and read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// An entry checked less than this long ago is used as it is.
    pub check_every: Duration,
    /// An entry read this long ago is read again, changed or not.
    pub max_age: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Self { check_every: Duration::from_millis(100), max_age: Duration::from_secs(30) }
    }
}

/// Counts of what the cache did, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers from an entry without any read.
    pub hits: u64,
    /// Reads of /proc/PID/stat to check an entry or start one.
    pub checks: u64,
    /// Full reads of a process's facts.
    pub reads: u64,
    /// Full reads because the process exec'd (or renamed itself).
    pub execs: u64,
    /// Entries dropped because their process was gone or another one.
    pub gone: u64,
    /// Entries dropped to stay within the capacity, or by [`ProcCache::sweep`].
    pub evicted: u64,
}

/// What one read of /proc/PID/stat says about a process's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stat {
    /// Field 2; `None` when it is not UTF-8 (as `process::comm` reads it).
    comm: Option<String>,
    ppid: u32,
    start_time: u64,
    /// start_code, end_code, start_stack, arg_start, arg_end.
    image: [u64; 5],
}

impl Stat {
    fn read(root: &Path, pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read(root.join(pid.to_string()).join("stat")).ok()?)
    }

    /// "PID (NAME) STATE PPID …": the name may hold spaces and parentheses,
    /// so the fields after it follow the last ')'.
    fn parse(stat: &[u8]) -> Option<Self> {
        let open = stat.iter().position(|b| *b == b'(')?;
        let close = stat.iter().rposition(|b| *b == b')')?;
        let comm = std::str::from_utf8(stat.get(open + 1..close)?).ok().map(str::to_string);
        let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
        // `fields[i]` is field i + 3 of proc(5).
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        Some(Self {
            comm,
            ppid: field(4)? as u32,
            start_time: field(22)?,
            image: [field(26)?, field(27)?, field(28)?, field(48).unwrap_or(0), field(49).unwrap_or(0)],
        })
    }
}

struct Entry {
    stat: Stat,
    read: ProcRead,
    /// What `read` holds beyond the name and cgroup.
    had: Needs,
    had_ids: bool,
    read_at: Instant,
    checked_at: Instant,
    used_at: Instant,
}

/// Process facts by pid, checked against /proc at most once per `check_every`.
pub struct ProcCache {
    root: PathBuf,
    entries: HashMap<u32, Entry>,
    capacity: usize,
    freshness: Freshness,
    stats: CacheStats,
}

impl ProcCache {
    /// A cache of at most `capacity` processes, reading /proc.
    pub fn new(capacity: usize, freshness: Freshness) -> Self {
        Self::with_root(PathBuf::from(process::PROC), capacity, freshness)
    }

    /// The same over another /proc tree (tests).
    pub fn with_root(root: PathBuf, capacity: usize, freshness: Freshness) -> Self {
        Self {
            root,
            entries: HashMap::new(),
            capacity: capacity.max(1),
            freshness,
            stats: CacheStats::default(),
        }
    }

    /// What [`process::facts`] says about `pid` right now, read again only
    /// when the process changed (see the module header).
    pub fn facts(
        &mut self,
        pid: u32,
        owner: Option<&Owner>,
        needs: Needs,
        accounts: &dyn Accounts,
        cgroups: Option<&Cgroups>,
    ) -> ProcessFacts {
        let now = Instant::now();
        match self.current(pid, needs, owner.is_none(), now) {
            Some(read) => process::assemble(pid, read, owner, needs, accounts, cgroups),
            // Gone: what the owner record still tells, as process::facts gives it.
            None => process::assemble(pid, &ProcRead::default(), owner, needs, accounts, cgroups),
        }
    }

    /// The entry of `pid`, checked, read or completed as needed; `None` when
    /// the process is gone.
    fn current(&mut self, pid: u32, needs: Needs, with_ids: bool, now: Instant) -> Option<&ProcRead> {
        let due = match self.entries.get(&pid) {
            Some(e) => now.duration_since(e.checked_at) >= self.freshness.check_every,
            None => true,
        };
        if due {
            self.stats.checks += 1;
            let Some(stat) = Stat::read(&self.root, pid) else {
                if self.entries.remove(&pid).is_some() {
                    self.stats.gone += 1;
                }
                return None;
            };
            self.check(pid, stat, now);
        } else {
            self.stats.hits += 1;
        }
        let root = &self.root;
        let stats = &mut self.stats;
        let entry = self.entries.get_mut(&pid)?;
        entry.used_at = now;
        if (needs.exe && !entry.had.exe)
            || (needs.args && !entry.had.args)
            || (needs.ancestors && !entry.had.ancestors)
            || (with_ids && !entry.had_ids)
        {
            entry.read.complete(root, pid, entry.had, needs, with_ids);
            entry.had = Needs {
                exe: entry.had.exe || needs.exe,
                args: entry.had.args || needs.args,
                ancestors: entry.had.ancestors || needs.ancestors,
            };
            entry.had_ids |= with_ids;
            stats.reads += 1;
        }
        Some(&entry.read)
    }

    /// Compares a fresh stat with the entry; reads again what changed.
    fn check(&mut self, pid: u32, stat: Stat, now: Instant) {
        let Some(entry) = self.entries.get_mut(&pid) else {
            // A process not seen yet: an entry with what every answer needs,
            // completed by `current` with what this one needs.
            self.make_room(now);
            let blank = self.blank(pid, stat, now);
            self.entries.insert(pid, blank);
            return;
        };
        let other = stat.start_time != entry.stat.start_time;
        let exec = !other && (stat.comm != entry.stat.comm || stat.image != entry.stat.image);
        let aged = now.duration_since(entry.read_at) >= self.freshness.max_age;
        if other || exec || aged {
            self.stats.gone += u64::from(other);
            self.stats.execs += u64::from(exec);
            let blank = self.blank(pid, stat, now);
            self.entries.insert(pid, blank);
            return;
        }
        if stat.ppid != entry.stat.ppid && entry.had.ancestors {
            let mut had = entry.had;
            had.ancestors = false;
            entry.read.complete(&self.root, pid, had, Needs { ancestors: true, ..had }, false);
        }
        entry.stat = stat;
        entry.checked_at = now;
    }

    /// An entry with the name and cgroup read; the rest is read on demand.
    fn blank(&mut self, pid: u32, stat: Stat, now: Instant) -> Entry {
        self.stats.reads += 1;
        let read = ProcRead::read(&self.root, pid, Needs::default(), false, stat.comm.clone());
        Entry {
            stat,
            read,
            had: Needs::default(),
            had_ids: false,
            read_at: now,
            checked_at: now,
            used_at: now,
        }
    }

    /// Keeps one slot free: drops entries unused for `max_age`, then the
    /// least recently used half.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.capacity {
            return;
        }
        self.sweep_at(now, self.freshness.max_age);
        if self.entries.len() >= self.capacity {
            let mut used: Vec<Instant> = self.entries.values().map(|e| e.used_at).collect();
            let (_, median, _) = used.select_nth_unstable(self.entries.len() / 2);
            let cut = *median;
            let before = self.entries.len();
            self.entries.retain(|_, e| e.used_at > cut);
            self.stats.evicted += (before - self.entries.len()) as u64;
        }
    }

    /// Drops entries nobody asked for in the last `idle` (exited processes
    /// among them); the daemon calls it after each reconcile.
    pub fn sweep(&mut self, idle: Duration) {
        self.sweep_at(Instant::now(), idle);
    }

    fn sweep_at(&mut self, now: Instant, idle: Duration) {
        let before = self.entries.len();
        self.entries.retain(|_, e| now.duration_since(e.used_at) < idle);
        self.stats.evicted += (before - self.entries.len()) as u64;
    }

    /// Forgets `pid` (its facts are read again when next asked for).
    pub fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;
    use crate::accounts::{StaticAccounts, SystemAccounts};

    const ALL: Needs = Needs { exe: true, args: true, ancestors: true };
    const ALWAYS: Freshness = Freshness { check_every: Duration::ZERO, max_age: Duration::from_secs(3600) };

    /// A /proc tree in a temporary directory, removed on drop.
    struct FakeProc(PathBuf);

    /// How a fake process looks.
    #[derive(Clone)]
    struct P {
        comm: &'static str,
        ppid: u32,
        start: u64,
        /// Stands for the addresses of the image (code, stack, arguments).
        image: u64,
        args: &'static [&'static str],
        uid: u32,
        cgroup: &'static str,
    }

    const SHELL: P = P {
        comm: "sh",
        ppid: 1,
        start: 500,
        image: 1,
        args: &["sh", "-c", "x"],
        uid: 1000,
        cgroup: "/user.slice",
    };
    const INIT: P =
        P { comm: "init", ppid: 0, start: 1, image: 9, args: &["/sbin/init"], uid: 0, cgroup: "/init.scope" };

    impl FakeProc {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "shaper-proccache-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let fake = Self(dir);
            fake.set(1, &INIT);
            fake
        }

        fn set(&self, pid: u32, p: &P) {
            let dir = self.0.join(pid.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            // Fields 1..=52 of proc(5); the name may hold spaces and parentheses.
            let mut fields = vec!["0".to_string(); 52];
            fields[0] = pid.to_string();
            fields[1] = format!("({})", p.comm);
            fields[2] = "S".into();
            fields[3] = p.ppid.to_string();
            fields[21] = p.start.to_string();
            for (field, value) in [(26, 0x1000), (27, 0x2000), (28, 0x7000), (48, 0x8000), (49, 0x8100)] {
                fields[field - 1] = (value * p.image).to_string();
            }
            let file = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
            file("stat", fields.join(" ") + "\n");
            file("comm", format!("{}\n", p.comm));
            file(
                "status",
                format!("Name:\t{}\nUid:\t{u}\t{u}\t{u}\t{u}\nGid:\t{u}\t{u}\t{u}\t{u}\n", p.comm, u = p.uid),
            );
            file("cgroup", format!("0::{}\n", p.cgroup));
            self.set_args(pid, p.args);
            std::os::unix::fs::symlink(format!("/usr/bin/{}", p.comm), dir.join("exe")).unwrap();
        }

        /// Rewrites the arguments only (as setproctitle does: no exec).
        fn set_args(&self, pid: u32, args: &[&str]) {
            let mut raw = args.join("\0").into_bytes();
            raw.push(0);
            std::fs::write(self.0.join(pid.to_string()).join("cmdline"), raw).unwrap();
        }

        fn cache(&self, capacity: usize, freshness: Freshness) -> ProcCache {
            ProcCache::with_root(self.0.clone(), capacity, freshness)
        }

        /// What reading everything again gives.
        fn uncached(&self, pid: u32, owner: Option<&Owner>, needs: Needs) -> ProcessFacts {
            let read = ProcRead::read(&self.0, pid, needs, owner.is_none(), None);
            process::assemble(pid, &read, owner, needs, &accounts(), None)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn accounts() -> StaticAccounts {
        StaticAccounts::new(&[("root", 0), ("alice", 1000)], &[("root", 0)])
    }

    fn owner(comm: &str, uid: u32) -> Owner {
        let mut o = Owner { tgid: 100, uid, gid: uid, ..Owner::default() };
        o.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        o
    }

    #[test]
    fn the_stat_line_is_read_past_a_name_with_spaces_and_parentheses() {
        let mut line = String::from("42 (a (b) c) S 7");
        for field in 5..=52 {
            line.push_str(&format!(" {}", if field == 22 { 99 } else { field }));
        }
        let stat = Stat::parse(line.as_bytes()).unwrap();
        assert_eq!((stat.comm.as_deref(), stat.ppid, stat.start_time), (Some("a (b) c"), 7, 99));
        assert_eq!(stat.image, [26, 27, 28, 48, 49]);
        assert_eq!(Stat::parse(b"42 (x) S"), None);
    }

    #[test]
    fn a_process_is_read_once_and_then_only_checked() {
        let fake = FakeProc::new();
        fake.set(100, &SHELL);
        let mut cache = fake.cache(16, ALWAYS);
        let first = cache.facts(100, None, ALL, &accounts(), None);
        assert_eq!(first, fake.uncached(100, None, ALL));
        assert_eq!(
            (first.cmd.as_deref(), first.uid, first.user.as_deref()),
            (Some("sh"), Some(1000), Some("alice"))
        );
        assert_eq!(first.ancestors, Some(vec!["init".to_string()]));
        assert_eq!(first.exe.as_deref(), Some("/usr/bin/sh"));
        let reads = cache.stats().reads;
        for _ in 0..10 {
            assert_eq!(cache.facts(100, None, ALL, &accounts(), None), first);
        }
        assert_eq!((cache.stats().reads, cache.stats().checks), (reads, 11), "{:?}", cache.stats());
        // With an owner record: uid and gid are the record's, the rest is cached.
        let rec = owner("sh", 0);
        let with_owner = cache.facts(100, Some(&rec), ALL, &accounts(), None);
        assert_eq!(with_owner, fake.uncached(100, Some(&rec), ALL));
        assert_eq!(cache.stats().reads, reads);
        // Fewer needs: the facts not asked for stay out, as process::facts leaves them.
        assert_eq!(
            cache.facts(100, None, Needs::default(), &accounts(), None),
            fake.uncached(100, None, Needs::default())
        );
    }

    #[test]
    fn an_exec_is_seen_even_under_the_same_name() {
        let fake = FakeProc::new();
        fake.set(100, &SHELL);
        let mut cache = fake.cache(16, ALWAYS);
        cache.facts(100, None, ALL, &accounts(), None);
        // The same program exec'd with other arguments: a new image, same name and start.
        fake.set(100, &P { image: 2, args: &["sh", "/usr/local/bin/backup"], ..SHELL });
        let after = cache.facts(100, None, ALL, &accounts(), None);
        assert_eq!(after.args, Some(vec!["sh".to_string(), "/usr/local/bin/backup".to_string()]));
        assert_eq!(after, fake.uncached(100, None, ALL));
        // Another program: a new name.
        fake.set(100, &P { comm: "rsync", image: 2, args: &["rsync", "-a"], ..SHELL });
        assert_eq!(cache.facts(100, None, ALL, &accounts(), None).cmd.as_deref(), Some("rsync"));
        assert_eq!(cache.stats().execs, 2);
    }

    #[test]
    fn what_changes_without_exec_waits_for_max_age() {
        let fake = FakeProc::new();
        fake.set(100, &SHELL);
        let mut cache = fake.cache(16, ALWAYS);
        cache.facts(100, None, ALL, &accounts(), None);
        fake.set_args(100, &["sh: worker"]);
        let kept = cache.facts(100, None, ALL, &accounts(), None);
        assert_eq!(
            kept.args,
            Some(vec!["sh".into(), "-c".into(), "x".into()]),
            "read again without a change"
        );
        let mut aged = fake.cache(16, Freshness { check_every: Duration::ZERO, max_age: Duration::ZERO });
        aged.facts(100, None, ALL, &accounts(), None);
        fake.set_args(100, &["sh: worker"]);
        assert_eq!(aged.facts(100, None, ALL, &accounts(), None).args, Some(vec!["sh: worker".to_string()]));
        // Not due for a check: not even the stat is read.
        let mut lazy = fake.cache(16, Freshness { check_every: Duration::from_secs(3600), ..ALWAYS });
        lazy.facts(100, None, ALL, &accounts(), None);
        fake.set(100, &P { comm: "other", image: 5, ..SHELL });
        assert_eq!(lazy.facts(100, None, ALL, &accounts(), None).cmd.as_deref(), Some("sh"));
        assert_eq!((lazy.stats().checks, lazy.stats().hits), (1, 1));
    }

    #[test]
    fn a_reused_pid_a_new_parent_and_an_exit_are_seen() {
        let fake = FakeProc::new();
        fake.set(100, &P { ppid: 50, ..SHELL });
        fake.set(50, &P { comm: "bash", ppid: 1, start: 400, ..SHELL });
        let mut cache = fake.cache(16, ALWAYS);
        let f = cache.facts(100, None, ALL, &accounts(), None);
        assert_eq!(f.ancestors, Some(vec!["bash".to_string(), "init".to_string()]));
        // The parent exits; init adopts the process.
        fake.set(100, &P { ppid: 1, ..SHELL });
        assert_eq!(cache.facts(100, None, ALL, &accounts(), None).ancestors, Some(vec!["init".to_string()]));
        assert_eq!(cache.stats().execs, 0);
        // Another process under the same pid.
        fake.set(100, &P { comm: "nginx", start: 900, uid: 0, args: &["nginx"], ..SHELL });
        let other = cache.facts(100, None, ALL, &accounts(), None);
        assert_eq!((other.cmd.as_deref(), other.uid), (Some("nginx"), Some(0)));
        assert_eq!(other, fake.uncached(100, None, ALL));
        // Gone: only what the owner record says, and the entry is dropped.
        std::fs::remove_dir_all(fake.0.join("100")).unwrap();
        let rec = owner("nginx", 33);
        let gone = cache.facts(100, Some(&rec), ALL, &accounts(), None);
        assert_eq!(gone, fake.uncached(100, Some(&rec), ALL));
        assert_eq!((gone.cmd.as_deref(), gone.uid, gone.args), (Some("nginx"), Some(33), None));
        assert_eq!((cache.len(), cache.stats().gone), (0, 2));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let fake = FakeProc::new();
        for pid in 100..120 {
            fake.set(pid, &P { start: u64::from(pid), ..SHELL });
        }
        let mut cache = fake.cache(4, ALWAYS);
        for round in 0..3 {
            for pid in 100..120 {
                let f = cache.facts(pid, None, ALL, &accounts(), None);
                assert_eq!(f, fake.uncached(pid, None, ALL), "round {round}");
                assert!(cache.len() <= 4);
            }
        }
        assert!(cache.stats().evicted > 0);
        cache.sweep(Duration::ZERO);
        assert!(cache.is_empty());
    }

    #[test]
    fn this_process_and_a_child_that_execs_read_as_process_facts_reads_them() {
        let accounts = SystemAccounts::default();
        let me = std::process::id();
        let mut cache = ProcCache::new(64, ALWAYS);
        assert_eq!(
            cache.facts(me, None, ALL, &accounts, None),
            process::facts(me, None, ALL, &accounts, None)
        );
        // A shell that waits for a line, then execs a shell with other arguments.
        let mut child = Command::new("sh")
            .args(["-c", "read line; exec sh -c 'read again' second-shell"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until its exec completes, the child shows no arguments.
        let deadline = Instant::now() + Duration::from_secs(5);
        while process::facts(pid, None, ALL, &accounts, None).args.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = cache.facts(pid, None, ALL, &accounts, None);
        assert_eq!(before.args.as_ref().map(|a| a.len()), Some(3), "{before:?}");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while process::facts(pid, None, ALL, &accounts, None).args.as_ref().is_none_or(|a| a.len() != 4)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let after = cache.facts(pid, None, ALL, &accounts, None);
        assert_eq!(after, process::facts(pid, None, ALL, &accounts, None));
        assert_eq!(after.args.as_ref().and_then(|a| a.last()).map(String::as_str), Some("second-shell"));
        assert_eq!(after.cmd, before.cmd, "the same program: only the image tells the exec");
        assert_eq!(cache.stats().execs, 1);
        drop(stdin);
        child.wait().unwrap();
        // Reaped: gone.
        assert_eq!(cache.facts(pid, None, ALL, &accounts, None).args, None);
    }
}
