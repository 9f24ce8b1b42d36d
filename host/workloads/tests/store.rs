//! The store's rules, checked the same way against a state file and a real
//! `redis-server`: records are created once and end once, and the work queue hands out
//! its head until acknowledged, in order. `cargo test queue` runs the queue ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use burrow_host_workloads::queue::{QueueError, Updated, WorkState};
use burrow_host_workloads::record::{EndState, Ended, WorkloadRecord};
use burrow_host_workloads::{FileStore, Store, StoreError};

fn record(id: &str) -> WorkloadRecord {
    WorkloadRecord {
        kind: "workspace".into(),
        id: id.into(),
        owner: "alice".into(),
        allowed_users: vec![],
        allowed_groups: vec![],
        services: vec![],
        expires_at: 0,
        labels: BTreeMap::new(),
        created_at: 1,
        ended: None,
    }
}

async fn check_rules(store: &Store) {
    store.create(&record("w1")).await.unwrap();
    assert!(matches!(store.create(&record("w1")).await, Err(StoreError::Exists(_))));
    assert_eq!(store.get("w1").await.unwrap().unwrap().owner, "alice");
    assert!(store.get("w2").await.unwrap().is_none());

    let a = store.enqueue("w1", b"first", 10).await.unwrap();
    let b = store.enqueue("w1", b"second", 11).await.unwrap();
    assert!(a < b, "ids sort in enqueue order");
    let d = store.next("w1", 12).await.unwrap().unwrap();
    assert_eq!((d.id.as_str(), d.payload.as_slice(), d.delivery), (a.as_str(), &b"first"[..], 1));
    // Unacknowledged: the same item again, counted.
    let d = store.next("w1", 13).await.unwrap().unwrap();
    assert_eq!((d.id.as_str(), d.delivery), (a.as_str(), 2));
    assert_eq!(store.update("w1", &a, WorkState::Running, "", 14).await.unwrap(), Updated::Yes);
    assert_eq!(store.update("w1", &a, WorkState::Succeeded, "done", 15).await.unwrap(), Updated::Yes);
    assert_eq!(store.update("w1", &a, WorkState::Failed, "late", 16).await.unwrap(), Updated::AlreadyFinal);
    assert!(matches!(
        store.update("w1", "00000000000000000099", WorkState::Succeeded, "", 16).await,
        Err(StoreError::Queue(QueueError::UnknownItem(_)))
    ));
    let d = store.next("w1", 17).await.unwrap().unwrap();
    assert_eq!((d.id.as_str(), d.payload.as_slice(), d.delivery), (b.as_str(), &b"second"[..], 1));
    let list = store.list_work("w1").await.unwrap();
    let states: Vec<_> =
        list.iter().map(|s| (s.id.as_str(), s.state, s.deliveries, s.detail.as_str())).collect();
    assert_eq!(
        states,
        vec![(a.as_str(), WorkState::Succeeded, 2, "done"), (b.as_str(), WorkState::Delivered, 1, "")]
    );
    assert!(store.next("w2", 18).await.unwrap().is_none(), "another workload's queue is its own");

    let ended = Ended { state: EndState::Terminated, at: 20, reason: "bye".into() };
    assert_eq!(store.end("w1", ended.clone()).await.unwrap().ended, Some(ended.clone()));
    let again = Ended { reason: "again".into(), ..ended.clone() };
    assert_eq!(store.end("w1", again).await.unwrap().ended, Some(ended), "the first end stays");
    assert!(matches!(
        store.end("nope", Ended { state: EndState::Expired, at: 1, reason: String::new() }).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list().await.unwrap().len(), 1);
    store.delete("w1").await.unwrap();
    assert!(store.get("w1").await.unwrap().is_none());
    assert!(store.list_work("w1").await.unwrap().is_empty());
}

#[tokio::test]
async fn queue_and_record_rules_hold_in_the_file_store() {
    let store = Store::File(Arc::new(FileStore::open(None).unwrap()));
    check_rules(&store).await;
}

#[tokio::test]
async fn queue_and_record_rules_hold_in_redis() {
    let redis = burrow_test_redis::RedisServer::start();
    let config = burrow_host_redis::RedisConfig { urls: vec![redis.url()], ..Default::default() };
    let store = Store::Redis(Arc::new(burrow_host_redis::Store::new(config)));
    check_rules(&store).await;
}

#[tokio::test]
async fn queue_items_and_records_survive_reopening_the_state_file() {
    let dir =
        std::env::temp_dir().join(format!("burrow-store-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("workloads.json");
    {
        let store = Store::File(Arc::new(FileStore::open(Some(&path)).unwrap()));
        store.create(&record("w1")).await.unwrap();
        store.enqueue("w1", &[0, 255, 1], 1).await.unwrap();
        store.next("w1", 2).await.unwrap().unwrap();
    }
    let store = Store::File(Arc::new(FileStore::open(Some(&path)).unwrap()));
    assert_eq!(store.get("w1").await.unwrap().unwrap().id, "w1");
    // Delivered before the "restart" but never acknowledged: delivered again.
    let d = store.next("w1", 3).await.unwrap().unwrap();
    assert_eq!((d.payload, d.delivery), (vec![0, 255, 1], 2));
    std::fs::write(&path, "{ not json").unwrap();
    let err = FileStore::open(Some(&path)).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
