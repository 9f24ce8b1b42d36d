//! Workload records, their agents' work queues and the lifecycle channel, for the
//! control API in cluster mode. Values are opaque here (JSON written by
//! `burrow-host-workloads`); this module only keeps them durable and atomic.
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:workload:{<id>}` | string | the workload record (JSON) |
//! | `P:workloads` | set | ids of every kept record (for listing) |
//! | `P:workload-conns:{<id>}` | hash | replica → since (Unix ms) while it holds the agent |
//! | `P:work:{<id>}:items` | hash | item id → item status (JSON) |
//! | `P:work:{<id>}:payload` | hash | item id → payload, until the item is acknowledged |
//! | `P:work:{<id>}:pending` | list | item ids not yet acknowledged, in enqueue order |
//! | `P:work:{<id>}:done` | list | acknowledged item ids, newest first (the last 100 kept) |
//! | `P:work:{<id>}:seq` | string | last item number |
//! | channel `P:workload-events` | pub/sub | JSON lifecycle events (ended, work queued) |

use std::sync::LazyLock;

use redis::Script;

use super::{tag, Store, StoreError};

/// Acknowledged items whose status is kept for `ListWork`.
pub const DONE_KEPT: usize = 100;

// Appends an item unless the queue is full. KEYS: seq, items, payload, pending.
// ARGV: max pending, status JSON template with "%ID%" for the id, payload.
const ENQUEUE_LUA: &str = r#"
if redis.call('LLEN', KEYS[4]) >= tonumber(ARGV[1]) then return false end
local n = redis.call('INCR', KEYS[1])
local id = string.format('%020d', n)
local status = string.gsub(ARGV[2], '%%ID%%', id)
redis.call('HSET', KEYS[2], id, status)
redis.call('HSET', KEYS[3], id, ARGV[3])
redis.call('RPUSH', KEYS[4], id)
return id
"#;

// Hands out the head of the queue, counting the delivery. KEYS: items, payload, pending.
// ARGV: now. Returns {id, payload, deliveries} or nil.
const NEXT_LUA: &str = r#"
local id = redis.call('LINDEX', KEYS[3], 0)
if not id then return false end
local raw = redis.call('HGET', KEYS[1], id)
local payload = redis.call('HGET', KEYS[2], id)
if not raw or not payload then
  redis.call('LPOP', KEYS[3])
  return false
end
local item = cjson.decode(raw)
item.deliveries = item.deliveries + 1
if item.state == 'queued' then item.state = 'delivered' end
item.updated_at = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], id, cjson.encode(item))
return {id, payload, item.deliveries}
"#;

// Records an item's progress; a final state acknowledges it. KEYS: items, payload,
// pending, done. ARGV: id, state, detail, now, final ("1"/"0"), kept.
// Returns 0 unknown item, 1 updated, 2 already final (nothing changed).
const UPDATE_LUA: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local item = cjson.decode(raw)
if item.state == 'succeeded' or item.state == 'failed' then return 2 end
item.state = ARGV[2]
item.detail = ARGV[3]
item.updated_at = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(item))
if ARGV[5] == '1' then
  redis.call('LREM', KEYS[3], 1, ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('LPUSH', KEYS[4], ARGV[1])
  while redis.call('LLEN', KEYS[4]) > tonumber(ARGV[6]) do
    local old = redis.call('RPOP', KEYS[4])
    redis.call('HDEL', KEYS[1], old)
  end
end
return 1
"#;

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(ENQUEUE_LUA));
static NEXT: LazyLock<Script> = LazyLock::new(|| Script::new(NEXT_LUA));
static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(UPDATE_LUA));

/// What [`Store::work_update`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkUpdate {
    /// No such item (never queued, or acknowledged long ago and forgotten).
    Unknown,
    Updated,
    /// The item was already acknowledged; nothing changed.
    AlreadyFinal,
}

impl Store {
    fn workload_key(&self, id: &str) -> String {
        format!("{}:workload:{}", self.prefix, tag(id))
    }

    fn workloads_key(&self) -> String {
        format!("{}:workloads", self.prefix)
    }

    fn conns_key(&self, id: &str) -> String {
        format!("{}:workload-conns:{}", self.prefix, tag(id))
    }

    fn work_key(&self, id: &str, part: &str) -> String {
        format!("{}:work:{}:{part}", self.prefix, tag(id))
    }

    /// The lifecycle pub/sub channel.
    pub fn workload_channel(&self) -> String {
        format!("{}:workload-events", self.prefix)
    }

    /// Stores a new record; false when the id is taken.
    pub async fn workload_create(&self, id: &str, record: &str) -> Result<bool, StoreError> {
        let key = self.workload_key(id);
        let created: bool = self
            .run(|mut c| async move {
                redis::cmd("SET").arg(key).arg(record).arg("NX").query_async::<Option<String>>(&mut c).await
            })
            .await?
            .is_some();
        if created {
            let set = self.workloads_key();
            self.run(
                |mut c| async move { redis::cmd("SADD").arg(set).arg(id).query_async::<i64>(&mut c).await },
            )
            .await?;
        }
        Ok(created)
    }

    /// Replaces an existing record (false when there is none).
    pub async fn workload_replace(&self, id: &str, record: &str) -> Result<bool, StoreError> {
        let key = self.workload_key(id);
        let replaced: Option<String> =
            self.run(|mut c| async move {
                redis::cmd("SET").arg(key).arg(record).arg("XX").query_async(&mut c).await
            })
            .await?;
        Ok(replaced.is_some())
    }

    /// A record, if kept.
    pub async fn workload_get(&self, id: &str) -> Result<Option<String>, StoreError> {
        let key = self.workload_key(id);
        self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await
    }

    /// Every kept record (ids whose record is gone are dropped from the set).
    pub async fn workload_list(&self) -> Result<Vec<String>, StoreError> {
        let set = self.workloads_key();
        let ids: Vec<String> = self
            .run(|mut c| async move { redis::cmd("SMEMBERS").arg(set).query_async(&mut c).await })
            .await?;
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            for id in chunk {
                match self.workload_get(id).await? {
                    Some(r) => records.push(r),
                    None => {
                        let set = self.workloads_key();
                        let id = id.clone();
                        self.run(|mut c| async move {
                            redis::cmd("SREM").arg(set).arg(id).query_async::<i64>(&mut c).await
                        })
                        .await?;
                    }
                }
            }
        }
        Ok(records)
    }

    /// Deletes a record and everything of its queue.
    pub async fn workload_delete(&self, id: &str) -> Result<(), StoreError> {
        let keys: Vec<String> = ["items", "payload", "pending", "done", "seq"]
            .iter()
            .map(|p| self.work_key(id, p))
            .chain([self.workload_key(id), self.conns_key(id)])
            .collect();
        for key in keys {
            self.run(|mut c| async move { redis::cmd("DEL").arg(key).query_async::<i64>(&mut c).await })
                .await?;
        }
        let set = self.workloads_key();
        self.run(|mut c| async move { redis::cmd("SREM").arg(set).arg(id).query_async::<i64>(&mut c).await })
            .await?;
        Ok(())
    }

    /// Records that `replica` holds (`since` = Some) or no longer holds the workload's agent.
    pub async fn workload_connection(
        &self,
        id: &str,
        replica: &str,
        since: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = self.conns_key(id);
        self.run(|mut c| async move {
            match since {
                Some(at) => redis::cmd("HSET").arg(key).arg(replica).arg(at).query_async::<i64>(&mut c).await,
                None => redis::cmd("HDEL").arg(key).arg(replica).query_async::<i64>(&mut c).await,
            }
        })
        .await?;
        Ok(())
    }

    /// Replica → since, for the replicas holding the workload's agent.
    pub async fn workload_connections(&self, id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let key = self.conns_key(id);
        self.run(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await
    }

    /// Publishes a lifecycle event to every replica.
    pub async fn workload_publish(&self, event: &str) -> Result<(), StoreError> {
        let channel = self.workload_channel();
        self.run(|mut c| async move {
            redis::cmd("PUBLISH").arg(channel).arg(event).query_async::<i64>(&mut c).await
        })
        .await?;
        Ok(())
    }

    /// Queues an item; `None` when `max_pending` items already wait. `status` is the
    /// item's JSON with `%ID%` where its id goes.
    pub async fn work_enqueue(
        &self,
        id: &str,
        status: &str,
        payload: &[u8],
        max_pending: usize,
    ) -> Result<Option<String>, StoreError> {
        let keys = [
            self.work_key(id, "seq"),
            self.work_key(id, "items"),
            self.work_key(id, "payload"),
            self.work_key(id, "pending"),
        ];
        self.run(|mut c| async move {
            ENQUEUE
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .key(&keys[3])
                .arg(max_pending)
                .arg(status)
                .arg(payload)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// Hands out the oldest unacknowledged item: (item id, payload, deliveries so far).
    pub async fn work_next(&self, id: &str, now: u64) -> Result<Option<(String, Vec<u8>, u32)>, StoreError> {
        let keys = [self.work_key(id, "items"), self.work_key(id, "payload"), self.work_key(id, "pending")];
        self.run(|mut c| async move {
            NEXT.key(&keys[0]).key(&keys[1]).key(&keys[2]).arg(now).invoke_async(&mut c).await
        })
        .await
    }

    /// Records an item's progress; `fin` acknowledges it (it leaves the queue).
    pub async fn work_update(
        &self,
        id: &str,
        item: &str,
        state: &str,
        detail: &str,
        now: u64,
        fin: bool,
    ) -> Result<WorkUpdate, StoreError> {
        let keys = [
            self.work_key(id, "items"),
            self.work_key(id, "payload"),
            self.work_key(id, "pending"),
            self.work_key(id, "done"),
        ];
        let n: i64 = self
            .run(|mut c| async move {
                UPDATE
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .key(&keys[3])
                    .arg(item)
                    .arg(state)
                    .arg(detail)
                    .arg(now)
                    .arg(if fin { "1" } else { "0" })
                    .arg(DONE_KEPT)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match n {
            1 => WorkUpdate::Updated,
            2 => WorkUpdate::AlreadyFinal,
            _ => WorkUpdate::Unknown,
        })
    }

    /// Every kept item status (JSON), in no particular order.
    pub async fn work_list(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let key = self.work_key(id, "items");
        self.run(|mut c| async move { redis::cmd("HVALS").arg(key).query_async(&mut c).await }).await
    }
}
