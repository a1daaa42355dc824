//! A host as the user writes it: `[USER@]HOST[:PORT]`, with `[ADDR]:PORT`
//! for an IPv6 address and a port.

use std::{fmt, str::FromStr};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("`{0}`: no host name")]
    NoHost(String),
    #[error("`{0}`: the port must be a number from 1 to 65535")]
    BadPort(String),
    #[error("`{0}`: a host name may not start with `-` nor contain `/`, `@`, `[`, `]` or white space")]
    BadName(String),
    #[error("`{0}`: an IPv6 address with a port is written [ADDR]:PORT")]
    Brackets(String),
}

/// One `--host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// As written on the command line (for the summary line).
    pub written: String,
    pub user: Option<String>,
    /// The host without user and port: names the host's config file
    /// (`NAME.toml`) and stands for `{host}` in `--remote-root`.
    pub name: String,
    pub port: Option<u16>,
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, rest) = match s.rsplit_once('@') {
            Some((user, rest)) if !user.is_empty() => (Some(user.to_string()), rest),
            Some(_) => return Err(TargetError::BadName(s.to_string())),
            None => (None, s),
        };
        let (name, port) = split_port(s, rest)?;
        if name.is_empty() {
            return Err(TargetError::NoHost(s.to_string()));
        }
        let bad = |c: char| c.is_whitespace() || matches!(c, '/' | '@' | '[' | ']');
        if name.starts_with('-') || name.contains(bad) || user.as_deref().is_some_and(|u| u.starts_with('-'))
        {
            return Err(TargetError::BadName(s.to_string()));
        }
        Ok(Self { written: s.to_string(), user, name: name.to_string(), port })
    }
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT`, or a bare IPv6 address (two colons or more).
fn split_port<'a>(whole: &str, rest: &'a str) -> Result<(&'a str, Option<u16>), TargetError> {
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or(TargetError::BadPort(whole.into()));
    if let Some(inner) = rest.strip_prefix('[') {
        let (name, after) = inner.split_once(']').ok_or(TargetError::Brackets(whole.into()))?;
        return match after {
            "" => Ok((name, None)),
            _ => {
                let port = after.strip_prefix(':').ok_or(TargetError::Brackets(whole.into()))?;
                Ok((name, Some(parse(port)?)))
            }
        };
    }
    match rest.matches(':').count() {
        0 => Ok((rest, None)),
        1 => {
            let (name, port) = rest.split_once(':').ok_or(TargetError::NoHost(whole.into()))?;
            Ok((name, Some(parse(port)?)))
        }
        _ => Ok((rest, None)),
    }
}

impl Target {
    /// `[USER@]HOST` for ssh.
    pub fn ssh_destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.name),
            None => self.name.clone(),
        }
    }

    /// `[USER@]HOST:PATH` for scp (an IPv6 address in brackets).
    pub fn scp_destination(&self, path: &str) -> String {
        let host = if self.name.contains(':') { format!("[{}]", self.name) } else { self.name.clone() };
        match &self.user {
            Some(user) => format!("{user}@{host}:{path}"),
            None => format!("{host}:{path}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn parts(s: &str) -> (Option<String>, String, Option<u16>) {
        let t: Target = s.parse().unwrap();
        (t.user, t.name, t.port)
    }

    #[test]
    fn user_host_and_port_are_split_as_ssh_reads_them() {
        assert_eq!(parts("web1"), (None, "web1".into(), None));
        assert_eq!(parts("root@web1:2222"), (Some("root".into()), "web1".into(), Some(2222)));
        assert_eq!(parts("198.18.1.2:22"), (None, "198.18.1.2".into(), Some(22)));
        assert_eq!(parts("admin@fd00::2"), (Some("admin".into()), "fd00::2".into(), None));
        assert_eq!(parts("[fd00::2]:2200"), (None, "fd00::2".into(), Some(2200)));
        assert_eq!(parts("[fd00::2]"), (None, "fd00::2".into(), None));
    }

    #[test]
    fn destinations_for_ssh_and_scp() {
        let t: Target = "root@[fd00::2]:2200".parse().unwrap();
        assert_eq!(t.ssh_destination(), "root@fd00::2");
        assert_eq!(t.scp_destination("/tmp/x"), "root@[fd00::2]:/tmp/x");
        let t: Target = "web1".parse().unwrap();
        assert_eq!((t.ssh_destination(), t.scp_destination("/a")), ("web1".into(), "web1:/a".into()));
        assert_eq!(t.to_string(), "web1");
    }

    #[test]
    fn what_ssh_could_take_for_an_option_or_a_path_is_refused() {
        let err = |s: &str| s.parse::<Target>().unwrap_err().to_string();
        assert_eq!(err("-oProxyCommand=x"), "`-oProxyCommand=x`: a host name may not start with `-` nor contain `/`, `@`, `[`, `]` or white space");
        assert!(err("a/b").contains("may not start with"));
        assert!(err("@web1").contains("may not start with"));
        assert_eq!(err("web1:0"), "`web1:0`: the port must be a number from 1 to 65535");
        assert_eq!(err("web1:ssh"), "`web1:ssh`: the port must be a number from 1 to 65535");
        assert_eq!(err("root@"), "`root@`: no host name");
        assert_eq!(
            err("[fd00::2]2200"),
            "`[fd00::2]2200`: an IPv6 address with a port is written [ADDR]:PORT"
        );
    }
}
