//! Marks shared by every replica that expire on their own: a nonce used once, a session
//! ended. `SET NX PX` and `EXISTS`, one key each, in one namespace per use.

use std::time::Duration;

use super::{tag, Store, StoreError};

impl Store {
    fn mark_key(&self, namespace: &str, key: &str) -> String {
        format!("{}:mark:{}:{key}", self.prefix, tag(namespace))
    }

    /// Sets mark `key` of `namespace` for `ttl` unless it is set already: true when this
    /// call set it (the first use of a nonce, say).
    pub async fn mark_once(&self, namespace: &str, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.mark_key(namespace, key);
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("SET").arg(key).arg(1).arg("NX").arg("PX").arg(ms).query_async(&mut c).await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Whether mark `key` of `namespace` is set.
    pub async fn marked(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let key = self.mark_key(namespace, key);
        let n: i64 =
            self.run(|mut c| async move { redis::cmd("EXISTS").arg(key).query_async(&mut c).await }).await?;
        Ok(n > 0)
    }
}
