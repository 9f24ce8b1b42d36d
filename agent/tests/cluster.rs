//! The agent against several host replicas: k connections on distinct replicas, through
//! several URLs or one load-balanced URL, settling when there are fewer replicas than
//! connections, surviving the loss of a replica, and honouring the rate limit.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_agent::{AgentConfig, AgentStatus, Backoff, ConnState};
use tokio::time::{sleep, Instant};

use common::*;

fn cluster_config(urls: &[String], echo: SocketAddr, connections: usize) -> AgentConfig {
    let mut config = AgentConfig::new(&urls[0], TOKEN).unwrap();
    for url in &urls[1..] {
        config = config.with_host(url).unwrap();
    }
    config.services.push(format!("echo={echo}").parse().unwrap());
    config.replica_id = "replica-7".into();
    config.min_idle = 1;
    config.connections = connections;
    config
}

/// Quick reconnects, so tests that lose a replica do not wait seconds per attempt.
fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        multiplier: 2.0,
        jitter: 0.2,
        reset_after: Duration::from_secs(25),
    }
}

fn all_connected(s: &AgentStatus) -> bool {
    !s.connections.is_empty() && s.connections.iter().all(|c| c.is_connected())
}

fn replicas(s: &AgentStatus) -> HashSet<String> {
    s.connected_replicas().into_iter().collect()
}

fn set(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn two_connections_over_several_urls_hold_two_distinct_replicas() {
    let echo = echo_service().await;
    // Two URLs reach the same replica: whichever slot lands second must move on.
    let a = Host::start_with(HostOptions::replica("r1")).await;
    let b = Host::start_with(HostOptions::replica("r1")).await;
    let c = Host::start_with(HostOptions::replica("r2")).await;
    let urls = [a.url.clone(), b.url.clone(), c.url.clone()];
    let agent = burrow_agent::spawn(cluster_config(&urls, echo, 2));

    let status = wait_status(&agent, "two distinct replicas", |s| {
        all_connected(s) && replicas(s) == set(&["r1", "r2"])
    })
    .await;
    assert_eq!(status.connections.len(), 2);
    assert!(status.connections.iter().all(|c| !c.duplicate), "{status:?}");
    assert_ne!(status.connections[0].host, status.connections[1].host);
    assert!(status.is_connected());
    // One min_idle tunnel parked per connection.
    let status = wait_status(&agent, "both pools filled", |s| s.idle_streams == 2).await;
    assert!(status.connections.iter().all(|c| c.idle_streams == 1), "{status:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn one_load_balanced_url_reaches_two_replicas() {
    let echo = echo_service().await;
    let r1a = Host::start_with(HostOptions::replica("r1")).await;
    let r1b = Host::start_with(HostOptions::replica("r1")).await;
    let r2 = Host::start_with(HostOptions::replica("r2")).await;
    let backends = Arc::new(Mutex::new(vec![r1a.addr, r1b.addr, r2.addr]));
    let lb = round_robin_proxy(backends).await;
    let agent = burrow_agent::spawn(cluster_config(&[format!("grpc://{lb}")], echo, 2));

    let status = wait_status(&agent, "two distinct replicas through one URL", |s| {
        all_connected(s) && replicas(s) == set(&["r1", "r2"])
    })
    .await;
    assert!(status.connections.iter().all(|c| c.host.to_string() == format!("grpc://{lb}")));
    assert!(status.connections.iter().all(|c| !c.duplicate), "{status:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn more_connections_than_replicas_settles_without_spinning() {
    let echo = echo_service().await;
    let r1 = Host::start_with(HostOptions::replica("r1")).await;
    let r2 = Host::start_with(HostOptions::replica("r2")).await;
    let lb = round_robin_proxy(Arc::new(Mutex::new(vec![r1.addr, r2.addr]))).await;
    let mut config = cluster_config(&[format!("grpc://{lb}")], echo, 3);
    // Short, so the test can wait for the duplicate's first diversify round (the next
    // dial there is) instead of sleeping to see that none comes.
    let interval = Duration::from_secs(1);
    config.diversify_interval = interval;
    let agent = burrow_agent::spawn(config);

    let status = wait_status(&agent, "three connections on two replicas", |s| {
        all_connected(s) && replicas(s) == set(&["r1", "r2"])
    })
    .await;
    let duplicates = status.connections.iter().filter(|c| c.duplicate).count();
    assert_eq!(duplicates, 1, "exactly one connection is a kept duplicate: {status:?}");
    // Each slot dials at most 3 times before it keeps a duplicate.
    assert!(status.connect_attempts <= 9, "{status:?}");
    let (settled, settled_status) = (status.connect_attempts, status);
    let all_attempts = |r1: &Host, r2: &Host| {
        let mut all: Vec<Instant> = r1.attempts.lock().unwrap().clone();
        all.extend(r2.attempts.lock().unwrap().iter().copied());
        all.sort();
        all
    };
    let before = all_attempts(&r1, &r2);
    let last_before = *before.last().unwrap();

    // Settled: the next dial is the duplicate's diversify round, one interval (±20%)
    // after it was kept. Wait for that dial, then check nothing dialed sooner (the hosts
    // stamp each attempt when it arrives, later than the agent started it).
    wait_status(&agent, "the diversify round's first dial", |s| s.connect_attempts > settled).await;
    let first_after = within("the diversify dial to reach a host", async {
        loop {
            if let Some(at) = all_attempts(&r1, &r2).get(before.len()) {
                return *at;
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        first_after - last_before >= interval.mul_f64(0.8),
        "a dial {:?} after the agent settled, before the diversify interval",
        first_after - last_before
    );
    // It came from the duplicate: the distinct connections never re-dialed.
    let now = agent.status().borrow().clone();
    for (then, now) in settled_status.connections.iter().zip(&now.connections) {
        if !then.duplicate {
            assert_eq!(then.connect_attempts, now.connect_attempts, "slot {} re-dialed: {now:?}", then.slot);
        }
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn a_kept_duplicate_moves_to_a_new_replica_and_drains_gracefully() {
    let echo = echo_service().await;
    let mut r1 = Host::start_with(HostOptions::replica("r1")).await;
    let mut r2 = Host::start_with(HostOptions::replica("r2")).await;
    let backends = Arc::new(Mutex::new(vec![r1.addr]));
    let lb = round_robin_proxy(backends.clone()).await;
    let mut config = cluster_config(&[format!("grpc://{lb}")], echo, 2);
    config.diversify_interval = Duration::from_millis(300);
    let agent = burrow_agent::spawn(config);

    // Only one replica: the second connection gives up and keeps a duplicate.
    let status = wait_status(&agent, "two connections on one replica", |s| {
        all_connected(s) && s.connections.iter().any(|c| c.duplicate)
    })
    .await;
    assert_eq!(status.connected_replicas(), ["r1"]);

    // An active tunnel on each of the two sessions r1 holds.
    let mut active = Vec::new();
    let mut seen = HashSet::new();
    while active.len() < 2 {
        let mut t = r1.next_tunnel().await;
        if seen.insert(t.session.clone()) {
            dial_echo(&mut t, "req-drain").await;
            active.push(t);
        }
    }

    // A second replica appears behind the load balancer: the duplicate moves to it.
    backends.lock().unwrap().push(r2.addr);
    let status = wait_status(&agent, "the duplicate to move", |s| {
        all_connected(s) && replicas(s) == set(&["r1", "r2"]) && s.connections.iter().all(|c| !c.duplicate)
    })
    .await;
    assert!(status.is_connected());
    // The new connection parks its tunnel on r2.
    r2.next_tunnel().await;
    // The duplicate's control stream ended (drain; before it, dials closed as duplicates
    // ended too) ...
    let drained = within("the duplicate's control stream to end", async {
        loop {
            let ended = r1.ended.recv().await.unwrap();
            if seen.contains(&ended) {
                return ended;
            }
        }
    })
    .await;
    // ... and only that one. The other session is still the agent's after the drain: a
    // claim of its parked tunnel makes the agent park a replacement on it (min_idle 1),
    // which it would not on a session it had ended; and no end of it came before.
    seen.remove(&drained);
    let distinct = seen.iter().next().unwrap().clone();
    let mut claimed = next_tunnel_on(&mut r1, &distinct).await;
    dial_echo(&mut claimed, "req-after-drain").await;
    next_tunnel_on(&mut r1, &distinct).await;
    while let Ok(ended) = r1.ended.try_recv() {
        assert_ne!(ended, distinct, "the distinct connection stays up");
    }
    // ... while its active tunnel, and the other one, keep working.
    for t in &mut active {
        assert_eq!(echo_round_trip(t, b"after the move").await, b"after the move");
    }
    agent.shutdown().await;
}

/// The next tunnel `host` gets on `session` (tunnels of other sessions are dropped).
async fn next_tunnel_on(host: &mut Host, session: &str) -> ParkedTunnel {
    loop {
        let t = host.next_tunnel().await;
        if t.session == session {
            return t;
        }
    }
}

#[tokio::test]
async fn losing_a_replica_leaves_the_other_connection_serving() {
    let echo = echo_service().await;
    let mut r1 = Host::start_with(HostOptions::replica("r1")).await;
    let mut r2 = Host::start_with(HostOptions::replica("r2")).await;
    let mut config = cluster_config(&[r1.url.clone(), r2.url.clone()], echo, 2);
    config.backoff = fast_backoff();
    let agent = burrow_agent::spawn(config);

    let status = wait_status(&agent, "two distinct replicas", |s| {
        all_connected(s) && replicas(s) == set(&["r1", "r2"]) && s.idle_streams == 2
    })
    .await;
    let on = |s: &AgentStatus, id: &str| {
        s.connections.iter().find(|c| c.state.host_replica_id() == Some(id)).map(|c| c.slot)
    };
    let (lost_slot, kept_slot) = (on(&status, "r1").unwrap(), on(&status, "r2").unwrap());
    let kept_attempts = status.connections[kept_slot].connect_attempts;
    let mut parked_on_r2 = r2.next_tunnel().await;
    r1.next_tunnel().await;

    r1.kill();
    let status =
        wait_status(&agent, "the r1 connection to notice", |s| !s.connections[lost_slot].is_connected())
            .await;
    // The other slot is untouched: same session, no new attempt, still serving.
    assert!(status.connections[kept_slot].is_connected(), "{status:?}");
    assert!(status.is_connected());
    dial_echo(&mut parked_on_r2, "req-after-kill").await;
    assert_eq!(echo_round_trip(&mut parked_on_r2, b"still serving").await, b"still serving");

    // The lost slot reconnects; r2 is the only replica left, so it keeps a duplicate.
    let status = wait_status(&agent, "the lost slot to reconnect", |s| {
        s.connections[lost_slot].is_connected() && s.connections[lost_slot].duplicate
    })
    .await;
    assert_eq!(status.connected_replicas(), ["r2"]);
    assert_eq!(status.connections[kept_slot].connect_attempts, kept_attempts, "{status:?}");
    assert!(status.connections[lost_slot].last_error.is_some());
    agent.shutdown().await;
}

/// A host restart drops every connection at once. The agent's earlier search found no
/// second replica, so when both connections land on the restarted host the duplicate is
/// kept at once: one dial per connection, not three for the second.
#[tokio::test]
async fn after_the_only_replica_restarts_each_connection_comes_back_with_one_dial() {
    let echo = echo_service().await;
    let mut old = Host::start_with(HostOptions::replica("r1")).await;
    let backends = Arc::new(Mutex::new(vec![old.addr]));
    let lb = round_robin_proxy(backends.clone()).await;
    let mut config = cluster_config(&[format!("grpc://{lb}")], echo, 2);
    config.backoff = fast_backoff();
    let agent = burrow_agent::spawn(config);
    let status = wait_status(&agent, "both connections on r1, one a kept duplicate", |s| {
        all_connected(s) && s.connections.iter().any(|c| c.duplicate)
    })
    .await;
    // The first search: one dial for the distinct slot, three for the duplicate.
    assert_eq!(status.connect_attempts, 4, "{status:?}");

    // The restarted host: a new process with a new replica id behind the same address.
    let new = Host::start_with(HostOptions::replica("r1-restarted")).await;
    *backends.lock().unwrap() = vec![new.addr];
    old.kill();
    let after = wait_status(&agent, "both connections back on the restarted host", |s| {
        all_connected(s) && s.connected_replicas() == ["r1-restarted"]
    })
    .await;
    assert_eq!(after.connect_attempts - status.connect_attempts, 2, "one dial per connection: {after:?}");
    assert_eq!(new.attempts.lock().unwrap().len(), 2);
    assert_eq!(after.connections.iter().filter(|c| c.duplicate).count(), 1, "{after:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn rate_limited_attempt_waits_for_retry_after() {
    let echo = echo_service().await;
    let host =
        Host::start_with(HostOptions { rate_limit_first_ms: Some(300), ..HostOptions::default() }).await;
    let mut config = cluster_config(std::slice::from_ref(&host.url), echo, 1);
    // The normal backoff is far shorter than the host's retry-after.
    config.backoff = Backoff { jitter: 0.0, ..fast_backoff() };
    let agent = burrow_agent::spawn(config);

    let limited =
        wait_status(&agent, "rate-limited state", |s| matches!(s.state, ConnState::RateLimited { .. })).await;
    match &limited.state {
        ConnState::RateLimited { retry_in, reason } => {
            assert!(*retry_in >= Duration::from_millis(300), "{retry_in:?}");
            assert!(reason.contains("too many connection attempts"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let status = wait_status(&agent, "connected after the wait", |s| s.is_connected()).await;
    let attempts = host.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[1] - attempts[0] >= Duration::from_millis(300), "{:?}", attempts[1] - attempts[0]);
    assert_eq!((status.rate_limited, status.auth_failures), (1, 0));
    assert!(status.last_error.unwrap().contains("rate-limited"));
    agent.shutdown().await;
}

#[tokio::test]
async fn goaway_from_one_replica_only_moves_that_connection() {
    let echo = echo_service().await;
    let mut r1 = Host::start_with(HostOptions::replica("r1")).await;
    let mut r2 = Host::start_with(HostOptions::replica("r2")).await;
    let agent = burrow_agent::spawn(cluster_config(&[r1.url.clone(), r2.url.clone()], echo, 2));
    let status = wait_status(&agent, "two distinct replicas", |s| {
        all_connected(s) && replicas(s) == set(&["r1", "r2"])
    })
    .await;
    let slot_on =
        |id: &str| status.connections.iter().find(|c| c.state.host_replica_id() == Some(id)).unwrap();
    let (moved, kept) = (slot_on("r1").slot, slot_on("r2").slot);
    let kept_attempts = slot_on("r2").connect_attempts;
    let control = within("r1's control stream", r1.controls.recv()).await.unwrap();
    let mut parked_on_r2 = r2.next_tunnel().await;

    control
        .tx
        .send(Ok(burrow_proto::pb::HostControl {
            msg: Some(burrow_proto::pb::host_control::Msg::GoAway(burrow_proto::pb::GoAway {
                reason: "draining".into(),
                reconnect_after_ms: 0,
                code: burrow_proto::pb::GoAwayCode::Reconnect as i32,
            })),
        }))
        .await
        .unwrap();
    let drained = within("the r1 session to end", r1.ended.recv()).await.unwrap();
    assert_eq!(drained, control.session);
    // The slot comes back (r2 is taken, so on r1 again); the other one never moved.
    let status = wait_status(&agent, "the moved slot to come back", |s| {
        all_connected(s) && replicas(s) == set(&["r1", "r2"]) && s.connections[moved].connect_attempts > 1
    })
    .await;
    assert_eq!(status.connections[kept].connect_attempts, kept_attempts, "{status:?}");
    assert!(status.last_error.is_none(), "GoAway and duplicates are not errors: {status:?}");
    dial_echo(&mut parked_on_r2, "req-goaway").await;
    assert_eq!(echo_round_trip(&mut parked_on_r2, b"untouched").await, b"untouched");
    agent.shutdown().await;
}
