//! `--suite lifecycle`: how long the workload lifecycle takes end to end, through the
//! control API (`burrow.control.v1`) as a control plane drives it, with real hosts and
//! real agents in this process. Two paths side by side in one run:
//!
//! - **single**: one host with `[control]` and a state file (every change written and
//!   fsynced); control calls and agents on the same host.
//! - **cluster**: two replicas r0, r1 on a real `redis-server`, production cadences; the
//!   control plane calls r1, the agent connects to r0 only (`connections = 1`).
//!
//! 1. **Create-to-connected**: `CreateWorkload`, then the agent is spawned the moment the
//!    token is back, then `GetWorkload` is polled (1 ms pauses) until it shows
//!    `WORKLOAD_STATE_CONNECTED`. Also the agent's own `Connected` (its status watch) and
//!    the replica's recorded `since_ms`. `--workloads` per run and path, interleaved;
//!    each agent is stopped and its workload terminated before the next (not timed).
//! 2. **Enqueue-to-delivery**: a fresh workload per run and path whose agent's work hook
//!    is `bash -c` writing its `$EPOCHREALTIME` to a file named by the item id. Per item:
//!    `EnqueueWork`, then `ListWork` polled (1 ms pauses) until SUCCEEDED; the hook's
//!    stamp minus the wall clock when `EnqueueWork` returned (same machine, same clock).
//!    In the cluster path the item is queued through r1 while the agent's `GetWork` long
//!    poll waits on r0, so r0 learns of it through Redis pub/sub. Each item is enqueued
//!    50 ms after the previous one succeeded, so the poll is parked and must be woken.
//!    `--items` per run and path, interleaved; then as many starts of the same hook by
//!    the bench itself, the hook's own start-up.
//!
//! Per run, each series gives p50/p90/p99/max; the tables show the median over `--runs`
//! of each. Raw samples, per-run figures with the machine's load and CPU use, and a
//! summary (JSON and markdown) go to `bench/results/<date>-lifecycle/`.

mod create;
mod report;
mod rpc;
mod work;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use burrow_agent::{AgentHandle, WorkHook};
use burrow_host::control_api::client::ControlClient;
use burrow_tests::lifecycle::{client, users_only, Dir};
use burrow_tests::redis::RedisServer;
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, ConfigParts, TestHost, CLUSTER_SECRET};
use serde_json::json;

use crate::procfs::{idle_check, loadavg, CpuMeter};
use crate::Args;
use create::{create_once, SETTLE};
use report::{Machine, Report, ALONE, CLUSTER, CREATE_FIGURES, SINGLE, WORK_FIGURES};
use work::{hook_alone, item_once, WorkAgent};

/// How long any single wait may take before the run is abandoned as broken.
const PATIENCE: Duration = Duration::from_secs(20);
/// The pause between two status polls (`GetWorkload`, `ListWork`).
const POLL: Duration = Duration::from_millis(1);
/// Untimed samples per path before the runs.
const WARM_UP: usize = 3;

/// One path: where the control plane calls and where agents connect.
struct Setup {
    name: &'static str,
    control: ControlClient,
    agent_url: String,
}

fn unix_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as i128
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}

/// A workload's agent: one connection, offering `web`, a short graceful stop.
fn spawn_agent(url: &str, token: &str, web: &str, hook: Option<WorkHook>) -> AgentHandle {
    let mut config = agent_config(url, token, &[web.to_owned()]);
    config.connections = 1;
    // Agents are stopped gracefully, never aborted (see the cluster suite); nothing is
    // in flight, so the grace only delays the stop.
    config.shutdown_grace = Duration::from_millis(100);
    config.work_hook = hook;
    burrow_agent::spawn(config)
}

/// The `[control]` table for files in `dir`, with production defaults otherwise
/// (`resync` 10 s, token lifetimes).
fn control_table(dir: &Path, state_file: bool) -> String {
    let mut table = format!(
        "\n[control]\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{}\"\nsigning_keys = [\"{}\"]\n",
        dir.join("control.secret").display(),
        dir.join("agent-token.key").display(),
    );
    if state_file {
        table.push_str(&format!("state_file = \"{}\"\n", dir.join("workloads.json").display()));
    }
    table
}

/// A replica on `redis_url` with production cluster cadences.
fn replica(replica_id: &str, redis_url: &str, dir: &Path) -> burrow_host::Config {
    ConfigParts {
        top: format!("replica_id = \"{replica_id}\""),
        authorizer: users_only(),
        extra: format!(
            "[cluster]\nlisten = \"127.0.0.1:0\"\nsecret = \"{CLUSTER_SECRET}\"\n{}\n\
             [cluster.redis]\nurls = [\"{redis_url}\"]\n{}",
            // Mutual TLS between replicas, as a deployment runs by default.
            burrow_tests::replica::cluster_pki().tls_toml(),
            control_table(dir, false)
        ),
        ..Default::default()
    }
    .build()
}

/// The redis-server's pid, for the CPU meter.
fn redis_pid(redis: &RedisServer) -> anyhow::Result<u32> {
    let info = redis.cli(&["INFO", "server"]);
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no process_id in redis-server's INFO")
}

fn date_and_time() -> anyhow::Result<(String, String)> {
    let out = std::process::Command::new("date").arg("+%F %H%M%S").output().context("running date")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (date, time) = text.split_once(' ').context("date output")?;
    Ok((date.to_owned(), time.to_owned()))
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.workloads > 0 && args.items > 0, "--workloads and --items must be positive");
    let bash = work::check_bash()?;
    let (date, time) = date_and_time()?;
    let results_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results").join(format!("{date}-lifecycle"));
    std::fs::create_dir_all(&results_dir)?;
    let mut report = Report::new(results_dir, &time);

    // The single host: its own dir (secret, signing key it creates, state file).
    let single_dir = Dir::new("bench-lifecycle-single");
    let state_file = single_dir.path().join("workloads.json");
    let single = TestHost::start(
        ConfigParts {
            authorizer: users_only(),
            extra: control_table(single_dir.path(), true),
            ..Default::default()
        }
        .build(),
    )
    .await;
    single.wait_ready().await;
    // The cluster: every replica holds the same signing key, made before either starts.
    let cluster_dir = Dir::new("bench-lifecycle-cluster");
    let key = burrow_host::workloads::token::generate_pkcs8().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(cluster_dir.path().join("agent-token.key"), key)?;
    let redis = RedisServer::start();
    let r0 = TestHost::start(replica("r0", &redis.url(), cluster_dir.path())).await;
    let r1 = TestHost::start(replica("r1", &redis.url(), cluster_dir.path())).await;
    r0.wait_ready().await;
    r1.wait_ready().await;
    let redis_version = redis
        .cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    // Agents offer `web`; nothing dials it.
    let workload = Workload::start("bench").await;
    let web = workload.service("web");
    let stamps = Dir::new("bench-lifecycle-stamps");

    let mut setups = [
        Setup { name: SINGLE, control: client(&single).await, agent_url: single.agent_url("grpc") },
        Setup { name: CLUSTER, control: client(&r1).await, agent_url: r0.agent_url("grpc") },
    ];
    let labels = [
        (SINGLE, "one host, state file"),
        (CLUSTER, "two replicas on Redis: control calls r1, agent on r0"),
        (ALONE, "no agent (baseline)"),
    ];

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut header = String::new();
    header.push_str(&format!(
        "burrow-bench --suite lifecycle: {} runs, {} workloads and {} work items per run and path, {cores} cores, \
         medians over runs of per-run figures\n",
        args.runs, args.workloads, args.items
    ));
    header.push_str(&format!(
        "  single: one host, state file {}; cluster: r0 and r1 on redis-server {redis_version}, control API of r1, \
         agents (connections = 1) on r0's agent port over grpc\n",
        state_file.display()
    ));
    header.push_str(&format!(
        "  polls: a {POLL:?} pause between calls; work hook: {} --norc --noprofile -c {:?} (bash {bash})\n",
        work::BASH,
        work::stamp_script(Path::new("<dir>"))
    ));
    header.push_str(&format!("  load average at start: {}\n", loadavg()));
    print!("{header}");

    // Warm-up (not recorded): the control channels, Redis connections, agent ports and
    // the hook, a few samples of each kind per path.
    for i in 0..WARM_UP {
        for setup in setups.iter_mut() {
            create_once(setup, &web, &format!("warm-{}-{i}", setup.name)).await?;
            tokio::time::sleep(SETTLE).await;
        }
    }
    for setup in setups.iter_mut() {
        let agent =
            WorkAgent::start(setup, &web, &format!("warm-work-{}", setup.name), stamps.path()).await?;
        for n in 0..WARM_UP {
            tokio::time::sleep(SETTLE).await;
            item_once(setup, &agent, n).await?;
        }
        agent.stop(setup).await?;
    }

    let servers = [redis_pid(&redis)?];
    for run in 0..args.runs {
        idle_check(&format!("run {}", run + 1)).await?;
        report.start_run();
        let loadavg_before = loadavg();
        let meter = CpuMeter::start(&servers)?;

        for i in 0..args.workloads {
            // The first path alternates from sample to sample and run to run.
            let order = if (run + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for p in order {
                let setup = &mut setups[p];
                let id = format!("c{}-{i}-{}", run + 1, setup.name);
                let s =
                    create_once(setup, &web, &id).await.with_context(|| format!("run {}, {id}", run + 1))?;
                let name = setup.name;
                report.push(name, i, "create_rpc_ms", s.create_rpc);
                report.push(name, i, "create_to_agent_connected_ms", s.agent_connected);
                report.push(name, i, "create_to_api_connected_ms", s.api_connected);
                report.push(
                    name,
                    i,
                    "agent_connected_to_api_connected_ms",
                    s.api_connected - s.agent_connected,
                );
                report.push(name, i, "create_to_host_since_ms", s.host_since);
                report.push(name, i, "get_workload_polls", f64::from(s.polls));
                report.push(name, i, "agent_connected_seen_late", f64::from(u8::from(s.seen_late)));
                tokio::time::sleep(SETTLE).await;
            }
        }

        let mut agents = Vec::new();
        for setup in setups.iter_mut() {
            let id = format!("w{}-{}", run + 1, setup.name);
            agents.push(WorkAgent::start(setup, &web, &id, stamps.path()).await?);
        }
        for i in 0..args.items {
            let order = if (run + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for p in order {
                // Lets the agent's next `GetWork` reach the host and wait there.
                tokio::time::sleep(SETTLE).await;
                let setup = &mut setups[p];
                let s = item_once(setup, &agents[p], i)
                    .await
                    .with_context(|| format!("run {}, {}, item {i}", run + 1, setup.name))?;
                let name = setup.name;
                report.push(name, i, "enqueue_rpc_ms", s.enqueue_rpc);
                report.push(name, i, "enqueue_to_hook_ms", s.to_hook);
                report.push(name, i, "enqueue_to_succeeded_ms", s.to_succeeded);
                report.push(name, i, "enqueue_to_host_succeeded_ms", s.to_host_succeeded);
                report.push(name, i, "list_work_polls", f64::from(s.polls));
                report.push(name, i, "list_work_call_ms", s.last_call);
                report.push(name, i, "list_work_items_listed", s.listed as f64);
            }
        }
        for (setup, agent) in setups.iter_mut().zip(agents) {
            agent.stop(setup).await?;
        }
        for i in 0..args.items {
            tokio::time::sleep(SETTLE).await;
            report.push(ALONE, i, "hook_alone_ms", hook_alone(stamps.path(), i).await?);
        }

        let (busy, others) = meter.read()?;
        let loadavg_after = loadavg();
        let state_file_bytes = std::fs::metadata(&state_file).map_or(0, |m| m.len());
        println!(
            "  run {}: CPU busy {busy:.1}% of both cores, {others:.1}% by processes other than the bench and \
             redis-server; load average {loadavg_before} before, {loadavg_after} after; single host's state \
             file {state_file_bytes} bytes",
            run + 1
        );
        report.end_run(Machine {
            loadavg_before,
            loadavg_after,
            cpu_busy_pct: busy,
            cpu_others_pct: others,
            state_file_bytes,
        })?;
    }

    let mut md = header;
    md.push_str(&format!(
        "\n### Create-to-connected ({} workloads per run and path; ms from before `CreateWorkload` is sent)\n\n",
        args.workloads
    ));
    md.push_str(&report.table(CREATE_FIGURES, &labels));
    md.push_str(&format!(
        "\n### Enqueue-to-delivery ({} items per run and path, each enqueued {SETTLE:?} after the previous \
         one succeeded)\n\n",
        args.items
    ));
    md.push_str(&report.table(WORK_FIGURES, &labels));
    md.push_str("\n### Per run\n\n");
    let headline = ["create_to_api_connected_ms", "enqueue_to_hook_ms", "hook_alone_ms"];
    for figure in CREATE_FIGURES.iter().chain(WORK_FIGURES).filter(|f| headline.contains(&f.key)) {
        md.push_str(&report.per_run_table(figure, &labels));
        md.push('\n');
    }
    println!("{}", &md[md.find("\n### ").unwrap_or(0)..]);
    std::fs::write(&report.md_path, &md)?;
    let settings = json!({
        "runs": args.runs,
        "workloads_per_run_and_path": args.workloads,
        "items_per_run_and_path": args.items,
        "cores": cores,
        "poll_pause_ms": POLL.as_secs_f64() * 1e3,
        "settle_ms": SETTLE.as_secs_f64() * 1e3,
        "warm_up_per_path": WARM_UP,
        "redis_version": redis_version,
        "bash_version": bash,
        "paths": labels.iter().map(|(p, l)| json!({ "path": p, "label": l })).collect::<Vec<_>>(),
        "date": date,
        "time": time,
    });
    std::fs::write(&report.json_path, serde_json::to_string_pretty(&report.json(settings))?)?;
    println!("samples: {}", report.samples_path.display());
    println!("per-run figures: {}", report.runs_path.display());
    println!("summary: {} and {}", report.json_path.display(), report.md_path.display());

    r1.stop().await?;
    r0.stop().await?;
    single.stop().await?;
    drop(redis);
    Ok(())
}
