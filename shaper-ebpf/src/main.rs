//! shaper's eBPF programs: the cgroup socket hooks that record who owns each
//! socket (owner.rs), the tc classifier that stamps each packet with the
//! HTB class of its flow, and a do-nothing classifier used as the benchmark
//! baseline.
//!
//! Programs fail open: on any parse error or map failure a packet goes to its
//! interface's default class, never to the floor, and an error counter is bumped.
#![no_std]
#![no_main]
// The bpfel target has no compare-and-swap, so core's atomics offer no
// `fetch_add`; the intrinsic lowers to BPF's lock-free XADD. The crate is built
// with RUSTC_BOOTSTRAP=1 (for -Z build-std) on the stable toolchain anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod classify;
mod clock;
mod connlimit;
mod iface;
mod instance;
mod listen;
mod maps;
mod owner;
mod packet;
mod quota;
mod refuse;
mod rules;

use aya_ebpf::{macros::classifier, programs::TcContext};
use shaper_common::Direction;

/// `TC_ACT_UNSPEC` (= `TCX_NEXT`): let the next program on the hook run, then pass.
/// shaper only sets `skb->priority`; it never decides a packet's fate, but
/// for a used-up quota that blocks (quota.rs).
pub(crate) const TC_ACT_UNSPEC: i32 = -1;
/// `TC_ACT_SHOT`: drop the packet (only for a quota that blocks, and for a
/// SYN over a connection limit: connlimit.rs).
pub(crate) const TC_ACT_SHOT: i32 = 2;

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    classify::classify(&ctx, Direction::Egress)
}

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    classify::classify(&ctx, Direction::Ingress)
}

#[classifier]
pub fn tc_passthrough(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
