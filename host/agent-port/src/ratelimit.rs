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
#[error(
    "too many connection attempts with this token: the limit is {limit} per minute; retry in {retry_after:?}"
)]
pub struct RateLimited {
    /// Attempts allowed per minute.
    pub limit: u32,
    /// When the current window ends.
    pub retry_after: Duration,
}

/// Counts connection attempts per token.
pub struct ConnectRateLimiter {
    limit: u32,
    store: Option<Arc<Store>>,
    local: Mutex<HashMap<[u8; 16], (u64, u32)>>,
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
        Self { limit, store, local: Mutex::new(HashMap::new()) }
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
        let (window, left) = window_now();
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.len() > 100_000 {
            // Bounded memory under a flood of distinct tokens: old windows go first.
            local.retain(|_, (w, _)| *w == window);
        }
        let entry = local.entry(id).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.limit {
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

    #[tokio::test]
    async fn zero_means_unlimited() {
        let limiter = ConnectRateLimiter::new(0, None);
        for _ in 0..1000 {
            limiter.check(&[0; 32]).await.unwrap();
        }
    }
}
