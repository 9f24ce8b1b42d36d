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
//!
//! Braces are Redis Cluster hash tags: all keys of one agent (or one token) share a slot,
//! so the Lua scripts below stay single-slot. Every operation runs under `redis.timeout`;
//! nothing here is awaited on a request path except [`Store::lookup`], which a request
//! needs only when the agent has no stream on the replica it landed on.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Script, Value};
use serde::{Deserialize, Serialize};
use std::sync::RwLock;

use tokio::sync::Mutex;

use super::config::{mask_url, RedisConfig, RedisMode};

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

// Re-exported because the cluster and the agent server import the clock from here.
pub use crate::time::now_ms;

/// What a replica publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Private API address.
    pub addr: String,
    /// When the record stops counting (Unix ms).
    pub exp: u64,
    /// Agent streams in use at the last heartbeat.
    pub load: u64,
    /// True while the replica drains: it takes no new forwarded work.
    #[serde(default)]
    pub draining: bool,
}

/// An agent-online announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Online {
    /// The agent.
    pub agent: String,
    /// The replica that now holds streams of it.
    pub replica: String,
    /// That replica's private API address.
    pub addr: String,
}

/// One live connection of whichever kind the deployment uses.
#[derive(Clone)]
enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
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

// Sets this replica's field, extends the key's life, and drops every field (of any
// replica) whose registration has run out, in one round trip and atomically.
const REGISTER_LUA: &str = r#"
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[4])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) == nil or tonumber(all[i + 1]) < now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return created
"#;

// INCR with the window's expiry set on first use; returns the count and the ms left.
const RATE_LUA: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"#;

// INCRBY that gives a counter its TTL only when this call created it, atomically. The
// new value is read back with GET: Lua numbers are doubles, so returning INCRBY's reply
// through Lua would round counters past 2^53.
const KV_INCREMENT_LUA: &str = r#"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"#;

fn kv_increment_script() -> &'static Script {
    // `Store` is shared by every replica task; one script (and its SHA) is enough.
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(KV_INCREMENT_LUA))
}

/// The Redis side of the cluster.
pub struct Store {
    config: RedisConfig,
    prefix: String,
    conn: RwLock<Option<Conn>>,
    // Serialises (re)connects so a burst of failures opens one connection, not many.
    connecting: Mutex<()>,
    register: Script,
    rate: Script,
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
        Self {
            prefix: config.key_prefix.clone(),
            config,
            conn: RwLock::new(None),
            connecting: Mutex::new(()),
            register: Script::new(REGISTER_LUA),
            rate: Script::new(RATE_LUA),
        }
    }

    fn connection_infos(&self) -> RedisResult<Vec<redis::ConnectionInfo>> {
        self.config
            .urls
            .iter()
            .map(|url| {
                let mut info = url.as_str().into_connection_info()?;
                if let (Some(pw), None) = (&self.config.password, info.redis_settings().password()) {
                    let settings = info.redis_settings().clone().set_password(pw.expose());
                    info = info.set_redis_settings(settings);
                }
                Ok(info)
            })
            .collect()
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        // Few, quick retries: a request must fail fast while Redis is away; the heartbeat
        // keeps probing and the manager reconnects on the next use.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    /// A plain client for the node pub/sub should use (single: the server; sentinel: the
    /// current master; cluster: the first seed that answers, since PUBLISH reaches every node).
    pub async fn pubsub_client(&self) -> Result<redis::Client, StoreError> {
        let infos = self.connection_infos()?;
        match self.config.mode {
            RedisMode::Single => Ok(redis::Client::open(infos[0].clone())?),
            RedisMode::Sentinel => self.sentinel_master().await,
            RedisMode::Cluster => {
                let mut last = None;
                for info in infos {
                    let client = redis::Client::open(info)?;
                    match tokio::time::timeout(self.config.timeout, client.get_multiplexed_async_connection())
                        .await
                    {
                        Ok(Ok(_)) => return Ok(client),
                        Ok(Err(e)) => last = Some(StoreError::from(e)),
                        Err(_) => last = Some(StoreError::Timeout(self.config.timeout)),
                    }
                }
                Err(last.unwrap_or_else(|| StoreError::Redis("no cluster seed reachable".into())))
            }
        }
    }

    async fn sentinel_master(&self) -> Result<redis::Client, StoreError> {
        let infos = self.connection_infos()?;
        let master = self.config.master_name.clone().unwrap_or_default();
        let mut node = redis::sentinel::SentinelNodeConnectionInfo::default();
        if let Some(pw) = &self.config.password {
            node = node
                .set_redis_connection_info(redis::RedisConnectionInfo::default().set_password(pw.expose()));
        }
        let mut sentinel = redis::sentinel::SentinelClient::build(
            infos,
            master,
            Some(node),
            redis::sentinel::SentinelServerType::Master,
        )?;
        let client = tokio::time::timeout(self.config.timeout * 3, sentinel.async_get_client())
            .await
            .map_err(|_| StoreError::Timeout(self.config.timeout * 3))??;
        Ok(client)
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let infos = self.connection_infos()?;
        let conn = match self.config.mode {
            RedisMode::Single => {
                let client = redis::Client::open(infos[0].clone())?;
                Conn::Manager(ConnectionManager::new_lazy_with_config(client, self.manager_config())?)
            }
            RedisMode::Sentinel => {
                let client = self.sentinel_master().await?;
                Conn::Manager(ConnectionManager::new_lazy_with_config(client, self.manager_config())?)
            }
            RedisMode::Cluster => {
                let client = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(self.config.timeout)
                    .response_timeout(self.config.timeout)
                    .retries(1)
                    .build()?;
                let conn = tokio::time::timeout(self.config.timeout * 3, client.get_async_connection())
                    .await
                    .map_err(|_| StoreError::Timeout(self.config.timeout * 3))??;
                Conn::Cluster(conn)
            }
        };
        Ok(conn)
    }

    fn current(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = self.connect().await?;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one operation under the deadline. In sentinel mode a connection error, a
    /// timeout or a READONLY answer (the master moved) drops the connection so the next
    /// operation asks the sentinels again.
    async fn run<T, F>(&self, op: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = RedisResult<T>>,
    {
        let deadline = self.config.timeout;
        let result = tokio::time::timeout(deadline, async {
            let conn = self.conn().await?;
            op(conn).await.map_err(|e| {
                let master_lost = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                if master_lost {
                    self.invalidate();
                }
                StoreError::from(e)
            })
        })
        .await;
        result.unwrap_or_else(|_| {
            self.invalidate();
            Err(StoreError::Timeout(deadline))
        })
    }

    fn invalidate(&self) {
        // Single and cluster connections heal themselves; only a sentinel-resolved master
        // can be the wrong server after a failover.
        if self.config.mode == RedisMode::Sentinel {
            *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    fn agent_key(&self, agent: &str) -> String {
        format!("{}:agent:{}", self.prefix, tag(agent))
    }

    fn replicas_key(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    fn replica_agents_key(&self, replica: &str) -> String {
        format!("{}:replica-agents:{}", self.prefix, tag(replica))
    }

    /// The agent-online pub/sub channel.
    pub fn online_channel(&self) -> String {
        format!("{}:agent-online", self.prefix)
    }

    /// Records that `replica` holds streams of each of `agents` for `ttl`. Commands are
    /// sent concurrently on the multiplexed connection (Redis pipelines them), so 10,000
    /// agents cost 10,000 small scripts in a few round trips, in any deployment mode.
    pub async fn register(
        &self,
        replica: &str,
        agents: &[String],
        ttl: Duration,
    ) -> Result<usize, StoreError> {
        if agents.is_empty() {
            return Ok(0);
        }
        let conn = self.conn_checked().await?;
        let now = now_ms();
        let exp = now + ttl.as_millis() as u64;
        let members_key = self.replica_agents_key(replica);
        let mut created = 0usize;
        for chunk in agents.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|a| self.agent_key(a)).collect();
            let results = futures_util::stream::iter(keys)
                .map(|key| {
                    let mut c = conn.clone();
                    let script = self.register.clone();
                    let replica = replica.to_owned();
                    async move {
                        script
                            .key(key)
                            .arg(replica)
                            .arg(exp)
                            .arg(ttl.as_millis() as u64)
                            .arg(now)
                            .invoke_async::<i64>(&mut c)
                            .await
                    }
                })
                .buffer_unordered(256)
                .collect::<Vec<_>>();
            let results = tokio::time::timeout(self.config.timeout * 4, results)
                .await
                .map_err(|_| StoreError::Timeout(self.config.timeout * 4))?;
            for r in results {
                created += r? as usize;
            }
            let mut c = conn.clone();
            let mut sadd = redis::cmd("SADD");
            sadd.arg(&members_key).arg(chunk);
            tokio::time::timeout(self.config.timeout, sadd.query_async::<i64>(&mut c))
                .await
                .map_err(|_| StoreError::Timeout(self.config.timeout))??;
        }
        Ok(created)
    }

    async fn conn_checked(&self) -> Result<Conn, StoreError> {
        tokio::time::timeout(self.config.timeout, self.conn())
            .await
            .map_err(|_| StoreError::Timeout(self.config.timeout))?
    }

    /// Removes `replica`'s registration of `agent`.
    pub async fn unregister(&self, replica: &str, agent: &str) -> Result<(), StoreError> {
        let key = self.agent_key(agent);
        let members = self.replica_agents_key(replica);
        self.run(|mut c| async move {
            redis::cmd("HDEL").arg(&key).arg(replica).query_async::<()>(&mut c).await?;
            redis::cmd("SREM").arg(&members).arg(agent).query_async::<()>(&mut c).await
        })
        .await
    }

    /// Announces that `replica` (reachable at `addr`) gained `agent`.
    pub async fn publish_online(&self, online: &Online) -> Result<(), StoreError> {
        let channel = self.online_channel();
        let payload = serde_json::to_string(online).expect("announcement serializes");
        self.run(|mut c| async move {
            redis::cmd("PUBLISH").arg(channel).arg(payload).query_async::<()>(&mut c).await
        })
        .await
    }

    /// Replicas registered for `agent`, with their expiry (Unix ms).
    pub async fn lookup(&self, agent: &str) -> Result<HashMap<String, u64>, StoreError> {
        let key = self.agent_key(agent);
        let raw: HashMap<String, String> =
            self.run(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await?;
        Ok(raw.into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect())
    }

    /// Deletes the named replicas' fields from `agent`'s hash (stale entries).
    pub async fn forget(&self, agent: &str, replicas: &[String]) -> Result<(), StoreError> {
        if replicas.is_empty() {
            return Ok(());
        }
        let key = self.agent_key(agent);
        self.run(
            |mut c| async move { redis::cmd("HDEL").arg(key).arg(replicas).query_async::<()>(&mut c).await },
        )
        .await
    }

    /// Writes this replica's liveness record; true when the field was new (first
    /// heartbeat, or Redis lost its data: the caller then re-registers its agents).
    pub async fn heartbeat(&self, replica: &str, record: &ReplicaRecord) -> Result<bool, StoreError> {
        let key = self.replicas_key();
        let value = serde_json::to_string(record).expect("record serializes");
        self.run(|mut c| async move {
            redis::cmd("HSET").arg(key).arg(replica).arg(value).query_async::<i64>(&mut c).await
        })
        .await
        .map(|created| created == 1)
    }

    /// Every replica's liveness record (expired ones included; the caller decides).
    pub async fn replicas(&self) -> Result<HashMap<String, ReplicaRecord>, StoreError> {
        let key = self.replicas_key();
        let raw: HashMap<String, String> =
            self.run(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await?;
        Ok(raw.into_iter().filter_map(|(k, v)| Some((k, serde_json::from_str(&v).ok()?))).collect())
    }

    /// One replica's liveness record.
    pub async fn replica(&self, replica: &str) -> Result<Option<ReplicaRecord>, StoreError> {
        let key = self.replicas_key();
        let raw: Option<String> = self
            .run(|mut c| async move { redis::cmd("HGET").arg(key).arg(replica).query_async(&mut c).await })
            .await?;
        Ok(raw.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Deletes a replica entirely: its liveness record and its field in every agent hash
    /// it registered. Used by this replica on shutdown and by others on a dead one.
    /// Returns how many agent entries were removed.
    pub async fn remove_replica(&self, replica: &str) -> Result<usize, StoreError> {
        let members_key = self.replica_agents_key(replica);
        let agents: Vec<String> = {
            let key = members_key.clone();
            self.run(|mut c| async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await }).await?
        };
        let conn = self.conn_checked().await?;
        let keys: Vec<String> = agents.iter().map(|a| self.agent_key(a)).collect();
        let removals = futures_util::stream::iter(keys)
            .map(|key| {
                let mut c = conn.clone();
                let replica = replica.to_owned();
                async move { redis::cmd("HDEL").arg(key).arg(replica).query_async::<i64>(&mut c).await }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>();
        let removed = tokio::time::timeout(self.config.timeout * 4, removals)
            .await
            .map_err(|_| StoreError::Timeout(self.config.timeout * 4))?
            .into_iter()
            .collect::<RedisResult<Vec<i64>>>()?
            .into_iter()
            .sum::<i64>();
        let replicas_key = self.replicas_key();
        self.run(|mut c| async move {
            redis::cmd("DEL").arg(&members_key).query_async::<()>(&mut c).await?;
            redis::cmd("HDEL").arg(replicas_key).arg(replica).query_async::<()>(&mut c).await
        })
        .await?;
        Ok(removed as usize)
    }

    /// Counts one connection attempt of the token with hash `token_id` in the current
    /// window; returns the count so far and the time left in the window.
    pub async fn count_attempt(
        &self,
        token_id: &str,
        window: Duration,
    ) -> Result<(u64, Duration), StoreError> {
        let index = now_ms() / window.as_millis().max(1) as u64;
        let key = format!("{}:connect-rate:{}:{index}", self.prefix, tag(token_id));
        let (n, ttl): (u64, i64) = self
            .run(|mut c| async move {
                self.rate.key(key).arg(window.as_millis() as u64).invoke_async(&mut c).await
            })
            .await?;
        Ok((n, Duration::from_millis(ttl.max(0) as u64)))
    }

    fn kv_key(&self, namespace: &str, key: &str) -> String {
        format!("{}:plugin-kv:{}:{key}", self.prefix, tag(namespace))
    }

    /// A plugin's key-value entry (`namespace` is the plugin's name).
    pub async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.kv_key(namespace, key);
        self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await
    }

    /// Stores a plugin's entry, replacing any previous value and TTL. A `ttl` of zero
    /// stores nothing and deletes the key, as if the entry had expired at once.
    pub async fn kv_set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let key = self.kv_key(namespace, key);
        self.run(|mut c| async move {
            match ttl.map(|t| t.as_millis() as u64) {
                Some(0) => redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await,
                Some(ms) => {
                    redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms).query_async::<()>(&mut c).await
                }
                None => redis::cmd("SET").arg(key).arg(value).query_async::<()>(&mut c).await,
            }
        })
        .await
    }

    /// Deletes a plugin's entry; true when it existed.
    pub async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let key = self.kv_key(namespace, key);
        self.run(|mut c| async move { redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await })
            .await
            .map(|n| n > 0)
    }

    /// Adds `delta` to a plugin's counter (missing counts as 0) and returns the new
    /// value; `ttl` applies only when this call creates the counter (zero: it expires at
    /// once). A value that is not a decimal integer, or an overflow, is a Redis error.
    pub async fn kv_increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        let key = self.kv_key(namespace, key);
        let ttl = ttl.map_or(String::new(), |t| (t.as_millis() as u64).to_string());
        let value: Option<String> = self
            .run(|mut c| async move {
                kv_increment_script().key(key).arg(delta).arg(ttl).invoke_async(&mut c).await
            })
            .await?;
        match value {
            Some(v) => v.parse().map_err(|_| StoreError::Redis(format!("counter holds {v:?}"))),
            // A zero TTL deleted the new counter before GET: it held exactly `delta`.
            None => Ok(delta),
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
