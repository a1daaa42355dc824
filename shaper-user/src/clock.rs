//! The two clocks of the classifier's timestamps.

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the time base of a flow's
/// `last_seen_ns` (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

/// CLOCK_MONOTONIC in nanoseconds: the time base of an event's `ts_ns`
/// (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clocks_run() {
        let (a, b) = (super::monotonic_ns(), super::monotonic_coarse_ns());
        assert!(a > 0 && b > 0);
        assert!(super::monotonic_ns() >= a);
    }
}
