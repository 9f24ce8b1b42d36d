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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use burrow_agent::{AgentHandle, ConnState};
use burrow_host::cluster::store::{ReplicaRecord, Store};
use burrow_host::cluster::{ClusterConfig, RedisConfig};
use burrow_host::time::now_ms;
use burrow_host::Config;
use burrow_tests::clients::{self, Client, Mode};
use burrow_tests::redis::RedisServer;
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, wait_connected, ConfigParts, TestHost, AGENT, CLUSTER_SECRET, TOKEN};

use crate::{latency_run, median, Args, HOST};

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
            "[cluster]\nlisten = \"127.0.0.1:0\"\nsecret = \"{CLUSTER_SECRET}\"\n\
             [cluster.redis]\nurls = [\"{redis_url}\"]\n"
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

/// CPU time this process used (user + system), from `/proc/self/stat`, in seconds.
fn process_cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the `(comm)`; utime and stime are the 14th and 15th of the line.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("/proc/self/stat");
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// The process's CPU use while it should be idle, in % of one core, and the load average:
/// printed before each phase so leftover work (a spinning task, another build) shows.
async fn idle_check(phase: &str) -> anyhow::Result<()> {
    let before = process_cpu()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = (process_cpu()? - before) / 0.5 * 100.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    println!("  (before {phase}: CPU use of this process while idle {busy:.0}% of a core; 1-min load average {load})");
    Ok(())
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

/// Per-run p50/p99 of one path, in µs.
#[derive(Default)]
struct Series {
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Series {
    async fn run(&mut self, client: &mut Client, n: usize) {
        let l = latency_run(client, HOST, n).await;
        self.p50.push(l.p50_us);
        self.p99.push(l.p99_us);
    }
}

struct ForwardFigures {
    direct: (f64, f64),
    local: (f64, f64),
    forwarded: (f64, f64),
}

/// One way of running the forwarded-vs-local comparison.
struct Variant {
    /// Extra `[ingress]` TOML for both replicas.
    ingress_extra: &'static str,
    /// Requests per path per run.
    requests: usize,
    /// Requests per path before the measured runs.
    warm_up: usize,
    /// Start a fresh agent before each run, so tunnels a run leaves open (the leak check
    /// below reports them) cannot use up the agent's `max_streams` and fail later runs.
    fresh_agent_per_run: bool,
}

/// Direct, local (r0) and forwarded (r1) small GETs, interleaved run by run, with the
/// order of local and forwarded alternating so neither always runs second.
async fn forward_latency(args: &Args, v: &Variant) -> anyhow::Result<ForwardFigures> {
    let mut pair = Pair::start(v.ingress_extra, true).await?;
    let mut direct = clients::connect(pair.workload.addr, &Mode::h1()).await;
    let mut local = clients::connect(pair.r0.ingress_addr, &Mode::h1()).await;
    let mut forwarded = clients::connect(pair.r1.ingress_addr, &Mode::h1()).await;
    // Warm-up: the ingress pools, the replica API channel, r1's cached view of r0.
    latency_run(&mut direct, HOST, v.warm_up).await;
    let routed_before = (
        metric(pair.r1.admin_addr, "burrow_routing_duration_seconds_count").await?,
        metric(pair.r0.admin_addr, "burrow_forwards_served_total").await?,
    );
    let (mut d, mut l, mut f) = (Series::default(), Series::default(), Series::default());
    let mut left_active = Vec::with_capacity(args.runs);
    for run in 0..args.runs {
        if v.fresh_agent_per_run || run == 0 {
            if run > 0 {
                if let Some(old) = pair.agent.take() {
                    old.shutdown().await;
                }
                let agent = agent_on(&pair.r0, &[pair.workload.service("web")]);
                wait_connected(&agent).await;
                pair.agent = Some(agent);
            }
            latency_run(&mut local, HOST, v.warm_up).await;
            latency_run(&mut forwarded, HOST, v.warm_up).await;
        }
        d.run(&mut direct, v.requests).await;
        if run % 2 == 0 {
            l.run(&mut local, v.requests).await;
            f.run(&mut forwarded, v.requests).await;
        } else {
            f.run(&mut forwarded, v.requests).await;
            l.run(&mut local, v.requests).await;
        }
        // Leak check: tunnels the agent still counts as carrying a connection once every
        // request of the run is done. Pooled, that is the ≤ 2 keep-alive connections the
        // two ingress pools hold; without the pool every tunnel should have closed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        left_active.push(pair.agent.as_ref().map_or(0, |a| a.status().borrow().active_streams));
    }
    // How many tunnels the forwarded runs opened: shows whether the pool was in play.
    let routed = metric(pair.r1.admin_addr, "burrow_routing_duration_seconds_count").await? - routed_before.0;
    let served = metric(pair.r0.admin_addr, "burrow_forwards_served_total").await? - routed_before.1;
    println!(
        "  ({}: {} requests per path per run; r1 opened {routed} tunnels and r0 served {served} forwards, \
         warm-ups included; agent streams still active after each run: {left_active:?})",
        if v.ingress_extra.is_empty() { "pooled" } else { v.ingress_extra },
        v.requests,
    );
    drop((direct, local, forwarded));
    pair.stop().await?;
    Ok(ForwardFigures {
        direct: (median(d.p50), median(d.p99)),
        local: (median(l.p50), median(l.p99)),
        forwarded: (median(f.p50), median(f.p99)),
    })
}

/// Where the waiting request lands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WakeKind {
    /// On r1, which learns of the agent through the Redis pub/sub announcement.
    Forwarded,
    /// On r0, the replica the agent connects to.
    Local,
}

struct Wake {
    connected_to_served: Duration,
    spawn_to_served: Duration,
    /// The agent already reported `Connected` when its status was first read, so the
    /// connect instant is late and `connected_to_served` an underestimate.
    connect_seen_late: bool,
}

/// Waits until Redis holds no registration of the agent (r0 unregisters it when its last
/// session closes), so the next request finds it connected nowhere.
async fn wait_unregistered(store: &Store) -> anyhow::Result<()> {
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
async fn wake_once(pair: &Pair, store: &Store, kind: WakeKind, service: &str) -> anyhow::Result<Wake> {
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
struct WakeSeries {
    connected_to_served: Vec<Duration>,
    spawn_to_served: Vec<Duration>,
    late: usize,
}

impl WakeSeries {
    fn push(&mut self, w: Wake) {
        self.connected_to_served.push(w.connected_to_served);
        self.spawn_to_served.push(w.spawn_to_served);
        self.late += usize::from(w.connect_seen_late);
    }
}

fn med_max(v: &[Duration]) -> (f64, f64) {
    let values: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
    let max = values.iter().copied().fold(0.0, f64::max);
    (median(values), max)
}

async fn wake_ups(args: &Args) -> anyhow::Result<(WakeSeries, WakeSeries)> {
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

/// Parses `INFO` text into `field → value`.
fn info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn info_u64(redis: &RedisServer, section: &str, field: &str) -> anyhow::Result<u64> {
    let text = redis.cli(&["INFO", section]);
    info(&text)
        .get(field)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("INFO {section} has no numeric {field}: {text:?}"))
}

/// Commands Redis ran since the last `CONFIG RESETSTAT`, without the bench's own
/// `redis-cli` calls.
#[derive(Default, Clone)]
struct Commands {
    /// Calls and CPU µs per command from `INFO commandstats`, including the commands a
    /// script ran.
    by_name: BTreeMap<String, (u64, u64)>,
    /// Bytes clients sent to / received from Redis (`total_net_input_bytes` /
    /// `total_net_output_bytes`; they include the few bytes of the bench's `INFO` request).
    net_in: u64,
    net_out: u64,
}

/// What the registration script (`REGISTER_LUA` in the host's `store.rs`) runs inside
/// Redis for each `EVALSHA`. `Store::register` sends none of these itself (only `EVALSHA`
/// and `SADD`), so in a measurement with scripts they count as script-internal.
const SCRIPT_INTERNAL: [&str; 4] = ["hset", "pexpire", "hgetall", "hdel"];

impl Commands {
    /// Every command Redis executed (Redis 7 counts a script's inner calls too, both in
    /// `commandstats` and in `total_commands_processed`).
    fn executed(&self) -> u64 {
        self.by_name.values().map(|(calls, _)| calls).sum()
    }

    /// The commands the client sent, by name: with scripts in the measurement, the
    /// script-internal ones are left out.
    fn top_level(&self) -> impl Iterator<Item = &(u64, u64)> {
        let scripts = self.by_name.contains_key("evalsha") || self.by_name.contains_key("eval");
        self.by_name
            .iter()
            .filter(move |(name, _)| !(scripts && SCRIPT_INTERNAL.contains(&name.as_str())))
            .map(|(_, v)| v)
    }

    /// Commands the replica sent.
    fn sent(&self) -> u64 {
        self.top_level().map(|(calls, _)| calls).sum()
    }

    /// Redis CPU time of the commands sent. A script's `usec` already includes the
    /// commands it ran, so those are not added again.
    fn usec(&self) -> u64 {
        self.top_level().map(|(_, usec)| usec).sum()
    }

    fn breakdown(&self) -> String {
        self.by_name
            .iter()
            .map(|(k, (calls, _))| format!("{} {calls}", k.to_uppercase()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The bench's own commands (`redis-cli`: `CONFIG RESETSTAT`, `INFO`, and what redis-cli
/// may send on connect), excluded from the counts.
const OWN_COMMANDS: [&str; 4] = ["config", "info", "command", "hello"];

fn reset_stats(redis: &RedisServer) {
    redis.cli(&["CONFIG", "RESETSTAT"]);
}

fn read_commands(redis: &RedisServer) -> anyhow::Result<Commands> {
    let fields = info(&redis.cli(&["INFO", "stats", "commandstats"]));
    let stat = |f: &str| -> anyhow::Result<u64> {
        fields.get(f).and_then(|v| v.parse().ok()).with_context(|| format!("INFO stats has no {f}"))
    };
    let mut out = Commands {
        net_in: stat("total_net_input_bytes")?,
        net_out: stat("total_net_output_bytes")?,
        ..Default::default()
    };
    for (key, value) in &fields {
        let Some(name) = key.strip_prefix("cmdstat_") else { continue };
        // Redis 7 names subcommands `config|resetstat`.
        if OWN_COMMANDS.contains(&name.split('|').next().unwrap_or(name)) {
            continue;
        }
        let field = |f: &str| {
            value.split(',').find_map(|kv| kv.strip_prefix(f)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        out.by_name.insert(name.to_owned(), (field("calls").unwrap_or(0), field("usec").unwrap_or(0)));
    }
    Ok(out)
}

struct RegistryRun {
    /// `used_memory` after 0, 1, 2, ... replicas registered every agent.
    used_memory: Vec<u64>,
    first_register: Duration,
    refresh: Duration,
    refresh_commands: Commands,
    heartbeat_commands: Commands,
    sweep_commands: Commands,
    agent_key_bytes: u64,
    replica_set_bytes: u64,
    remove_replica: Duration,
    remove_commands: Commands,
    keys: u64,
}

const REPLICAS: [&str; 3] = ["r0", "r1", "r2"];

async fn registry_run(redis: &RedisServer, store: &Store, agents: &[String]) -> anyhow::Result<RegistryRun> {
    let ttl = ClusterConfig::default().agent_ttl;
    redis.cli(&["FLUSHALL"]);
    let mut used_memory = vec![info_u64(redis, "memory", "used_memory")?];
    let mut first_register = Duration::ZERO;
    for (i, replica) in REPLICAS.iter().enumerate() {
        let t = Instant::now();
        store.register(replica, agents, ttl).await?;
        if i == 0 {
            first_register = t.elapsed();
        }
        used_memory.push(info_u64(redis, "memory", "used_memory")?);
    }
    let keys = info(&redis.cli(&["INFO", "keyspace"]))
        .get("db0")
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("keys=")?.parse().ok()))
        .unwrap_or(0);
    let agent_key_bytes = redis
        .cli(&["MEMORY", "USAGE", &format!("burrow:agent:{{{}}}", agents[0]), "SAMPLES", "0"])
        .trim()
        .parse()
        .unwrap_or(0);
    let replica_set_bytes = redis
        .cli(&["MEMORY", "USAGE", &format!("burrow:replica-agents:{{{}}}", REPLICAS[0]), "SAMPLES", "0"])
        .trim()
        .parse()
        .unwrap_or(0);

    // One full refresh of r0's agents, as `refresh_loop` does every `agent_refresh`.
    reset_stats(redis);
    let t = Instant::now();
    store.register(REPLICAS[0], agents, ttl).await?;
    let refresh = t.elapsed();
    let refresh_commands = read_commands(redis)?;

    // One heartbeat, as `Cluster::heartbeat` does every `heartbeat`: write this replica's
    // record, read everyone's.
    reset_stats(redis);
    let record =
        ReplicaRecord { addr: "127.0.0.1:8083".into(), exp: now_ms() + 15_000, load: 0, draining: false };
    store.heartbeat(REPLICAS[0], &record).await?;
    store.replicas().await?;
    let heartbeat_commands = read_commands(redis)?;

    // One sweep that finds no dead replica, as `sweep_loop` does every `sweep_interval`.
    reset_stats(redis);
    store.replicas().await?;
    let sweep_commands = read_commands(redis)?;

    // Cleaning up after a dead replica that held every agent.
    reset_stats(redis);
    let t = Instant::now();
    store.remove_replica(REPLICAS[2]).await?;
    let remove_replica = t.elapsed();
    let remove_commands = read_commands(redis)?;

    Ok(RegistryRun {
        used_memory,
        first_register,
        refresh,
        refresh_commands,
        heartbeat_commands,
        sweep_commands,
        agent_key_bytes,
        replica_set_bytes,
        remove_replica,
        remove_commands,
        keys,
    })
}

fn med_u64(v: impl Iterator<Item = u64>) -> f64 {
    median(v.map(|x| x as f64).collect())
}

fn med_dur(v: impl Iterator<Item = Duration>) -> f64 {
    median(v.map(ms).collect())
}

async fn registry(args: &Args) -> anyhow::Result<()> {
    let n = args.agents;
    anyhow::ensure!(n > 0, "--agents must be at least 1");
    let redis = RedisServer::start();
    let version = info(&redis.cli(&["INFO", "server"])).get("redis_version").cloned().unwrap_or_default();
    let store = Store::new(RedisConfig { urls: vec![redis.url()], ..Default::default() });
    // Connect and load the registration script once, outside the measurements.
    store.register("warm-up", &["warm-up".to_owned()], Duration::from_secs(60)).await?;
    let agents: Vec<String> = (0..n).map(|i| format!("agent-{i:05}")).collect();
    let mut runs = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        runs.push(registry_run(&redis, &store, &agents).await?);
    }
    let defaults = ClusterConfig::default();
    let per = |f: &dyn Fn(&RegistryRun) -> u64| med_u64(runs.iter().map(f));
    let mem_delta = |k: usize| per(&|r| r.used_memory[k] - r.used_memory[0]);
    let mem_step = |k: usize| per(&|r| r.used_memory[k] - r.used_memory[k - 1]);
    let nf = n as f64;

    println!();
    println!(
        "### Registry cost in Redis ({n} agents, ids like `agent-00042`, replicas `r0`-`r2`, \
         prefix `burrow`, redis-server {version})"
    );
    println!();
    println!("Measured (median of {} runs, Redis flushed before each):", args.runs);
    println!();
    println!("| measured | value |");
    println!("|---|---|");
    println!("| keys after 3 replicas registered every agent | {} |", per(&|r| r.keys));
    for k in 1..=REPLICAS.len() {
        println!(
            "| `used_memory` delta, every agent on {k} replica(s) | {:.0} bytes ({:.1} bytes per agent) |",
            mem_delta(k),
            mem_delta(k) / nf
        );
    }
    for k in 1..=REPLICAS.len() {
        println!(
            "| `used_memory` added by replica {k} registering every agent | {:.1} bytes per agent |",
            mem_step(k) / nf
        );
    }
    println!("| `MEMORY USAGE` of one agent hash (3 replicas) | {} bytes |", per(&|r| r.agent_key_bytes));
    println!(
        "| `MEMORY USAGE` of one replica's agent set ({n} members) | {} bytes |",
        per(&|r| r.replica_set_bytes)
    );
    let first = med_dur(runs.iter().map(|r| r.first_register));
    let refresh = med_dur(runs.iter().map(|r| r.refresh));
    println!("| wall time, first registration of {n} agents by one replica | {first:.1} ms |");
    println!("| wall time, one full refresh of {n} agents by one replica | {refresh:.1} ms |");
    let refresh_client = per(&|r| r.refresh_commands.sent());
    let refresh_all = per(&|r| r.refresh_commands.executed());
    let refresh_usec = per(&|r| r.refresh_commands.usec());
    println!(
        "| one full refresh: commands the replica sent | {refresh_client:.0} ({:.3} per agent) |",
        refresh_client / nf
    );
    println!(
        "| one full refresh: commands Redis executed, including inside the Lua script | {refresh_all:.0} ({}) |",
        runs[0].refresh_commands.breakdown()
    );
    println!("| one full refresh: Redis CPU time (`commandstats` usec of EVALSHA and SADD) | {refresh_usec:.0} µs |");
    println!(
        "| one full refresh: bytes to / from Redis | {:.0} / {:.0} |",
        per(&|r| r.refresh_commands.net_in),
        per(&|r| r.refresh_commands.net_out)
    );
    let hb_client = per(&|r| r.heartbeat_commands.sent());
    let sweep_client = per(&|r| r.sweep_commands.sent());
    println!(
        "| commands per heartbeat of one replica | {hb_client:.0} ({}) |",
        runs[0].heartbeat_commands.breakdown()
    );
    println!(
        "| commands per sweep finding nothing | {sweep_client:.0} ({}) |",
        runs[0].sweep_commands.breakdown()
    );
    println!(
        "| removing a dead replica that held all {n}: wall time, commands | {:.1} ms, {:.0} ({}) |",
        med_dur(runs.iter().map(|r| r.remove_replica)),
        per(&|r| r.remove_commands.sent()),
        runs[0].remove_commands.breakdown()
    );

    let (refresh_s, hb_s, sweep_s) = (
        defaults.agent_refresh.as_secs_f64(),
        defaults.heartbeat.as_secs_f64(),
        defaults.sweep_interval.as_secs_f64(),
    );
    println!();
    println!(
        "Derived by arithmetic from the measured medians above, at the default cadence \
         (`agent_refresh` {:?}, `heartbeat` {:?}, `sweep_interval` {:?}), for {n} agents \
         with k connections each on k distinct replicas (k × one full refresh per \
         `agent_refresh`, plus per replica one heartbeat per `heartbeat` and one sweep per \
         `sweep_interval`; agents connecting, requests and pub/sub not included):",
        defaults.agent_refresh, defaults.heartbeat, defaults.sweep_interval
    );
    println!();
    println!("| replicas N | k | commands/s sent | commands/s incl. script-internal | Redis CPU µs/s for refreshes | memory (measured for k ≤ 3) |");
    println!("|---|---|---|---|---|---|");
    for (replicas, k) in [(3usize, 1usize), (3, 2), (10, 2)] {
        let kf = k as f64;
        let periodic = replicas as f64 * (hb_client / hb_s + sweep_client / sweep_s);
        let sent = kf * refresh_client / refresh_s + periodic;
        let all = kf * refresh_all / refresh_s + periodic;
        let cpu = kf * refresh_usec / refresh_s;
        println!(
            "| {replicas} | {k} | {sent:.1} | {all:.1} | {cpu:.0} | {:.0} bytes ({:.1} per agent) |",
            mem_delta(k),
            mem_delta(k) / nf
        );
    }
    Ok(())
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
