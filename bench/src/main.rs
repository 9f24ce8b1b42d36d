//! `burrow-bench`: measures, in one process and one run, what the tunnel adds over a
//! direct connection to the same workload, and what the plugin path costs per request
//! (`--suite tunnel`, the default); or what cluster mode adds: forwarding between
//! replicas, waking a request when its agent connects, and the registry's cost in Redis
//! (`--suite cluster`, see [`cluster`]); or what the plugin platform costs against the
//! same policy compiled natively: per-call latency with fresh and warm instances,
//! decision throughput, hot-swap time, HTTP requests per second (`--suite plugins`, see
//! [`plugins`]); or what Burrow's SSH path costs against a local OpenSSH `sshd`: `scp`
//! throughput, keystroke echo latency, new-session time (`--suite ssh`, see [`ssh`]); or
//! how long the workload lifecycle takes through the control API: create to agent
//! connected, enqueue to the agent's hook running, on one host and across two replicas
//! (`--suite lifecycle`, see [`lifecycle`]); or Burrow next to the tunnels a user would
//! pick instead (rathole, bore), as separate release processes in front of the same nginx,
//! driven by wrk and curl: requests/s, latency and CPU per request over a concurrency
//! sweep, and a single-stream download (`--suite peers`, see [`peers`]); or agents at
//! scale against a release host process: memory per idle agent at 10,000, and 10,000
//! agents reconnecting after a restart (`--suite agents`, see [`agents`]).
//!
//! Every figure is the median of `--runs` runs; ratios compare against a baseline
//! measured in the same run. Run it with `bench/run.sh` (release build).

mod agents;
mod cluster;
mod lifecycle;
mod peers;
mod plugins;
mod procfs;
mod ssh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_host::plugins::types::{
    Action, AuthorizeRequest, Credential, Principal, ResolveRequest, Target, UserAuthRequest,
};
use burrow_host::plugins::{Plugins, PluginsOptions};
use burrow_tests::clients::{self, Client, Mode};
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, default_config, wait_connected, TestHost, TOKEN};
use clap::{CommandFactory, FromArgMatches, Parser};
use http_body_util::BodyExt;

#[derive(Parser, Debug)]
struct Args {
    /// Which measurements: `tunnel` (tunnel vs direct, plugin path), `cluster`
    /// (forwarded vs local, wake-up delay, Redis registry cost), `plugins` (plugin
    /// call cost vs native, throughput, swap time) or `ssh` (Burrow's SSH path vs a
    /// local sshd: scp, keystroke echo, session setup) or `lifecycle` (control API:
    /// create to connected, enqueue to delivery, one host and two replicas) or `peers`
    /// (Burrow vs rathole and bore as processes: wrk sweep, CPU per request, download) or
    /// `agents` (10,000 agents on a release host process: memory per idle agent,
    /// reconnect after a restart).
    #[arg(long, default_value = "tunnel", value_parser = ["tunnel", "cluster", "plugins", "ssh", "lifecycle", "peers", "agents"])]
    suite: String,
    /// Repetitions of each measurement; the median is reported (peers suite: default 3,
    /// with --quick 1; agents suite: default 3).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Whether --runs was given (the peers and agents suites have their own default).
    #[arg(skip)]
    runs_given: bool,
    /// Sequential small requests per latency run.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Bytes per throughput run (ssh suite: the size of the file `scp` copies each way).
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    bytes: u64,
    /// Plugin calls per plugin run (plugins suite: sequential decisions per latency run
    /// and path, then as many router calls).
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Agent transport for the tunnel runs: grpc or ws.
    #[arg(long, default_value = "grpc")]
    transport: String,
    /// Cluster suite: requests per path per run when every request opens a new tunnel
    /// (`max_idle_per_workload = 0`). Keep it below the agent's `max_streams` (1000).
    #[arg(long, default_value_t = 500)]
    new_tunnel_requests: usize,
    /// Cluster suite: wake-ups measured per run and per kind (forwarded, local).
    #[arg(long, default_value_t = 10)]
    wakeups: usize,
    /// Cluster suite: agents registered in Redis for the registry-cost runs. Agents
    /// suite: agents connected to the host (the second memory step, and the restarts).
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Plugins suite: decisions per throughput run and path, shared by `--tasks` tasks.
    #[arg(long, default_value_t = 100_000)]
    decisions: usize,
    /// Plugins suite: concurrent decision loops in the throughput runs.
    #[arg(long, default_value_t = 2)]
    tasks: usize,
    /// Plugins suite: hot swaps per run and variant (with and without `cache_dir`).
    #[arg(long, default_value_t = 10)]
    swaps: usize,
    /// Plugins suite: HTTP requests per run and path, shared by `--clients` connections.
    #[arg(long, default_value_t = 4000)]
    http_requests: usize,
    /// Plugins suite: concurrent keep-alive client connections in the HTTP runs.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// SSH suite: single-byte keystrokes per echo-latency run and path.
    #[arg(long, default_value_t = 500)]
    keystrokes: usize,
    /// SSH suite: new sessions per setup-time run, path and client (russh, `ssh`).
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Lifecycle suite: workloads created per create-to-connected run and path.
    #[arg(long, default_value_t = 100)]
    workloads: usize,
    /// Lifecycle suite: work items enqueued per enqueue-to-delivery run and path.
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Peers suite: the short version, under 5 minutes: wrk 2 s, connections 1,64,256,
    /// a 256 MiB download, 1 run (explicit flags still win).
    #[arg(long)]
    quick: bool,
    /// Peers suite: paths to measure, comma-separated; `direct` (nginx itself, the
    /// baseline of every ratio) is always measured.
    #[arg(long, value_delimiter = ',', default_value = "direct,burrow-grpc,burrow-ws,burrow-grpcs,burrow-2rep,rathole,bore",
          value_parser = ["direct", "burrow-grpc", "burrow-ws", "burrow-grpcs", "burrow-2rep", "rathole", "bore"])]
    paths: Vec<String>,
    /// Peers suite: wrk connection counts, comma-separated (default 1,8,32,64,128,256;
    /// with --quick 1,64,256).
    #[arg(long, value_delimiter = ',')]
    connections: Vec<u32>,
    /// Peers suite: seconds per wrk run (default 5; with --quick 2).
    #[arg(long)]
    duration: Option<u64>,
    /// Peers suite: size of the single-stream download in bytes (default 1 GiB; with
    /// --quick 256 MiB).
    #[arg(long)]
    download_bytes: Option<u64>,
    /// Peers suite: the burrow-host binary (default: beside burrow-bench, so
    /// target/release with bench/peers.sh). Agents suite: default
    /// target/release/burrow-host of this workspace.
    #[arg(long)]
    host_bin: Option<PathBuf>,
    /// Peers suite: the burrow-agent binary (default: beside burrow-bench).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Peers suite: the `cargo install --root` folder holding bin/rathole and bin/bore.
    #[arg(long, env = "BURROW_BENCH_TOOLS", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools"))]
    tools: PathBuf,
    /// Peers suite: where raw.csv, summary.md and the plots go (default
    /// bench/results/<date>-peers, or <date>-peers-quick with --quick). Agents suite:
    /// default bench/results/<date>-agents.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Agents suite: the first memory step (the per-agent figure is the slope from it
    /// to --agents).
    #[arg(long, default_value_t = 1000)]
    agents_small: usize,
    /// Agents suite: how the host is stopped before each restart, comma-separated
    /// (`term`: SIGTERM, graceful; `kill`: SIGKILL; `none`: memory only).
    #[arg(long, value_delimiter = ',', default_value = "term,kill", value_parser = ["term", "kill", "none"])]
    restarts: Vec<String>,
    /// Agents suite: connections per agent (default: the agent's own, 2). With one host
    /// both land on it; in a cluster each replica holds one per agent.
    #[arg(long)]
    agent_connections: Option<usize>,
    /// Agents suite: parked tunnels per connection (default: the agent's own, 4); set it
    /// to split a session's memory from a tunnel's.
    #[arg(long)]
    agent_min_idle: Option<usize>,
    /// Agents suite: agents started at once while connecting the memory steps, each
    /// batch fully up before the next (0: a whole step at once, a connect storm).
    #[arg(long, default_value_t = 1000)]
    agents_batch: usize,
}

const HOST: &str = "web-a1.localhost";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
}

async fn latency_run(client: &mut Client, host: &str, n: usize) -> Latency {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (status, _, body) = client.get(host, "/hello").await;
        samples.push(start.elapsed());
        assert!(
            status.is_success() && !body.is_empty(),
            "GET http://{host}/hello: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    samples.sort();
    Latency { p50_us: percentile(&samples, 0.5), p99_us: percentile(&samples, 0.99) }
}

async fn throughput_run(client: &mut Client, host: &str, bytes: u64) -> f64 {
    let start = Instant::now();
    let resp = client.request("GET", host, &format!("/download?bytes={bytes}"), &[], clients::empty()).await;
    assert!(resp.status().is_success());
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, bytes);
    (bytes as f64 / (1024.0 * 1024.0)) / start.elapsed().as_secs_f64()
}

fn requests() -> (ResolveRequest, UserAuthRequest) {
    let resolve = ResolveRequest {
        action: Action::Http,
        host: HOST.into(),
        path: "/".into(),
        method: "GET".into(),
        ssh_user: String::new(),
        port: 0,
    };
    let user = UserAuthRequest {
        credential: Credential::None,
        client_addr: "127.0.0.1:1".into(),
        host: HOST.into(),
        action: Action::Http,
    };
    (resolve, user)
}

/// The authorize request the ingress builds from the resolved target and the principal.
fn access(target: Target) -> impl FnOnce(Option<&Principal>) -> AuthorizeRequest + Send + 'static {
    move |principal| AuthorizeRequest {
        principal: principal.cloned(),
        target,
        action: Action::Http,
        client_addr: "127.0.0.1:1".into(),
        host: HOST.into(),
        method: "GET".into(),
        path: "/".into(),
        agent_labels: Vec::new(),
    }
}

struct PluginFigures {
    resolve_us: f64,
    authorize_us: f64,
    request_path_us: f64,
}

/// Cost of each call alone and of the request path as the ingress runs it: the workload
/// plugin's `resolve`, then the authorizer's `authorize_user` (authenticate + authorize in
/// one instance). (`--suite plugins` measures these in detail, warm and fresh.)
async fn plugin_run(plugins: &Arc<Plugins>, calls: usize) -> PluginFigures {
    let (resolve_req, user) = requests();
    let (mut resolve, mut authorize) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for _ in 0..calls {
        let t = Instant::now();
        let target = plugins.resolve(&resolve_req).await.unwrap().expect("resolve");
        resolve.push(t.elapsed());
        let t = Instant::now();
        plugins.authorize_user(&user, access(target)).await.unwrap();
        authorize.push(t.elapsed());
    }
    let mut path = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let target = plugins.resolve(&resolve_req).await.unwrap().expect("resolve");
        plugins.authorize_user(&user, access(target)).await.unwrap();
        path.push(t.elapsed());
    }
    resolve.sort();
    authorize.sort();
    path.sort();
    PluginFigures {
        resolve_us: percentile(&resolve, 0.5),
        authorize_us: percentile(&authorize, 0.5),
        request_path_us: percentile(&path, 0.5),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches)?;
    args.runs_given = matches.value_source("runs") == Some(clap::parser::ValueSource::CommandLine);
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    match args.suite.as_str() {
        // Process orchestration with blocking waits (wrk, curl, polls): off the async
        // workers, on this thread, which outlives every child it starts (they get a
        // parent-death signal tied to the thread that spawned them).
        "peers" => tokio::task::block_in_place(|| peers::run(&args)),
        "agents" => agents::run(&args).await,
        "cluster" => cluster::run(&args).await,
        "lifecycle" => lifecycle::run(&args).await,
        "plugins" => plugins::run(&args).await,
        "ssh" => ssh::run(&args).await,
        _ => tunnel_suite(&args).await,
    }
}

async fn tunnel_suite(args: &Args) -> anyhow::Result<()> {
    let config = default_config();
    let host = TestHost::start(config.clone()).await;
    let workload = Workload::start("bench").await;
    let agent = burrow_agent::spawn(agent_config(
        &host.agent_url(&args.transport),
        TOKEN,
        &[workload.service("web")],
    ));
    wait_connected(&agent).await;

    let mut direct = clients::connect(workload.addr, &Mode::h1()).await;
    let mut tunnel = clients::connect(host.ingress_addr, &Mode::h1()).await;
    // Warm-up: connection pools, allocator, plugin instances.
    latency_run(&mut direct, HOST, 200).await;
    latency_run(&mut tunnel, HOST, 200).await;

    let (mut d50, mut d99, mut t50, mut t99) = (vec![], vec![], vec![], vec![]);
    let (mut dtp, mut ttp) = (vec![], vec![]);
    for _ in 0..args.runs {
        let d = latency_run(&mut direct, HOST, args.requests).await;
        let t = latency_run(&mut tunnel, HOST, args.requests).await;
        d50.push(d.p50_us);
        d99.push(d.p99_us);
        t50.push(t.p50_us);
        t99.push(t.p99_us);
        dtp.push(throughput_run(&mut direct, HOST, args.bytes).await);
        ttp.push(throughput_run(&mut tunnel, HOST, args.bytes).await);
    }
    let plugins = Plugins::load(&config.plugins, PluginsOptions::default()).await?;
    let (mut r50, mut a50, mut p50) = (vec![], vec![], vec![]);
    for _ in 0..args.runs {
        let f = plugin_run(&plugins, args.calls).await;
        r50.push(f.resolve_us);
        a50.push(f.authorize_us);
        p50.push(f.request_path_us);
    }

    let (d50, d99, t50, t99) = (median(d50), median(d99), median(t50), median(t99));
    let (dtp, ttp) = (median(dtp), median(ttp));
    let (r50, a50, p50) = (median(r50), median(a50), median(p50));
    println!("burrow-bench: {} runs, transport {}, medians of per-run figures", args.runs, args.transport);
    println!();
    println!("| measurement | direct | through Burrow | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| small GET latency p50 (µs, {} sequential, keep-alive) | {d50:.1} | {t50:.1} | {:.2}× |",
        args.requests,
        t50 / d50
    );
    println!("| small GET latency p99 (µs) | {d99:.1} | {t99:.1} | {:.2}× |", t99 / d99);
    println!(
        "| single-stream download ({} MiB) MiB/s | {dtp:.0} | {ttp:.0} | {:.2}× |",
        args.bytes >> 20,
        ttp / dtp
    );
    println!();
    println!("| plugin path (fresh instance per call) | p50 µs |");
    println!("|---|---|");
    println!("| workload-workspace `resolve`, one call | {r50:.1} |");
    println!("| authorizer-static `authorize_user` (authenticate + authorize), one call | {a50:.1} |");
    println!("| per request as the ingress runs it (resolve + authorize_user) | {p50:.1} |");
    agent.shutdown().await;
    host.stop().await?;
    Ok(())
}
