//! The classifier's interface lookup (BPF_PROG_TEST_RUN on crafted frames):
//! two interfaces that want the same entry of the direct-mapped table are
//! each classified by their own registration, whichever holds the entry, as
//! registrations change and interfaces come and go; an interface removed is
//! no longer classified.
//!
//! Needs root (loads BPF programs); attaches nothing to any interface.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers fail the test with a backtrace")]

use shaper_common::{classid_of, iface_table_index, IfaceInfo, ERR_NO_IFACE, IFACE_TABLE_SIZE};
use shaper_testkit::{packets::Frame, require_root, TestRunExt as _};
use shaper_user::datapath::{Datapath, LoadOptions};

/// ifindex of `lo`, which BPF_PROG_TEST_RUN can use as the packet's device.
const LO: u32 = 1;
/// An interface (that need not exist) whose table entry is lo's.
const RIVAL: u32 = LO + IFACE_TABLE_SIZE;

fn iface(slot: u32, default_class: u16) -> IfaceInfo {
    let mut info = IfaceInfo::new(slot, default_class, 14);
    info.add_class(u32::from(default_class));
    info
}

/// The class id the egress classifier gives a frame crossing lo, and the
/// no-interface error count after it.
fn classify(dp: &mut Datapath) -> (u32, u64) {
    let frame = "198.18.0.1".parse().unwrap();
    let bytes = Frame::udp(frame, 40000, "198.18.0.2".parse().unwrap(), 53).build();
    let priority = dp.test_run(shaper_common::names::PROG_TC_EGRESS, &bytes, LO, 1).unwrap().priority;
    (priority, dp.errors().unwrap()[ERR_NO_IFACE as usize])
}

#[test]
fn interfaces_sharing_a_table_entry_each_get_their_own_registration() {
    require_root!();
    assert_eq!(iface_table_index(RIVAL), iface_table_index(LO));
    let mut dp = Datapath::load(LoadOptions { max_flows: 1024, kernel_log_level: 0, pins: None })
        .expect("load (are you root?)");
    // The rival registers first and holds the entry; lo is in IFACES only.
    dp.set_iface(RIVAL, &iface(1, 7)).unwrap();
    dp.set_iface(LO, &iface(0, 3)).unwrap();
    assert_eq!(classify(&mut dp), (classid_of(3), 0));
    // lo's registration changes: the packet follows.
    dp.set_iface(LO, &iface(0, 4)).unwrap();
    assert_eq!(classify(&mut dp), (classid_of(4), 0));
    // The rival goes: lo takes the entry, and keeps its class.
    dp.remove_iface(RIVAL).unwrap();
    assert_eq!(classify(&mut dp), (classid_of(4), 0));
    dp.set_iface(LO, &iface(0, 5)).unwrap();
    assert_eq!(classify(&mut dp), (classid_of(5), 0));
    // The rival comes back: lo keeps the entry.
    dp.set_iface(RIVAL, &iface(1, 7)).unwrap();
    assert_eq!(classify(&mut dp), (classid_of(5), 0));
    // lo goes: its packets pass unclassified, counted.
    dp.remove_iface(LO).unwrap();
    assert_eq!(classify(&mut dp), (0, 1));
    assert!(dp.ifaces().iter().all(|(ifindex, _)| *ifindex == RIVAL));
}
