//! `--suite plugins`: what the plugin platform costs, against the same policy compiled
//! natively and measured in the same run.
//!
//! 1. **Decision latency**: the decision the ingress makes for every request
//!    (`host/src/ingress/proxy.rs`, `admit`): `Plugins::resolve` (built-in
//!    workload-workspace) then `Plugins::authorize_user` (built-in authorizer-static:
//!    authenticate-user and authorize in one instance), for a bearer-token user allowed by
//!    a group rule. Timed per host call and per decision, `--calls` sequential decisions
//!    per run on one task, with every slot `instances = "fresh"`, with every slot
//!    `instances = "warm"`, and natively; then the router call (built-in
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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use burrow_host::plugins::types::{
    Action, AuthorizeRequest, Credential, Decision, Principal, ResolveRequest, RouteCandidate, RouteRequest,
    Target, UserAuthOutcome, UserAuthRequest,
};
use burrow_host::plugins::{
    InstancePolicy, Plugins, PluginsConfig, PluginsOptions, ReloadOutcome, ARTIFACTS_DIR,
};
use burrow_tests::clients::{self, Client, Mode};
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, sha256_hex, wait_connected, ConfigParts, TestHost, AGENT, TOKEN};

use crate::{median, percentile, Args, HOST};

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
#[path = "../../plugins/authorizer-static/src/policy.rs"]
mod static_policy;

/// workload-workspace's naming scheme, as plain functions.
#[allow(dead_code, reason = "only the host-name half of the plugin is exercised")]
#[path = "../../plugins/workload-workspace/src/scheme.rs"]
mod workspace_scheme;

/// The built-in plugins' request-path logic on native types.
mod native {
    use burrow_host::plugins::types::{
        Action, AuthorizeRequest, Credential, Decision, Principal, ResolveRequest, RouteCandidate,
        RouteRequest, Target, UserAuthOutcome, UserAuthRequest,
    };
    use burrow_plugin_sdk as sdk;

    use super::static_policy::{Policy, UserVerdict, Verdict};
    use super::workspace_scheme::{Route, Scheme};

    /// The three built-ins' request-path logic with their configs parsed once (what a
    /// warm instance holds).
    pub struct Native {
        policy: Policy,
        scheme: Scheme,
    }

    impl Native {
        pub fn new(authorizer_json: &str, workload_json: &str) -> Result<Native, String> {
            Ok(Native { policy: parse_policy(authorizer_json)?, scheme: parse_scheme(workload_json)? })
        }

        /// `Workspace::resolve`, answered as `Plugins::resolve` answers (with the kind).
        pub fn resolve(&self, req: &ResolveRequest) -> Option<Target> {
            let req = sdk::ResolveRequest {
                action: action(req.action),
                host: req.host.clone(),
                path: req.path.clone(),
                method: req.method.clone(),
                ssh_user: req.ssh_user.clone(),
                port: req.port,
            };
            let route = if req.ssh_user.is_empty() {
                self.scheme.route_host(&req.host)?
            } else {
                self.scheme.route_ssh_user(&req.ssh_user)?
            };
            let Route { service, agent } = route;
            let resolved = sdk::Resolved {
                workload_id: agent.to_string(),
                agent_id: agent.to_string(),
                service: service.to_string(),
            };
            Some(Target {
                workload_kind: "workspace".to_string(),
                workload_id: resolved.workload_id,
                agent_id: resolved.agent_id,
                service: resolved.service,
            })
        }

        /// `StaticAuthorizer::authenticate_user`.
        pub fn authenticate_user(&self, req: &UserAuthRequest) -> UserAuthOutcome {
            let req = sdk::UserAuthRequest {
                credential: credential(&req.credential),
                client_addr: req.client_addr.clone(),
                host: req.host.clone(),
                action: action(req.action),
            };
            match self.policy.authenticate_user(&req.credential) {
                UserVerdict::Authenticated(p) => {
                    UserAuthOutcome::Authenticated(Principal { id: p.id, groups: p.groups, labels: p.labels })
                }
                UserVerdict::Anonymous => UserAuthOutcome::Anonymous,
                UserVerdict::Rejected(reason) => UserAuthOutcome::Rejected(reason.to_string()),
            }
        }

        /// `StaticAuthorizer::authorize`.
        pub fn authorize(&self, req: &AuthorizeRequest) -> Decision {
            let req = sdk::AuthorizeRequest {
                principal: req.principal.as_ref().map(|p| sdk::Principal {
                    id: p.id.clone(),
                    groups: p.groups.clone(),
                    labels: p.labels.clone(),
                }),
                target: sdk::Target {
                    workload_kind: req.target.workload_kind.clone(),
                    workload_id: req.target.workload_id.clone(),
                    agent_id: req.target.agent_id.clone(),
                    service: req.target.service.clone(),
                },
                action: action(req.action),
                client_addr: req.client_addr.clone(),
                host: req.host.clone(),
                method: req.method.clone(),
                path: req.path.clone(),
                agent_labels: req.agent_labels.clone(),
            };
            match self.policy.authorize(&req.target.agent_id, &req.target.service, req.principal.as_ref()) {
                Verdict::Allow { strip_credentials } => Decision::Allow { strip_credentials },
                Verdict::Deny { status, reason } => Decision::Deny { status, reason: reason.to_string() },
            }
        }

        /// [`Self::authenticate_user`] then, unless the credential was rejected,
        /// [`Self::authorize`] with the request `make` builds: what
        /// `Plugins::authorize_user` runs in one instance.
        pub fn authorize_user(
            &self,
            req: &UserAuthRequest,
            make: impl FnOnce(Option<&Principal>) -> AuthorizeRequest,
        ) -> (UserAuthOutcome, Option<Decision>) {
            let who = self.authenticate_user(req);
            let principal = match &who {
                UserAuthOutcome::Rejected(_) => return (who, None),
                UserAuthOutcome::Anonymous => None,
                UserAuthOutcome::Authenticated(p) => Some(p),
            };
            let decision = self.authorize(&make(principal));
            (who, Some(decision))
        }

        /// `PreferLocal::route` without `sticky` (the config measured).
        pub fn route(&self, req: &RouteRequest) -> Vec<usize> {
            let req = sdk::RouteRequest {
                target: sdk::Target {
                    workload_kind: req.target.workload_kind.clone(),
                    workload_id: req.target.workload_id.clone(),
                    agent_id: req.target.agent_id.clone(),
                    service: req.target.service.clone(),
                },
                session_key: req.session_key.clone(),
                candidates: req.candidates.iter().map(candidate).collect(),
            };
            preference_order(&req.candidates).into_iter().map(|i| i as usize).collect()
        }
    }

    /// authorizer-static's `init` minus the SDK call that fetches the config.
    pub fn parse_policy(json: &str) -> Result<Policy, String> {
        Policy::from_json(json).map_err(|err| format!("authorizer-static config: {err}"))
    }

    /// workload-workspace's `init` minus the SDK call that fetches the config.
    pub fn parse_scheme(json: &str) -> Result<Scheme, String> {
        Scheme::from_json(json).map_err(|err| format!("workload-workspace config: {err}"))
    }

    /// A copy of `preference_order` in plugins/router-prefer-local/src/lib.rs. That file
    /// cannot be included like the others: it also expands `export_router!`, the
    /// component's entry points, which have no place in a native binary.
    fn preference_order(candidates: &[sdk::RouteCandidate]) -> Vec<u32> {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by_key(|&i| {
            let c = &candidates[i];
            (std::cmp::Reverse(c.local), c.load, std::cmp::Reverse(c.age_ms), c.replica_id.as_str())
        });
        order.into_iter().map(|i| i as u32).collect()
    }

    fn candidate(c: &RouteCandidate) -> sdk::RouteCandidate {
        sdk::RouteCandidate {
            replica_id: c.replica_id.clone(),
            local: c.local,
            load: c.load,
            age_ms: c.age_ms,
        }
    }

    fn action(a: Action) -> sdk::Action {
        match a {
            Action::Http => sdk::Action::Http,
            Action::Websocket => sdk::Action::Websocket,
            Action::Upgrade => sdk::Action::Upgrade,
            Action::SshSession => sdk::Action::SshSession,
            Action::PortForward => sdk::Action::PortForward,
            Action::Terminal => sdk::Action::Terminal,
        }
    }

    fn credential(c: &Credential) -> sdk::Credential {
        match c {
            Credential::None => sdk::Credential::None,
            Credential::Bearer(token) => sdk::Credential::Bearer(token.clone()),
            Credential::Cookie { name, value } => {
                sdk::Credential::Cookie { name: name.clone(), value: value.clone() }
            }
            Credential::SshPublicKey { user, algorithm, key, fingerprint } => sdk::Credential::SshPublicKey {
                user: user.clone(),
                algorithm: algorithm.clone(),
                key: key.clone(),
                fingerprint: fingerprint.clone(),
            },
            Credential::SshPassword { user, password } => {
                sdk::Credential::SshPassword { user: user.clone(), password: password.clone() }
            }
        }
    }
}

use native::Native;

/// Who makes the decision.
#[derive(Clone)]
enum Decider {
    Native(Arc<Native>),
    Plugin(Arc<Plugins>),
}

/// One user request as the ingress sees it.
struct Input {
    host: String,
    path: String,
    method: String,
    client_addr: String,
    token: String,
}

impl Input {
    fn new() -> Input {
        Input {
            host: HOST.into(),
            path: "/hello".into(),
            method: "GET".into(),
            client_addr: "127.0.0.1:50000".into(),
            token: USER_TOKEN.into(),
        }
    }
}

/// How long one decision's two host calls took.
struct CallTimes {
    resolve: Duration,
    authorize: Duration,
}

impl Decider {
    /// The ingress's decision for `input`, built the way `admit` builds it; fails unless
    /// the user is let through with the credential stripped.
    async fn decide(&self, input: &Input) -> anyhow::Result<CallTimes> {
        let resolve = ResolveRequest {
            action: Action::Http,
            host: input.host.clone(),
            path: input.path.clone(),
            method: input.method.clone(),
            ssh_user: String::new(),
            port: 0,
        };
        let started = Instant::now();
        let target = match self {
            Decider::Native(n) => n.resolve(&resolve),
            Decider::Plugin(p) => p.resolve(&resolve).await?,
        };
        let resolve_time = started.elapsed();
        let target = target.context("no workload claimed the host name")?;
        ensure!(target.agent_id == AGENT && target.service == SERVICE, "resolved to {target:?}");

        let user = UserAuthRequest {
            credential: Credential::Bearer(input.token.clone()),
            client_addr: input.client_addr.clone(),
            host: input.host.clone(),
            action: Action::Http,
        };
        let (client_addr, host, method, path) =
            (input.client_addr.clone(), input.host.clone(), input.method.clone(), input.path.clone());
        let make = move |principal: Option<&Principal>| AuthorizeRequest {
            principal: principal.cloned(),
            target,
            action: Action::Http,
            client_addr,
            host,
            method,
            path,
            agent_labels: Vec::new(),
        };
        let started = Instant::now();
        let (who, decision) = match self {
            Decider::Native(n) => n.authorize_user(&user, make),
            Decider::Plugin(p) => {
                let verdict = p.authorize_user(&user, make).await?;
                (verdict.who, verdict.decision)
            }
        };
        let authorize_time = started.elapsed();
        ensure!(matches!(&who, UserAuthOutcome::Authenticated(p) if p.id == USER), "user outcome {who:?}");
        ensure!(decision == Some(Decision::Allow { strip_credentials: true }), "decision {decision:?}");
        Ok(CallTimes { resolve: resolve_time, authorize: authorize_time })
    }

    /// One router call; fails unless the order is local, then least loaded.
    async fn route(&self, req: &RouteRequest) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let order = match self {
            Decider::Native(n) => n.route(req),
            Decider::Plugin(p) => p.try_route(req).await?,
        };
        let elapsed = started.elapsed();
        ensure!(order == [2, 1, 0], "router order {order:?}");
        Ok(elapsed)
    }
}

/// The authorizer's two exports on their own, each a host call (and, fresh, an instance)
/// of its own: what `authorize_user` costs per guest call.
impl Decider {
    async fn authenticate_user(&self, req: &UserAuthRequest) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let who = match self {
            Decider::Native(n) => n.authenticate_user(req),
            Decider::Plugin(p) => p.authenticate_user(req).await?,
        };
        let elapsed = started.elapsed();
        ensure!(matches!(&who, UserAuthOutcome::Authenticated(p) if p.id == USER), "user outcome {who:?}");
        Ok(elapsed)
    }

    async fn authorize(&self, req: &AuthorizeRequest) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let decision = match self {
            Decider::Native(n) => n.authorize(req),
            Decider::Plugin(p) => p.authorize(req).await?,
        };
        let elapsed = started.elapsed();
        ensure!(decision == Decision::Allow { strip_credentials: true }, "decision {decision:?}");
        Ok(elapsed)
    }
}

fn target() -> Target {
    Target {
        workload_kind: "workspace".into(),
        workload_id: AGENT.into(),
        agent_id: AGENT.into(),
        service: SERVICE.into(),
    }
}

fn user_request() -> UserAuthRequest {
    UserAuthRequest {
        credential: Credential::Bearer(USER_TOKEN.into()),
        client_addr: "127.0.0.1:50000".into(),
        host: HOST.into(),
        action: Action::Http,
    }
}

/// What the ingress asks about `principal` (`None`: anonymous).
fn authorize_request(principal: Option<&Principal>) -> AuthorizeRequest {
    AuthorizeRequest {
        principal: principal.cloned(),
        target: target(),
        action: Action::Http,
        client_addr: "127.0.0.1:50000".into(),
        host: HOST.into(),
        method: "GET".into(),
        path: "/hello".into(),
        agent_labels: Vec::new(),
    }
}

fn route_request() -> RouteRequest {
    let candidate = |id: &str, local: bool, load: u32, age_ms: u64| RouteCandidate {
        replica_id: id.into(),
        local,
        load,
        age_ms,
    };
    RouteRequest {
        target: target(),
        session_key: String::new(),
        candidates: vec![
            candidate("r1", false, 7, 60_000),
            candidate("r2", false, 3, 30_000),
            candidate("r0", true, 9, 5_000),
        ],
    }
}

/// Picks one measurement out of a path's [`Latencies`].
type Column = fn(&Latencies) -> &Dist;

/// Per-run p50 / p90 / p99 of one measurement, in µs.
#[derive(Default)]
struct Dist {
    p50: Vec<f64>,
    p90: Vec<f64>,
    p99: Vec<f64>,
}

impl Dist {
    fn add(&mut self, mut samples: Vec<Duration>) {
        samples.sort();
        self.p50.push(percentile(&samples, 0.5));
        self.p90.push(percentile(&samples, 0.9));
        self.p99.push(percentile(&samples, 0.99));
    }

    /// Medians over the runs: p50, p90, p99.
    fn medians(&self) -> [f64; 3] {
        [median(self.p50.clone()), median(self.p90.clone()), median(self.p99.clone())]
    }
}

#[derive(Default)]
struct Latencies {
    resolve: Dist,
    authorize_user: Dist,
    decision: Dist,
    authenticate_alone: Dist,
    authorize_alone: Dist,
    route: Dist,
}

/// `n` calls of `call`, into `dist`.
async fn calls<F, Fut>(n: usize, dist: &mut Dist, mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(call().await?);
    }
    dist.add(samples);
    Ok(())
}

async fn latency_run(decider: &Decider, input: &Input, n: usize, into: &mut Latencies) -> anyhow::Result<()> {
    let (mut resolve, mut authorize, mut decision) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let started = Instant::now();
        let times = decider.decide(input).await?;
        decision.push(started.elapsed());
        resolve.push(times.resolve);
        authorize.push(times.authorize);
    }
    into.resolve.add(resolve);
    into.authorize_user.add(authorize);
    into.decision.add(decision);
    let user = user_request();
    calls(n, &mut into.authenticate_alone, || decider.authenticate_user(&user)).await?;
    let alice = Principal {
        id: USER.into(),
        groups: vec!["dev".into()],
        labels: vec![("authenticated-by".into(), "bearer".into())],
    };
    let access = authorize_request(Some(&alice));
    calls(n, &mut into.authorize_alone, || decider.authorize(&access)).await?;
    let route = route_request();
    calls(n, &mut into.route, || decider.route(&route)).await
}

/// Per path: decisions/s and CPU µs per decision of every run.
type ThroughputSeries = [(Vec<f64>, Vec<Option<f64>>); 3];

/// Runs shorter than this in CPU time get no CPU figure: `/proc` counts in 10 ms ticks.
const MIN_CPU_SECONDS: f64 = 0.2;

struct Throughput {
    per_second: f64,
    /// `None` when the run used less than [`MIN_CPU_SECONDS`].
    cpu_us_per_decision: Option<f64>,
}

/// `tasks` tasks share `decisions` decisions.
async fn throughput_run(decider: &Decider, tasks: usize, decisions: usize) -> anyhow::Result<Throughput> {
    let per_task = decisions / tasks;
    let input = Arc::new(Input::new());
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (decider, input) = (decider.clone(), input.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    decider.decide(&input).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;
    let done = (per_task * tasks) as f64;
    let cpu_us_per_decision = (cpu >= MIN_CPU_SECONDS).then(|| cpu / done * 1e6);
    Ok(Throughput { per_second: done / wall, cpu_us_per_decision })
}

/// CPU time this process used (user + system), from `/proc/self/stat`, in seconds.
/// (The cluster suite has the same reader; suites keep their helpers to themselves.)
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the `(comm)`; utime and stime are the 14th and 15th of the line.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("/proc/self/stat");
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Prints this process's CPU use while it should be idle and the load average, so
/// leftover work or another build on the machine shows next to the figures.
async fn idle_check(phase: &str) -> anyhow::Result<()> {
    let before = cpu_seconds()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = (cpu_seconds()? - before) / 0.5 * 100.0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    println!("  (before {phase}: CPU use of this process while idle {busy:.0}% of a core; 1-min load average {load})");
    Ok(())
}

/// `order` rotated by `run`, so no path always goes first.
fn rotated<T: Copy>(order: &[T], run: usize) -> Vec<T> {
    let mut v = order.to_vec();
    v.rotate_left(run % order.len());
    v
}

/// Time per parse of `json` by `parse`, p50 over `n` parses, in µs.
fn parse_cost<T>(n: usize, json: &str, parse: impl Fn(&str) -> Result<T, String>) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let parsed = parse(json).map_err(anyhow::Error::msg)?;
        samples.push(started.elapsed());
        drop(parsed);
    }
    samples.sort();
    Ok(percentile(&samples, 0.5))
}

const NATIVE: usize = 0;
const WARM: usize = 1;
const FRESH: usize = 2;
const PATH_NAMES: [&str; 3] = ["native", "warm", "fresh"];

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
    let warm = Plugins::load(&plugins_config(InstancePolicy::Warm)?, PluginsOptions::default()).await?;
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

// ---- swap ----------------------------------------------------------------------------

/// A private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("burrow-bench-{tag}-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Per-swap times in ms: trigger → `reload` returned, trigger → first new decision.
#[derive(Default)]
struct SwapSeries {
    /// Swaps that compiled (every swap without a cache; the first one to v2 with one).
    compiled_reload: Vec<f64>,
    compiled_serving: Vec<f64>,
    /// Swaps served from the artifact cache.
    hit_reload: Vec<f64>,
    hit_serving: Vec<f64>,
}

/// Replaces `path` the way a deploy should: a new file renamed over the old one.
fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("wasm.new");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The decision the authorizer slot gives now: v1 allows, v2 denies with 403.
async fn swap_decision(plugins: &Plugins) -> anyhow::Result<Decision> {
    let verdict = plugins.authorize_user(&user_request(), authorize_request).await?;
    verdict.decision.context("the authorizer rejected the credential")
}

fn is_version(decision: &Decision, version: u8) -> bool {
    match (version, decision) {
        (1, Decision::Allow { .. }) => true,
        (2, Decision::Deny { status: 403, reason }) => reason.contains("v2"),
        _ => false,
    }
}

async fn swap_run(swaps: usize, with_cache: bool, into: &mut SwapSeries) -> anyhow::Result<()> {
    let v1 =
        std::fs::read(Path::new(ARTIFACTS_DIR).join("test_swap_v1.wasm")).context("test_swap_v1.wasm")?;
    let v2 =
        std::fs::read(Path::new(ARTIFACTS_DIR).join("test_swap_v2.wasm")).context("test_swap_v2.wasm")?;
    let dir = TempDir::new("swap")?;
    let file = dir.0.join("swap.wasm");
    std::fs::write(&file, &v1)?;
    let cache = match with_cache {
        true => format!("cache_dir = {:?}\n", dir.0.join("cache").display().to_string()),
        false => String::new(),
    };
    let text = format!(
        "watch = false\n{cache}[authorizer]\nsource = {:?}\n\
         config = {{ agent_id = \"{AGENT}\", agent_token_sha256 = \"{}\" }}\n",
        file.display().to_string(),
        sha256_hex(TOKEN),
    );
    let config: PluginsConfig = toml::from_str(&text).with_context(|| format!("swap config:\n{text}"))?;
    let plugins = Plugins::load(&config, PluginsOptions::default()).await?;
    ensure!(is_version(&swap_decision(&plugins).await?, 1), "v1 does not serve after the load");

    for i in 0..swaps {
        let (bytes, version) = if i % 2 == 0 { (&v2, 2) } else { (&v1, 1) };
        replace_file(&file, bytes)?;
        let trigger = Instant::now();
        let outcome = plugins.reload("swap").await?;
        let reloaded = trigger.elapsed();
        let decision = swap_decision(&plugins).await?;
        let serving = trigger.elapsed();
        ensure!(matches!(outcome, ReloadOutcome::Swapped { .. }), "reload did not swap: {outcome:?}");
        ensure!(is_version(&decision, version), "after the swap to v{version}: {decision:?}");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // With a cache, only the first swap (to v2, never seen by this cache) compiles.
        if with_cache && i > 0 {
            into.hit_reload.push(ms(reloaded));
            into.hit_serving.push(ms(serving));
        } else {
            into.compiled_reload.push(ms(reloaded));
            into.compiled_serving.push(ms(serving));
        }
    }
    Ok(())
}

// ---- HTTP ----------------------------------------------------------------------------

struct HttpFigures {
    direct: f64,
    fresh: f64,
    warm: f64,
}

/// `clients` connections share `n` requests; requests per second.
async fn http_run(conns: Vec<Client>, n: usize) -> anyhow::Result<(f64, Vec<Client>)> {
    let per_client = n / conns.len();
    let auth = format!("Bearer {USER_TOKEN}");
    let started = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|mut client| {
            let auth = auth.clone();
            tokio::spawn(async move {
                for _ in 0..per_client {
                    let resp = client
                        .request("GET", HOST, "/hello", &[("authorization", &auth)], clients::empty())
                        .await;
                    let (status, _, body) = clients::collect(resp).await;
                    if !status.is_success() {
                        bail!("GET http://{HOST}/hello: {status} {}", String::from_utf8_lossy(&body));
                    }
                }
                anyhow::Ok(client)
            })
        })
        .collect();
    let mut back = Vec::with_capacity(handles.len());
    for handle in handles {
        back.push(handle.await??);
    }
    let wall = started.elapsed().as_secs_f64();
    Ok(((per_client * back.len()) as f64 / wall, back))
}

async fn connect_all(addr: std::net::SocketAddr, n: usize) -> Vec<Client> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(clients::connect(addr, &Mode::h1()).await);
    }
    conns
}

async fn http_requests_per_second(args: &Args) -> anyhow::Result<HttpFigures> {
    let workload = Workload::start("bench").await;
    let mut hosts = Vec::new();
    for instances in [InstancePolicy::Fresh, InstancePolicy::Warm] {
        let mut config = ConfigParts::default().build();
        config.plugins = plugins_config(instances)?;
        let host = TestHost::start(config).await;
        let agent =
            burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
        wait_connected(&agent).await;
        hosts.push((host, agent));
    }
    let mut conns = vec![
        connect_all(workload.addr, args.clients).await,
        connect_all(hosts[0].0.ingress_addr, args.clients).await,
        connect_all(hosts[1].0.ingress_addr, args.clients).await,
    ];
    for c in conns.iter_mut() {
        let (_, back) = http_run(std::mem::take(c), HTTP_WARM_UP.max(args.clients)).await?;
        *c = back;
    }
    let mut rates: [Vec<f64>; 3] = Default::default();
    for run in 0..args.runs {
        for i in rotated(&[0, 1, 2], run) {
            let (rate, back) = http_run(std::mem::take(&mut conns[i]), args.http_requests).await?;
            conns[i] = back;
            rates[i].push(rate);
        }
    }
    drop(conns);
    for (host, agent) in hosts {
        agent.shutdown().await;
        host.stop().await?;
    }
    let [direct, fresh, warm] = rates.map(median);
    Ok(HttpFigures { direct, fresh, warm })
}

// ---- report --------------------------------------------------------------------------

fn ratio(a: f64, b: f64) -> String {
    format!("{:.1}×", a / b)
}

fn print_report(
    args: &Args,
    lat: &[Latencies; 3],
    (policy_parse, scheme_parse): (f64, f64),
    (task_counts, throughput): (&[usize], &[ThroughputSeries]),
    uncached: &SwapSeries,
    cached: &SwapSeries,
    http: &HttpFigures,
) {
    println!();
    println!(
        "Call latency, µs: per run and path {} sequential decisions, then as many calls of each export alone",
        args.calls
    );
    println!();
    println!("| call | percentile | native | warm | fresh | warm / native | fresh / native |");
    println!("|---|---|---|---|---|---|---|");
    let rows: [(&str, Column); 6] = [
        ("`resolve` (workload-workspace)", |l| &l.resolve),
        ("`authorize_user` (authorizer-static: authenticate-user + authorize in one instance)", |l| {
            &l.authorize_user
        }),
        ("decision = `resolve` + `authorize_user`", |l| &l.decision),
        ("`authenticate_user` alone (one instance, one guest call)", |l| &l.authenticate_alone),
        ("`authorize` alone (one instance, one guest call)", |l| &l.authorize_alone),
        ("`try_route` (router-prefer-local, 3 candidates)", |l| &l.route),
    ];
    for (name, dist) in rows {
        let [n, w, f] =
            [dist(&lat[NATIVE]).medians(), dist(&lat[WARM]).medians(), dist(&lat[FRESH]).medians()];
        for (i, p) in ["p50", "p90", "p99"].iter().enumerate() {
            let label = if i == 0 { name } else { "" };
            println!(
                "| {label} | {p} | {:.2} | {:.2} | {:.2} | {} | {} |",
                n[i],
                w[i],
                f[i],
                ratio(w[i], n[i]),
                ratio(f[i], n[i])
            );
        }
    }
    println!();
    println!(
        "Native config parse (what `init` does; a fresh instance repeats it in wasm on every call), p50 µs: \
         authorizer-static {policy_parse:.2}, workload-workspace {scheme_parse:.2}"
    );
    println!();
    println!(
        "Decision throughput: {} decisions per run, shared by the tasks (2-worker tokio runtime)",
        args.decisions
    );
    println!();
    println!("| path | tasks | decisions/s | CPU µs per decision | vs native, same tasks |");
    println!("|---|---|---|---|---|");
    for path in [NATIVE, WARM, FRESH] {
        for (series, tasks) in throughput.iter().zip(task_counts) {
            let native_rate = median(series[NATIVE].0.clone());
            let rate = median(series[path].0.clone());
            // A CPU figure only when every run was long enough to measure one.
            let cpu = match series[path].1.iter().copied().collect::<Option<Vec<f64>>>() {
                Some(cpu) => format!("{:.2}", median(cpu)),
                None => format!("– (under {MIN_CPU_SECONDS} s of CPU per run)"),
            };
            println!("| {} | {tasks} | {rate:.0} | {cpu} | {:.3}× |", PATH_NAMES[path], rate / native_rate);
        }
    }
    println!();
    println!(
        "Swap test_swap_v1 ⇄ v2, ms from trigger (`Plugins::reload`) to: reload returned / first request decision \
         with the new version's answer; {} swaps per run and variant",
        args.swaps
    );
    println!();
    println!("| variant | swaps | reload returned p50 | serving p50 | serving max |");
    println!("|---|---|---|---|---|");
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let rows = [
        ("no `cache_dir`: compile every swap", &uncached.compiled_reload, &uncached.compiled_serving),
        (
            "`cache_dir`, first sight of the sha256: compile + store",
            &cached.compiled_reload,
            &cached.compiled_serving,
        ),
        ("`cache_dir`, cache hit", &cached.hit_reload, &cached.hit_serving),
    ];
    for (name, reload, serving) in rows {
        if serving.is_empty() {
            println!("| {name} | 0 | – | – | – |");
            continue;
        }
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            serving.len(),
            median(reload.clone()),
            median(serving.clone()),
            max(serving)
        );
    }
    println!();
    println!(
        "HTTP: {} keep-alive HTTP/1.1 connections share {} `GET /hello` per run (bearer token; agent over grpc)",
        args.clients, args.http_requests
    );
    println!();
    println!("| path | requests/s | vs direct |");
    println!("|---|---|---|");
    println!("| direct to the workload | {:.0} | 1.00× |", http.direct);
    println!("| through the host, plugins fresh | {:.0} | {:.2}× |", http.fresh, http.fresh / http.direct);
    println!("| through the host, plugins warm | {:.0} | {:.2}× |", http.warm, http.warm / http.direct);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native() -> Native {
        Native::new(&config_json(&authorizer_config()).unwrap(), &config_json(WORKLOAD_CONFIG).unwrap())
            .unwrap()
    }

    /// The baseline is only a baseline if it decides what the wasm plugins decide: same
    /// workload, same principal, same decision, for allowed, refused, rejected,
    /// anonymous and unresolvable requests.
    #[tokio::test]
    async fn native_baseline_decides_like_the_plugins() {
        let plugins =
            Plugins::load(&plugins_config(InstancePolicy::Fresh).unwrap(), PluginsOptions::default())
                .await
                .unwrap();
        let native = native();
        let cases = [
            (HOST, Credential::Bearer(USER_TOKEN.into())),
            (HOST, Credential::Bearer("bob-token-0123456789abcdef".into())),
            (HOST, Credential::Bearer("nobody-knows-this-token".into())),
            (HOST, Credential::None),
            (HOST, Credential::Cookie { name: "burrow_session".into(), value: USER_TOKEN.into() }),
            ("api-edge-eu-1.localhost", Credential::Bearer(USER_TOKEN.into())),
            ("nothing.example", Credential::Bearer(USER_TOKEN.into())),
        ];
        let mut decided = 0;
        for (host, credential) in cases {
            let resolve = ResolveRequest {
                action: Action::Http,
                host: host.into(),
                path: "/".into(),
                method: "GET".into(),
                ssh_user: String::new(),
                port: 0,
            };
            let target = plugins.resolve(&resolve).await.unwrap();
            assert_eq!(native.resolve(&resolve), target, "resolve {host}");
            let Some(target) = target else { continue };
            let user = UserAuthRequest {
                credential,
                client_addr: "127.0.0.1:1".into(),
                host: host.into(),
                action: Action::Http,
            };
            let make = move |principal: Option<&Principal>| AuthorizeRequest {
                target,
                ..authorize_request(principal)
            };
            let verdict = plugins.authorize_user(&user, make.clone()).await.unwrap();
            assert_eq!(
                native.authorize_user(&user, make),
                (verdict.who, verdict.decision),
                "{host} {user:?}"
            );
            decided += 1;
        }
        assert_eq!(decided, 6, "every case but the unknown host reaches the authorizer");

        let route = route_request();
        assert_eq!(native.route(&route), plugins.try_route(&route).await.unwrap());
    }
}
