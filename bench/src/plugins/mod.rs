//! `--suite plugins`: what the plugin platform costs, against the same policy compiled
//! natively and measured in the same run.
//!
//! 1. **Decision latency**: the decision the ingress makes for every request
//!    (`host/core/src/admission.rs`, `Admission::admit`): `Plugins::resolve` (built-in
//!    workload-workspace) then `Plugins::authorize_user` (built-in authorizer-static:
//!    authenticate-user and authorize in one instance), for a bearer-token user allowed by
//!    a group rule. Timed per host call and per decision, `--calls` sequential decisions
//!    per run on one task, with every slot `instances = "fresh"`, with every slot
//!    `instances = "per-user"` (the default; one user, so every call finds an instance
//!    that served that user: `warm` plus a SHA-256 of the credential), and natively; then the router call (built-in
//!    router-prefer-local, 3 candidates) the same three ways.
//! 2. **Native baseline**: the built-in plugins' own policy code (`policy.rs` of
//!    authorizer-static, `scheme.rs` of workload-workspace) compiled into this binary and
//!    called through the same request types the host passes, converted to the SDK's types
//!    as a plugin receives them. Their crates are `cdylib` only, so the sources are
//!    included by path ([`native`]); the router's ordering function lives next to its
//!    wasm exports and is copied. Also timed: the config parsing a fresh instance repeats
//!    inside wasm on every call (the SDK initialises a plugin lazily in each instance).
//! 3. **Decision throughput**: `--tasks` tasks (and, for comparison, one task) on the
//!    2-worker runtime share `--decisions` decisions per run; decisions per second of wall
//!    time and process CPU per decision.
//! 4. **Swap**: an authorizer slot loads `test_swap_v1.wasm` from a temp dir; the file is
//!    replaced by v2 (write and rename, not timed), then the clock runs from the trigger
//!    (`Plugins::reload`: read, hash, compile, world check, canary, swap) to the first
//!    request decision that comes back with the new version's answer. v1 and v2
//!    alternate, `--swaps` per run, without `cache_dir` (every swap compiles) and with a
//!    fresh `cache_dir` per run (the first swap to v2 compiles and stores, later swaps
//!    find both versions cached).
//! 5. **HTTP**: `--clients` keep-alive HTTP/1.1 connections share `--http-requests`
//!    `GET /hello` (with the user's bearer token) per run, sent straight to the workload
//!    and through a real host (`burrow_host::run`) with an agent over gRPC, once with
//!    fresh and once with warm plugin instances. There is no native-policy host to
//!    compare with: this shows what share of a whole request the plugin path is.
//!
//! Paths are interleaved run by run with their order rotating, so drift (another process,
//! CPU frequency) does not favour one of them.
//!
//! Layout: this module holds the shared setup (configs, the bench's user) and [`run`];
//! [`native`] is the baseline, [`decide`] the decision both paths make, then one module
//! per measurement ([`latency`], [`throughput`], [`swap`], [`http_rate`]) and [`report`]
//! prints the tables.

mod decide;
mod http_rate;
mod latency;
mod native;
mod report;
mod swap;
#[cfg(test)]
mod tests;
mod throughput;

use std::sync::Arc;

use anyhow::{ensure, Context};
use burrow_host::plugins::{InstancePolicy, Plugins, PluginsConfig, PluginsOptions};
use burrow_tests::{sha256_hex, AGENT, TOKEN};

use crate::procfs::idle_check;
use crate::{median, Args};
use decide::{Decider, Input};
use http_rate::http_requests_per_second;
use latency::{latency_run, parse_cost, Latencies};
use native::Native;
use report::print_report;
use swap::{swap_run, SwapSeries};
use throughput::{throughput_run, ThroughputSeries};

/// The user every decision is about: allowed on agent `a1` through group `dev`.
const USER: &str = "alice";
const USER_TOKEN: &str = "alice-token-0123456789abcdef";
const SERVICE: &str = "web";
/// Decisions per path before the measured runs (warm pools, allocator, caches).
const WARM_UP: usize = 2000;
/// HTTP requests per path before the measured runs.
const HTTP_WARM_UP: usize = 500;

/// The authorizer-static config of every measurement: the agent, two users with hashed
/// tokens, and one rule admitting group `dev` to every service of the agent.
fn authorizer_config() -> String {
    format!(
        r#"
agents = [{{ id = "{AGENT}", token_sha256 = "{agent}" }}]
default_access = "deny"
users = [
    {{ name = "{USER}", token_sha256 = "{user}", groups = ["dev"] }},
    {{ name = "bob", token_sha256 = "{bob}", groups = ["ops"] }},
]
workloads = [{{ agent = "{AGENT}", service = "*", access = "token", groups = ["dev"] }}]
"#,
        agent = sha256_hex(TOKEN),
        user = sha256_hex(USER_TOKEN),
        bob = sha256_hex("bob-token-0123456789abcdef"),
    )
}

const WORKLOAD_CONFIG: &str = r#"root_domains = ["localhost"]"#;

fn policy_name(policy: InstancePolicy) -> &'static str {
    match policy {
        InstancePolicy::Fresh => "fresh",
        InstancePolicy::PerUser => "per-user",
        InstancePolicy::Warm => "warm",
    }
}

/// The `[plugins]` table of the decision measurements: authorizer, workload and router,
/// every slot with instance policy `instances`.
fn plugins_config(instances: InstancePolicy) -> anyhow::Result<PluginsConfig> {
    let instances = policy_name(instances);
    let text = format!(
        r#"
watch = false
[authorizer]
source = "builtin:authorizer-static"
instances = "{instances}"
[authorizer.config]
{authorizer}
[[workload]]
source = "builtin:workload-workspace"
instances = "{instances}"
[workload.config]
{WORKLOAD_CONFIG}
[router]
source = "builtin:router-prefer-local"
instances = "{instances}"
"#,
        authorizer = authorizer_config(),
    );
    toml::from_str(&text).with_context(|| format!("bench plugins config:\n{text}"))
}

/// A config table as the JSON text the host hands a plugin through `config`.
fn config_json(toml_text: &str) -> anyhow::Result<String> {
    let table: toml::Table = toml::from_str(toml_text)?;
    Ok(serde_json::to_string(&table)?)
}

/// authorizer-static's decisions, as plain functions (the plugin's `lib.rs` only maps them
/// to the SDK's types, as [`native::Native`] does).
#[allow(dead_code, reason = "only the user-request half of the plugin is exercised")]
#[path = "../../../plugins/authorizer-static/src/policy.rs"]
mod static_policy;

/// workload-workspace's naming scheme, as plain functions.
#[allow(dead_code, reason = "only the host-name half of the plugin is exercised")]
#[path = "../../../plugins/workload-workspace/src/scheme.rs"]
mod workspace_scheme;

/// `order` rotated by `run`, so no path always goes first.
fn rotated<T: Copy>(order: &[T], run: usize) -> Vec<T> {
    let mut v = order.to_vec();
    v.rotate_left(run % order.len());
    v
}

const NATIVE: usize = 0;
const WARM: usize = 1;
const FRESH: usize = 2;
const PATH_NAMES: [&str; 3] = ["native", "per-user", "fresh"];

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.calls > 0 && args.decisions > 0 && args.swaps > 0,
        "--calls, --decisions and --swaps must be positive"
    );
    ensure!(args.tasks > 0 && args.tasks <= args.decisions, "--tasks must be between 1 and --decisions");
    ensure!(
        args.clients > 0 && args.clients <= args.http_requests,
        "--clients must be between 1 and --http-requests"
    );
    println!(
        "burrow-bench --suite plugins: {} runs, {} build, medians of per-run figures",
        args.runs,
        if cfg!(debug_assertions) { "DEBUG (figures not representative)" } else { "release" }
    );

    // ---- decisions: latency, native parse cost, throughput ------------------------
    let native = Native::new(&config_json(&authorizer_config())?, &config_json(WORKLOAD_CONFIG)?)
        .map_err(anyhow::Error::msg)?;
    // The default policy (`per-user`): for one user it is `warm` plus a SHA-256 of the
    // credential per call, so it is the figure users get.
    let warm = Plugins::load(&plugins_config(InstancePolicy::PerUser)?, PluginsOptions::default()).await?;
    let fresh = Plugins::load(&plugins_config(InstancePolicy::Fresh)?, PluginsOptions::default()).await?;
    for status in fresh.status() {
        println!("  {} {} sha256 {}", status.kind, status.source, &status.sha256[..12]);
    }
    let deciders =
        [Decider::Native(Arc::new(native)), Decider::Plugin(warm.clone()), Decider::Plugin(fresh.clone())];
    let input = Input::new();
    for decider in &deciders {
        let mut discard = Latencies::default();
        latency_run(decider, &input, WARM_UP, &mut discard).await?;
    }

    idle_check("decision latency").await?;
    let mut latencies: [Latencies; 3] = Default::default();
    let (mut policy_parse, mut scheme_parse) = (vec![], vec![]);
    let (policy_json, scheme_json) = (config_json(&authorizer_config())?, config_json(WORKLOAD_CONFIG)?);
    for run in 0..args.runs {
        for path in rotated(&[NATIVE, WARM, FRESH], run) {
            latency_run(&deciders[path], &input, args.calls, &mut latencies[path]).await?;
        }
        policy_parse.push(parse_cost(args.calls, &policy_json, native::parse_policy)?);
        scheme_parse.push(parse_cost(args.calls, &scheme_json, native::parse_scheme)?);
    }

    idle_check("decision throughput").await?;
    // One task as well, to show how each path scales from one core to `--tasks`.
    let task_counts = if args.tasks == 1 { vec![1] } else { vec![1, args.tasks] };
    let mut throughput: Vec<ThroughputSeries> = task_counts.iter().map(|_| Default::default()).collect();
    for run in 0..args.runs {
        for (series, &tasks) in throughput.iter_mut().zip(&task_counts) {
            for path in rotated(&[NATIVE, WARM, FRESH], run) {
                let t = throughput_run(&deciders[path], tasks, args.decisions).await?;
                series[path].0.push(t.per_second);
                series[path].1.push(t.cpu_us_per_decision);
            }
        }
    }
    drop(deciders);
    drop((warm, fresh));

    // ---- swap ------------------------------------------------------------------------
    idle_check("swaps").await?;
    let (mut uncached, mut cached) = (SwapSeries::default(), SwapSeries::default());
    for run in 0..args.runs {
        // Alternate which variant goes first.
        for with_cache in rotated(&[false, true], run) {
            let series = if with_cache { &mut cached } else { &mut uncached };
            swap_run(args.swaps, with_cache, series).await?;
        }
    }

    // ---- HTTP through a real host --------------------------------------------------
    idle_check("HTTP").await?;
    let http = http_requests_per_second(args).await?;

    print_report(
        args,
        &latencies,
        (median(policy_parse), median(scheme_parse)),
        (&task_counts, &throughput),
        &uncached,
        &cached,
        &http,
    );
    Ok(())
}
