//! `shaper reload --dry-run` and `shaper check --config F --against-running`:
//! what a reload would change, from the reload's own planning
//! ([`apply::preview`], step 0 of every change) and the rules it would put
//! in force, evaluated for every live connection with the facts the daemon
//! decides with. Nothing is written: no qdisc, class, link or map.

use std::collections::BTreeMap;

use shaper_common::ORIGIN_DAEMON;
use shaper_common::ORIGIN_PINNED;

use super::{
    apply::{self, Parts},
    error::DaemonError,
    explain::class_name,
};
use crate::{
    config::Config,
    control::explain::{ClassChange, DryRun, Moves},
};

/// What bringing the host from `old` to `new` would change (the caller
/// names the file and the settings that wait for a restart).
pub fn dry_run(parts: &Parts<'_>, old: &Config, new: &Config) -> Result<DryRun, DaemonError> {
    let (mut changes, ids, rules) = apply::preview(parts, old, new)?;
    let how = changes
        .classes_changed
        .iter()
        .filter_map(|name| {
            let how = apply::class_diff(old.class(name)?, new.class(name)?);
            Some(ClassChange { class: name.clone(), how })
        })
        .collect();
    let current = parts.datapath.class_ids();
    let flows = parts.datapath.flows();
    let mut moves: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (key, value) in &flows {
        let from = class_name(old, &current, value.class);
        // A pinned flow stays where it is while its class index is in use (as the reload does it).
        let stays = value.origin == ORIGIN_PINNED && ids.name(value.class).is_some();
        if value.origin == ORIGIN_DAEMON || (value.origin == ORIGIN_PINNED && !stays) {
            changes.flows_reevaluated += 1;
        }
        let to = if stays {
            class_name(new, &ids, value.class)
        } else {
            let pid = parts.decider.conn(key).map_or(0, |c| c.pid);
            class_name(new, &ids, rules.verdict_of(key, parts.decider.process(pid)).class)
        };
        if from != to {
            *moves.entry((from, to)).or_default() += 1;
        }
    }
    let mut moves: Vec<Moves> =
        moves.into_iter().map(|((from, to), count)| Moves { from, to, count }).collect();
    moves.sort_by_key(|m| std::cmp::Reverse(m.count));
    Ok(DryRun { config: String::new(), changes, how, moves, flows: flows.len(), restart_needed: Vec::new() })
}
