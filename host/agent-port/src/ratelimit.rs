//! Per-token limit on agent connection attempts (`Control` handshakes), so one leaked or
//! misbehaving token cannot make every replica run the authorizer in a loop.
//!
//! Fixed one-minute windows keyed by the token's SHA-256 (never the token). In cluster
//! mode the counter lives in Redis, shared by every replica; when Redis cannot be reached
//! each replica falls back to its own in-memory counter with the same limit, so an
//! outage neither blocks reconnecting agents nor lifts the limit entirely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_host_redis::Store;

const WINDOW: Duration = Duration::from_secs(60);

/// The token made too many connection attempts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many connection attempts: the limit is {limit} per minute; retry in {retry_after:?}")]
pub struct RateLimited {
    /// Attempts allowed per minute.
    pub limit: u32,
    /// When the current window ends.
    pub retry_after: Duration,
}

/// Counts connection attempts per token (across replicas when there is a store) and per
/// source address (on this replica, before the token is even looked at).
pub struct ConnectRateLimiter {
    limit: u32,
    store: Option<Arc<Store>>,
    local: LocalWindows<[u8; 16]>,
    per_address_limit: u32,
    per_address: LocalWindows<std::net::IpAddr>,
}

/// Keys counted in memory at most: a flood of distinct keys within one minute shares one
/// overflow bucket past this, so memory stays bounded and the flood stays limited.
const LOCAL_KEYS_MAX: usize = 100_000;

/// Per-key counts in one-minute windows, bounded.
struct LocalWindows<K> {
    counts: Mutex<HashMap<K, (u64, u32)>>,
    overflow: K,
}

impl<K: std::hash::Hash + Eq + Clone> LocalWindows<K> {
    fn new(overflow: K) -> Self {
        Self { counts: Mutex::new(HashMap::new()), overflow }
    }

    /// Counts one attempt of `key`; the count in the current window and its time left.
    fn count(&self, key: K) -> (u32, Duration) {
        let (window, left) = window_now();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = if counts.len() >= LOCAL_KEYS_MAX && !counts.contains_key(&key) {
            // Old windows go first; if the current one alone is full, share a bucket.
            counts.retain(|_, (w, _)| *w == window);
            if counts.len() >= LOCAL_KEYS_MAX {
                self.overflow.clone()
            } else {
                key
            }
        } else {
            key
        };
        let entry = counts.entry(key).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        (entry.1, left)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.counts.lock().unwrap().len()
    }
}

fn window_now() -> (u64, Duration) {
    let w = WINDOW.as_millis() as u64;
    let ms = burrow_host_time::now_ms();
    (ms / w, Duration::from_millis(w - ms % w))
}

impl ConnectRateLimiter {
    /// `limit` attempts per token per minute (0: unlimited); shared through `store` (the
    /// cluster's Redis) when there is one.
    pub fn new(limit: u32, store: Option<Arc<Store>>) -> Self {
        Self::with_address_limit(limit, store, 0)
    }

    /// [`ConnectRateLimiter::new`], plus `per_address` attempts per source address per
    /// minute on this replica (0: none), checked first.
    pub fn with_address_limit(limit: u32, store: Option<Arc<Store>>, per_address: u32) -> Self {
        Self {
            limit,
            store,
            local: LocalWindows::new([0xff; 16]),
            per_address_limit: per_address,
            per_address: LocalWindows::new(std::net::IpAddr::from([0u8; 16])),
        }
    }

    /// Counts one attempt from `ip`, before any token is read: random tokens from one
    /// source do not each get a fresh bucket, a Redis call and a plugin call.
    pub fn check_address(&self, ip: std::net::IpAddr) -> Result<(), RateLimited> {
        if self.per_address_limit == 0 {
            return Ok(());
        }
        let (n, left) = self.per_address.count(ip.to_canonical());
        if n > self.per_address_limit {
            Err(RateLimited { limit: self.per_address_limit, retry_after: left })
        } else {
            Ok(())
        }
    }

    /// Counts one attempt of the token whose SHA-256 is `token_sha256`.
    pub async fn check(&self, token_sha256: &[u8; 32]) -> Result<(), RateLimited> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&token_sha256[..16]);
        if let Some(store) = &self.store {
            match store.count_attempt(&hex::encode(id), WINDOW).await {
                Ok((n, left)) => {
                    return if n > u64::from(self.limit) {
                        Err(RateLimited {
                            limit: self.limit,
                            retry_after: left.max(Duration::from_millis(1)),
                        })
                    } else {
                        Ok(())
                    };
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connection rate limit: Redis unavailable, counting locally")
                }
            }
        }
        self.check_local(id)
    }

    fn check_local(&self, id: [u8; 16]) -> Result<(), RateLimited> {
        let (n, left) = self.local.count(id);
        if n > self.limit {
            Err(RateLimited { limit: self.limit, retry_after: left })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limit_counts_per_token() {
        // Windows are wall-clock minutes: do not start in the last second of one.
        let (_, left) = window_now();
        if left < Duration::from_secs(1) {
            std::thread::sleep(left + Duration::from_millis(10));
        }
        let limiter = ConnectRateLimiter::new(3, None);
        let a = [1u8; 32];
        let b = [2u8; 32];
        for _ in 0..3 {
            limiter.check(&a).await.unwrap();
        }
        let err = limiter.check(&a).await.unwrap_err();
        assert_eq!(err.limit, 3);
        assert!(err.retry_after <= WINDOW);
        limiter.check(&b).await.unwrap();
    }

    #[test]
    fn bounded_local_counts_share_an_overflow_bucket_past_their_cap() {
        let windows = LocalWindows::new(u32::MAX);
        for key in 0..LOCAL_KEYS_MAX as u32 {
            windows.count(key);
        }
        // A flood of new keys in the same minute all land in one bucket.
        let (first, _) = windows.count(u32::MAX - 1);
        let (second, _) = windows.count(u32::MAX - 2);
        assert_eq!(second, first + 1);
        assert!(windows.len() <= LOCAL_KEYS_MAX + 1);
    }

    #[test]
    fn bounded_attempts_per_address_come_before_any_token() {
        let (_, left) = window_now();
        if left < Duration::from_secs(1) {
            std::thread::sleep(left + Duration::from_millis(10));
        }
        let limiter = ConnectRateLimiter::with_address_limit(0, None, 2);
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        limiter.check_address(ip).unwrap();
        limiter.check_address(ip).unwrap();
        assert_eq!(limiter.check_address(ip).unwrap_err().limit, 2);
        limiter.check_address("192.0.2.8".parse().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn zero_means_unlimited() {
        let limiter = ConnectRateLimiter::new(0, None);
        for _ in 0..1000 {
            limiter.check(&[0; 32]).await.unwrap();
        }
    }
}
