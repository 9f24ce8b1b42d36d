//! Wake-up: how soon a request waiting for an agent that is connected nowhere is served
//! once the agent connects, on the agent's replica and on another one.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use burrow_agent::ConnState;
use burrow_host::cluster::store::Store;
use burrow_host::cluster::RedisConfig;
use burrow_tests::clients::{self, Mode};
use burrow_tests::AGENT;

use super::{agent_on, metric, ms, Pair, PATIENCE};
use crate::{median, Args};

/// Where the waiting request lands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum WakeKind {
    /// On r1, which learns of the agent through the Redis pub/sub announcement.
    Forwarded,
    /// On r0, the replica the agent connects to.
    Local,
}

pub(super) struct Wake {
    pub(super) connected_to_served: Duration,
    pub(super) spawn_to_served: Duration,
    /// The agent already reported `Connected` when its status was first read, so the
    /// connect instant is late and `connected_to_served` an underestimate.
    pub(super) connect_seen_late: bool,
}

/// Waits until Redis holds no registration of the agent (r0 unregisters it when its last
/// session closes), so the next request finds it connected nowhere.
pub(super) async fn wait_unregistered(store: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !store.lookup(AGENT).await?.is_empty() {
        if Instant::now() > deadline {
            bail!("agent {AGENT} still registered in Redis after {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One wake-up: the agent is connected nowhere; a request for a service of it is sent to
/// the replica of `kind` and is seen waiting (its `agent_waits` counter moved); then the
/// agent is spawned against r0.
pub(super) async fn wake_once(
    pair: &Pair,
    store: &Store,
    kind: WakeKind,
    service: &str,
) -> anyhow::Result<Wake> {
    wait_unregistered(store).await?;
    let target = match kind {
        WakeKind::Forwarded => &pair.r1,
        WakeKind::Local => &pair.r0,
    };
    let waits_before = metric(target.admin_addr, "burrow_agent_waits_total").await?;
    let ingress = target.ingress_addr;
    let host = format!("{service}-{AGENT}.localhost");
    let request = tokio::spawn(async move {
        let mut client = clients::connect(ingress, &Mode::h1()).await;
        let response = client.request("GET", &host, "/hello", &[], clients::empty()).await;
        let headers_at = Instant::now();
        let (status, _, body) = clients::collect(response).await;
        (headers_at, status, body)
    });
    let deadline = Instant::now() + PATIENCE;
    while metric(target.admin_addr, "burrow_agent_waits_total").await? <= waits_before {
        if Instant::now() > deadline || request.is_finished() {
            bail!("the request never started waiting for the agent");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let spawned_at = Instant::now();
    let agent = agent_on(&pair.r0, &[pair.workload.service(service)]);
    let mut status = agent.status();
    let connect_seen_late = matches!(status.borrow().state, ConnState::Connected { .. });
    let connected = tokio::spawn(async move {
        loop {
            if matches!(status.borrow_and_update().state, ConnState::Connected { .. }) {
                return Some(Instant::now());
            }
            if status.changed().await.is_err() {
                return None;
            }
        }
    });
    let (headers_at, code, body) =
        tokio::time::timeout(PATIENCE, request).await.context("the waiting request was not served")??;
    let connected_at = connected.await?.context("agent stopped before connecting")?;
    agent.shutdown().await;
    if !code.is_success() {
        bail!("the woken request failed: {code} {}", String::from_utf8_lossy(&body));
    }
    Ok(Wake {
        connected_to_served: headers_at.saturating_duration_since(connected_at),
        spawn_to_served: headers_at.saturating_duration_since(spawned_at),
        connect_seen_late,
    })
}

#[derive(Default)]
pub(super) struct WakeSeries {
    pub(super) connected_to_served: Vec<Duration>,
    pub(super) spawn_to_served: Vec<Duration>,
    pub(super) late: usize,
}

impl WakeSeries {
    pub(super) fn push(&mut self, w: Wake) {
        self.connected_to_served.push(w.connected_to_served);
        self.spawn_to_served.push(w.spawn_to_served);
        self.late += usize::from(w.connect_seen_late);
    }
}

pub(super) fn med_max(v: &[Duration]) -> (f64, f64) {
    let values: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
    let max = values.iter().copied().fold(0.0, f64::max);
    (median(values), max)
}

pub(super) async fn wake_ups(args: &Args) -> anyhow::Result<(WakeSeries, WakeSeries)> {
    let pair = Pair::start("", false).await?;
    let store = Store::new(RedisConfig { urls: vec![pair.redis.url()], ..Default::default() });
    let (mut fwd, mut local) = (WakeSeries::default(), WakeSeries::default());
    // A fresh service name each time: no pooled connection of an earlier agent session
    // can serve the request, it must open a tunnel through the newly connected agent.
    let mut n = 0usize;
    let mut next_service = || {
        n += 1;
        format!("w{n}")
    };
    // Warm-up of both paths (replica API channel, pub/sub subscription, allocators).
    wake_once(&pair, &store, WakeKind::Forwarded, &next_service()).await?;
    wake_once(&pair, &store, WakeKind::Local, &next_service()).await?;
    for run in 0..args.runs {
        for i in 0..args.wakeups {
            let order = if (run + i) % 2 == 0 {
                [WakeKind::Forwarded, WakeKind::Local]
            } else {
                [WakeKind::Local, WakeKind::Forwarded]
            };
            for kind in order {
                let w = wake_once(&pair, &store, kind, &next_service()).await?;
                match kind {
                    WakeKind::Forwarded => fwd.push(w),
                    WakeKind::Local => local.push(w),
                }
            }
        }
    }
    pair.stop().await?;
    Ok((fwd, local))
}
