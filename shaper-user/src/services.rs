//! Service names from /etc/services, for `service == "ssh"` in rules.
//!
//! A name maps to a port per protocol ("domain" is 53/tcp and 53/udp; "http" is
//! only 80/tcp). Aliases count as names ("www" is http).

use std::collections::BTreeMap;

use shaper_common::{PROTO_TCP, PROTO_UDP};

pub const ETC_SERVICES: &str = "/etc/services";

/// One protocol and port a service name stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub proto: u8,
    pub port: u16,
}

/// The services database.
#[derive(Clone, Debug, Default)]
pub struct Services {
    by_name: BTreeMap<String, Vec<ServicePort>>,
}

impl Services {
    /// Parses the text of an /etc/services file. Malformed lines are skipped, as
    /// libc's getservbyname skips them.
    pub fn parse(text: &str) -> Self {
        let mut by_name: BTreeMap<String, Vec<ServicePort>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (words.next(), words.next()) else { continue };
            let Some((port, proto)) = port_proto.split_once('/') else { continue };
            let Ok(port) = port.parse::<u16>() else { continue };
            let proto = match proto {
                "tcp" => PROTO_TCP,
                "udp" => PROTO_UDP,
                _ => continue,
            };
            for name in std::iter::once(name).chain(words) {
                let ports = by_name.entry(name.to_string()).or_default();
                let entry = ServicePort { proto, port };
                if !ports.contains(&entry) {
                    ports.push(entry);
                }
            }
        }
        Self { by_name }
    }

    /// Reads /etc/services; a host without one gets an empty database (a rule that
    /// names a service then fails with "unknown service").
    pub fn load_or_empty() -> Self {
        match std::fs::read_to_string(ETC_SERVICES) {
            Ok(text) => Self::parse(&text),
            Err(e) => {
                log::warn!("{ETC_SERVICES}: {e}; service names will not resolve");
                Self::default()
            }
        }
    }

    /// The ports of `name`, or `None` if there is no such service.
    pub fn lookup(&self, name: &str) -> Option<&[ServicePort]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// Every service name, sorted (for glob matches such as `service ~ "http*"`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment line
ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol
domain\t\t53/tcp
domain\t\t53/udp
http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP
broken\t\tnot-a-port/tcp
sctp-only\t99/sctp
";

    #[test]
    fn names_aliases_and_protocols() {
        let s = Services::parse(SAMPLE);
        assert_eq!(s.lookup("ssh"), Some(&[ServicePort { proto: PROTO_TCP, port: 22 }][..]));
        assert_eq!(
            s.lookup("domain"),
            Some(
                &[ServicePort { proto: PROTO_TCP, port: 53 }, ServicePort { proto: PROTO_UDP, port: 53 }][..]
            )
        );
        assert_eq!(s.lookup("www"), s.lookup("http"));
        assert_eq!(s.lookup("broken"), None);
        assert_eq!(s.lookup("sctp-only"), None);
        assert_eq!(s.names().collect::<Vec<_>>(), ["domain", "http", "ssh", "www"]);
    }
}
