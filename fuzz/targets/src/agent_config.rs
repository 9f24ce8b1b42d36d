//! Target `agent_config`: the agent's configuration as `burrow-agent` builds it from its
//! flags (`agent/src/main.rs`): host URLs and service specs parsed by the library
//! (`HostUrl::parse`, `ServiceSpec::parse`), durations by humantime, then
//! `AgentConfig::validate`.
//!
//! The input is text, one flag per line: `host grpc://127.0.0.1:8081`,
//! `service web=127.0.0.1:3000`, `session shell`, `token abc`, `min-idle 4`, ... (the
//! flag names of the binary, without `--`; see `apply`).
//!
//! Asserted for every input:
//! - a parsed host URL or service spec prints as text that parses back to the same value
//!   (the binary re-parses the first host from its printed form), with a port, and the
//!   URL's authority and loopback verdict agree with its parts;
//! - the loopback verdict of a name ignores letter case and one final dot;
//! - validation gives the same answer twice, and a config it accepts keeps every rule
//!   the agent relies on later: 1 to 16 distinct hosts, no cleartext to a remote host
//!   without `insecure`, unique service names, a usable token and replica id, sane
//!   counts and non-zero durations.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use burrow_agent::{
    is_loopback_host, is_loopback_ip, AgentConfig, HostUrl, ServiceSpec, SessionConfig, WorkHook,
    MAX_CONNECTIONS, MAX_HOSTS,
};

/// Runs one input; panics when an invariant breaks.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut flags = Flags::default();
    for line in text.lines() {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        if !apply(&mut flags, name, value) {
            // The binary stops with a usage error before it builds any config.
            return;
        }
    }
    let Some(config) = flags.build() else { return };
    let first = config.validate().map_err(|e| e.to_string());
    let second = config.validate().map_err(|e| e.to_string());
    assert_eq!(first, second, "validation is not deterministic");
    if first.is_ok() {
        check_valid(&config);
    }
}

/// The flags as the binary collects them (clap's defaults where not given).
#[derive(Default)]
struct Flags {
    hosts: Vec<HostUrl>,
    services: Vec<ServiceSpec>,
    sessions: Vec<String>,
    session_env: Vec<String>,
    max_sessions: Option<usize>,
    token: Option<String>,
    numbers: Vec<(&'static str, usize)>,
    durations: Vec<(&'static str, Duration)>,
    replica_id: Option<String>,
    insecure: bool,
    work_hook: Option<PathBuf>,
    work_hook_args: Vec<String>,
}

/// Takes one flag; false for a value the binary's parser would refuse.
fn apply(flags: &mut Flags, name: &str, value: &str) -> bool {
    const NUMBERS: &[&str] = &["connections", "min-idle", "max-streams"];
    const DURATIONS: &[&str] = &[
        "idle-timeout",
        "dial-timeout",
        "connect-timeout",
        "shutdown-grace",
        "diversify-interval",
        "work-hook-timeout",
        "backoff-initial",
        "backoff-max",
    ];
    match name {
        // Repeated, or comma-separated like clap's `value_delimiter = ','`.
        "host" => {
            for url in value.split(',') {
                match HostUrl::parse(url) {
                    Ok(parsed) => {
                        check_host_url(&parsed);
                        flags.hosts.push(parsed);
                    }
                    Err(_) => return false,
                }
            }
        }
        "service" => match value.parse::<ServiceSpec>() {
            Ok(spec) => {
                check_service(&spec);
                flags.services.push(spec);
            }
            Err(_) => return false,
        },
        "session" => flags.sessions.push(value.to_owned()),
        "session-env" => flags.session_env.push(value.to_owned()),
        "max-sessions" => match value.parse() {
            Ok(n) => flags.max_sessions = Some(n),
            Err(_) => return false,
        },
        "token" => flags.token = Some(value.to_owned()),
        "replica-id" => flags.replica_id = Some(value.to_owned()),
        "insecure" => flags.insecure = true,
        "work-hook" => flags.work_hook = Some(PathBuf::from(value)),
        "work-hook-arg" => flags.work_hook_args.push(value.to_owned()),
        "loopback" => check_loopback_name(value),
        _ => {
            if let Some(&flag) = NUMBERS.iter().find(|&&flag| flag == name) {
                match value.parse() {
                    Ok(n) => flags.numbers.push((flag, n)),
                    Err(_) => return false,
                }
            } else if let Some(&flag) = DURATIONS.iter().find(|&&flag| flag == name) {
                match humantime::parse_duration(value) {
                    Ok(d) => flags.durations.push((flag, d)),
                    Err(_) => return false,
                }
            }
            // Anything else is a comment line: it keeps seeds readable.
        }
    }
    true
}

impl Flags {
    /// The config as `agent_main` assembles it; `None` where the binary exits first.
    fn build(self) -> Option<AgentConfig> {
        let first = self.hosts.first()?;
        // As the binary does: the token comes from a file or the environment, never
        // empty by the time it gets here unless given so.
        let token = self.token.unwrap_or_else(|| "fuzz-token".to_owned());
        let mut config = AgentConfig::new(&first.to_string(), token).ok()?;
        assert_eq!(config.hosts[0], *first, "AgentConfig::new re-parses the first host to itself");
        config.hosts = self.hosts;
        config.services = self.services;
        if !self.sessions.is_empty() {
            let mut sessions = SessionConfig::new(self.sessions);
            if !self.session_env.is_empty() {
                sessions.env = self.session_env;
            }
            if let Some(n) = self.max_sessions {
                sessions.max_sessions = n;
            }
            config.sessions = Some(sessions);
        }
        config.insecure = self.insecure;
        if let Some(id) = self.replica_id {
            config.replica_id = id;
        }
        let mut hook_timeout = Duration::from_secs(600);
        for (flag, n) in self.numbers {
            match flag {
                "connections" => config.connections = n,
                "min-idle" => config.min_idle = n,
                _ => config.max_streams = n,
            }
        }
        for (flag, d) in self.durations {
            match flag {
                "idle-timeout" => config.idle_timeout = d,
                "dial-timeout" => config.dial_timeout = d,
                "connect-timeout" => config.connect_timeout = d,
                "shutdown-grace" => config.shutdown_grace = d,
                "diversify-interval" => config.diversify_interval = d,
                "work-hook-timeout" => hook_timeout = d,
                "backoff-initial" => config.backoff.initial = d,
                _ => config.backoff.max = d,
            }
        }
        config.work_hook = self.work_hook.map(|program| WorkHook {
            program,
            args: self.work_hook_args,
            timeout: hook_timeout,
        });
        Some(config)
    }
}

fn check_host_url(url: &HostUrl) {
    let printed = url.to_string();
    assert_eq!(HostUrl::parse(&printed).as_ref(), Ok(url), "{printed:?} does not parse back to {url:?}");
    assert_ne!(url.port(), 0, "{printed:?} has port 0");
    let authority = url.authority();
    assert!(printed.ends_with(&format!("://{authority}")));
    let port_suffix = format!(":{}", url.port());
    assert!(authority.ends_with(&port_suffix));
    let host = &authority[..authority.len() - port_suffix.len()];
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    assert_eq!(bare, url.host(), "the authority names another host");
    assert_eq!(url.is_loopback(), is_loopback_host(url.host()));
    check_loopback_name(url.host());
}

fn check_service(spec: &ServiceSpec) {
    let printed = spec.to_string();
    assert_eq!(printed.parse::<ServiceSpec>().as_ref(), Ok(spec), "{printed:?} does not parse back");
    assert_ne!(spec.port(), 0);
    assert!(!spec.name().is_empty() && spec.name().len() <= burrow_agent::MAX_SERVICE_NAME);
    assert!(!spec.name().contains('-'), "'-' splits service and agent in host names");
}

/// "Any case, an optional final dot" (`is_loopback_host`'s contract), and an address is
/// judged as the address it is.
fn check_loopback_name(host: &str) {
    let verdict = is_loopback_host(host);
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        assert_eq!(verdict, is_loopback_ip(ip), "{host:?}");
        return;
    }
    for variant in [host.to_ascii_uppercase(), host.to_ascii_lowercase()] {
        if variant.parse::<std::net::IpAddr>().is_err() {
            assert_eq!(is_loopback_host(&variant), verdict, "{host:?} vs {variant:?}");
        }
    }
    if !host.ends_with('.') {
        assert_eq!(is_loopback_host(&format!("{host}.")), verdict, "{host:?} with a final dot");
    }
}

/// What the rest of the agent assumes of a config `validate` accepted.
fn check_valid(config: &AgentConfig) {
    assert!((1..=MAX_HOSTS).contains(&config.hosts.len()));
    let distinct: HashSet<String> = config.hosts.iter().map(ToString::to_string).collect();
    assert_eq!(distinct.len(), config.hosts.len(), "a host is listed twice");
    for url in &config.hosts {
        assert!(
            !url.is_cleartext() || url.is_loopback() || config.insecure,
            "cleartext to {url} without --insecure"
        );
    }
    let token = config.token.expose();
    assert!(!token.trim().is_empty() && !token.chars().any(|c| c.is_control() || c == ' '));
    assert!((1..=MAX_CONNECTIONS).contains(&config.connections));
    let mut names = HashSet::new();
    for name in config.services.iter().map(ServiceSpec::name) {
        assert!(names.insert(name.to_owned()), "service {name:?} twice");
    }
    if let Some(sessions) = &config.sessions {
        assert!(!sessions.names.is_empty());
        for name in &sessions.names {
            assert!(names.insert(name.clone()), "session {name:?} shares a service's name");
        }
    }
    assert!(!names.is_empty(), "an agent that offers nothing");
    assert!((1..=128).contains(&config.replica_id.len()));
    assert!(config.replica_id.chars().all(|c| c.is_ascii_graphic()));
    assert!(config.min_idle >= 1 && config.min_idle <= config.max_streams);
    for d in [
        config.idle_timeout,
        config.dial_timeout,
        config.connect_timeout,
        config.keepalive_interval,
        config.keepalive_timeout,
        config.diversify_interval,
        config.backoff.initial,
    ] {
        assert!(!d.is_zero());
    }
    assert!(config.backoff.max >= config.backoff.initial);
}
