//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`), to allow-listed hosts only.
//!
//! wasmtime-wasi-http builds the request from the guest's resources and hands it to
//! [`OutboundHooks::send_request`], which decides whether it may leave:
//!
//! 1. The scheme is `http` or `https`, and the authority (`host[:port]`, port 80/443 by
//!    default) matches an `allow` entry; otherwise `http-request-denied`.
//! 2. A host name is resolved once. If ANY address it resolves to is not globally
//!    routable (loopback, private, link-local, unique-local, CGNAT, multicast,
//!    documentation, ...), the request is refused with `destination-ip-prohibited`,
//!    unless that very IP is itself an `allow` entry (with a matching port). So
//!    `127.0.0.1:8080` on the list reaches a local service, but `localhost` (or any name
//!    pointing at 127.0.0.1) does not: a plugin allowed `gitlab.example.com` cannot be
//!    turned against the host's own network by whoever controls that DNS record.
//! 3. The connection goes to the addresses vetted in step 2, never to a second lookup
//!    (DNS rebinding). TLS uses rustls (ring) with the Mozilla roots plus `ca_file`, and
//!    the request's host as SNI and verified name.
//!
//! Connect (DNS, TCP, TLS), first-byte and between-bytes timeouts come from the guest's
//! `request-options`, each capped by the plugin's `timeout`; the response body is cut at
//! `max_response_bytes`. Refusals are logged at debug with the plugin and the host, never
//! the headers (they may carry credentials).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Default for `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `max_response_bytes` (1 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
/// Largest `max_response_bytes` accepted (64 MiB, a plugin's default memory).
pub const MAX_RESPONSE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;

/// Largest response head (status line and headers) accepted from a server.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A plugin's outbound HTTP settings (its `http` table in the host configuration).
///
/// ```toml
/// allow = ["gitlab.example.com", "*.googleapis.com", "10.0.0.5:8080", "[fd00::5]:443"]
/// timeout = "5s"
/// max_response_bytes = 1048576
/// ca_file = "/etc/burrow/internal-ca.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundHttpConfig {
    /// Hosts the plugin may reach: `host`, `host:port`, `*.domain` (any name under
    /// `domain`, not `domain` itself), IPv4 literals, IPv6 as `[addr]` / `[addr]:port`
    /// (or bare without a port). Without a port, 80 and 443 are allowed. Empty (the
    /// default): no outbound HTTP at all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Upper bound of each phase: connecting (DNS, TCP, TLS), the first response byte,
    /// and each gap between body bytes. Default 5s, at most 60s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A response body longer than this fails the read. Default 1 MiB, at most 64 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Extra trust roots (PEM) for `https`, on top of the Mozilla set; for an
    /// internal CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}

impl Default for OutboundHttpConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ca_file: None,
        }
    }
}

/// What is wrong with an [`OutboundHttpConfig`]; the message starts with the key.
#[derive(Debug, thiserror::Error)]
pub enum OutboundHttpConfigError {
    #[error("allow[{index}]: {entry:?}: {reason}")]
    Allow { index: usize, entry: String, reason: &'static str },
    #[error("timeout: must be more than 0 and at most {}, got {}", humantime::format_duration(*max), humantime::format_duration(*got))]
    Timeout { got: Duration, max: Duration },
    #[error("max_response_bytes: must be between 1 and {max}, got {got}")]
    MaxResponseBytes { got: u64, max: u64 },
    #[error("ca_file: cannot read {}: {source}", path.display())]
    CaFileRead { path: PathBuf, source: std::io::Error },
    #[error("ca_file: {}: {reason}", path.display())]
    CaFileInvalid { path: PathBuf, reason: String },
}

impl OutboundHttpConfig {
    /// Checks every key without touching the file system (`ca_file` is read by
    /// [`OutboundPolicy::new`]).
    pub fn validate(&self) -> Result<(), OutboundHttpConfigError> {
        self.allowlist()?;
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(OutboundHttpConfigError::Timeout { got: self.timeout, max: MAX_TIMEOUT });
        }
        if self.max_response_bytes == 0 || self.max_response_bytes > MAX_RESPONSE_BYTES_LIMIT {
            return Err(OutboundHttpConfigError::MaxResponseBytes {
                got: self.max_response_bytes,
                max: MAX_RESPONSE_BYTES_LIMIT,
            });
        }
        Ok(())
    }

    fn allowlist(&self) -> Result<Allowlist, OutboundHttpConfigError> {
        let entries = self
            .allow
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                AllowEntry::parse(entry).map_err(|reason| OutboundHttpConfigError::Allow {
                    index,
                    entry: entry.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { entries })
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, OutboundHttpConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca_file {
            let invalid =
                |reason: String| OutboundHttpConfigError::CaFileInvalid { path: path.clone(), reason };
            let pem = std::fs::read(path)
                .map_err(|source| OutboundHttpConfigError::CaFileRead { path: path.clone(), source })?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| invalid(format!("bad PEM: {e}")))?;
                roots.add(cert).map_err(|e| invalid(format!("unusable certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(invalid("holds no PEM certificate".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| OutboundHttpConfigError::CaFileInvalid {
                path: self.ca_file.clone().unwrap_or_default(),
                reason: format!("TLS setup: {e}"),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The client speaks HTTP/1.1 only; say so, or an h2-preferring server may pick h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A host as named in an `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// `*.domain`: stored as `.domain`; matches names that end with it.
    Suffix(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowEntry {
    host: HostPattern,
    /// `None`: 80 and 443.
    port: Option<u16>,
}

impl AllowEntry {
    fn parse(entry: &str) -> Result<AllowEntry, &'static str> {
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
enum Target {
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
    fn from_authority(authority: &http::uri::Authority) -> Option<Target> {
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
#[derive(Debug, Clone, Default)]
struct Allowlist {
    entries: Vec<AllowEntry>,
}

impl Allowlist {
    fn allows(&self, target: &Target, port: u16) -> bool {
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

/// A plugin's compiled outbound settings: the allowlist, limits and TLS client. Built
/// once per plugin load ([`OutboundPolicy::new`] reads `ca_file`), shared by its calls.
pub(crate) struct OutboundPolicy {
    allow: Allowlist,
    timeout: Duration,
    max_response_bytes: u64,
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for OutboundPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundPolicy")
            .field("allow", &self.allow.entries)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl OutboundPolicy {
    /// Validates `config`, reads its `ca_file` and builds the TLS client.
    pub(crate) fn new(config: &OutboundHttpConfig) -> Result<Self, OutboundHttpConfigError> {
        config.validate()?;
        Ok(Self {
            allow: config.allowlist()?,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            tls: config.tls_config()?,
        })
    }
}

/// The `wasi:http` hooks of one call's store: the plugin's policy plus its name for the
/// log. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct OutboundHooks {
    policy: Arc<OutboundPolicy>,
    plugin: Arc<str>,
}

impl OutboundHooks {
    /// `plugin` names the plugin in refusal logs.
    pub(crate) fn new(policy: Arc<OutboundPolicy>, plugin: Arc<str>) -> Self {
        Self { policy, plugin }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn is_supported_scheme(&mut self, scheme: &Scheme) -> bool {
        *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send> {
        // `fut` reports response-side errors to the guest's request body stream; this
        // implementation reports them through the response body instead, like the
        // default one.
        drop(fut);
        let hooks = self.clone();
        Box::new(async move { hooks.send(request, options).await })
    }
}

/// The request's deadlines, each the guest's wish capped by the plugin's `timeout`.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Deadlines {
    fn new(cap: Duration, options: Option<RequestOptions>) -> Self {
        let options = options.unwrap_or_default();
        let pick = |wish: Option<Duration>| wish.map_or(cap, |w| w.min(cap));
        Self {
            connect: pick(options.connect_timeout),
            first_byte: pick(options.first_byte_timeout),
            between_bytes: pick(options.between_bytes_timeout),
        }
    }
}

impl OutboundHooks {
    fn refuse(&self, target: &dyn fmt::Display, reason: &str, error: HttpError) -> HttpError {
        tracing::debug!(plugin = %self.plugin, host = %target, reason, "outbound HTTP refused");
        error
    }

    async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
        let uri = request.uri().clone();
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => {
                return Err(self.refuse(
                    authority,
                    "scheme is not http or https",
                    HttpError::HttpRequestDenied,
                ))
            }
        };
        let target = Target::from_authority(authority).ok_or(HttpError::HttpRequestUriInvalid)?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let policy = &*self.policy;
        if !policy.allow.allows(&target, port) {
            let shown = format!("{target}:{port}");
            return Err(self.refuse(&shown, "not on the allowlist", HttpError::HttpRequestDenied));
        }

        let deadlines = Deadlines::new(policy.timeout, options);
        let connect_by = Instant::now() + deadlines.connect;
        let addrs = match &target {
            Target::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Target::Name(name) => resolve(name, port, connect_by).await?,
        };
        if let Some(bad) =
            addrs.iter().find(|a| is_prohibited(a.ip()) && !policy.allow.lists_ip(a.ip(), port))
        {
            let shown = format!("{target}:{port} ({})", bad.ip());
            return Err(self.refuse(
                &shown,
                "resolves to a non-public address",
                HttpError::DestinationIpProhibited,
            ));
        }

        let tcp = connect(&addrs, connect_by).await?;
        // The head goes out in one write; Nagle would only delay it.
        let _ = tcp.set_nodelay(true);

        // Origin form on the wire (the authority travels in `Host`), as a non-proxy
        // client sends it.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        if !request.headers().contains_key(http::header::HOST) {
            let host = http::HeaderValue::from_str(authority.as_str())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            request.headers_mut().insert(http::header::HOST, host);
        }

        if tls {
            let name = match &target {
                Target::Ip(ip) => ServerName::IpAddress((*ip).into()),
                Target::Name(name) => {
                    ServerName::try_from(name.clone()).map_err(|_| HttpError::HttpRequestUriInvalid)?
                }
            };
            let connector = tokio_rustls::TlsConnector::from(policy.tls.clone());
            let stream = tokio::time::timeout_at(connect_by, connector.connect(name, tcp))
                .await
                .map_err(|_| HttpError::ConnectionTimeout)?
                .map_err(|e| tls_error(&e))?;
            self.exchange(stream, request, deadlines).await
        } else {
            self.exchange(tcp, request, deadlines).await
        }
    }

    /// Sends the request over an open connection and waits for the response head.
    async fn exchange<S>(
        &self,
        stream: S,
        request: http::Request<WasiBody>,
        deadlines: Deadlines,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD)
            .handshake::<_, WasiBody>(TokioIo::new(stream))
            .await
            .map_err(|e| hyper_error(&e))?;
        let mut conn = Box::pin(conn);
        // A HEAD response (and 204/304) declares a length it does not send.
        let bodiless_request = request.method() == http::Method::HEAD;
        let send = tokio::time::timeout(deadlines.first_byte, sender.send_request(request));
        tokio::pin!(send);
        // The connection must be polled for the request to make progress; it may also
        // finish first (the server closed), after which `send` resolves too.
        let mut finished = None;
        let response = loop {
            tokio::select! {
                response = &mut send => break response,
                done = &mut conn, if finished.is_none() => finished = Some(done),
            }
        };
        let response =
            response.map_err(|_| HttpError::ConnectionReadTimeout)?.map_err(|e| hyper_error(&e))?;

        let limit = self.policy.max_response_bytes;
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let bodiless = bodiless_request
            || response.status() == http::StatusCode::NO_CONTENT
            || response.status() == http::StatusCode::NOT_MODIFIED;
        if let Some(len) = declared.filter(|len| *len > limit && !bodiless) {
            return Err(HttpError::HttpResponseBodySize(Some(len)));
        }
        let response = response.map(|incoming| {
            ResponseBody {
                incoming,
                idle: Box::pin(tokio::time::sleep(deadlines.between_bytes)),
                between_bytes: deadlines.between_bytes,
                received: 0,
                limit,
                done: false,
            }
            .boxed_unsync()
        });
        let io: IoFuture = Box::new(async move {
            match finished {
                Some(done) => done,
                None => conn.await,
            }
            .map_err(|e| hyper_error(&e))
        });
        Ok((response, io))
    }
}

async fn resolve(name: &str, port: u16, by: Instant) -> Result<Vec<SocketAddr>, HttpError> {
    let addrs = tokio::time::timeout_at(by, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| HttpError::DnsTimeout)?
        .map_err(|e| HttpError::DnsError { rcode: Some(e.to_string()), info_code: None })?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(HttpError::DnsError { rcode: Some("no address".into()), info_code: None });
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that answers, all before `by`.
async fn connect(addrs: &[SocketAddr], by: Instant) -> Result<TcpStream, HttpError> {
    let mut last = HttpError::ConnectionTimeout;
    for addr in addrs {
        match tokio::time::timeout_at(by, TcpStream::connect(addr)).await {
            Err(_) => return Err(HttpError::ConnectionTimeout),
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                last = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
                    std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                        HttpError::DestinationIpUnroutable
                    }
                    _ => HttpError::DestinationUnavailable,
                }
            }
        }
    }
    Err(last)
}

fn tls_error(e: &std::io::Error) -> HttpError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            HttpError::TlsCertificateError
        }
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => HttpError::TlsProtocolError,
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => HttpError::ConnectionTerminated,
        None => HttpError::TlsProtocolError,
    }
}

fn hyper_error(e: &hyper::Error) -> HttpError {
    // A failing request body (the guest's stream) surfaces as hyper's cause.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(body) = cause.downcast_ref::<HttpError>() {
            return match body {
                HttpError::HttpRequestBodySize(size) => HttpError::HttpRequestBodySize(*size),
                other => HttpError::InternalError(Some(format!("request body: {other}"))),
            };
        }
        source = cause.source();
    }
    if e.is_timeout() {
        HttpError::HttpResponseTimeout
    } else if e.is_parse_too_large() {
        HttpError::HttpResponseHeaderSectionSize(None)
    } else if e.is_incomplete_message() {
        HttpError::HttpResponseIncomplete
    } else if e.is_canceled() || e.is_closed() {
        HttpError::ConnectionTerminated
    } else {
        HttpError::HttpProtocolError
    }
}

/// The response body: bounded in size, and failing when the server stalls longer than
/// the between-bytes timeout.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    idle: Pin<Box<Sleep>>,
    between_bytes: Duration,
    received: u64,
    limit: u64,
    done: bool,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let fail = |this: &mut Self, e: HttpError| {
            this.done = true;
            Poll::Ready(Some(Err(e)))
        };
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        let received = this.received;
                        return fail(this, HttpError::HttpResponseBodySize(Some(received)));
                    }
                }
                this.idle.as_mut().reset(Instant::now() + this.between_bytes);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => fail(this, hyper_error(&e)),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.idle.as_mut().poll(cx));
                fail(this, HttpError::ConnectionReadTimeout)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{Empty, Full};
    use tokio::net::TcpListener;

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

    #[test]
    fn config_parses_and_validates() {
        let config: OutboundHttpConfig = toml::from_str("").unwrap();
        assert_eq!(config, OutboundHttpConfig::default());
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        config.validate().unwrap();

        let config: OutboundHttpConfig = toml::from_str(
            r#"
            allow = ["gitlab.example.com", "*.example.org:8443", "[::1]:8080"]
            timeout = "2s 500ms"
            max_response_bytes = 4096
            ca_file = "/etc/ca.pem"
            "#,
        )
        .unwrap();
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(config.max_response_bytes, 4096);
        config.validate().unwrap();

        assert!(toml::from_str::<OutboundHttpConfig>("allowed = []").is_err(), "unknown keys are refused");

        let err = |toml: &str| {
            toml::from_str::<OutboundHttpConfig>(toml).unwrap().validate().unwrap_err().to_string()
        };
        let e = err(r#"allow = ["a.example", "b.example", "http://c.example"]"#);
        assert!(e.starts_with("allow[2]: \"http://c.example\": "), "{e}");
        assert!(err(r#"timeout = "61s""#).starts_with("timeout: "));
        assert!(err(r#"timeout = "0s""#).starts_with("timeout: "));
        assert!(err("max_response_bytes = 0").starts_with("max_response_bytes: "));
        assert!(err("max_response_bytes = 67108865").starts_with("max_response_bytes: "));
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("burrow-http-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let config = |path: PathBuf| OutboundHttpConfig { ca_file: Some(path), ..Default::default() };
        let e = OutboundPolicy::new(&config(empty)).unwrap_err();
        assert!(matches!(e, OutboundHttpConfigError::CaFileInvalid { .. }), "{e}");
        let e = OutboundPolicy::new(&config(dir.join("missing.pem"))).unwrap_err();
        assert!(matches!(e, OutboundHttpConfigError::CaFileRead { .. }), "{e}");
        assert!(e.to_string().starts_with("ca_file: cannot read "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Method, path, `Host` header and body of a request the test server received.
    type Logged = (String, String, Option<String>, Bytes);

    /// What the local test server saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: std::sync::Mutex<Vec<Logged>>,
    }

    /// An HTTP/1.1 server on 127.0.0.1:0: `/big` answers 2000 bytes (`/big-chunked`
    /// without a length), `/stall` never answers, anything else echoes `hello <body>`.
    async fn server(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let host = parts
                                    .headers
                                    .get(http::header::HOST)
                                    .map(|h| h.to_str().unwrap().to_owned());
                                let path = parts.uri.to_string();
                                state.requests.lock().unwrap().push((
                                    parts.method.to_string(),
                                    path.clone(),
                                    host,
                                    body.clone(),
                                ));
                                let response = match path.as_str() {
                                    "/big" => {
                                        http::Response::new(Full::new(Bytes::from(vec![b'x'; 2000])).boxed())
                                    }
                                    "/big-chunked" => {
                                        let chunks = (0..20).map(|_| {
                                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(
                                                vec![b'x'; 100],
                                            )))
                                        });
                                        http::Response::new(
                                            http_body_util::StreamBody::new(futures_util::stream::iter(
                                                chunks,
                                            ))
                                            .boxed(),
                                        )
                                    }
                                    "/stall" => {
                                        std::future::pending::<()>().await;
                                        unreachable!()
                                    }
                                    _ => {
                                        let mut text = b"hello ".to_vec();
                                        text.extend_from_slice(&body);
                                        http::Response::new(Full::new(Bytes::from(text)).boxed())
                                    }
                                };
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                    let builder = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(config) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                                return;
                            };
                            builder.serve_connection(TokioIo::new(stream), service).await
                        }
                        None => builder.serve_connection(TokioIo::new(tcp), service).await,
                    };
                });
            }
        });
        (port, seen)
    }

    fn hooks_for(config: &OutboundHttpConfig) -> OutboundHooks {
        OutboundHooks::new(Arc::new(OutboundPolicy::new(config).unwrap()), Arc::from("test-plugin"))
    }

    fn hooks(allow: &[String]) -> OutboundHooks {
        let config = OutboundHttpConfig { allow: allow.to_vec(), ..Default::default() };
        hooks_for(&config)
    }

    fn get(url: &str) -> http::Request<WasiBody> {
        http::Request::get(url).body(Empty::new().map_err(|never| match never {}).boxed_unsync()).unwrap()
    }

    async fn send(
        hooks: &mut OutboundHooks,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(u16, Result<Bytes, HttpError>), HttpError> {
        let (response, io) =
            Pin::from(hooks.send_request(request, options, Box::new(async { Ok(()) }))).await?;
        // Run the connection as wasmtime-wasi-http does: beside the body.
        let io = tokio::spawn(Pin::from(io));
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        if body.is_ok() {
            io.await.unwrap().unwrap();
        }
        Ok((status, body))
    }

    #[tokio::test]
    async fn reaches_an_allow_listed_local_server() {
        let (port, seen) = server(None).await;
        let mut hooks = hooks(&[format!("127.0.0.1:{port}")]);
        let (status, body) =
            send(&mut hooks, get(&format!("http://127.0.0.1:{port}/x?y=1")), None).await.unwrap();
        assert_eq!((status, body.unwrap()), (200, Bytes::from("hello ")));

        let post = http::Request::post(format!("http://127.0.0.1:{port}/echo"))
            .body(Full::new(Bytes::from("ping")).map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let (status, body) = send(&mut hooks, post, None).await.unwrap();
        assert_eq!((status, body.unwrap()), (200, Bytes::from("hello ping")));

        let requests = seen.requests.lock().unwrap().clone();
        let host = Some(format!("127.0.0.1:{port}"));
        assert_eq!(
            requests,
            vec![
                ("GET".into(), "/x?y=1".into(), host.clone(), Bytes::new()),
                ("POST".into(), "/echo".into(), host, Bytes::from("ping")),
            ],
            "origin-form path and a Host header on the wire"
        );
    }

    #[tokio::test]
    async fn refuses_hosts_not_on_the_list() {
        let (port, seen) = server(None).await;
        let url = format!("http://127.0.0.1:{port}/");
        for allow in
            [vec![], vec![format!("127.0.0.1:{}", port.wrapping_add(1).max(1))], vec!["127.0.0.1".into()]]
        {
            let result = send(&mut hooks(&allow), get(&url), None).await;
            assert!(matches!(result, Err(HttpError::HttpRequestDenied)), "{allow:?}: {result:?}");
        }
        // Not http(s).
        let mut allowed = hooks(&[format!("127.0.0.1:{port}")]);
        let result = send(&mut allowed, get(&format!("ftp://127.0.0.1:{port}/")), None).await;
        assert!(matches!(result, Err(HttpError::HttpRequestDenied)), "{result:?}");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 0, "a refused request never connects");
    }

    #[tokio::test]
    async fn refuses_names_that_resolve_to_private_addresses() {
        let (port, seen) = server(None).await;
        // `localhost` is on the list, but it resolves to loopback, which is not.
        let mut hooks = hooks(&[format!("localhost:{port}")]);
        let result = send(&mut hooks, get(&format!("http://localhost:{port}/")), None).await;
        assert!(matches!(result, Err(HttpError::DestinationIpProhibited)), "{result:?}");
        // Listing the loopback address too is what allows it.
        let mut both =
            self::hooks(&[format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")]);
        let (status, _) = send(&mut both, get(&format!("http://localhost:{port}/")), None).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "only the allowed request connected");
    }

    #[tokio::test]
    async fn response_size_is_limited() {
        let (port, _) = server(None).await;
        let config = OutboundHttpConfig {
            allow: vec![format!("127.0.0.1:{port}")],
            max_response_bytes: 1000,
            ..Default::default()
        };
        let mut hooks = hooks_for(&config);
        // Declared too long: refused at the head.
        let result = send(&mut hooks, get(&format!("http://127.0.0.1:{port}/big")), None).await;
        assert!(matches!(result, Err(HttpError::HttpResponseBodySize(Some(2000)))), "{result:?}");
        // A HEAD response declares the length without sending the body.
        let head = http::Request::head(format!("http://127.0.0.1:{port}/big"))
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let (status, body) = send(&mut hooks, head, None).await.unwrap();
        assert_eq!((status, body.unwrap()), (200, Bytes::new()));
        // Streamed too long: the read fails past the limit.
        let (status, body) =
            send(&mut hooks, get(&format!("http://127.0.0.1:{port}/big-chunked")), None).await.unwrap();
        assert_eq!(status, 200);
        assert!(matches!(body, Err(HttpError::HttpResponseBodySize(Some(n))) if n > 1000), "{body:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let (port, _) = server(None).await;
        let url = format!("http://127.0.0.1:{port}/stall");
        // The guest's own deadline...
        let mut hooks = hooks(&[format!("127.0.0.1:{port}")]);
        let options =
            RequestOptions { first_byte_timeout: Some(Duration::from_millis(50)), ..Default::default() };
        let result = send(&mut hooks, get(&url), Some(options)).await;
        assert!(matches!(result, Err(HttpError::ConnectionReadTimeout)), "{result:?}");
        // ...or the plugin's cap when the guest asks for more (or nothing).
        let config = OutboundHttpConfig {
            allow: vec![format!("127.0.0.1:{port}")],
            timeout: Duration::from_millis(100),
            ..Default::default()
        };
        let mut capped = hooks_for(&config);
        let options =
            RequestOptions { first_byte_timeout: Some(Duration::from_secs(3600)), ..Default::default() };
        let result = send(&mut capped, get(&url), Some(options)).await;
        assert!(matches!(result, Err(HttpError::ConnectionReadTimeout)), "{result:?}");
    }

    #[tokio::test]
    async fn connection_refused_is_reported() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut hooks = hooks(&[format!("127.0.0.1:{port}")]);
        let result = send(&mut hooks, get(&format!("http://127.0.0.1:{port}/")), None).await;
        assert!(matches!(result, Err(HttpError::ConnectionRefused)), "{result:?}");
    }

    /// A CA file and a server config for a certificate valid for 127.0.0.1.
    fn pki(dir: &std::path::Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Burrow test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (ca_file, Arc::new(config))
    }

    #[tokio::test]
    async fn https_trusts_the_extra_ca() {
        let dir = std::env::temp_dir().join(format!("burrow-http-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_file, server_config) = pki(&dir);
        let (port, _) = server(Some(server_config)).await;
        let allow = vec![format!("127.0.0.1:{port}")];
        let url = format!("https://127.0.0.1:{port}/");

        let config =
            OutboundHttpConfig { allow: allow.clone(), ca_file: Some(ca_file), ..Default::default() };
        let mut trusting = hooks_for(&config);
        let (status, body) = send(&mut trusting, get(&url), None).await.unwrap();
        assert_eq!((status, body.unwrap()), (200, Bytes::from("hello ")));

        // Without the CA the certificate is refused.
        let result = send(&mut hooks(&allow), get(&url), None).await;
        assert!(matches!(result, Err(HttpError::TlsCertificateError)), "{result:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
