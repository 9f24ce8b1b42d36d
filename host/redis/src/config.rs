//! The `[cluster.redis]` table: which Redis, how to reach it, and the checks serde cannot
//! make. It lives with the store rather than with the cluster so the plugin platform's
//! shared kv can use the store without depending on the cluster.

use std::time::Duration;

use burrow_proto::Secret;
use serde::Deserialize;

/// Which kind of Redis deployment `redis.urls` names.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (`redis://` or `rediss://`), possibly behind a proxy. Default.
    #[default]
    Single,
    /// Sentinels (`redis://sentinel-host:26379`) watching the master named `master_name`.
    Sentinel,
    /// Redis Cluster: any subset of the nodes as seeds.
    Cluster,
}

/// `[cluster.redis]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `single` (default), `sentinel` or `cluster`.
    pub mode: RedisMode,
    /// Server URLs (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS). Single
    /// mode uses the first; sentinel mode lists sentinels; cluster mode lists seed nodes.
    /// Default `["redis://127.0.0.1:6379"]`. URLs may carry passwords: they are masked in logs.
    pub urls: Vec<String>,
    /// Sentinel mode: the monitored master's name.
    pub master_name: Option<String>,
    /// Password for the data nodes when it is not in the URL (sentinel mode: the master's).
    pub password: Option<Secret>,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    /// Default `burrow`.
    pub key_prefix: String,
    /// Deadline for any one Redis operation; past it the operation counts as failed.
    /// Default 1s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::Single,
            urls: vec!["redis://127.0.0.1:6379".into()],
            master_name: None,
            password: None,
            key_prefix: "burrow".into(),
            timeout: Duration::from_secs(1),
        }
    }
}

/// Replaces the password in `redis://user:password@host` with `***`.
pub fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("urls", &self.urls.iter().map(|u| mask_url(u)).collect::<Vec<_>>())
            .field("master_name", &self.master_name)
            .field("password", &self.password)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConfig {
    /// Checks values serde cannot. Errors name the key as `cluster.redis.<key>`, where the
    /// table sits in `host.toml`.
    pub fn validate(&self) -> Result<(), String> {
        let r = self;
        if r.urls.is_empty() {
            return Err("cluster.redis.urls: at least one URL is required".into());
        }
        for url in &r.urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "cluster.redis.urls: {:?} must start with redis:// or rediss://",
                    mask_url(url)
                ));
            }
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                return Err(format!("cluster.redis.urls: {:?}: {e}", mask_url(url)));
            }
        }
        match (r.mode, &r.master_name) {
            (RedisMode::Sentinel, None) => {
                return Err("cluster.redis.master_name: required in sentinel mode".into())
            }
            (RedisMode::Single | RedisMode::Cluster, Some(_)) => {
                return Err("cluster.redis.master_name: only used in sentinel mode".into())
            }
            _ => {}
        }
        if r.key_prefix.is_empty()
            || r.key_prefix.len() > 64
            || !r.key_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
        {
            return Err("cluster.redis.key_prefix: 1-64 characters of [A-Za-z0-9-_:.]".into());
        }
        if r.timeout.is_zero() || r.timeout > Duration::from_secs(30) {
            return Err("cluster.redis.timeout: must be between 1ms and 30s".into());
        }
        Ok(())
    }
}
