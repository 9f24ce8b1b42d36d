//! The cluster's shared state in Redis: which replicas are alive, which replicas hold
//! streams of which agent, connection-rate counters, and the agent-online channel.
//!
//! # Keys (`P` is `redis.key_prefix`)
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:agent:{<agent>}` | hash | replica id → expiry (Unix ms) of its registration; key TTL `agent_ttl` |
//! | `P:replicas` | hash | replica id → JSON `{addr, exp, load, draining}` |
//! | `P:replica-agents:{<replica>}` | set | agents the replica registered (lets a sweeper clean up after it dies) |
//! | `P:connect-rate:{<token hash>}:<minute>` | string | connection attempts in that minute |
//! | channel `P:agent-online` | pub/sub | JSON `{agent, replica, addr}` when a replica gains an agent |
//! | `P:plugin-kv:{<plugin>}:<key>` | string | a plugin's key-value entry (`kv` host import); own TTL |
//! | `P:agent-labels:{<agent>}` | string | JSON labels of a registered agent; TTL `agent_ttl` |
//! | `P:mark:{<use>}:<key>` | string | a mark every replica sees (a sign-in ticket redeemed, a sign-in ended); own TTL |
//!
//! Braces are Redis Cluster hash tags: all keys of one agent (or one token) share a slot,
//! so the Lua scripts below stay single-slot. Every operation runs under `redis.timeout`;
//! on a request path only [`Store::lookup`] and [`Store::agent_labels`] are awaited (when
//! the agent has no stream on the replica the request landed on; labels cached a
//! heartbeat), and [`Store::marked`] for a signed-in browser at most every few seconds.
//!
//! # Layout
//!
//! - [`config`]: the `[cluster.redis]` table ([`RedisConfig`]) and its checks.
//! - `connection`: owns the connection (single, sentinel or cluster; TLS with a private CA
//!   and client certificates; reconnects; the per-operation deadline). Every concern below reaches Redis through it.
//! - `membership`: replica records, agent registrations, agent-online announcements.
//! - `kv`: plugin key-value entries.
//! - `marks`: marks shared by every replica, each expiring on its own.
//! - `rate`: connection-rate counters.
//! - `workloads`: control-plane workload records, work queues and the lifecycle channel
//!   (its own key table).

pub mod config;
mod connection;
mod kv;
mod marks;
mod membership;
mod rate;
mod workloads;

use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::Mutex;

pub use config::{mask_url, RedisConfig, RedisMode};
use connection::Conn;
pub use membership::{AgentLabels, Online, ReplicaRecord};
pub use workloads::{WorkUpdate, DONE_KEPT};
// Re-exported for membership, rate and the cluster, which read expiries on this clock.
pub use burrow_host_time::now_ms;

/// A Redis operation failed or timed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The operation did not finish within `redis.timeout`.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error or the connection failed.
    #[error("Redis: {0}")]
    Redis(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Redis(e.to_string())
    }
}

/// Escapes `{`, `}` and `%` so an id cannot break out of its hash tag.
fn tag(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 2);
    out.push('{');
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.push('}');
    out
}

/// The Redis side of the cluster.
pub struct Store {
    config: RedisConfig,
    prefix: String,
    conn: RwLock<Option<Conn>>,
    // Serialises (re)connects so a burst of failures opens one connection, not many.
    connecting: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Store {
    /// A store for `config`; connects lazily, so a replica starts (and serves local
    /// traffic) while Redis is down.
    pub fn new(config: RedisConfig) -> Self {
        if config.uses_tls() {
            // redis-rs builds its rustls configs on the process-wide provider and cannot be
            // handed one. Ring is the only provider compiled in, so rustls would pick it
            // anyway; installing it explicitly keeps TLS working should another provider
            // (aws-lc-rs) ever join the build. An error means one is already installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Self {
            prefix: config.key_prefix.clone(),
            config,
            conn: RwLock::new(None),
            connecting: Mutex::new(()),
        }
    }

    /// True when Redis answers PING.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await }).await
    }

    /// The URLs, masked, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{:?} {:?}",
            self.config.mode,
            self.config.urls.iter().map(|u| mask_url(u)).collect::<Vec<_>>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_cannot_be_escaped() {
        assert_eq!(tag("agent-1"), "{agent-1}");
        assert_eq!(tag("a}b{c%"), "{a%7Db%7Bc%25}");
        assert_ne!(tag("a%7Db"), tag("a}b"));
    }
}
