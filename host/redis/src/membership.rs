//! Cluster membership in Redis: replica liveness records, which replicas hold streams
//! of which agent, and the agent-online announcements.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};

use super::{now_ms, tag, Store, StoreError};

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

/// An agent's labels (from its identity), shared rather than copied per request.
pub type AgentLabels = std::sync::Arc<[(String, String)]>;

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

// Sets this replica's field, extends the key's life, and drops every field (of any
// replica) whose registration has run out, in one round trip and atomically. The agent's
// labels go beside it (KEYS[2], the same hash tag so the same Redis Cluster slot) for as
// long, so every replica's admission sees the labels of an agent held elsewhere.
const REGISTER_LUA: &str = r#"
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[4])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) == nil or tonumber(all[i + 1]) < now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return created
"#;
static REGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(REGISTER_LUA));

impl Store {
    fn agent_key(&self, agent: &str) -> String {
        format!("{}:agent:{}", self.prefix, tag(agent))
    }

    fn agent_labels_key(&self, agent: &str) -> String {
        format!("{}:agent-labels:{}", self.prefix, tag(agent))
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

    /// Records that `replica` holds streams of each of `agents` (with the agent's labels)
    /// for `ttl`. Commands are sent concurrently on the multiplexed connection (Redis
    /// pipelines them), so 10,000 agents cost 10,000 small scripts in a few round trips,
    /// in any deployment mode.
    pub async fn register(
        &self,
        replica: &str,
        agents: &[(String, AgentLabels)],
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
            let calls: Vec<(String, String, String)> = chunk
                .iter()
                .map(|(agent, labels)| {
                    let labels = serde_json::to_string(&**labels).expect("labels serialize");
                    (self.agent_key(agent), self.agent_labels_key(agent), labels)
                })
                .collect();
            let results = futures_util::stream::iter(calls)
                .map(|(key, labels_key, labels)| {
                    let mut c = conn.clone();
                    let script = REGISTER.clone();
                    let replica = replica.to_owned();
                    async move {
                        script
                            .key(key)
                            .key(labels_key)
                            .arg(replica)
                            .arg(exp)
                            .arg(ttl.as_millis() as u64)
                            .arg(now)
                            .arg(labels)
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
            sadd.arg(&members_key);
            for (agent, _) in chunk {
                sadd.arg(agent);
            }
            tokio::time::timeout(self.config.timeout, sadd.query_async::<i64>(&mut c))
                .await
                .map_err(|_| StoreError::Timeout(self.config.timeout))??;
        }
        Ok(created)
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

    /// The labels of `agent` as the replicas holding it registered them; `None` when no
    /// replica has registered it within its registration's lifetime.
    pub async fn agent_labels(&self, agent: &str) -> Result<Option<AgentLabels>, StoreError> {
        let key = self.agent_labels_key(agent);
        let raw: Option<String> =
            self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await?;
        Ok(raw.and_then(|json| serde_json::from_str::<Vec<(String, String)>>(&json).ok()).map(Into::into))
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
}
