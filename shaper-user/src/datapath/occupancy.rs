//! How full the maps that grow with traffic are (`shaper status`).

use shaper_common::{names, MAX_LISTENERS, MAX_PROC_TESTS};

use super::{batch, Datapath};

/// One map's fill: its name, the entries it holds, the entries it can hold.
pub type Occupancy = (&'static str, usize, u32);

impl Datapath {
    /// The fill of FLOWS, KEPT_FLOWS, OWNERS, LISTENERS and PROC_TESTS (0
    /// entries where a map could not be read).
    pub fn occupancy(&self) -> Vec<Occupancy> {
        let count = |walk: Result<batch::Walked, _>| walk.map_or(0, |w: batch::Walked| w.entries);
        let owners = count(self.for_each_owner(|_, _| {}).map_err(|_| ()));
        let kept = count(
            batch::for_each(&self.kept, batch::Mode::Auto, batch::CHUNK, &mut |_, _| {}).map_err(|_| ()),
        );
        let listeners = count(
            batch::for_each(&self.listeners, batch::Mode::Auto, batch::CHUNK, &mut |_, _| {}).map_err(|_| ()),
        );
        vec![
            (names::MAP_FLOWS, self.flow_count(), self.max_flows),
            (names::MAP_KEPT_FLOWS, kept, self.max_flows),
            (names::MAP_OWNERS, owners, self.max_flows),
            (names::MAP_LISTENERS, listeners, MAX_LISTENERS),
            (names::MAP_PROC_TESTS, self.proc_tests.keys().count(), MAX_PROC_TESTS),
        ]
    }
}
