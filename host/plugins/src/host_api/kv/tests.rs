//! Tests of the kv host import: the in-memory backend, its limits and namespaces, and the Redis backend against a real redis-server.

use super::*;

fn limits(max_keys: usize) -> KvLimits {
    KvLimits { max_keys, ..KvLimits::default() }
}

fn entries(store: &KvStore, namespace: &str) -> usize {
    let Backend::Memory(m) = &store.backend else { panic!("memory backend") };
    let all = m.namespaces.read().unwrap();
    all.get(namespace).map_or(0, |ns| ns.lock().unwrap().entries.len())
}

fn has_namespace(store: &KvStore, namespace: &str) -> bool {
    let Backend::Memory(m) = &store.backend else { panic!("memory backend") };
    let all = m.namespaces.read().unwrap();
    all.contains_key(namespace)
}

#[tokio::test(start_paused = true)]
async fn set_get_delete() {
    let kv = KvStore::memory(KvLimits::default());
    assert_eq!(kv.get("p", "a").await, Ok(None));
    kv.set("p", "a", b"one".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("p", "a").await, Ok(Some(b"one".to_vec())));
    kv.set("p", "a", b"two".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("p", "a").await, Ok(Some(b"two".to_vec())));
    // Namespaces are separate.
    assert_eq!(kv.get("q", "a").await, Ok(None));
    assert_eq!(kv.delete("q", "a").await, Ok(false));
    assert_eq!(kv.delete("p", "a").await, Ok(true));
    assert_eq!(kv.delete("p", "a").await, Ok(false));
    assert_eq!(kv.get("p", "a").await, Ok(None));
    // Empty keys and values are ordinary.
    kv.set("p", "", Vec::new(), None).await.unwrap();
    assert_eq!(kv.get("p", "").await, Ok(Some(Vec::new())));
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_their_ttl() {
    let kv = KvStore::memory(KvLimits::default());
    kv.set("p", "a", b"v".to_vec(), Some(Duration::from_millis(100))).await.unwrap();
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_eq!(kv.get("p", "a").await, Ok(Some(b"v".to_vec())));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(kv.get("p", "a").await, Ok(None));
    assert_eq!(entries(&kv, "p"), 0, "an expired entry is dropped when read");

    // Expired entries do not count as existing for delete.
    kv.set("p", "b", b"v".to_vec(), Some(Duration::from_millis(10))).await.unwrap();
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(kv.delete("p", "b").await, Ok(false));

    // Overwriting without a TTL makes the entry permanent; with one, restarts it.
    kv.set("p", "c", b"v".to_vec(), Some(Duration::from_millis(10))).await.unwrap();
    kv.set("p", "c", b"w".to_vec(), None).await.unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(kv.get("p", "c").await, Ok(Some(b"w".to_vec())));
    kv.set("p", "c", b"x".to_vec(), Some(Duration::from_millis(10))).await.unwrap();
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(kv.get("p", "c").await, Ok(None));

    // A zero TTL stores nothing and removes what was there.
    kv.set("p", "d", b"v".to_vec(), None).await.unwrap();
    kv.set("p", "d", b"w".to_vec(), Some(Duration::ZERO)).await.unwrap();
    assert_eq!(kv.get("p", "d").await, Ok(None));

    // A huge TTL is capped, not an overflow.
    kv.set("p", "e", b"v".to_vec(), Some(Duration::from_millis(u64::MAX))).await.unwrap();
    tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    assert_eq!(kv.get("p", "e").await, Ok(Some(b"v".to_vec())));
}

#[tokio::test(start_paused = true)]
async fn quota_counts_live_keys_per_namespace() {
    let kv = KvStore::memory(limits(3));
    for key in ["a", "b", "c"] {
        kv.set("p", key, b"v".to_vec(), None).await.unwrap();
    }
    assert_eq!(kv.set("p", "d", b"v".to_vec(), None).await, Err(KvError::QuotaExceeded { max: 3 }));
    assert_eq!(kv.increment("p", "d", 1, None).await, Err(KvError::QuotaExceeded { max: 3 }));
    // Existing keys can still be written, and other plugins are not affected.
    kv.set("p", "a", b"w".to_vec(), None).await.unwrap();
    kv.set("q", "d", b"v".to_vec(), None).await.unwrap();
    // Deleting frees a slot.
    assert_eq!(kv.delete("p", "b").await, Ok(true));
    kv.set("p", "d", b"v".to_vec(), None).await.unwrap();
    assert_eq!(kv.set("p", "e", b"v".to_vec(), None).await, Err(KvError::QuotaExceeded { max: 3 }));
    // Expired keys do not count, even before anything read them.
    kv.set("p", "a", b"v".to_vec(), Some(Duration::from_millis(5))).await.unwrap();
    tokio::time::advance(Duration::from_millis(5)).await;
    kv.set("p", "e", b"v".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("p", "a").await, Ok(None));
    assert_eq!(entries(&kv, "p"), 3);
}

#[tokio::test(start_paused = true)]
async fn sizes_are_limited() {
    let kv = KvStore::memory(KvLimits::default());
    let key = "k".repeat(MAX_KEY_BYTES);
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    kv.set("p", &key, vec![7; MAX_VALUE_BYTES], None).await.unwrap();
    assert_eq!(kv.get("p", &key).await.unwrap().map(|v| v.len()), Some(MAX_VALUE_BYTES));
    assert_eq!(
        kv.set("p", "v", vec![7; MAX_VALUE_BYTES + 1], None).await,
        Err(KvError::ValueTooLarge { len: MAX_VALUE_BYTES + 1, max: MAX_VALUE_BYTES })
    );
    let too_long = Err(KvError::KeyTooLarge { len: MAX_KEY_BYTES + 1, max: MAX_KEY_BYTES });
    assert_eq!(kv.set("p", &long, b"v".to_vec(), None).await, too_long.clone());
    assert_eq!(kv.get("p", &long).await, too_long.clone().map(|()| None));
    assert_eq!(kv.delete("p", &long).await, too_long.clone().map(|()| false));
    assert_eq!(kv.increment("p", &long, 1, None).await, too_long.map(|()| 0));
    // Bytes, not characters.
    let multibyte = "é".repeat(MAX_KEY_BYTES / 2 + 1);
    assert!(matches!(kv.get("p", &multibyte).await, Err(KvError::KeyTooLarge { .. })));
    assert_eq!(entries(&kv, "p"), 1);
}

#[tokio::test(start_paused = true)]
async fn increment_counts_and_keeps_the_first_ttl() {
    let kv = KvStore::memory(KvLimits::default());
    let minute = Some(Duration::from_secs(60));
    assert_eq!(kv.increment("p", "hits", 1, minute).await, Ok(1));
    tokio::time::advance(Duration::from_secs(30)).await;
    // A later TTL does not extend the window.
    assert_eq!(kv.increment("p", "hits", 2, Some(Duration::from_secs(600))).await, Ok(3));
    assert_eq!(kv.increment("p", "hits", -5, None).await, Ok(-2));
    assert_eq!(kv.get("p", "hits").await, Ok(Some(b"-2".to_vec())));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(kv.get("p", "hits").await, Ok(None));
    // The next window starts afresh.
    assert_eq!(kv.increment("p", "hits", 1, minute).await, Ok(1));

    // Without a TTL the counter stays; a zero TTL counts once and keeps nothing.
    assert_eq!(kv.increment("p", "total", 0, None).await, Ok(0));
    assert_eq!(kv.get("p", "total").await, Ok(Some(b"0".to_vec())));
    assert_eq!(kv.increment("p", "gone", 4, Some(Duration::ZERO)).await, Ok(4));
    assert_eq!(kv.get("p", "gone").await, Ok(None));

    // A value written by `set` counts when it is a decimal integer.
    kv.set("p", "n", b"41".to_vec(), None).await.unwrap();
    assert_eq!(kv.increment("p", "n", 1, None).await, Ok(42));
    for bad in [&b"abc"[..], b"+1", b" 1", b"1.5", b"", b"\xff"] {
        kv.set("p", "bad", bad.to_vec(), None).await.unwrap();
        assert_eq!(kv.increment("p", "bad", 1, None).await, Err(KvError::NotACounter), "{bad:?}");
    }
    kv.set("p", "max", i64::MAX.to_string().into_bytes(), None).await.unwrap();
    assert_eq!(kv.increment("p", "max", 1, None).await, Err(KvError::Overflow));
    assert_eq!(kv.increment("p", "max", -1, None).await, Ok(i64::MAX - 1));
    assert_eq!(kv.increment("p", "min", i64::MIN, None).await, Ok(i64::MIN));
    assert_eq!(kv.increment("p", "min", -1, None).await, Err(KvError::Overflow));
}

#[tokio::test(start_paused = true)]
async fn sweep_drops_expired_entries_nobody_reads() {
    let kv = KvStore::memory(KvLimits::default());
    let n = SWEEP_BATCH + 10;
    for i in 0..n {
        kv.set("idle", &format!("k{i}"), b"v".to_vec(), Some(Duration::from_secs(1))).await.unwrap();
    }
    kv.set("idle", "keep", b"v".to_vec(), None).await.unwrap();
    kv.set("gone", "k", b"v".to_vec(), Some(Duration::from_secs(1))).await.unwrap();
    assert_eq!(entries(&kv, "idle"), n + 1);

    // Not due yet: an operation elsewhere leaves the idle namespace alone.
    tokio::time::advance(Duration::from_secs(2)).await;
    kv.get("busy", "x").await.unwrap();
    assert_eq!(entries(&kv, "idle"), n + 1);

    // Due: one sweep drops a bounded batch per namespace, the next one the rest.
    tokio::time::advance(SWEEP_EVERY).await;
    kv.get("busy", "x").await.unwrap();
    assert_eq!(entries(&kv, "idle"), n + 1 - SWEEP_BATCH);
    assert!(!has_namespace(&kv, "gone"), "an emptied namespace is dropped");
    tokio::time::advance(SWEEP_EVERY).await;
    kv.get("busy", "x").await.unwrap();
    assert_eq!(entries(&kv, "idle"), 1);
    assert_eq!(kv.get("idle", "keep").await, Ok(Some(b"v".to_vec())));
}

#[tokio::test(start_paused = true)]
async fn host_import_maps_errors_to_the_contract() {
    use kv::Host as _;
    let mut ctx = KvCtx { store: KvStore::memory(limits(1)), namespace: Arc::from("plugin-a") };
    assert!(matches!(ctx.set("k".into(), b"1".to_vec(), Some(1000)).await, Ok(())));
    assert!(matches!(ctx.get("k".into()).await, Ok(Some(v)) if v == b"1"));
    assert!(matches!(ctx.increment("k".into(), 2, None).await, Ok(3)));
    assert!(matches!(ctx.set("other".into(), Vec::new(), None).await, Err(kv::KvError::QuotaExceeded)));
    assert!(matches!(
        ctx.set("k".into(), vec![0; MAX_VALUE_BYTES + 1], None).await,
        Err(kv::KvError::TooLarge)
    ));
    assert!(matches!(ctx.get("k".repeat(MAX_KEY_BYTES + 1)).await, Err(kv::KvError::TooLarge)));
    ctx.set("k".into(), b"x".to_vec(), None).await.unwrap();
    assert!(matches!(
        ctx.increment("k".into(), 1, None).await,
        Err(kv::KvError::Unavailable(reason)) if reason.contains("not an integer")
    ));
    // The namespace is the plugin's: another plugin's context does not see the key.
    let mut other = KvCtx { store: ctx.store.clone(), namespace: Arc::from("plugin-b") };
    assert!(matches!(other.get("k".into()).await, Ok(None)));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(ctx.delete("k".into()).await, Ok(true)), "set without TTL replaced the TTL");
}

/// A real `redis-server` (the shared test harness: free ports, logs kept on failure), or
/// `None` (after saying so) when it is not installed outside CI.
fn start_redis() -> Option<burrow_test_redis::RedisServer> {
    if !burrow_test_redis::available() {
        eprintln!("SKIPPED: redis-server is not installed; install it to run this test");
        return None;
    }
    Some(burrow_test_redis::RedisServer::start())
}

fn store_of(server: &burrow_test_redis::RedisServer) -> Arc<Store> {
    Arc::new(Store::new(burrow_host_redis::RedisConfig {
        urls: vec![server.url()],
        timeout: Duration::from_secs(5),
        ..Default::default()
    }))
}

async fn raw_of(server: &burrow_test_redis::RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn redis_backend_semantics() {
    let Some(server) = start_redis() else { return };
    let kv = KvStore::redis(store_of(&server), limits(2));
    let mut raw = raw_of(&server).await;

    assert_eq!(kv.get("p", "a").await, Ok(None));
    kv.set("p", "a", b"one\0\xff".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("p", "a").await, Ok(Some(b"one\0\xff".to_vec())));
    assert_eq!(kv.get("q", "a").await, Ok(None), "namespaces are separate");
    // The documented layout: the plugin's name is the hash tag.
    let stored: Option<Vec<u8>> =
        redis::cmd("GET").arg("burrow:plugin-kv:{p}:a").query_async(&mut raw).await.unwrap();
    assert_eq!(stored, Some(b"one\0\xff".to_vec()));
    // A name with braces cannot pick another plugin's slot or keys.
    kv.set("p}x{", "a", b"v".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("p", "a").await, Ok(Some(b"one\0\xff".to_vec())));
    assert_eq!(pttl(&mut raw, "burrow:plugin-kv:{p}:a").await, -1, "no TTL without one");

    kv.set("p", "a", b"two".to_vec(), Some(Duration::from_secs(60))).await.unwrap();
    let ttl = pttl(&mut raw, "burrow:plugin-kv:{p}:a").await;
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");
    kv.set("p", "a", b"three".to_vec(), None).await.unwrap();
    assert_eq!(pttl(&mut raw, "burrow:plugin-kv:{p}:a").await, -1, "set replaces the TTL");
    kv.set("p", "a", b"four".to_vec(), Some(Duration::ZERO)).await.unwrap();
    assert_eq!(kv.get("p", "a").await, Ok(None), "a zero TTL deletes");

    // Entries expire (Redis's clock; poll rather than guess how long it takes).
    kv.set("p", "short", b"v".to_vec(), Some(Duration::from_millis(20))).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kv.get("p", "short").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "entry with a 20 ms TTL still there after 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    kv.set("p", "d", b"v".to_vec(), None).await.unwrap();
    assert_eq!(kv.delete("p", "d").await, Ok(true));
    assert_eq!(kv.delete("p", "d").await, Ok(false));

    // Sizes are checked before Redis is asked; the key-count quota is not enforced.
    assert!(matches!(
        kv.set("p", "big", vec![0; MAX_VALUE_BYTES + 1], None).await,
        Err(KvError::ValueTooLarge { .. })
    ));
    assert!(matches!(kv.get("p", &"k".repeat(MAX_KEY_BYTES + 1)).await, Err(KvError::KeyTooLarge { .. })));
    for key in ["x", "y", "z"] {
        kv.set("p", key, b"v".to_vec(), None).await.unwrap();
    }
}

#[tokio::test]
async fn redis_increment_sets_ttl_only_on_creation() {
    let Some(server) = start_redis() else { return };
    let kv = KvStore::redis(store_of(&server), KvLimits::default());
    let mut raw = raw_of(&server).await;
    let key = "burrow:plugin-kv:{p}:hits";

    assert_eq!(kv.increment("p", "hits", 1, Some(Duration::from_secs(60))).await, Ok(1));
    let first = pttl(&mut raw, key).await;
    assert!(first > 0 && first <= 60_000, "PTTL {first}");
    assert_eq!(kv.increment("p", "hits", 2, Some(Duration::from_secs(600))).await, Ok(3));
    let second = pttl(&mut raw, key).await;
    assert!(second > 0 && second <= first, "the window was extended: {first} -> {second}");
    assert_eq!(kv.increment("p", "hits", -10, None).await, Ok(-7));
    assert_eq!(kv.get("p", "hits").await, Ok(Some(b"-7".to_vec())));

    assert_eq!(kv.increment("p", "total", 5, None).await, Ok(5));
    assert_eq!(pttl(&mut raw, "burrow:plugin-kv:{p}:total").await, -1);
    assert_eq!(kv.increment("p", "gone", 4, Some(Duration::ZERO)).await, Ok(4));
    assert_eq!(kv.get("p", "gone").await, Ok(None));

    // Exact past 2^53, where a Lua number would round.
    let big = (1i64 << 53) + 1;
    kv.set("p", "big", big.to_string().into_bytes(), None).await.unwrap();
    assert_eq!(kv.increment("p", "big", 2, None).await, Ok(big + 2));
    kv.set("p", "max", i64::MAX.to_string().into_bytes(), None).await.unwrap();
    assert!(matches!(kv.increment("p", "max", 1, None).await, Err(KvError::Unavailable(_))));

    kv.set("p", "text", b"abc".to_vec(), None).await.unwrap();
    match kv.increment("p", "text", 1, None).await {
        Err(KvError::Unavailable(reason)) => assert!(reason.contains("not an integer"), "{reason}"),
        other => panic!("increment of text: {other:?}"),
    }
    assert_eq!(kv.get("p", "text").await, Ok(Some(b"abc".to_vec())), "a failed increment changes nothing");
}

#[tokio::test]
async fn redis_down_is_unavailable() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = Arc::new(Store::new(burrow_host_redis::RedisConfig {
        urls: vec![format!("redis://127.0.0.1:{port}")],
        timeout: Duration::from_millis(500),
        ..Default::default()
    }));
    let mut ctx = KvCtx { store: KvStore::redis(store, KvLimits::default()), namespace: Arc::from("p") };
    use kv::Host as _;
    assert!(matches!(ctx.get("k".into()).await, Err(kv::KvError::Unavailable(_))));
    assert!(matches!(ctx.increment("k".into(), 1, Some(10)).await, Err(kv::KvError::Unavailable(_))));
    // Limits are still checked first, without Redis.
    assert!(matches!(
        ctx.set("k".into(), vec![0; MAX_VALUE_BYTES + 1], None).await,
        Err(kv::KvError::TooLarge)
    ));
}
