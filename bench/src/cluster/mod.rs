//! `--suite cluster`: what cluster mode costs, on a real `redis-server` and real replicas
//! (`burrow_host::run`) in this process.
//!
//! 1. **Forwarded vs local**: replicas r0 and r1 share one Redis; one agent keeps a
//!    single connection, to r0. The same small GET goes through r0's ingress (a local
//!    stream) and through r1's ingress (forwarded over the replica API to r0), on one
//!    keep-alive client connection each, runs interleaved, with the direct-to-workload
//!    baseline of the tunnel suite. Done twice: with the ingress's tunnel pool (the
//!    default: a pooled HTTP/1.1 connection over one tunnel serves many requests) and
//!    with `max_idle_per_workload = 0`, where every request opens a tunnel (local: claim
//!    and `Dial`; forwarded: Redis lookup, replica API stream, claim and `Dial` on r0).
//! 2. **Wake-up**: a request waits on a replica for an agent that is not connected
//!    anywhere; then the agent starts (against r0). Measured from the moment the agent's
//!    status reports `Connected`, and from its spawn, to the waiting request's response
//!    headers; for a request waiting on r1 (woken by the Redis pub/sub announcement) and,
//!    as the baseline, on r0 itself (woken by the local registry).
//! 3. **Registry cost**: `Store` used directly, as a replica uses it: `--agents` ids
//!    registered by three replicas; Redis `used_memory` deltas, the commands and wall time
//!    of one full refresh, of one heartbeat and of cleaning up a dead replica. Rates at
//!    the default cadence are derived from these by arithmetic and printed as such.
//!
//! Layout: this module holds the replica setup shared by the measurements and [`run`];
//! [`forward`], [`wake`] and [`registry`] are one measurement each.

mod forward;
mod registry;
mod wake;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use burrow_agent::AgentHandle;
use burrow_host::Config;
use burrow_tests::clients;
use burrow_tests::redis::RedisServer;
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, wait_connected, ConfigParts, TestHost, CLUSTER_SECRET, TOKEN};

use crate::procfs::idle_check;
use crate::Args;
use forward::{forward_latency, Variant};
use registry::registry;
use wake::{med_max, wake_ups};

/// How long anything the bench waits for (readiness, deregistration, a waiting request)
/// may take before the run is abandoned as broken.
const PATIENCE: Duration = Duration::from_secs(20);

/// A cluster replica's config: production cadences (heartbeat, TTLs, refresh, speculative
/// delay all default), loopback listeners, `stream_wait = 20s`, plus `ingress_extra`.
fn replica_config(replica_id: &str, redis_url: &str, ingress_extra: &str) -> Config {
    ConfigParts {
        top: format!("replica_id = \"{replica_id}\""),
        ingress: format!("stream_wait = \"20s\"\n{ingress_extra}"),
        extra: format!(
            "[cluster]\nlisten = \"127.0.0.1:0\"\nsecret = \"{CLUSTER_SECRET}\"\n{}\n\
             [cluster.redis]\nurls = [\"{redis_url}\"]\n",
            // Mutual TLS between replicas, as a deployment runs by default.
            burrow_tests::replica::cluster_pki().tls_toml()
        ),
        ..Default::default()
    }
    .build()
}

/// An agent offering `services`, with exactly one connection, to r0 only. Agents are
/// stopped with a graceful shutdown, never `AgentHandle::abort`: in this tree an aborted
/// agent's tunnel tasks keep respawning in a busy loop and saturate both cores. The short
/// grace keeps the keep-alive tunnel an ingress pool holds from delaying each stop by 10 s.
fn agent_on(r0: &TestHost, services: &[String]) -> AgentHandle {
    let mut config = agent_config(&r0.agent_url("grpc"), TOKEN, services);
    config.connections = 1;
    config.shutdown_grace = Duration::from_millis(100);
    burrow_agent::spawn(config)
}

async fn wait_ready(host: &TestHost) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _, _) = clients::get(host.admin_addr, "localhost", "/readyz").await;
        if status.is_success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replica at {} not ready after {PATIENCE:?}", host.admin_addr);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sum of the samples of metric `name` (any labels) on a replica's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (status, _, body) = clients::get(admin, "localhost", "/metrics").await;
    anyhow::ensure!(status.is_success(), "GET /metrics: {status}");
    let text = String::from_utf8_lossy(&body);
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().unwrap_or_default();
        sum += value.parse::<f64>().with_context(|| format!("metric line {line:?}"))?;
    }
    Ok(sum)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Two replicas on a fresh Redis, with the agent connected to r0 only.
struct Pair {
    redis: RedisServer,
    r0: TestHost,
    r1: TestHost,
    workload: Workload,
    agent: Option<AgentHandle>,
}

impl Pair {
    /// `with_agent`: also start the long-lived agent (offering `web`) on r0.
    async fn start(ingress_extra: &str, with_agent: bool) -> anyhow::Result<Pair> {
        let redis = RedisServer::start();
        let r0 = TestHost::start(replica_config("r0", &redis.url(), ingress_extra)).await;
        let r1 = TestHost::start(replica_config("r1", &redis.url(), ingress_extra)).await;
        wait_ready(&r0).await?;
        wait_ready(&r1).await?;
        let workload = Workload::start("bench").await;
        let agent = if with_agent {
            let agent = agent_on(&r0, &[workload.service("web")]);
            wait_connected(&agent).await;
            Some(agent)
        } else {
            None
        };
        Ok(Pair { redis, r0, r1, workload, agent })
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
        self.r1.stop().await?;
        self.r0.stop().await?;
        Ok(())
    }
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "burrow-bench --suite cluster: {} runs, {} requests per latency run, {} wake-ups per run and kind, \
         {} cores, medians of per-run figures",
        args.runs, args.requests, args.wakeups, cores
    );
    println!();

    idle_check("forwarded vs local, pooled").await?;
    let pooled = forward_latency(
        args,
        &Variant { ingress_extra: "", requests: args.requests, warm_up: 200, fresh_agent_per_run: false },
    )
    .await?;
    idle_check("forwarded vs local, a new tunnel per request").await?;
    let unpooled = forward_latency(
        args,
        &Variant {
            ingress_extra: "max_idle_per_workload = 0",
            requests: args.new_tunnel_requests,
            warm_up: 50,
            fresh_agent_per_run: true,
        },
    )
    .await?;
    println!();
    println!(
        "### Forwarded vs local (small GET, sequential, one keep-alive client connection per path; \
         {} per run pooled, {} per run with a new tunnel per request)",
        args.requests, args.new_tunnel_requests
    );
    println!();
    println!("| measurement | direct | local (r0) | forwarded (r1 → r0) | added by forwarding | forwarded / local |");
    println!("|---|---|---|---|---|---|");
    for (name, f) in [("pooled tunnels (default)", &pooled), ("a new tunnel per request", &unpooled)] {
        println!(
            "| {name}, p50 µs | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |",
            f.direct.0,
            f.local.0,
            f.forwarded.0,
            f.forwarded.0 - f.local.0,
            f.forwarded.0 / f.local.0
        );
        println!(
            "| {name}, p99 µs | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× |",
            f.direct.1,
            f.local.1,
            f.forwarded.1,
            f.forwarded.1 - f.local.1,
            f.forwarded.1 / f.local.1
        );
    }

    idle_check("wake-ups").await?;
    let (fwd, local) = wake_ups(args).await?;
    let samples = args.runs * args.wakeups;
    println!();
    println!("### Wake-up: a waiting request served after its agent connects ({samples} wake-ups per kind)");
    println!();
    println!("| request waiting on | agent `Connected` → response headers, median ms | max ms | agent spawn → response headers, median ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, s) in [
        ("r1: woken by Redis pub/sub, forwarded to r0", &fwd),
        ("r0: the agent's replica (baseline)", &local),
    ] {
        let (c_med, c_max) = med_max(&s.connected_to_served);
        let (s_med, s_max) = med_max(&s.spawn_to_served);
        println!("| {name} | {c_med:.2} | {c_max:.2} | {s_med:.2} | {s_max:.2} |");
    }
    let (f_med, _) = med_max(&fwd.connected_to_served);
    let (l_med, _) = med_max(&local.connected_to_served);
    println!();
    println!(
        "Forwarded wake-up minus local, median of `Connected` → headers: {:.2} ms ({:.2}×).",
        f_med - l_med,
        f_med / l_med
    );
    if fwd.late + local.late > 0 {
        println!(
            "Note: in {} wake-ups the agent was already `Connected` when its status was first read; their \
             `Connected` instant is late.",
            fwd.late + local.late
        );
    }

    idle_check("registry cost").await?;
    registry(args).await
}
