//! Plugins' key-value entries in Redis (the `kv` host import's shared backend), one
//! namespace per plugin.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{tag, Store, StoreError};

// INCRBY that gives a counter its TTL only when this call created it, atomically. The
// new value is read back with GET: Lua numbers are doubles, so returning INCRBY's reply
// through Lua would round counters past 2^53.
const KV_INCREMENT_LUA: &str = r#"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"#;
// `Store` is shared by every replica task; one script (and its SHA) is enough.
static KV_INCREMENT: LazyLock<Script> = LazyLock::new(|| Script::new(KV_INCREMENT_LUA));

impl Store {
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
            .run(|mut c| async move { KV_INCREMENT.key(key).arg(delta).arg(ttl).invoke_async(&mut c).await })
            .await?;
        match value {
            Some(v) => v.parse().map_err(|_| StoreError::Redis(format!("counter holds {v:?}"))),
            // A zero TTL deleted the new counter before GET: it held exactly `delta`.
            None => Ok(delta),
        }
    }
}
