//! Registry cost: `Store` driven directly as replicas drive it, measured in Redis memory,
//! commands and wall time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use burrow_host::cluster::store::{ReplicaRecord, Store};
use burrow_host::cluster::{ClusterConfig, RedisConfig};
use burrow_host::time::now_ms;
use burrow_tests::redis::RedisServer;

use super::ms;
use crate::{median, Args};

/// Parses `INFO` text into `field → value`.
pub(super) fn info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub(super) fn info_u64(redis: &RedisServer, section: &str, field: &str) -> anyhow::Result<u64> {
    let text = redis.cli(&["INFO", section]);
    info(&text)
        .get(field)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("INFO {section} has no numeric {field}: {text:?}"))
}

/// Commands Redis ran since the last `CONFIG RESETSTAT`, without the bench's own
/// `redis-cli` calls.
#[derive(Default, Clone)]
pub(super) struct Commands {
    /// Calls and CPU µs per command from `INFO commandstats`, including the commands a
    /// script ran.
    pub(super) by_name: BTreeMap<String, (u64, u64)>,
    /// Bytes clients sent to / received from Redis (`total_net_input_bytes` /
    /// `total_net_output_bytes`; they include the few bytes of the bench's `INFO` request).
    pub(super) net_in: u64,
    pub(super) net_out: u64,
}

/// What the registration script (`REGISTER_LUA` in the host's `cluster/store/membership.rs`) runs inside
/// Redis for each `EVALSHA`. `Store::register` sends none of these itself (only `EVALSHA`
/// and `SADD`), so in a measurement with scripts they count as script-internal.
pub(super) const SCRIPT_INTERNAL: [&str; 4] = ["hset", "pexpire", "hgetall", "hdel"];

impl Commands {
    /// Every command Redis executed (Redis 7 counts a script's inner calls too, both in
    /// `commandstats` and in `total_commands_processed`).
    pub(super) fn executed(&self) -> u64 {
        self.by_name.values().map(|(calls, _)| calls).sum()
    }

    /// The commands the client sent, by name: with scripts in the measurement, the
    /// script-internal ones are left out.
    pub(super) fn top_level(&self) -> impl Iterator<Item = &(u64, u64)> {
        let scripts = self.by_name.contains_key("evalsha") || self.by_name.contains_key("eval");
        self.by_name
            .iter()
            .filter(move |(name, _)| !(scripts && SCRIPT_INTERNAL.contains(&name.as_str())))
            .map(|(_, v)| v)
    }

    /// Commands the replica sent.
    pub(super) fn sent(&self) -> u64 {
        self.top_level().map(|(calls, _)| calls).sum()
    }

    /// Redis CPU time of the commands sent. A script's `usec` already includes the
    /// commands it ran, so those are not added again.
    pub(super) fn usec(&self) -> u64 {
        self.top_level().map(|(_, usec)| usec).sum()
    }

    pub(super) fn breakdown(&self) -> String {
        self.by_name
            .iter()
            .map(|(k, (calls, _))| format!("{} {calls}", k.to_uppercase()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The bench's own commands (`redis-cli`: `CONFIG RESETSTAT`, `INFO`, and what redis-cli
/// may send on connect), excluded from the counts.
pub(super) const OWN_COMMANDS: [&str; 4] = ["config", "info", "command", "hello"];

pub(super) fn reset_stats(redis: &RedisServer) {
    redis.cli(&["CONFIG", "RESETSTAT"]);
}

pub(super) fn read_commands(redis: &RedisServer) -> anyhow::Result<Commands> {
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

pub(super) struct RegistryRun {
    /// `used_memory` after 0, 1, 2, ... replicas registered every agent.
    pub(super) used_memory: Vec<u64>,
    pub(super) first_register: Duration,
    pub(super) refresh: Duration,
    pub(super) refresh_commands: Commands,
    pub(super) heartbeat_commands: Commands,
    pub(super) sweep_commands: Commands,
    pub(super) agent_key_bytes: u64,
    pub(super) replica_set_bytes: u64,
    pub(super) remove_replica: Duration,
    pub(super) remove_commands: Commands,
    pub(super) keys: u64,
}

pub(super) const REPLICAS: [&str; 3] = ["r0", "r1", "r2"];

pub(super) async fn registry_run(
    redis: &RedisServer,
    store: &Store,
    agents: &[(String, burrow_host::cluster::store::AgentLabels)],
) -> anyhow::Result<RegistryRun> {
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
        .cli(&["MEMORY", "USAGE", &format!("burrow:agent:{{{}}}", agents[0].0), "SAMPLES", "0"])
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

pub(super) fn med_u64(v: impl Iterator<Item = u64>) -> f64 {
    median(v.map(|x| x as f64).collect())
}

pub(super) fn med_dur(v: impl Iterator<Item = Duration>) -> f64 {
    median(v.map(ms).collect())
}

pub(super) async fn registry(args: &Args) -> anyhow::Result<()> {
    let n = args.agents;
    anyhow::ensure!(n > 0, "--agents must be at least 1");
    let redis = RedisServer::start();
    let version = info(&redis.cli(&["INFO", "server"])).get("redis_version").cloned().unwrap_or_default();
    let store = Store::new(RedisConfig { urls: vec![redis.url()], ..Default::default() });
    // Connect and load the registration script once, outside the measurements.
    let no_labels: burrow_host::cluster::store::AgentLabels = Vec::new().into();
    store.register("warm-up", &[("warm-up".to_owned(), no_labels.clone())], Duration::from_secs(60)).await?;
    // As a replica registers them: each agent with its labels (none here).
    let agents: Vec<(String, burrow_host::cluster::store::AgentLabels)> =
        (0..n).map(|i| (format!("agent-{i:05}"), no_labels.clone())).collect();
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
