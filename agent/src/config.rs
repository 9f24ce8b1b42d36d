//! Agent configuration: the host URLs, the token, the offered services and the tuning knobs.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use burrow_proto::Secret;

use crate::backoff::Backoff;

/// A configuration value is malformed or out of range. The message names the offending
/// flag or field and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The host URL could not be parsed.
    #[error("invalid host URL {url:?}: {reason}")]
    HostUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--service NAME=ADDR` value is malformed.
    #[error("invalid service {spec:?}: {reason}")]
    Service {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two services share a name.
    #[error("service {0:?} is listed twice; service names must be unique")]
    DuplicateService(String),
    /// No service is offered: the agent would refuse every request.
    #[error("no services configured: pass at least one --service NAME=HOST:PORT or --session NAME")]
    NoServices,
    /// The token is empty.
    #[error("the agent token is empty")]
    EmptyToken,
    /// A cleartext host URL (`grpc://`, `ws://`) names a host that is not loopback, and
    /// [`AgentConfig::insecure`] is not set: the token would cross the network unencrypted.
    #[error(
        "refusing cleartext host URL {url}: the agent token would cross the network unencrypted; \
         use grpcs:// or wss://, or pass --insecure to allow it (cleartext is allowed without \
         --insecure only to a loopback address or a localhost name)"
    )]
    Cleartext {
        /// The URL as parsed.
        url: String,
    },
    /// A numeric or duration field is out of range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field (named like its command-line flag).
        field: &'static str,
        /// The rule it broke.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

/// How the agent reaches the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// gRPC over cleartext HTTP/2 (h2c, prior knowledge).
    Grpc,
    /// gRPC over TLS, ALPN `h2`.
    Grpcs,
    /// gRPC (HTTP/2) inside one cleartext WebSocket connection.
    Ws,
    /// gRPC (HTTP/2) inside one WebSocket connection over TLS, ALPN `http/1.1`.
    Wss,
}

impl Scheme {
    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Grpc => "grpc",
            Scheme::Grpcs => "grpcs",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// TLS is used on the TCP connection.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Grpcs | Scheme::Wss)
    }

    /// HTTP/2 rides inside a WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    /// Port used when the URL names none.
    pub fn default_port(self) -> u16 {
        if self.is_tls() {
            443
        } else {
            80
        }
    }
}

/// A parsed host URL: `grpc://`, `grpcs://`, `ws://` or `wss://`, a host name or IP
/// address, and an optional port (default 80, or 443 with TLS). No path, query or
/// credentials: the WebSocket path is fixed ([`burrow_proto::WS_PATH`]) and the token
/// travels as gRPC metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUrl {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl HostUrl {
    /// Parse a host URL.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| ConfigError::HostUrl { url: url.to_owned(), reason: reason.to_owned() };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            err("expected SCHEME://HOST[:PORT] with scheme grpc, grpcs, ws or wss (e.g. grpc://127.0.0.1:8443)")
        })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "grpc" => Scheme::Grpc,
            "grpcs" => Scheme::Grpcs,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "http" | "https" => {
                return Err(err(
                    "use grpc:// or grpcs:// for gRPC, or ws:// or wss:// to tunnel through WebSocket",
                ))
            }
            _ => return Err(err("unsupported scheme; expected grpc, grpcs, ws or wss")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(err(
                "paths, queries and fragments are not supported; give only SCHEME://HOST[:PORT]",
            ));
        }
        if authority.contains('@') {
            return Err(err("credentials in the URL are not supported; the token comes from BURROW_AGENT_TOKEN or --token-file"));
        }
        let (host, port) = split_host_port(authority).map_err(|reason| err(&reason))?;
        let port = port.unwrap_or_else(|| scheme.default_port());
        Ok(Self { scheme, host, port })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port (explicit or the scheme's default).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// No TLS (`grpc://`, `ws://`): the token and every tunnel travel unencrypted.
    pub fn is_cleartext(&self) -> bool {
        !self.scheme.is_tls()
    }

    /// The host is known to be this machine from the URL alone: see [`is_loopback_host`].
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }
}

/// `host` (an IP address, IPv6 with or without brackets, or a DNS name) is a literal
/// loopback address (`127.0.0.0/8`, `::1`, `::ffff:127.x.y.z`) or a `localhost` name
/// (`localhost`, `*.localhost`, any case, an optional final dot). Nothing is resolved: a
/// name that merely resolves to a loopback address is not known at configuration time,
/// so it does not count.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return is_loopback_ip(ip);
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    name == "localhost"
        || name
            .strip_suffix(".localhost")
            .is_some_and(|label| !label.is_empty() && !label.starts_with('.') && !label.ends_with('.'))
}

/// A loopback address, IPv4-mapped IPv6 (`::ffff:127.0.0.1`) included.
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

impl fmt::Display for HostUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

impl FromStr for HostUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Split `host[:port]`, `[v6][:port]`. The port, when present, must be 1..=65535.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("expected ':PORT' after ']'")?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("put IPv6 addresses in brackets, e.g. [::1]:8443".to_owned())
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if !host.contains(':')
        && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!("{host:?} is not a valid host name"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{p:?} is not a valid port (1-65535)")),
            Ok(p) => Some(p),
        },
    };
    Ok((host.to_owned(), port))
}

/// Longest service name: it becomes a DNS label in the host's router (`<service>-<agent>`).
pub const MAX_SERVICE_NAME: usize = 63;

/// One service the agent may dial: `NAME=HOST:PORT`.
///
/// Names are `[a-z0-9][a-z0-9_]*`, at most 63 characters. They hold no `-` because the
/// host's router splits `<service>-<agent>` at the first `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    name: String,
    host: String,
    port: u16,
}

impl ServiceSpec {
    /// Build a spec from a name and a `HOST:PORT` address.
    pub fn new(name: &str, addr: &str) -> Result<Self, ConfigError> {
        let spec = format!("{name}={addr}");
        let err = |reason: String| ConfigError::Service { spec: spec.clone(), reason };
        validate_service_name(name).map_err(err)?;
        let (host, port) = split_host_port(addr).map_err(|r| err(format!("address {addr:?}: {r}")))?;
        let port = port.ok_or_else(|| err(format!("address {addr:?} needs a port, e.g. 127.0.0.1:3000")))?;
        Ok(Self { name: name.to_owned(), host, port })
    }

    /// Parse `NAME=HOST:PORT`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let (name, addr) = spec.split_once('=').ok_or_else(|| ConfigError::Service {
            spec: spec.to_owned(),
            reason: "expected NAME=HOST:PORT, e.g. web=127.0.0.1:3000".to_owned(),
        })?;
        Self::new(name.trim(), addr.trim())
    }

    /// Service name, as the host asks for it in `Dial`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host name or IP address the agent connects to (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port the agent connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `HOST:PORT`, with brackets around an IPv6 address.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for ServiceSpec {
    type Err = ConfigError;

    /// Parse `NAME=HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.addr())
    }
}

fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(format!("the name is longer than {MAX_SERVICE_NAME} characters"));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or_default();
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("the name must start with a lowercase letter or a digit".to_owned());
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        let hint = if bad == '-' { " ('-' separates service and agent in host names; use '_')" } else { "" };
        return Err(format!("the name may only contain a-z, 0-9 and '_', found {bad:?}{hint}"));
    }
    Ok(())
}

/// Everything the agent needs to run. Build it with [`AgentConfig::new`], then set the
/// fields; [`run`](crate::run) calls [`validate`](AgentConfig::validate) first.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The host's agent port: one URL per replica, or one load-balanced URL, or a mix
    /// (1 to [`MAX_HOSTS`]). Connection slot `i` dials `hosts[i % len]` first and moves
    /// to the next URL after each failure.
    pub hosts: Vec<HostUrl>,
    /// Simultaneous connections, each to a different host replica when there are that
    /// many (default 2, 1 to [`MAX_CONNECTIONS`]).
    pub connections: usize,
    /// A connection kept on a replica another connection already holds (there were not
    /// enough distinct replicas) tries to move to a distinct one after this long, ±20%
    /// (default 60 s); each round that finds none doubles the wait, up to 30 min.
    pub diversify_interval: Duration,
    /// Sent as `authorization: Bearer <token>` on every RPC.
    pub token: Secret,
    /// The only destinations the agent ever dials.
    pub services: Vec<ServiceSpec>,
    /// Interactive sessions (SSH, web terminals) the agent serves itself; `None`: none.
    pub sessions: Option<crate::SessionConfig>,
    /// Extra trusted CA certificates (PEM), added to the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Allow cleartext host URLs (`grpc://`, `ws://`) to hosts that are not loopback
    /// (`--insecure`; default false). Without it [`validate`](AgentConfig::validate)
    /// refuses them, since the token would cross the network unencrypted; cleartext to a
    /// literal loopback address or a `localhost` name ([`is_loopback_host`]) is always
    /// allowed. Either way [`run`](crate::run) logs a warning for cleartext URLs.
    pub insecure: bool,
    /// Distinguishes agent processes sharing one token. Default: `$HOSTNAME`, else random.
    pub replica_id: String,
    /// Parked tunnels kept ready for the host, per connection (default 4).
    pub min_idle: usize,
    /// Ceiling on tunnels, parked plus active, per connection (default 1000).
    pub max_streams: usize,
    /// Parked tunnels above `min_idle` close after this long unused (default 60 s).
    pub idle_timeout: Duration,
    /// Time allowed to connect to a service (default 10 s).
    pub dial_timeout: Duration,
    /// Time allowed to reach the host and complete the handshake: TCP, TLS, WebSocket
    /// upgrade, `Hello`/`Welcome` (default 10 s).
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval on the host connection (default 30 s).
    pub keepalive_interval: Duration,
    /// A ping unanswered this long drops the connection (default 20 s).
    pub keepalive_timeout: Duration,
    /// Reconnect delays after connection failures.
    pub backoff: Backoff,
    /// Reconnect delays after authentication or version rejections.
    pub auth_backoff: Backoff,
    /// How long active tunnels may finish on shutdown (default 10 s).
    pub shutdown_grace: Duration,
    /// Runs the work items the host queues for this agent (`--work-hook`); `None`: the
    /// agent does not ask for work.
    pub work_hook: Option<crate::WorkHook>,
}

/// Default parked-tunnel floor.
pub const DEFAULT_MIN_IDLE: usize = 4;
/// Default tunnel ceiling.
pub const DEFAULT_MAX_STREAMS: usize = 1000;
/// Default lifetime of surplus parked tunnels.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default service connect timeout.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default host connect-and-handshake timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default shutdown grace period.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default number of simultaneous host connections.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Most simultaneous host connections.
pub const MAX_CONNECTIONS: usize = 16;
/// Most host URLs.
pub const MAX_HOSTS: usize = 16;
/// Default interval between attempts to move a duplicate connection to a distinct replica.
pub const DEFAULT_DIVERSIFY_INTERVAL: Duration = Duration::from_secs(60);

impl AgentConfig {
    /// A configuration with one host URL, every default and no services yet.
    pub fn new(host: &str, token: impl Into<String>) -> Result<Self, ConfigError> {
        let token = token.into();
        if token.trim().is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        Ok(Self {
            hosts: vec![HostUrl::parse(host)?],
            connections: DEFAULT_CONNECTIONS,
            diversify_interval: DEFAULT_DIVERSIFY_INTERVAL,
            token: Secret::new(token),
            services: Vec::new(),
            sessions: None,
            ca_file: None,
            insecure: false,
            replica_id: default_replica_id(),
            min_idle: DEFAULT_MIN_IDLE,
            max_streams: DEFAULT_MAX_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            backoff: Backoff::default(),
            auth_backoff: Backoff::auth_default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            work_hook: None,
        })
    }

    /// Add another host URL, builder style.
    pub fn with_host(mut self, url: &str) -> Result<Self, ConfigError> {
        self.hosts.push(HostUrl::parse(url)?);
        Ok(self)
    }

    /// Add a service (`NAME=HOST:PORT`), builder style.
    pub fn with_service(mut self, spec: &str) -> Result<Self, ConfigError> {
        self.services.push(spec.parse()?);
        Ok(self)
    }

    /// Check every rule; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token.expose().trim().is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        if self.token.expose().chars().any(|c| c.is_control() || c == ' ') {
            return Err(invalid("token", "contains whitespace or control characters"));
        }
        if self.hosts.is_empty() {
            return Err(invalid("host", "at least one host URL is required"));
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(invalid("host", format!("{} URLs given; at most {MAX_HOSTS}", self.hosts.len())));
        }
        for (i, url) in self.hosts.iter().enumerate() {
            if self.hosts[..i].contains(url) {
                return Err(invalid("host", format!("{url} is listed twice")));
            }
            if url.is_cleartext() && !url.is_loopback() && !self.insecure {
                return Err(ConfigError::Cleartext { url: url.to_string() });
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(invalid(
                "connections",
                format!("{} is not in 1..={MAX_CONNECTIONS}", self.connections),
            ));
        }
        if self.services.is_empty() && self.sessions.is_none() {
            return Err(ConfigError::NoServices);
        }
        let mut seen = HashSet::new();
        for service in &self.services {
            // Re-check: fields are public and may have been built by hand.
            ServiceSpec::new(service.name(), &service.addr())?;
            if !seen.insert(service.name()) {
                return Err(ConfigError::DuplicateService(service.name().to_owned()));
            }
        }
        if let Some(sessions) = &self.sessions {
            sessions.validate().map_err(|(field, reason)| invalid(field, reason))?;
            for name in &sessions.names {
                validate_service_name(name)
                    .map_err(|reason| ConfigError::Service { spec: format!("--session {name}"), reason })?;
                if !seen.insert(name) {
                    return Err(ConfigError::DuplicateService(name.clone()));
                }
            }
        }
        if self.replica_id.is_empty() || self.replica_id.len() > 128 {
            return Err(invalid("replica-id", "must be 1 to 128 characters"));
        }
        if !self.replica_id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid("replica-id", "may only contain printable ASCII without spaces"));
        }
        if self.max_streams == 0 {
            return Err(invalid("max-streams", "must be at least 1"));
        }
        if self.min_idle == 0 {
            return Err(invalid("min-idle", "must be at least 1, or the host could never reach this agent"));
        }
        if self.min_idle > self.max_streams {
            return Err(invalid(
                "min-idle",
                format!("{} is above --max-streams {}", self.min_idle, self.max_streams),
            ));
        }
        for (field, value) in [
            ("idle-timeout", self.idle_timeout),
            ("dial-timeout", self.dial_timeout),
            ("connect-timeout", self.connect_timeout),
            ("keepalive-interval", self.keepalive_interval),
            ("keepalive-timeout", self.keepalive_timeout),
            ("diversify-interval", self.diversify_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        self.backoff.validate("backoff")?;
        self.auth_backoff.validate("auth-backoff")?;
        if let Some(hook) = &self.work_hook {
            hook.validate()?;
        }
        Ok(())
    }
}

/// `$HOSTNAME` (a pod name under Kubernetes, so replicas differ), else a random id.
pub fn default_replica_id() -> String {
    match std::env::var("HOSTNAME") {
        Ok(h) if !h.is_empty() && h.len() <= 128 && h.chars().all(|c| c.is_ascii_graphic()) => h,
        _ => format!("agent-{:016x}", rand::random::<u64>()),
    }
}

#[cfg(test)]
mod tests;
