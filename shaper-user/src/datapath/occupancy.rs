//! How full the maps that grow with traffic are (`shaper status`), without
//! walking them on every request: FLOWS' count comes from the reconcile's
//! walk, KEPT_FLOWS' from its prune, and the others are walked at most once
//! per [`REFRESH`].

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

use shaper_common::{names, MAX_LISTENERS, MAX_PROC_TESTS};

use super::{batch, Datapath};

/// One map's fill: its name, the entries it holds, the entries it can hold.
pub type Occupancy = (&'static str, usize, u32);

/// How old the walked counts may be.
const REFRESH: Duration = Duration::from_secs(2);

/// The counts remembered between requests.
#[derive(Debug, Default)]
pub(super) struct Remembered {
    /// KEPT_FLOWS' entries at the reconcile's last look.
    pub(super) kept: Cell<usize>,
    /// When OWNERS, LISTENERS and PROC_TESTS were walked, and their counts.
    walked: Cell<Option<(Instant, [usize; 3])>>,
}

impl Datapath {
    /// The fill of FLOWS (`flows`: its count as the caller knows it),
    /// KEPT_FLOWS, OWNERS, LISTENERS and PROC_TESTS; 0 where a map could not
    /// be read.
    pub fn occupancy(&self, flows: usize) -> Vec<Occupancy> {
        let [owners, listeners, proc_tests] = match self.occupancy.walked.get() {
            Some((at, counts)) if at.elapsed() < REFRESH => counts,
            _ => {
                let counts = self.walk_counts();
                self.occupancy.walked.set(Some((Instant::now(), counts)));
                counts
            }
        };
        vec![
            (names::MAP_FLOWS, flows, self.max_flows),
            (names::MAP_KEPT_FLOWS, self.occupancy.kept.get(), self.max_flows),
            (names::MAP_OWNERS, owners, self.max_flows),
            (names::MAP_LISTENERS, listeners, MAX_LISTENERS),
            (names::MAP_PROC_TESTS, proc_tests, MAX_PROC_TESTS),
        ]
    }

    /// Entries of OWNERS, LISTENERS and PROC_TESTS, in batched walks.
    fn walk_counts(&self) -> [usize; 3] {
        let entries = |walk: Result<batch::Walked, _>| walk.map_or(0, |w: batch::Walked| w.entries);
        let (mode, chunk) = (batch::Mode::Auto, batch::CHUNK);
        [
            entries(batch::for_each(&self.owners, mode, chunk, &mut |_, _| {})),
            entries(batch::for_each(&self.listeners, mode, chunk, &mut |_, _| {})),
            entries(batch::for_each(&self.proc_tests, mode, chunk, &mut |_, _| {})),
        ]
    }
}
