//! The `burrow:plugin/kv` host import: a key-value store with TTL, namespaced by plugin.
//!
//! Two backends behind one [`KvStore`]:
//!
//! - **memory** (single-process mode): a map per namespace. Expired entries are purged
//!   lazily when touched, all of a namespace's expired entries when it hits its quota,
//!   and by a bounded sweep (at most [`SWEEP_BATCH`] per namespace every
//!   [`SWEEP_EVERY`], piggy-backed on store operations, so no task has to be spawned).
//!   Each namespace holds at most [`KvLimits::max_keys`] live keys.
//! - **Redis** (cluster mode): every replica sees the same entries, stored by
//!   [`Store::kv_get`] and friends under `P:plugin-kv:{<plugin>}:<key>`; Redis expires
//!   them itself. Key and value sizes are checked, but the key-count quota is NOT
//!   enforced there: counting a namespace's keys would cost a round trip (or a `SCAN`)
//!   per write; Redis's own `maxmemory` bounds what plugins can store.
//!
//! Counters are stored as decimal text (as Redis stores them), so both backends agree on
//! what `get` returns after `increment`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::bindings::kv;
use burrow_host_redis::{Store, StoreError};

/// Longest key, in bytes (the WIT contract's limit).
pub(crate) const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes (the WIT contract's limit).
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Default quota of live keys per plugin (memory backend).
pub(crate) const DEFAULT_MAX_KEYS: usize = 10_000;
/// Longer TTLs are cut to this: far beyond any host's uptime, and well inside what both
/// `Instant` arithmetic and Redis's `PX` accept.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How often the memory backend sweeps every namespace for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// At most this many expired entries are dropped per namespace per sweep, so a sweep
/// never stalls the call that triggers it.
const SWEEP_BATCH: usize = 256;

/// Per-namespace limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvLimits {
    /// Live keys per namespace (memory backend only).
    pub max_keys: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self { max_keys: DEFAULT_MAX_KEYS, max_key_bytes: MAX_KEY_BYTES, max_value_bytes: MAX_VALUE_BYTES }
    }
}

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KvError {
    /// The backend cannot be reached or answered with an error.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    #[error("key of {len} bytes is over the {max}-byte limit")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes is over the {max}-byte limit")]
    ValueTooLarge { len: usize, max: usize },
    #[error("namespace is full ({max} keys)")]
    QuotaExceeded { max: usize },
    /// `increment` on a value that is not a decimal `s64`.
    #[error("value is not an integer counter")]
    NotACounter,
    /// `increment` would leave the `s64` range.
    #[error("counter would overflow")]
    Overflow,
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        KvError::Unavailable(e.to_string())
    }
}

impl From<KvError> for kv::KvError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. } => kv::KvError::TooLarge,
            KvError::QuotaExceeded { .. } => kv::KvError::QuotaExceeded,
            // The contract has no case for misuse of a counter; `unavailable` carries the
            // reason, which is what Redis's own error for it becomes too.
            e @ (KvError::Unavailable(_) | KvError::NotACounter | KvError::Overflow) => {
                kv::KvError::Unavailable(match e {
                    KvError::Unavailable(reason) => reason,
                    other => other.to_string(),
                })
            }
        }
    }
}

/// The store every plugin's `kv` import uses; cheap to clone.
#[derive(Clone)]
pub(crate) struct KvStore {
    backend: Backend,
    limits: KvLimits,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Memory>),
    Redis(Arc<Store>),
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Memory(_) => "memory".to_owned(),
            Backend::Redis(store) => format!("redis {}", store.describe()),
        };
        f.debug_struct("KvStore").field("backend", &backend).field("limits", &self.limits).finish()
    }
}

impl KvStore {
    /// An in-process store (single-process mode).
    pub(crate) fn memory(limits: KvLimits) -> KvStore {
        KvStore { backend: Backend::Memory(Arc::new(Memory::new())), limits }
    }

    /// A store in the cluster's Redis, shared by every replica.
    pub(crate) fn redis(store: Arc<Store>, limits: KvLimits) -> KvStore {
        KvStore { backend: Backend::Redis(store), limits }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        match key.len() > self.limits.max_key_bytes {
            true => Err(KvError::KeyTooLarge { len: key.len(), max: self.limits.max_key_bytes }),
            false => Ok(()),
        }
    }

    /// The value of `key`, or `None` when it is missing or expired.
    pub(crate) async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(namespace, key, Instant::now())),
            Backend::Redis(store) => Ok(store.kv_get(namespace, key).await?),
        }
    }

    /// Stores `value` under `key`, replacing any value and TTL it had. With a `ttl`
    /// the entry disappears after it (zero: at once, so nothing is stored).
    pub(crate) async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(KvError::ValueTooLarge { len: value.len(), max: self.limits.max_value_bytes });
        }
        let ttl = ttl.map(|t| t.min(MAX_TTL));
        match &self.backend {
            Backend::Memory(m) => m.set(namespace, key, value, ttl, self.limits.max_keys, Instant::now()),
            Backend::Redis(store) => Ok(store.kv_set(namespace, key, &value, ttl).await?),
        }
    }

    /// Deletes `key`; true when it existed (and had not expired).
    pub(crate) async fn delete(&self, namespace: &str, key: &str) -> Result<bool, KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.delete(namespace, key, Instant::now())),
            Backend::Redis(store) => Ok(store.kv_delete(namespace, key).await?),
        }
    }

    /// Adds `delta` to the counter at `key` (missing counts as 0) and returns the new
    /// value. `ttl` applies only when this call creates the counter, so a fixed window
    /// starts with its first hit and is not extended by later ones.
    pub(crate) async fn increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        self.check_key(key)?;
        let ttl = ttl.map(|t| t.min(MAX_TTL));
        match &self.backend {
            Backend::Memory(m) => {
                m.increment(namespace, key, delta, ttl, self.limits.max_keys, Instant::now())
            }
            Backend::Redis(store) => Ok(store.kv_increment(namespace, key, delta, ttl).await?),
        }
    }
}

/// One plugin's view of the store: what the generated `kv::Host` is implemented on. The
/// runtime keeps one in each call's store data, with the plugin's name as namespace.
pub(crate) struct KvCtx {
    pub store: KvStore,
    pub namespace: Arc<str>,
}

impl KvCtx {
    fn failed(&self, op: &str, e: KvError) -> kv::KvError {
        // Debug: a plugin that ignores errors could otherwise flood the log while Redis is
        // away; the guest gets the reason and can log it itself.
        tracing::debug!(plugin = %self.namespace, op, error = %e, "plugin kv operation failed");
        e.into()
    }
}

impl kv::Host for KvCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.store.get(&self.namespace, &key).await.map_err(|e| self.failed("get", e))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), kv::KvError> {
        let ttl = ttl_ms.map(Duration::from_millis);
        self.store.set(&self.namespace, &key, value, ttl).await.map_err(|e| self.failed("set", e))
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        self.store.delete(&self.namespace, &key).await.map_err(|e| self.failed("delete", e))
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, kv::KvError> {
        let ttl = ttl_ms.map(Duration::from_millis);
        self.store.increment(&self.namespace, &key, delta, ttl).await.map_err(|e| self.failed("increment", e))
    }
}

/// The memory backend.
struct Memory {
    namespaces: RwLock<HashMap<Box<str>, Arc<Mutex<Namespace>>>>,
    next_sweep: Mutex<Instant>,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// One plugin's entries, with an index of expiry times so expired entries can be found
/// without scanning the map.
#[derive(Default)]
struct Namespace {
    entries: HashMap<Box<str>, Entry>,
    expiries: BTreeSet<(Instant, Box<str>)>,
}

impl Namespace {
    /// The entry, unless it is missing or expired (an expired one is dropped).
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expired(now)) {
            self.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if let Some(at) = entry.expires {
            self.expiries.remove(&(at, Box::from(key)));
        }
        Some(entry)
    }

    fn insert(&mut self, key: &str, entry: Entry) {
        self.remove(key);
        if let Some(at) = entry.expires {
            self.expiries.insert((at, Box::from(key)));
        }
        self.entries.insert(Box::from(key), entry);
    }

    /// Drops up to `limit` expired entries, oldest expiry first.
    fn purge_expired(&mut self, now: Instant, limit: usize) -> usize {
        let mut purged = 0;
        while purged < limit {
            match self.expiries.first() {
                Some((at, _)) if *at <= now => {
                    let (_, key) = self.expiries.pop_first().expect("first() was Some");
                    self.entries.remove(&key);
                    purged += 1;
                }
                _ => break,
            }
        }
        purged
    }

    /// Whether `key` may be created: always when it exists; otherwise only under the
    /// quota, counting live entries (expired ones are purged first, all of them, since
    /// a full namespace is exactly when they must not count).
    fn make_room(&mut self, key: &str, max_keys: usize, now: Instant) -> Result<(), KvError> {
        if self.entries.contains_key(key) || self.entries.len() < max_keys {
            return Ok(());
        }
        self.purge_expired(now, usize::MAX);
        match self.entries.len() < max_keys {
            true => Ok(()),
            false => Err(KvError::QuotaExceeded { max: max_keys }),
        }
    }
}

fn expiry(ttl: Option<Duration>, now: Instant) -> Option<Instant> {
    // `MAX_TTL` keeps the sum representable; should it not be, never expiring is the
    // closest behaviour.
    ttl.and_then(|t| now.checked_add(t))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here panics while holding a lock, and every update leaves the maps
    // consistent, so a poisoned lock's data is still sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Memory {
    fn new() -> Self {
        Self { namespaces: RwLock::new(HashMap::new()), next_sweep: Mutex::new(Instant::now() + SWEEP_EVERY) }
    }

    fn namespace(&self, name: &str) -> Arc<Mutex<Namespace>> {
        if let Some(ns) = self.namespaces.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return ns.clone();
        }
        let mut all = self.namespaces.write().unwrap_or_else(PoisonError::into_inner);
        all.entry(Box::from(name)).or_default().clone()
    }

    /// Runs `op` on the namespace, then sweeps if one is due.
    fn with<R>(&self, name: &str, now: Instant, op: impl FnOnce(&mut Namespace) -> R) -> R {
        let result = op(&mut lock(&self.namespace(name)));
        self.maybe_sweep(now);
        result
    }

    fn maybe_sweep(&self, now: Instant) {
        // try_lock: when another call is sweeping, this one need not wait for it.
        let Ok(mut next) = self.next_sweep.try_lock() else { return };
        if now < *next {
            return;
        }
        *next = now + SWEEP_EVERY;
        let namespaces: Vec<_> =
            self.namespaces.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for ns in &namespaces {
            lock(ns).purge_expired(now, SWEEP_BATCH);
        }
        drop(namespaces);
        // A namespace left empty is dropped, unless a call holds it right now (it may be
        // about to insert; it got its handle under the lock held here, so the count is
        // exact).
        let mut all = self.namespaces.write().unwrap_or_else(PoisonError::into_inner);
        all.retain(|_, ns| Arc::strong_count(ns) > 1 || !lock(ns).entries.is_empty());
    }

    fn get(&self, name: &str, key: &str, now: Instant) -> Option<Vec<u8>> {
        self.with(name, now, |ns| ns.live(key, now).map(|e| e.value.clone()))
    }

    fn set(
        &self,
        name: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        max_keys: usize,
        now: Instant,
    ) -> Result<(), KvError> {
        self.with(name, now, |ns| {
            if ttl == Some(Duration::ZERO) {
                ns.remove(key);
                return Ok(());
            }
            ns.live(key, now);
            ns.make_room(key, max_keys, now)?;
            ns.insert(key, Entry { value, expires: expiry(ttl, now) });
            Ok(())
        })
    }

    fn delete(&self, name: &str, key: &str, now: Instant) -> bool {
        self.with(name, now, |ns| ns.live(key, now).is_some() && ns.remove(key).is_some())
    }

    fn increment(
        &self,
        name: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        max_keys: usize,
        now: Instant,
    ) -> Result<i64, KvError> {
        self.with(name, now, |ns| {
            if let Some(entry) = ns.live(key, now) {
                let current = parse_counter(&entry.value).ok_or(KvError::NotACounter)?;
                let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
                entry.value = next.to_string().into_bytes();
                return Ok(next);
            }
            // Created now: the counter starts at 0 and the TTL applies. A zero TTL
            // expires it at once, leaving nothing behind.
            if ttl != Some(Duration::ZERO) {
                ns.make_room(key, max_keys, now)?;
                ns.insert(key, Entry { value: delta.to_string().into_bytes(), expires: expiry(ttl, now) });
            }
            Ok(delta)
        })
    }
}

/// A counter's value: decimal, optional `-`, nothing else (what Redis accepts).
fn parse_counter(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    if text.starts_with('+') {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests;
