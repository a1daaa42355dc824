//! Root tests that cannot run say so instead of failing: loading BPF
//! programs, making network namespaces, cgroups and users, and mounting a BPF
//! filesystem all need root. Put [`require_root!`](crate::require_root) first
//! in every such test.

use std::io::Write as _;

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True as root. Otherwise reports on stderr that test `name` was skipped
/// (written past the harness's output capture, so it shows in a normal
/// `cargo test` run) and returns false.
pub fn root_or_skip(name: &str) -> bool {
    if is_root() {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "{name}: skipped: needs root (run it as root, e.g. sudo -E cargo xtask test)"
    );
    false
}

/// The name libtest gives a test, from the path of an item inside it
/// ("lifecycle::stop_restores::here" → "stop_restores").
#[doc(hidden)]
pub fn test_name(path: &str) -> &str {
    let path = path.strip_suffix("::here").unwrap_or(path);
    path.split_once("::").map_or(path, |(_crate, rest)| rest)
}

/// First line of a test that needs root: without root it prints
/// "NAME: skipped: needs root" to stderr and returns from the test (which
/// then passes: libtest has no run-time skip).
#[macro_export]
macro_rules! require_root {
    () => {{
        fn here() {}
        if !$crate::root::root_or_skip($crate::root::test_name(::std::any::type_name_of_val(&here))) {
            return;
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::test_name;

    #[test]
    fn the_test_name_is_the_path_inside_the_test_crate() {
        assert_eq!(test_name("lifecycle::kill_9_under_load::here"), "kill_9_under_load");
        assert_eq!(test_name("process::nested::case::here"), "nested::case");
        assert_eq!(test_name("here"), "here");
    }

    #[test]
    fn the_macro_names_the_test_it_is_in() {
        fn here() {}
        let name = test_name(std::any::type_name_of_val(&here));
        assert_eq!(name, "root::tests::the_macro_names_the_test_it_is_in");
    }
}
