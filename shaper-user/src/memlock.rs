//! RLIMIT_MEMLOCK for the daemon's BPF maps. Kernels before 5.11 charge the
//! memory of BPF maps and programs to the locked-memory limit of the process
//! that creates them, and a default of 64 KiB or 8 MiB is far too little for
//! shaper's maps; from 5.11 on they are charged to the memory cgroup and the
//! limit does not matter, so nothing is changed there.

use std::{cmp::Ordering, io};

/// The first kernel that charges BPF memory to the memory cgroup instead.
const CGROUP_CHARGED: (u32, u32) = (5, 11);

/// `major.minor` of a kernel release such as `6.18.0-1-amd64` or `5.4.0`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a kernel of `release` charges BPF maps to RLIMIT_MEMLOCK (a
/// release that cannot be read is taken for an old one: raising the limit
/// does no harm).
pub fn charges_memlock(release: &str) -> bool {
    parse_release(release).is_none_or(|v| v.cmp(&CGROUP_CHARGED) == Ordering::Less)
}

/// The limits to try, in order, from the current soft and hard ones:
/// unlimited (needs CAP_SYS_RESOURCE), else the soft limit up to the hard
/// one. Empty when the soft limit is already unlimited.
pub fn attempts(soft: u64, hard: u64) -> Vec<(u64, u64)> {
    let infinity = libc::RLIM_INFINITY;
    if soft == infinity {
        return Vec::new();
    }
    let mut out = vec![(infinity, infinity)];
    if hard != infinity && hard > soft {
        out.push((hard, hard));
    }
    out
}

/// What [`raise_for_bpf`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Raised {
    /// The kernel does not charge BPF maps to the limit.
    NotNeeded,
    /// The soft limit was unlimited already.
    Already,
    /// The limit is now unlimited.
    Unlimited,
    /// Unlimited was refused (`error`); the soft limit is now the hard one, `to` bytes.
    ToHard { to: u64, error: String },
    /// It could not be raised above `soft` bytes.
    Stuck { soft: u64, error: String },
}

/// Raises RLIMIT_MEMLOCK on kernels that charge BPF maps to it, and logs
/// what it did; says so in a warning when it could not make it unlimited.
pub fn raise_for_bpf() -> Raised {
    raise_on(&kernel_release().unwrap_or_default())
}

/// [`raise_for_bpf`] on a kernel of `release`.
fn raise_on(release: &str) -> Raised {
    if !charges_memlock(release) {
        return Raised::NotNeeded;
    }
    let raised = raise();
    let why = format!("kernel {release} charges BPF maps to RLIMIT_MEMLOCK");
    let advice = "maps may fail to load: start shaper with a higher limit (LimitMEMLOCK=infinity in the \
                  unit, `ulimit -l unlimited`)";
    match &raised {
        Raised::NotNeeded | Raised::Already => {}
        Raised::Unlimited => log::info!("{why}: raised it to unlimited"),
        Raised::ToHard { to, error } => {
            log::warn!("{why}: raised it only to its hard limit, {to} bytes (unlimited: {error}); {advice}")
        }
        Raised::Stuck { soft, error } => log::warn!("{why}: it stays at {soft} bytes ({error}); {advice}"),
    }
    raised
}

fn raise() -> Raised {
    let (soft, hard) = match get() {
        Ok(limits) => limits,
        Err(e) => return Raised::Stuck { soft: 0, error: e.to_string() },
    };
    let tries = attempts(soft, hard);
    if tries.is_empty() {
        return Raised::Already;
    }
    let mut error = String::new();
    for (to_soft, to_hard) in tries {
        match set(to_soft, to_hard) {
            Ok(()) if to_soft == libc::RLIM_INFINITY => return Raised::Unlimited,
            Ok(()) => return Raised::ToHard { to: to_soft, error },
            Err(e) => error = e.to_string(),
        }
    }
    Raised::Stuck { soft, error }
}

fn get() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the buffer given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit reads one rlimit from the buffer given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The running kernel's release (`uname -r`).
fn kernel_release() -> Option<String> {
    // SAFETY: an all-zero utsname is a valid buffer for uname to fill.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes NUL-terminated strings into the buffer given.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates `release` within its array.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("4.19.304"), Some((4, 19)));
        assert_eq!(parse_release("5.11-rc1"), Some((5, 11)));
        assert_eq!(parse_release("6.1+"), Some((6, 1)));
        assert_eq!(parse_release("linux"), None);
        assert_eq!(parse_release("6"), None);
    }

    #[test]
    fn kernels_before_5_11_charge_maps_to_memlock() {
        for old in ["4.19.0", "5.4.0-150-generic", "5.10.209", "3.10.0-1160.el7.x86_64", "?"] {
            assert!(charges_memlock(old), "{old}");
        }
        for new in ["5.11.0", "5.15.0-91-generic", "6.1.0-18-amd64", "6.18.0", "10.0"] {
            assert!(!charges_memlock(new), "{new}");
        }
    }

    #[test]
    fn raising_tries_unlimited_then_the_hard_limit() {
        let inf = libc::RLIM_INFINITY;
        assert_eq!(attempts(65536, 65536), [(inf, inf)]);
        assert_eq!(attempts(65536, 8 << 20), [(inf, inf), (8 << 20, 8 << 20)]);
        assert_eq!(attempts(65536, inf), [(inf, inf)]);
        assert!(attempts(inf, inf).is_empty());
    }

    /// The old-kernel branch minus the version gate: the limit is raised for
    /// real (in this test process): unlimited with CAP_SYS_RESOURCE, else up
    /// to the hard limit, else it stays and says why.
    #[test]
    fn raising_sets_the_limit_it_reports() {
        let before = get().unwrap();
        let raised = raise();
        let after = get().unwrap();
        match raised {
            Raised::Already => assert_eq!(before.0, libc::RLIM_INFINITY),
            Raised::Unlimited => assert_eq!(after, (libc::RLIM_INFINITY, libc::RLIM_INFINITY)),
            Raised::ToHard { to, .. } => assert_eq!(after, (to, to)),
            Raised::Stuck { soft, .. } => assert_eq!((after.0, soft), (before.0, before.0)),
            Raised::NotNeeded => panic!("raise() does not look at the kernel"),
        }
    }

    #[test]
    fn only_an_old_kernel_has_the_limit_raised() {
        assert_eq!(raise_on("6.18.0"), Raised::NotNeeded);
        assert_eq!(raise_on("5.11.0"), Raised::NotNeeded);
        assert_ne!(raise_on("5.10.0-28-amd64"), Raised::NotNeeded);
    }

    #[test]
    fn this_kernel_is_read() {
        let release = kernel_release().unwrap();
        assert!(parse_release(&release).is_some(), "{release}");
    }
}
