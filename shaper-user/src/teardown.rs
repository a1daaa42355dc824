//! `shaper stop --force`: takes shaping down with no daemon to ask (after
//! `kill -9`, with a config that no longer loads, with interfaces gone), from
//! the pin directory and what is on the host.
//!
//! In this order, so that no packet meets a half-removed path:
//! 1. the pinned links of every layout: with no daemon holding them, a pin is
//!    a link's last reference, and unpinning detaches it (the socket hooks
//!    from their cgroup, the classifiers from their interfaces; an ingress
//!    classifier goes before the IFB it redirects to);
//! 2. what each record in `owned/` says shaper made ([`crate::owned`]): HTB
//!    roots that carry the record's tag (the kernel puts the interface's
//!    default back) and the IFBs it created. Any other root qdisc found there
//!    is left as it is, and reported;
//! 3. the pinned programs and maps, then the directories.
//!
//! Nothing is looked up by name alone: an interface that is gone leaves
//! nothing to remove on it (its links and qdiscs went with it), and its IFB is
//! found by the ifindex recorded when shaper created it.

use std::path::{Path, PathBuf};

use crate::{
    owned::{self, Record},
    pins::{self, Pins},
    tc::{Netlink, TcError},
};

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("opening rtnetlink")]
    Netlink(#[from] TcError),
    #[error(
        "shaper shaped {name} in another network namespace (net:[{netns}]), where its interface \
         numbers mean other devices; nothing was changed. Run `shaper stop --force` in that namespace \
         (e.g. `nsenter --net=/proc/PID/ns/net`, PID a process in it)"
    )]
    OtherNamespace { name: String, netns: u64 },
}

/// What a forced teardown did.
#[derive(Debug, Default)]
pub struct Summary {
    /// What was removed, one line each.
    pub removed: Vec<String>,
    /// What was found in shaper's place and left: not shaper's.
    pub left: Vec<String>,
    /// What could not be removed, with why.
    pub failed: Vec<String>,
}

impl Summary {
    /// Whether there was nothing of shaper's to remove.
    pub fn nothing(&self) -> bool {
        self.removed.is_empty() && self.failed.is_empty()
    }
}

/// Removes everything shaper left under `pins` and on the host (see the
/// module documentation). No daemon may be running on these pins.
pub fn force(pins: &Pins) -> Result<Summary, TeardownError> {
    let nl = Netlink::open()?;
    let records = pins.owned();
    let recorded = records.all();
    if let Some(r) = recorded.iter().find(|r| !r.in_this_netns()) {
        return Err(TeardownError::OtherNamespace {
            name: r.name.clone(),
            netns: r.netns.unwrap_or_default(),
        });
    }
    let mut summary = Summary::default();
    let layouts: Vec<PathBuf> = std::iter::once(pins.dir().to_path_buf())
        .chain(pins.other_layouts())
        .filter(|d| d.exists())
        .collect();
    for layout in &layouts {
        for link in files(&layout.join("links")) {
            let shown = describe_link(&link, &recorded);
            unpin(&link, shown, &mut summary);
        }
    }
    for record in &recorded {
        let done = owned::take_down(&nl, &records, record);
        summary.removed.extend(done.removed);
        summary.left.extend(done.left);
        summary.failed.extend(done.failed);
    }
    let mut objects = 0;
    for layout in &layouts {
        for sub in ["progs", "maps"] {
            for path in files(&layout.join(sub)) {
                match std::fs::remove_file(&path) {
                    Ok(()) => objects += 1,
                    Err(e) => summary.failed.push(format!("unpinning {}: {e}", path.display())),
                }
            }
        }
        pins::remove_layout(layout);
    }
    if objects > 0 {
        summary.removed.push(format!("{objects} pinned programs and maps under {}", pins.root().display()));
    }
    let _ = std::fs::remove_dir(records.dir());
    let _ = std::fs::remove_dir(pins.root());
    Ok(summary)
}

/// The files in `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    out.sort();
    out
}

/// "classifier tc_egress on eth0 (ifindex 2)" for `links/tc_egress-2`,
/// "socket hook connect4" for `links/connect4`.
fn describe_link(path: &Path, recorded: &[Record]) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rsplit_once('-').and_then(|(prog, i)| Some((prog, i.parse::<u32>().ok()?))) {
        Some((prog, ifindex)) => match recorded.iter().find(|r| r.ifindex == ifindex) {
            Some(r) => format!("classifier {prog} on {} (ifindex {ifindex})", r.name),
            None => format!("classifier {prog} on ifindex {ifindex}"),
        },
        None => format!("socket hook {name}"),
    }
}

fn unpin(path: &Path, shown: String, summary: &mut Summary) {
    match std::fs::remove_file(path) {
        Ok(()) => summary.removed.push(shown),
        Err(e) => summary.failed.push(format!("{shown}: unpinning {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_links_are_named_for_what_they_attach() {
        let recorded = [Record { ifindex: 2, name: "eth0".into(), tag: 1 << 30, ifb: None, netns: None }];
        let shown = |p: &str| describe_link(Path::new(p), &recorded);
        assert_eq!(shown("/p/v3/links/tc_egress-2"), "classifier tc_egress on eth0 (ifindex 2)");
        assert_eq!(shown("/p/v3/links/tc_ingress-9"), "classifier tc_ingress on ifindex 9");
        assert_eq!(shown("/p/v3/links/connect4"), "socket hook connect4");
        assert_eq!(shown("/p/v3/links/post_bind4"), "socket hook post_bind4");
    }
}
