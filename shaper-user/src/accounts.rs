//! User and group names ↔ ids, for `user ==` / `group ==` in rules and for
//! showing who owns a connection.

use std::{
    collections::HashMap,
    ffi::{CStr, CString},
    sync::Mutex,
};

/// Where names come from.
pub trait Accounts: Send + Sync {
    fn uid(&self, user: &str) -> Option<u32>;
    fn gid(&self, group: &str) -> Option<u32>;
    fn user_name(&self, uid: u32) -> Option<String>;
    fn group_name(&self, gid: u32) -> Option<String>;
}

/// The system's user database through libc (so NSS sources such as LDAP work
/// too), with the answers cached: names do not change under a running daemon often.
#[derive(Default)]
pub struct SystemAccounts {
    user_names: Mutex<HashMap<u32, Option<String>>>,
    group_names: Mutex<HashMap<u32, Option<String>>>,
}

/// Runs a `get*_r` call with a growing buffer; `call` returns the name or the errno.
fn with_buffer(mut call: impl FnMut(&mut [libc::c_char]) -> Result<Option<String>, i32>) -> Option<String> {
    let mut size = 1024;
    while size <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            Ok(found) => return found,
            Err(libc::ERANGE) => size *= 4,
            Err(_) => return None,
        }
    }
    None
}

fn cached(
    cache: &Mutex<HashMap<u32, Option<String>>>,
    id: u32,
    look_up: impl FnOnce() -> Option<String>,
) -> Option<String> {
    let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    cache.entry(id).or_insert_with(look_up).clone()
}

impl Accounts for SystemAccounts {
    fn uid(&self, user: &str) -> Option<u32> {
        let name = CString::new(user).ok()?;
        let mut uid = None;
        with_buffer(|buf| {
            // SAFETY: zeroed passwd is a valid out-parameter; all pointers live for the call.
            let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result = std::ptr::null_mut();
            // SAFETY: as above; `buf` is writable for its length.
            let rc =
                unsafe { libc::getpwnam_r(name.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
            if rc != 0 {
                return Err(rc);
            }
            if !result.is_null() {
                uid = Some(pw.pw_uid);
            }
            Ok(None)
        });
        uid
    }

    fn gid(&self, group: &str) -> Option<u32> {
        let name = CString::new(group).ok()?;
        let mut gid = None;
        with_buffer(|buf| {
            // SAFETY: as in `uid`.
            let mut gr: libc::group = unsafe { std::mem::zeroed() };
            let mut result = std::ptr::null_mut();
            // SAFETY: as in `uid`.
            let rc =
                unsafe { libc::getgrnam_r(name.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut result) };
            if rc != 0 {
                return Err(rc);
            }
            if !result.is_null() {
                gid = Some(gr.gr_gid);
            }
            Ok(None)
        });
        gid
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        cached(&self.user_names, uid, || {
            with_buffer(|buf| {
                // SAFETY: as in `uid`.
                let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
                let mut result = std::ptr::null_mut();
                // SAFETY: as in `uid`.
                let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
                if rc != 0 {
                    return Err(rc);
                }
                // SAFETY: on success pw_name points into `buf`, NUL-terminated.
                Ok((!result.is_null())
                    .then(|| unsafe { CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned()))
            })
        })
    }

    fn group_name(&self, gid: u32) -> Option<String> {
        cached(&self.group_names, gid, || {
            with_buffer(|buf| {
                // SAFETY: as in `uid`.
                let mut gr: libc::group = unsafe { std::mem::zeroed() };
                let mut result = std::ptr::null_mut();
                // SAFETY: as in `uid`.
                let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut result) };
                if rc != 0 {
                    return Err(rc);
                }
                // SAFETY: on success gr_name points into `buf`, NUL-terminated.
                Ok((!result.is_null())
                    .then(|| unsafe { CStr::from_ptr(gr.gr_name) }.to_string_lossy().into_owned()))
            })
        })
    }
}

/// A fixed table of users and groups, for tests.
#[derive(Clone, Debug, Default)]
pub struct StaticAccounts {
    pub users: Vec<(String, u32)>,
    pub groups: Vec<(String, u32)>,
}

impl StaticAccounts {
    pub fn new(users: &[(&str, u32)], groups: &[(&str, u32)]) -> Self {
        let own = |v: &[(&str, u32)]| v.iter().map(|(n, i)| ((*n).to_string(), *i)).collect();
        Self { users: own(users), groups: own(groups) }
    }
}

impl Accounts for StaticAccounts {
    fn uid(&self, user: &str) -> Option<u32> {
        self.users.iter().find(|(n, _)| n == user).map(|(_, i)| *i)
    }
    fn gid(&self, group: &str) -> Option<u32> {
        self.groups.iter().find(|(n, _)| n == group).map(|(_, i)| *i)
    }
    fn user_name(&self, uid: u32) -> Option<String> {
        self.users.iter().find(|(_, i)| *i == uid).map(|(n, _)| n.clone())
    }
    fn group_name(&self, gid: u32) -> Option<String> {
        self.groups.iter().find(|(_, i)| *i == gid).map(|(n, _)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_both_ways_on_any_linux_host() {
        let a = SystemAccounts::default();
        assert_eq!(a.uid("root"), Some(0));
        assert_eq!(a.user_name(0).as_deref(), Some("root"));
        assert_eq!(a.gid("root"), Some(0));
        assert_eq!(a.group_name(0).as_deref(), Some("root"));
        assert_eq!(a.uid("no-such-user-shaper"), None);
        assert_eq!(a.uid("nul\0byte"), None);
    }
}
