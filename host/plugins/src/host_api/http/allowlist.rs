//! The `allow` list of a plugin's outbound HTTP: parsing its entries, matching a
//! request's host and port, and the private-address policy. No I/O and no HTTP client,
//! so any outbound capability can take its allowlist from here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A host as named in an `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// `*.domain`: stored as `.domain`; matches names that end with it.
    Suffix(String),
    Ip(IpAddr),
}

/// One parsed `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowEntry {
    host: HostPattern,
    /// `None`: 80 and 443.
    port: Option<u16>,
}

impl AllowEntry {
    /// Parses one entry; the error says what is wrong with it.
    pub(crate) fn parse(entry: &str) -> Result<AllowEntry, &'static str> {
        if entry.is_empty() {
            return Err("empty entry");
        }
        if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("spaces are not allowed");
        }
        if entry.contains("://") {
            return Err("name a host, not a URL (drop the scheme)");
        }
        if entry.contains('/') {
            return Err("name a host, without a path");
        }
        if entry.contains('@') {
            return Err("name a host, without user info");
        }
        if let Some(rest) = entry.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or("missing `]` after the IPv6 address")?;
            let ip = addr.parse::<Ipv6Addr>().map_err(|_| "not an IPv6 address between `[` and `]`")?;
            let port = match after {
                "" => None,
                _ => Some(parse_port(after.strip_prefix(':').ok_or("expected `:port` after `]`")?)?),
            };
            return Ok(AllowEntry { host: HostPattern::Ip(IpAddr::V6(ip)), port });
        }
        if let Ok(ip) = entry.parse::<Ipv6Addr>() {
            return Ok(AllowEntry { host: HostPattern::Ip(IpAddr::V6(ip)), port: None });
        }
        let (host, port) = match entry.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err("an IPv6 address with a port needs brackets: `[addr]:port`")
            }
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (entry, None),
        };
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(AllowEntry { host: HostPattern::Ip(IpAddr::V4(ip)), port });
        }
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        if let Some(domain) = host.strip_prefix("*.") {
            check_dns_name(domain)?;
            if !domain.contains('.') {
                return Err("a wildcard must be under a domain, not a whole top-level domain");
            }
            return Ok(AllowEntry { host: HostPattern::Suffix(format!(".{domain}")), port });
        }
        if host.contains('*') {
            return Err("`*` may only be the first label (`*.example.com`)");
        }
        check_dns_name(host)?;
        Ok(AllowEntry { host: HostPattern::Name(host.to_owned()), port })
    }

    fn port_matches(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => port == 80 || port == 443,
        }
    }
}

fn parse_port(port: &str) -> Result<u16, &'static str> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port must be a number");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port must be between 1 and 65535"),
        Ok(p) => Ok(p),
    }
}

/// A lowercase DNS host name: labels of letters, digits, `-` and `_`, at most 253 bytes.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name has 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label of a host name has 1 to 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err("a host name has only letters, digits, `-`, `_` and dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of a host name cannot start or end with `-`");
        }
    }
    // `10.1` or `0x7f.1` would be read as an IP address by the resolver.
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) || (last.starts_with("0x") && name.contains('.')) {
        return Err("looks like an IP address but is not a valid one");
    }
    Ok(())
}

/// The host a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(name) => f.write_str(name),
            Target::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Target::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Target {
    /// The host of a request's authority, normalised as `allow` entries are; `None` for
    /// user info or an empty host.
    pub(crate) fn from_authority(authority: &http::uri::Authority) -> Option<Target> {
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host();
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse().ok().map(|ip| Target::Ip(IpAddr::V6(ip)));
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Some(Target::Ip(IpAddr::V4(ip)));
        }
        let name = host.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        (!name.is_empty()).then(|| Target::Name(name.to_owned()))
    }
}

/// The parsed `allow` list.
#[derive(Clone, Default)]
pub(crate) struct Allowlist {
    entries: Vec<AllowEntry>,
}

impl fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

impl Allowlist {
    /// Parses every entry; on failure, the index of the first bad one and what is wrong.
    pub(crate) fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Allowlist, (usize, &'static str)> {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| AllowEntry::parse(entry.as_ref()).map_err(|reason| (index, reason)))
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { entries })
    }

    /// Whether a request for `target` on `port` may leave at all (before any DNS).
    pub(crate) fn allows(&self, target: &Target, port: u16) -> bool {
        self.entries.iter().any(|e| {
            e.port_matches(port)
                && match (&e.host, target) {
                    (HostPattern::Name(n), Target::Name(t)) => n == t,
                    (HostPattern::Suffix(s), Target::Name(t)) => t.len() > s.len() && t.ends_with(s.as_str()),
                    (HostPattern::Ip(a), Target::Ip(b)) => a == b,
                    _ => false,
                }
        })
    }

    /// Whether `ip` is itself an entry (so it may be reached even if it is private).
    fn lists_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.allows(&Target::Ip(ip), port)
    }

    /// Whether a resolved address may be connected to: it is public, or listed itself.
    /// Checked on every address a name resolves to, so whoever controls an allowed
    /// name's DNS cannot point it at the host's own network.
    pub(crate) fn may_reach(&self, ip: IpAddr, port: u16) -> bool {
        !is_prohibited(ip) || self.lists_ip(ip, port)
    }
}

/// True for addresses a plugin must not reach unless explicitly listed: anything that
/// is not global unicast.
fn is_prohibited(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_prohibited_v4(v4),
        IpAddr::V6(v6) => is_prohibited_v6(v6),
    }
}

/// IPv4 networks that are not global unicast (IANA special-purpose registry).
const PROHIBITED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (CGNAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local (cloud metadata lives here)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// IPv6 networks inside 2000::/3 that are not global unicast.
const PROHIBITED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments (Teredo, ORCHID, ...)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
];

fn is_prohibited_v4(ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    PROHIBITED_V4.iter().any(|(net, len)| (ip ^ u32::from(*net)) >> (32 - len) == 0)
}

fn is_prohibited_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_prohibited_v4(v4);
    }
    let bits = u128::from(ip);
    let in_net = |net: Ipv6Addr, len: u8| (bits ^ u128::from(net)) >> (128 - len) == 0;
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
    if in_net(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return is_prohibited_v4(Ipv4Addr::from(bits as u32));
    }
    if in_net(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return is_prohibited_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    // Only 2000::/3 is global unicast: this excludes ::, ::1, IPv4-compatible, discard,
    // local-use NAT64, unique-local, link-local, site-local and multicast at once.
    !in_net(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)
        || PROHIBITED_V6.iter().any(|(net, len)| in_net(*net, *len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str) -> AllowEntry {
        AllowEntry::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist { entries: entries.iter().map(|e| entry(e)).collect() }
    }

    fn name(n: &str) -> Target {
        Target::Name(n.into())
    }

    fn ip(s: &str) -> Target {
        Target::Ip(s.parse().unwrap())
    }

    #[test]
    fn allow_entries_parse() {
        let name_entry = |n: &str, port| AllowEntry { host: HostPattern::Name(n.into()), port };
        assert_eq!(entry("GitLab.Example.com."), name_entry("gitlab.example.com", None));
        assert_eq!(entry("api.example.com:8443"), name_entry("api.example.com", Some(8443)));
        assert_eq!(entry("my_host"), name_entry("my_host", None));
        assert_eq!(
            entry("*.Example.com:443"),
            AllowEntry { host: HostPattern::Suffix(".example.com".into()), port: Some(443) }
        );
        let ip_entry = |s: &str, port| AllowEntry { host: HostPattern::Ip(s.parse().unwrap()), port };
        assert_eq!(entry("10.0.0.5"), ip_entry("10.0.0.5", None));
        assert_eq!(entry("127.0.0.1:8080"), ip_entry("127.0.0.1", Some(8080)));
        assert_eq!(entry("[::1]:8080"), ip_entry("::1", Some(8080)));
        assert_eq!(entry("[fd00::5]"), ip_entry("fd00::5", None));
        assert_eq!(entry("2001:db8::1"), ip_entry("2001:db8::1", None));

        for bad in [
            "",
            " example.com",
            "https://example.com",
            "example.com/path",
            "user@example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "example.com:http",
            "*",
            "*.com",
            "a.*.example.com",
            "*example.com",
            "exa mple.com",
            "-bad.example.com",
            "bad-.example.com",
            "a..b",
            "ex!ample.com",
            "10.1",
            "256.1.1.1",
            "0x7f.1",
            "::1:8080:",
            "fd00::5:443x",
            "[fd00::5",
            "[fd00::5]443",
            "[10.0.0.1]:80",
            "[::1]:0",
            "*.10.0.0.1",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad:?} was accepted: {:?}", AllowEntry::parse(bad));
        }
        assert!(AllowEntry::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn allowlist_matches_hosts_and_ports() {
        let allow = list(&[
            "api.example.com",
            "*.corp.example:8443",
            "127.0.0.1:8080",
            "[::1]:9000",
            "[2001:db8::7]",
        ]);
        // A bare host allows the default ports only.
        assert!(allow.allows(&name("api.example.com"), 443));
        assert!(allow.allows(&name("api.example.com"), 80));
        assert!(!allow.allows(&name("api.example.com"), 8080));
        assert!(!allow.allows(&name("example.com"), 443));
        assert!(!allow.allows(&name("evil-api.example.com"), 443));
        assert!(!allow.allows(&name("api.example.com.evil.net"), 443));
        // Wildcards cover subdomains at any depth, not the domain itself.
        assert!(allow.allows(&name("git.corp.example"), 8443));
        assert!(allow.allows(&name("a.b.corp.example"), 8443));
        assert!(!allow.allows(&name("corp.example"), 8443));
        assert!(!allow.allows(&name("xcorp.example"), 8443));
        assert!(!allow.allows(&name("git.corp.example"), 443));
        // IP entries match IP targets only, with their port.
        assert!(allow.allows(&ip("127.0.0.1"), 8080));
        assert!(!allow.allows(&ip("127.0.0.1"), 80));
        assert!(!allow.allows(&name("localhost"), 8080));
        assert!(!allow.allows(&ip("127.0.0.2"), 8080));
        assert!(allow.allows(&ip("::1"), 9000));
        assert!(!allow.allows(&ip("::ffff:127.0.0.1"), 8080));
        assert!(allow.allows(&ip("2001:db8::7"), 443));
        assert!(!allow.allows(&ip("2001:db8::7"), 8443));
        assert!(allow.lists_ip("127.0.0.1".parse().unwrap(), 8080));
        assert!(!allow.lists_ip("127.0.0.1".parse().unwrap(), 8081));
        // Empty: nothing.
        assert!(!Allowlist::default().allows(&name("api.example.com"), 443));
    }

    #[test]
    fn request_targets_are_normalised() {
        let target = |a: &str| Target::from_authority(&a.parse().unwrap());
        assert_eq!(target("API.Example.com."), Some(name("api.example.com")));
        assert_eq!(target("api.example.com:8080"), Some(name("api.example.com")));
        assert_eq!(target("127.0.0.1:80"), Some(ip("127.0.0.1")));
        assert_eq!(target("[::1]:80"), Some(ip("::1")));
        assert_eq!(target("user:pw@example.com"), None);
    }

    #[test]
    fn non_public_addresses_are_prohibited() {
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001::1",
            "2001:db8::1",
            "2001:10::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "3fff::1",
            "4000::1",
        ] {
            assert!(is_prohibited(addr.parse().unwrap()), "{addr} should be prohibited");
        }
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
        ] {
            assert!(!is_prohibited(addr.parse().unwrap()), "{addr} should be allowed");
        }
    }
}
