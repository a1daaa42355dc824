//! Finding the interface a packet crosses: the direct-mapped table first (an
//! array lookup the verifier inlines, a few ns), the IFACES hash when the
//! table's entry belongs to another interface (a hash lookup costs ~25 ns).

use aya_ebpf::{macros::map, maps::Array};
use shaper_common::{iface_table_index, IfaceInfo, IFACE_TABLE_SIZE};

use crate::maps::IFACES;

/// Entry `ifindex % IFACE_TABLE_SIZE` → that interface, when it is the one
/// the daemon put there (`IfaceInfo::ifindex`); see `shaper_common::IfaceInfo`.
#[map]
static IFACE_TABLE: Array<IfaceInfo> = Array::with_max_entries(IFACE_TABLE_SIZE, 0);

/// What the daemon registered for interface `ifindex`, if anything.
#[inline(always)]
pub(crate) fn lookup(ifindex: u32) -> Option<&'static IfaceInfo> {
    if let Some(info) = IFACE_TABLE.get(iface_table_index(ifindex)) {
        // ifindex 0 (no device) never matches an unused entry.
        if info.ifindex == ifindex && ifindex != 0 {
            return Some(info);
        }
    }
    // SAFETY: read-only use of a value the daemon writes rarely.
    unsafe { IFACES.get(ifindex) }
}
