//! The `[ingress]` table of the host configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use burrow_host_tls::TlsConfig;

/// Settings of the user-facing HTTP(S) proxy (`[ingress]` in the host's TOML file).
///
/// ```toml
/// [ingress]
/// listen = "0.0.0.0:8080"
/// stream_wait = "20s"
/// idle_connection_timeout = "30s"
/// max_idle_per_workload = 256
/// header_read_timeout = "30s"
/// trust_forwarded = false
/// # tls = { cert = "/etc/burrow/ingress.crt", key = "/etc/burrow/ingress.key" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Address the ingress listens on for users' HTTP(S) traffic. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Serve HTTPS instead of cleartext HTTP: PEM certificate chain and private key.
    /// ALPN offers `h2` and `http/1.1`. Default: none (cleartext HTTP/1.1 and h2c).
    pub tls: Option<TlsConfig>,
    /// How long a request waits for an idle tunnel of the target agent (the agent may be
    /// connecting, or all its tunnels busy) before failing with 504. Default `20s`.
    #[serde(with = "humantime_serde")]
    pub stream_wait: Duration,
    /// How long a keep-alive HTTP connection to a workload (one tunnel) stays in the pool
    /// unused before it is closed and its tunnel released. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub idle_connection_timeout: Duration,
    /// Most idle keep-alive connections (tunnels) kept per (agent, service); extra ones are
    /// closed when their request ends. `0` disables reuse. Default `256`: as many as one
    /// identity may park on a replica, so a client with up to that many connections finds a
    /// pooled tunnel for every request (at 32, the old default, every connection past 32
    /// opened and closed a tunnel per request: throughput fell by a third from 32 to 128
    /// connections). The pool only grows to the concurrency actually seen, and each idle
    /// connection goes after `idle_connection_timeout`.
    pub max_idle_per_workload: usize,
    /// How long a client may take to finish the TLS handshake, to send its first request,
    /// and (HTTP/1.1) to send each request's headers; an idle HTTP/1.1 keep-alive connection
    /// is also closed after this long. Slow or silent clients cannot hold sockets. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Whether the ingress sits behind a proxy you trust. `false` (default): incoming
    /// `X-Forwarded-For/-Proto/-Host`, `Forwarded` and `X-Request-Id` are discarded and
    /// replaced by what this host sees. `true`: the client address is appended to
    /// `X-Forwarded-For`, incoming `X-Forwarded-Proto/-Host` and `Forwarded` are kept, and an
    /// incoming `X-Request-Id` is reused.
    pub trust_forwarded: bool,
    /// A cookie that carries a user's session: when a request has no `Authorization:
    /// Bearer`, this cookie's value goes to the authorizer as a `cookie` credential (and
    /// is removed before forwarding when the authorizer asks to strip credentials).
    /// Default: none.
    pub session_cookie: Option<String>,
    /// A user connection with no request in progress for this long is closed (HTTP/2:
    /// GOAWAY, streams already open finish). Default `5m`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// An upgraded connection (WebSocket, SPDY, raw) that carries no byte either way for
    /// this long is closed. `0s` (default): never, since many protocols idle for long
    /// (a terminal, a watch); set it to reclaim pipes that clients abandon silently.
    #[serde(with = "humantime_serde")]
    pub upgrade_idle_timeout: Duration,
    /// HTTP/2 PING interval on user connections, to find dead peers. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long an unanswered PING may wait before the connection is closed. Default `20s`.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// User connections open on this port at once, upgraded pipes (WebSocket, SPDY)
    /// included; more are closed as soon as they are accepted. Default `10000`: a few
    /// thousand users with a browser's handful of connections each, while file
    /// descriptors and memory stay bounded. `0`: no cap.
    pub max_connections: usize,
    /// Connections one source address may hold open at once (counted from accept, before
    /// anything is read); more are closed at once. Default `1000`: an office behind one
    /// NAT address (browsers open 6 per host name) fits, while one client cannot take more
    /// than a tenth of the port. `0`: no cap. Behind a proxy (`trust_forwarded`) every
    /// user shares its address: set `0`.
    pub max_connections_per_address: usize,
    /// Requests in progress on this port at once (until their response body ends: a
    /// long SSE stream counts for as long as it runs); more are answered at once with
    /// 503 and `Retry-After`, before any plugin runs. Default `10000`. `0`: no cap.
    pub max_requests: usize,
    /// Requests in progress from one source address at once; more are answered at once
    /// with 429 and `Retry-After` while other addresses are served. Default `1000`: above
    /// a user with hundreds of parallel watches, a tenth of the port. `0`: no cap.
    /// Behind a proxy (`trust_forwarded`) every user shares its address: set `0`.
    pub max_requests_per_address: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            stream_wait: Duration::from_secs(20),
            idle_connection_timeout: Duration::from_secs(30),
            max_idle_per_workload: 256,
            header_read_timeout: Duration::from_secs(30),
            trust_forwarded: false,
            session_cookie: None,
            idle_timeout: Duration::from_secs(300),
            upgrade_idle_timeout: Duration::ZERO,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            max_requests: 10_000,
            max_requests_per_address: 1_000,
        }
    }
}

/// An invalid `[ingress]` setting; `Display` names the key, e.g. `ingress.stream_wait: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ingress.{key}: {message}")]
pub struct IngressConfigError {
    /// The offending key below `ingress.`, e.g. `stream_wait` or `tls.cert`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl IngressConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self { key, message: message.into() }
    }
}

impl IngressConfig {
    /// Checks values serde cannot: non-zero durations and that the TLS files exist.
    pub fn validate(&self) -> Result<(), IngressConfigError> {
        let positive = [
            ("stream_wait", self.stream_wait),
            ("idle_connection_timeout", self.idle_connection_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(IngressConfigError::new(key, "must be greater than zero"));
            }
        }
        // A share larger than the whole is a typo: the per-address cap would never bind.
        for (key, share, whole) in [
            ("max_connections_per_address", self.max_connections_per_address, self.max_connections),
            ("max_requests_per_address", self.max_requests_per_address, self.max_requests),
        ] {
            if whole > 0 && share > whole {
                return Err(IngressConfigError::new(
                    key,
                    format!("{share} is above the whole port's cap ({whole}); lower it or raise that"),
                ));
            }
        }
        if let Some(name) = &self.session_cookie {
            // RFC 6265 cookie-name is an RFC 7230 token.
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(IngressConfigError::new(
                    "session_cookie",
                    format!("{name:?} is not a valid cookie name"),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            // Checked here so `check-config` catches a typo before the ingress starts.
            for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.is_file() {
                    return Err(IngressConfigError::new(key, format!("file not found: {}", path.display())));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_gives_documented_defaults() {
        let config: IngressConfig = toml::from_str("").unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.stream_wait, Duration::from_secs(20));
        assert_eq!(config.idle_connection_timeout, Duration::from_secs(30));
        assert_eq!(config.max_idle_per_workload, 256);
        assert_eq!(config.header_read_timeout, Duration::from_secs(30));
        assert!(!config.trust_forwarded);
        assert!(config.tls.is_none());
        assert_eq!(
            (
                config.max_connections,
                config.max_connections_per_address,
                config.max_requests,
                config.max_requests_per_address
            ),
            (10_000, 1_000, 10_000, 1_000)
        );
        config.validate().unwrap();
    }

    #[test]
    fn a_per_address_cap_above_the_port_cap_is_refused() {
        let config = IngressConfig { max_requests: 10, max_requests_per_address: 11, ..Default::default() };
        assert_eq!(config.validate().unwrap_err().key, "max_requests_per_address");
        let config =
            IngressConfig { max_connections: 0, max_connections_per_address: 11, ..Default::default() };
        config.validate().expect("no port cap: any share");
    }

    #[test]
    fn parses_every_key() {
        let config: IngressConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9443"
            tls = { cert = "c.pem", key = "k.pem" }
            stream_wait = "1m 30s"
            idle_connection_timeout = "5s"
            max_idle_per_workload = 0
            header_read_timeout = "250ms"
            trust_forwarded = true
            "#,
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(config.tls.as_ref().unwrap().cert, std::path::PathBuf::from("c.pem"));
        assert_eq!(config.stream_wait, Duration::from_secs(90));
        assert_eq!(config.idle_connection_timeout, Duration::from_secs(5));
        assert_eq!(config.max_idle_per_workload, 0);
        assert_eq!(config.header_read_timeout, Duration::from_millis(250));
        assert!(config.trust_forwarded);
        let err = config.validate().unwrap_err();
        assert_eq!(err.to_string(), "ingress.tls.cert: file not found: c.pem");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<IngressConfig>("max_body = 10").unwrap_err();
        assert!(err.to_string().contains("max_body"), "{err}");
    }

    #[test]
    fn validate_names_the_key() {
        let config = IngressConfig { stream_wait: Duration::ZERO, ..Default::default() };
        let err = config.validate().unwrap_err();
        assert_eq!(err.key, "stream_wait");
        assert!(err.to_string().starts_with("ingress.stream_wait: "), "{err}");

        let config = IngressConfig { header_read_timeout: Duration::ZERO, ..Default::default() };
        assert_eq!(config.validate().unwrap_err().key, "header_read_timeout");
    }
}
