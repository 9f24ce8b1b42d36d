//! Connection-rate counters in Redis, shared by every replica: one counter per token
//! and window.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{now_ms, tag, Store, StoreError};

// INCR with the window's expiry set on first use; returns the count and the ms left.
const RATE_LUA: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"#;
static RATE: LazyLock<Script> = LazyLock::new(|| Script::new(RATE_LUA));

impl Store {
    /// Counts one connection attempt of the token with hash `token_id` in the current
    /// window; returns the count so far and the time left in the window.
    pub async fn count_attempt(
        &self,
        token_id: &str,
        window: Duration,
    ) -> Result<(u64, Duration), StoreError> {
        let index = now_ms() / window.as_millis().max(1) as u64;
        let key = format!("{}:connect-rate:{}:{index}", self.prefix, tag(token_id));
        let (n, ttl): (u64, i64) =
            self.run(|mut c| async move {
                RATE.key(key).arg(window.as_millis() as u64).invoke_async(&mut c).await
            })
            .await?;
        Ok((n, Duration::from_millis(ttl.max(0) as u64)))
    }
}
