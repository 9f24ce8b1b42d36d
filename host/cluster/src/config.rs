//! The `[cluster]` table. Its presence turns cluster mode on; without it the host runs
//! as one process with an in-memory registry and needs no Redis.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use burrow_proto::Secret;
use serde::Deserialize;

pub use burrow_host_redis::config::{mask_url, RedisConfig, RedisMode};

/// TLS on the private replica-to-replica API.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// This replica's certificate chain (PEM), presented to calling replicas.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA bundle (PEM) that signed the other replicas' certificates.
    pub ca: PathBuf,
    /// Name expected in the other replicas' certificates. Default: the host part of
    /// each replica's advertised address.
    pub server_name: Option<String>,
}

/// The `[cluster]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `[cluster.redis]`: where the registry lives.
    pub redis: RedisConfig,
    /// Where the private replica-to-replica API listens. Default `0.0.0.0:8083`. Keep it
    /// off the public network: it is authenticated, but it is not meant for users.
    pub listen: SocketAddr,
    /// `host:port` other replicas dial to reach this one's private API. Default: the
    /// bound `listen` address, which must then not be a wildcard (0.0.0.0 / ::).
    pub advertise: Option<String>,
    /// File holding the secret every replica shares (at least 32 bytes) to sign the
    /// short-lived tokens replicas present to each other. One of `secret_file`/`secret`.
    pub secret_file: Option<PathBuf>,
    /// The shared secret inline (prefer `secret_file` or an env-substituted config).
    pub secret: Option<Secret>,
    /// Mutual TLS for the private API: required, unless `insecure_cleartext` opts out.
    /// `burrow-host cluster-certs` makes a CA and replica certificates for a quick start.
    pub tls: Option<ClusterTlsConfig>,
    /// Runs the private API in cleartext, without mutual TLS. Only for a network where
    /// nobody else can listen or connect: replica traffic (users' bytes included) is then
    /// readable, and a captured token is only bounded by being bound to one request and
    /// short-lived. Logged as a warning at every start. Default false.
    pub insecure_cleartext: bool,
    /// How long a connection to the private API may take to prove itself (the TLS
    /// handshake, or in cleartext the HTTP/2 preface) before it is closed. Default 5s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Connections the private API holds at once (other replicas need one each, plus
    /// reconnections). Default 1024.
    pub max_connections: usize,
    /// How long an agent's registration on this replica lives in Redis without a refresh.
    /// Default 5m (as KAS). A crashed replica's entries are ignored long before: see
    /// `replica_ttl`.
    #[serde(with = "humantime_serde")]
    pub agent_ttl: Duration,
    /// How often this replica refreshes its agents' registrations. Default 4m (as KAS).
    #[serde(with = "humantime_serde")]
    pub agent_refresh: Duration,
    /// How long this replica's own liveness record lives without a heartbeat. Entries of
    /// a replica whose record expired are ignored and cleaned. Default 15s.
    #[serde(with = "humantime_serde")]
    pub replica_ttl: Duration,
    /// How often this replica writes its liveness record (with its load) and reads the
    /// others'. Also how fast it notices that Redis came back. Default 5s.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How often a replica looks for dead replicas' leftovers to delete. Default 1m.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// When forwarding, how long to wait for one candidate replica before also trying the
    /// next (the first to answer wins, the rest are cancelled). Default 10ms (as KAS).
    #[serde(with = "humantime_serde")]
    pub speculative_delay: Duration,
    /// Lifetime of a replica-to-replica token. Each is minted for one forwarded request and
    /// used at once, so this only needs to cover the replicas' clock difference and the
    /// call's transit. Default 10s, at most 60s.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: RedisConfig::default(),
            listen: ([0, 0, 0, 0], 8083).into(),
            advertise: None,
            secret_file: None,
            secret: None,
            tls: None,
            insecure_cleartext: false,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 1024,
            agent_ttl: Duration::from_secs(300),
            agent_refresh: Duration::from_secs(240),
            replica_ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(60),
            speculative_delay: Duration::from_millis(10),
            token_lifetime: Duration::from_secs(10),
        }
    }
}

/// The shared secret must be at least this long: it is an HMAC-SHA256 key.
pub const MIN_SECRET_LEN: usize = 32;

impl ClusterConfig {
    /// Checks values serde cannot. Reads `secret_file` to check its length.
    pub fn validate(&self) -> Result<(), String> {
        self.redis.validate()?;
        if self.advertise.is_none() && self.listen.ip().is_unspecified() && self.listen.port() != 0 {
            return Err(format!(
                "cluster.advertise: required when cluster.listen ({}) is a wildcard address: \
                 other replicas need an address they can dial",
                self.listen
            ));
        }
        if let Some(adv) = &self.advertise {
            if adv
                .rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then(|| p.parse::<u16>().ok()))
                .flatten()
                .is_none()
            {
                return Err(format!("cluster.advertise: {adv:?} must be host:port"));
            }
        }
        self.load_secret()?;
        match (&self.tls, self.insecure_cleartext) {
            (None, false) => {
                return Err("cluster.tls: required: replicas authenticate each other with mutual TLS \
                     (make a CA and replica certificates with `burrow-host cluster-certs`), \
                     or set cluster.insecure_cleartext = true on a network nobody else can reach"
                    .into())
            }
            (Some(_), true) => {
                return Err("cluster.insecure_cleartext: set it or cluster.tls, not both".into());
            }
            _ => {}
        }
        if self.max_connections == 0 {
            return Err("cluster.max_connections: must be at least 1".into());
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key), ("ca", &tls.ca)] {
                if !path.is_file() {
                    return Err(format!("cluster.tls.{key}: {} is not a readable file", path.display()));
                }
            }
        }
        for (key, value) in [
            ("cluster.agent_ttl", self.agent_ttl),
            ("cluster.agent_refresh", self.agent_refresh),
            ("cluster.replica_ttl", self.replica_ttl),
            ("cluster.heartbeat", self.heartbeat),
            ("cluster.sweep_interval", self.sweep_interval),
            ("cluster.token_lifetime", self.token_lifetime),
            ("cluster.handshake_timeout", self.handshake_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(format!("{key}: must be at least 100ms"));
            }
        }
        if self.agent_refresh >= self.agent_ttl {
            return Err("cluster.agent_refresh: must be shorter than cluster.agent_ttl".into());
        }
        if self.heartbeat * 2 > self.replica_ttl {
            return Err("cluster.heartbeat: must be at most half of cluster.replica_ttl".into());
        }
        if self.speculative_delay > Duration::from_secs(5) {
            return Err("cluster.speculative_delay: at most 5s".into());
        }
        if self.token_lifetime > Duration::from_secs(60) {
            return Err(
                "cluster.token_lifetime: at most 60s (a token is used the moment it is minted)".into()
            );
        }
        Ok(())
    }

    /// The shared secret's bytes.
    pub fn load_secret(&self) -> Result<Vec<u8>, String> {
        let secret = match (&self.secret_file, &self.secret) {
            (Some(_), Some(_)) => return Err("cluster: set secret_file or secret, not both".into()),
            (None, None) => {
                return Err("cluster.secret_file: required (a file with at least 32 random bytes shared by \
                     every replica, e.g. `head -c 32 /dev/urandom | base64 > secret`)"
                    .into())
            }
            (Some(path), None) => {
                let text = std::fs::read(path)
                    .map_err(|e| format!("cluster.secret_file: cannot read {}: {e}", path.display()))?;
                // A trailing newline from `echo` or an editor is not part of the secret.
                let end = text.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
                text[..end].to_vec()
            }
            (None, Some(secret)) => secret.expose().as_bytes().to_vec(),
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!("cluster: the shared secret must be at least {MIN_SECRET_LEN} bytes"));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ClusterConfig {
        ClusterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            secret: Some(Secret::new("x".repeat(32))),
            insecure_cleartext: true,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_need_only_a_secret_and_an_address() {
        valid().validate().unwrap();
        let err = ClusterConfig { secret: None, ..valid() }.validate().unwrap_err();
        assert!(err.contains("cluster.secret_file"), "{err}");
        let err =
            ClusterConfig { listen: "0.0.0.0:8083".parse().unwrap(), ..valid() }.validate().unwrap_err();
        assert!(err.contains("cluster.advertise"), "{err}");
    }

    #[test]
    fn cleartext_between_replicas_needs_an_explicit_opt_out() {
        let err = ClusterConfig { insecure_cleartext: false, ..valid() }.validate().unwrap_err();
        assert!(err.contains("cluster.tls: required") && err.contains("cluster-certs"), "{err}");
        let tls = ClusterTlsConfig {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            ca: "/nonexistent/ca.pem".into(),
            server_name: None,
        };
        let err = ClusterConfig { tls: Some(tls.clone()), ..valid() }.validate().unwrap_err();
        assert!(err.contains("not both"), "{err}");
        let err =
            ClusterConfig { tls: Some(tls), insecure_cleartext: false, ..valid() }.validate().unwrap_err();
        assert!(err.contains("cluster.tls.cert"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (ClusterConfig { secret: Some(Secret::new("short")), ..valid() }, "at least 32 bytes"),
            (
                ClusterConfig {
                    redis: RedisConfig { urls: vec!["http://x".into()], ..Default::default() },
                    ..valid()
                },
                "cluster.redis.urls",
            ),
            (
                ClusterConfig {
                    redis: RedisConfig { mode: RedisMode::Sentinel, ..Default::default() },
                    ..valid()
                },
                "master_name",
            ),
            (ClusterConfig { agent_refresh: Duration::from_secs(400), ..valid() }, "cluster.agent_refresh"),
            (ClusterConfig { heartbeat: Duration::from_secs(10), ..valid() }, "cluster.heartbeat"),
            (ClusterConfig { advertise: Some("nohost".into()), ..valid() }, "cluster.advertise"),
            (
                ClusterConfig {
                    redis: RedisConfig { key_prefix: "has space".into(), ..Default::default() },
                    ..valid()
                },
                "key_prefix",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn secrets_and_passwords_never_print() {
        let mut config = valid();
        config.redis.urls = vec!["redis://user:hunter2@127.0.0.1:6379".into()];
        config.redis.password = Some(Secret::new("hunter3"));
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2") && !text.contains("hunter3") && !text.contains("xxxx"), "{text}");
        assert_eq!(mask_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(mask_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn secret_file_trailing_newline_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("burrow-secret-{}", std::process::id()));
        std::fs::write(&dir, format!("{}\n", "s".repeat(32))).unwrap();
        let config = ClusterConfig { secret: None, secret_file: Some(dir.clone()), ..valid() };
        assert_eq!(config.load_secret().unwrap().len(), 32);
        std::fs::remove_file(dir).unwrap();
    }
}
