//! Prometheus metrics, served as text on the admin port's `/metrics`.
//!
//! One [`Metrics`] per host (not a process-wide global), so tests running several hosts in
//! one process see their own numbers. Counters are updated where things happen; gauges
//! that mirror state the host already keeps (sessions, parked tunnels) are set just before
//! each scrape by [`Metrics::encode`]'s caller, so the hot path does no extra work for them.
//!
//! # Layout
//!
//! One file: [`Metrics`] (the host's registry), [`PluginMetrics`] (the plugin families),
//! [`RoutePath`] (local or forwarded), and [`PluginErrorLabels`], through which the plugin
//! platform labels its failures without this crate depending on it.

use burrow_plugin_contract::PluginKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How a tunnel reached the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutePath {
    /// Through a stream parked on this replica.
    Local,
    /// Through another replica's private API.
    Forwarded,
}

impl RoutePath {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutePath::Local => "local",
            RoutePath::Forwarded => "forwarded",
        }
    }
}

/// The labels a failed plugin call is counted under. The plugin platform's error type
/// implements it; a trait keeps this crate below the platform, which records through it.
pub trait PluginErrorLabels {
    /// The error kind, `burrow_plugin_errors_total{error}`.
    fn kind_label(&self) -> &'static str;
    /// The limit a trap hit, `burrow_plugin_traps_total{limit}`; `None` for other errors.
    fn trap_limit(&self) -> Option<&'static str>;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabel {
    kind: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginCallLabel {
    plugin: String,
    kind: &'static str,
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginOpLabel {
    plugin: String,
    kind: &'static str,
    op: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginDecisionLabel {
    plugin: String,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginErrorLabel {
    plugin: String,
    error: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginTrapLabel {
    plugin: String,
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginNameLabel {
    plugin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginSwapLabel {
    plugin: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PluginInfoLabel {
    plugin: String,
    kind: &'static str,
    sha256: String,
    version: String,
    config_sha256: String,
}

/// The version a plugin runs, for `burrow_plugin_info`.
#[derive(Debug, Clone, Copy)]
pub struct PluginInfo<'a> {
    pub plugin: &'a str,
    pub kind: PluginKind,
    /// The component's SHA-256 (hex).
    pub sha256: &'a str,
    /// The manifest's `[plugin] version` (the label is empty without one).
    pub version: Option<&'a str>,
    /// The SHA-256 (hex) of the slot's config: a config change shows here.
    pub config_sha256: &'a str,
}

fn plugin_histogram() -> Histogram {
    // 1 µs … ~0.5 s: a warm call is a few µs, a call with outbound HTTP up to its timeout.
    Histogram::new(exponential_buckets(0.000_001, 2.0, 20))
}

/// Per-plugin metrics (`burrow_plugin_*`). Cheap to clone; the families are shared.
#[derive(Clone)]
pub struct PluginMetrics {
    calls: Family<PluginCallLabel, Counter>,
    duration: Family<PluginOpLabel, Histogram, fn() -> Histogram>,
    decisions: Family<PluginDecisionLabel, Counter>,
    errors: Family<PluginErrorLabel, Counter>,
    traps: Family<PluginTrapLabel, Counter>,
    quarantined: Family<PluginNameLabel, Gauge>,
    swaps: Family<PluginSwapLabel, Counter>,
    info: Family<PluginInfoLabel, Gauge>,
    info_current: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, PluginInfoLabel>>>,
}

impl std::fmt::Debug for PluginMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginMetrics")
    }
}

impl PluginMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = PluginMetrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(plugin_histogram as fn() -> Histogram),
            decisions: Family::default(),
            errors: Family::default(),
            traps: Family::default(),
            quarantined: Family::default(),
            swaps: Family::default(),
            info: Family::default(),
            info_current: Default::default(),
        };
        registry.register("plugin_calls", "Plugin calls by plugin, export and result", m.calls.clone());
        registry.register_with_unit(
            "plugin_call_duration",
            "Plugin call latency by plugin and export, instantiation included",
            prometheus_client::registry::Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "plugin_decisions",
            "Plugin answers by plugin, export and outcome (accepted/rejected agents; authenticated/anonymous/\
             rejected users; allow/unauthorized/forbidden requests; resolved/none; expired/live)",
            m.decisions.clone(),
        );
        registry.register("plugin_errors", "Failed plugin calls by error kind", m.errors.clone());
        registry.register(
            "plugin_traps",
            "Plugin calls stopped by a limit (time, memory, stack, fuel) or a trap (none)",
            m.traps.clone(),
        );
        registry.register(
            "plugin_quarantined",
            "1 while the crash-loop breaker holds the plugin",
            m.quarantined.clone(),
        );
        registry.register(
            "plugin_swaps",
            "Plugin swaps by result (reload, rollback, config, refused)",
            m.swaps.clone(),
        );
        registry.register(
            "plugin_info",
            "The loaded version of each plugin: component and config SHA-256, manifest version (value 1)",
            m.info.clone(),
        );
        m
    }

    /// Records one call: its latency, result and, on failure, the error kind and limit.
    pub fn call<E: PluginErrorLabels + ?Sized>(
        &self,
        plugin: &str,
        kind: PluginKind,
        op: &'static str,
        elapsed: std::time::Duration,
        error: Option<&E>,
    ) {
        let kind = kind.as_str();
        let result = if error.is_some() { "error" } else { "ok" };
        self.calls.get_or_create(&PluginCallLabel { plugin: plugin.to_owned(), kind, op, result }).inc();
        self.duration
            .get_or_create(&PluginOpLabel { plugin: plugin.to_owned(), kind, op })
            .observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.errors
                .get_or_create(&PluginErrorLabel { plugin: plugin.to_owned(), error: error.kind_label() })
                .inc();
            if let Some(limit) = error.trap_limit() {
                self.traps.get_or_create(&PluginTrapLabel { plugin: plugin.to_owned(), limit }).inc();
            }
        }
    }

    /// Counts one answer of export `op` by its outcome (`allow`, `forbidden`, ...).
    pub fn decision(&self, plugin: &str, op: &'static str, outcome: &'static str) {
        self.decisions.get_or_create(&PluginDecisionLabel { plugin: plugin.to_owned(), op, outcome }).inc();
    }

    pub fn set_quarantined(&self, plugin: &str, quarantined: bool) {
        self.quarantined
            .get_or_create(&PluginNameLabel { plugin: plugin.to_owned() })
            .set(i64::from(quarantined));
    }

    /// `result`: `reload`, `rollback`, `config` (a SIGHUP'd config rebuilt the slot) or
    /// `refused`.
    pub fn swap(&self, plugin: &str, result: &'static str) {
        self.swaps.get_or_create(&PluginSwapLabel { plugin: plugin.to_owned(), result }).inc();
    }

    /// Marks `info` as the plugin's loaded version, dropping the series of the one before.
    pub fn set_info(&self, info: &PluginInfo<'_>) {
        let label = PluginInfoLabel {
            plugin: info.plugin.to_owned(),
            kind: info.kind.as_str(),
            sha256: info.sha256.to_owned(),
            version: info.version.unwrap_or_default().to_owned(),
            config_sha256: info.config_sha256.to_owned(),
        };
        let mut current = self.info_current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.insert(info.plugin.to_owned(), label.clone()) {
            if old != label {
                self.info.remove(&old);
            }
        }
        self.info.get_or_create(&label).set(1);
    }
}

fn routing_histogram() -> Histogram {
    // 50 µs … ~26 s: a local claim is tens of µs, a wait for an agent up to 20 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// Agent identities with at least one session on this replica (set at scrape).
    pub agents_connected: Gauge,
    /// Agent control sessions on this replica (set at scrape).
    pub agent_sessions: Gauge,
    /// Parked, unused tunnels on this replica (set at scrape).
    pub tunnels_idle: Gauge,
    /// Tunnels carrying a user connection right now (local and forwarded, both ends).
    pub tunnels_active: Gauge<i64, AtomicI64Compat>,
    requests: Family<OutcomeLabel, Counter>,
    routing: Family<PathLabel, Histogram, fn() -> Histogram>,
    /// Requests that had to wait for an agent with no stream anywhere.
    pub waits: Counter,
    /// Waits that ran out before the agent appeared.
    pub wait_timeouts: Counter,
    redis_errors: Family<OpLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    agent_connects: Family<ResultLabel, Counter>,
    forwards_served: Family<ResultLabel, Counter>,
    ssh_logins: Family<ResultLabel, Counter>,
    ssh_channels: Family<ChannelLabel, Counter>,
    workload_events: Family<EventLabel, Counter>,
    forward_attempts: Family<ResultLabel, Counter>,
    limit_refusals: Family<LimitLabel, Counter>,
    /// Whether this replica is draining (1) or serving (0).
    pub draining: Gauge,
    /// Whether the cluster store (Redis) is reachable (1), unreachable (0); absent in single-process mode.
    pub redis_up: Gauge,
    /// Per-plugin metrics, handed to the plugin runtime.
    pub plugins: PluginMetrics,
}

/// The atomic type behind [`Metrics::tunnels_active`].
pub type AtomicI64Compat = std::sync::atomic::AtomicI64;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics registered under the `burrow_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("burrow");
        let agents_connected = Gauge::default();
        let agent_sessions = Gauge::default();
        let tunnels_idle = Gauge::default();
        let tunnels_active = Gauge::<i64, AtomicI64Compat>::default();
        let requests = Family::<OutcomeLabel, Counter>::default();
        let routing = Family::<PathLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            routing_histogram as fn() -> Histogram,
        );
        let waits = Counter::default();
        let wait_timeouts = Counter::default();
        let redis_errors = Family::<OpLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        let agent_connects = Family::<ResultLabel, Counter>::default();
        let forwards_served = Family::<ResultLabel, Counter>::default();
        let ssh_logins = Family::<ResultLabel, Counter>::default();
        let ssh_channels = Family::<ChannelLabel, Counter>::default();
        let workload_events = Family::<EventLabel, Counter>::default();
        let forward_attempts = Family::<ResultLabel, Counter>::default();
        let limit_refusals = Family::<LimitLabel, Counter>::default();
        let draining = Gauge::default();
        let redis_up = Gauge::default();

        registry.register(
            "agents_connected",
            "Agent identities with a session on this replica",
            agents_connected.clone(),
        );
        registry.register("agent_sessions", "Agent control sessions on this replica", agent_sessions.clone());
        registry.register("tunnels_idle", "Parked tunnels ready to be claimed", tunnels_idle.clone());
        registry.register("tunnels_active", "Tunnels carrying a user connection", tunnels_active.clone());
        registry.register("requests", "User requests by outcome", requests.clone());
        registry.register_with_unit(
            "routing_duration",
            "Time from a request's arrival to an open tunnel, by path",
            prometheus_client::registry::Unit::Seconds,
            routing.clone(),
        );
        registry.register("agent_waits", "Requests that waited for an agent to connect", waits.clone());
        registry.register("agent_wait_timeouts", "Waits for an agent that timed out", wait_timeouts.clone());
        registry.register("redis_errors", "Failed Redis operations by operation", redis_errors.clone());
        registry.register_with_unit(
            "tunnel",
            "Bytes carried through tunnels (to_agent: from users; from_agent: to users)",
            prometheus_client::registry::Unit::Bytes,
            bytes.clone(),
        );
        registry.register("agent_connections", "Agent connection attempts by result", agent_connects.clone());
        registry.register(
            "forwards_served",
            "Requests from other replicas served by this one, by result",
            forwards_served.clone(),
        );
        registry.register("ssh_logins", "SSH logins by result (accepted, refused)", ssh_logins.clone());
        registry.register(
            "ssh_channels",
            "SSH channels by kind (session, forward) and result (opened, refused)",
            ssh_channels.clone(),
        );
        registry.register(
            "workload_events",
            "Workload lifecycle events on this replica (created, terminated, sessions_ended, token_issued, \
             token_renewed, work_enqueued, work_delivered, work_acknowledged)",
            workload_events.clone(),
        );
        registry.register(
            "forward_attempts",
            "Attempts to reach an agent through another replica, by result (ok, refused, not_there, failed)",
            forward_attempts.clone(),
        );
        registry.register(
            "limit_refusals",
            "Work refused because a resource cap was reached, by limit (agent_parked_tunnels, \
             agent_streams, ingress_connections, ingress_connections_per_address, ingress_requests, \
             ingress_requests_per_address, admin_connections)",
            limit_refusals.clone(),
        );
        registry.register("draining", "1 while this replica drains", draining.clone());
        registry.register("redis_up", "1 while Redis is reachable (cluster mode)", redis_up.clone());
        let plugins = PluginMetrics::register(&mut registry);

        Self {
            registry,
            agents_connected,
            agent_sessions,
            tunnels_idle,
            tunnels_active,
            requests,
            routing,
            waits,
            wait_timeouts,
            redis_errors,
            bytes,
            agent_connects,
            forwards_served,
            ssh_logins,
            ssh_channels,
            workload_events,
            forward_attempts,
            limit_refusals,
            draining,
            redis_up,
            plugins,
        }
    }

    /// Counts one user request. `outcome` is `proxied` (the workload answered), `upgraded`
    /// (101, now a byte pipe) or the error code users see in JSON error pages
    /// (`no_route`, `forbidden`, `no_tunnel`, `agent_refused`, `cluster_unavailable`, ...).
    pub fn request(&self, outcome: &str) {
        self.requests.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
    }

    /// Records how long opening a tunnel took.
    pub fn routed(&self, path: RoutePath, seconds: f64) {
        self.routing.get_or_create(&PathLabel { path: path.as_str() }).observe(seconds);
    }

    /// Counts a failed Redis operation (`op` names it: `register`, `lookup`, `heartbeat`, ...).
    pub fn redis_error(&self, op: &'static str) {
        self.redis_errors.get_or_create(&OpLabel { op }).inc();
    }

    /// Adds bytes carried through tunnels.
    pub fn tunnel_bytes(&self, to_agent: u64, from_agent: u64) {
        if to_agent > 0 {
            self.bytes.get_or_create(&DirectionLabel { direction: "to_agent" }).inc_by(to_agent);
        }
        if from_agent > 0 {
            self.bytes.get_or_create(&DirectionLabel { direction: "from_agent" }).inc_by(from_agent);
        }
    }

    /// Counts an agent connection attempt: `accepted`, `rejected`, `rate_limited`, `unavailable`.
    pub fn agent_connect(&self, result: &'static str) {
        self.agent_connects.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a forwarded request this replica served: `ok`, `refused`, `no_tunnel`, `unauthenticated`.
    pub fn forward_served(&self, result: &'static str) {
        self.forwards_served.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts an SSH login: `accepted` or `refused` (any step: the log says which).
    pub fn ssh_login(&self, result: &'static str) {
        self.ssh_logins.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts an SSH channel: `kind` is `session` or `forward`, `result` `opened` or
    /// `refused`.
    pub fn ssh_channel(&self, kind: &'static str, result: &'static str) {
        self.ssh_channels.get_or_create(&ChannelLabel { kind, result }).inc();
    }

    /// Counts one attempt to reach an agent through another replica: `ok`, `refused` (the
    /// agent said no), `not_there` (the replica holds no stream of it), `failed`
    /// (unreachable, or it failed).
    pub fn forward_attempt(&self, result: &'static str) {
        self.forward_attempts.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts one thing refused because the cap `limit` was reached (see the metric's help
    /// for the names: they are the config keys' subjects, so an operator knows which to raise).
    pub fn limit_refused(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Counts a workload lifecycle event (see the metric's help for the names).
    pub fn workload_event(&self, event: &'static str) {
        self.workload_events.get_or_create(&EventLabel { event }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::new();
        m.request("ok");
        m.routed(RoutePath::Forwarded, 0.000_2);
        m.redis_error("lookup");
        m.tunnel_bytes(10, 20);
        m.agent_connect("accepted");
        m.forward_served("ok");
        m.tunnels_active.inc();
        m.limit_refused("agent_parked_tunnels");
        let text = m.encode();
        for needle in [
            "burrow_requests_total{outcome=\"ok\"} 1",
            "burrow_routing_duration_seconds_count{path=\"forwarded\"} 1",
            "burrow_redis_errors_total{op=\"lookup\"} 1",
            "burrow_tunnel_bytes_total{direction=\"from_agent\"} 20",
            "burrow_agent_connections_total{result=\"accepted\"} 1",
            "burrow_forwards_served_total{result=\"ok\"} 1",
            "burrow_tunnels_active 1",
            "burrow_agent_wait_timeouts_total 0",
            "burrow_limit_refusals_total{limit=\"agent_parked_tunnels\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    struct Trapped;

    impl PluginErrorLabels for Trapped {
        fn kind_label(&self) -> &'static str {
            "trap"
        }
        fn trap_limit(&self) -> Option<&'static str> {
            Some("none")
        }
    }

    #[test]
    fn plugin_families_split_by_export_outcome_and_version() {
        let m = Metrics::new();
        let p = &m.plugins;
        let ms = std::time::Duration::from_millis(1);
        p.call::<Trapped>("authz", PluginKind::Authorizer, "authenticate-user+authorize", ms, None);
        p.call("authz", PluginKind::Authorizer, "authenticate-agent", ms, Some(&Trapped));
        p.decision("authz", "authorize", "allow");
        p.decision("authz", "authorize", "forbidden");
        p.decision("authz", "authorize", "forbidden");
        p.swap("authz", "config");
        let info = |sha256, version, config_sha256| PluginInfo {
            plugin: "authz",
            kind: PluginKind::Authorizer,
            sha256,
            version,
            config_sha256,
        };
        p.set_info(&info("aaa", Some("1.0.0"), "c1"));
        p.set_info(&info("aaa", Some("1.0.0"), "c2"));
        let text = m.encode();
        for needle in [
            "burrow_plugin_call_duration_seconds_count{plugin=\"authz\",kind=\"authorizer\",op=\"authenticate-user+authorize\"} 1",
            "burrow_plugin_calls_total{plugin=\"authz\",kind=\"authorizer\",op=\"authenticate-agent\",result=\"error\"} 1",
            "burrow_plugin_decisions_total{plugin=\"authz\",op=\"authorize\",outcome=\"forbidden\"} 2",
            "burrow_plugin_decisions_total{plugin=\"authz\",op=\"authorize\",outcome=\"allow\"} 1",
            "burrow_plugin_swaps_total{plugin=\"authz\",result=\"config\"} 1",
            "burrow_plugin_info{plugin=\"authz\",kind=\"authorizer\",sha256=\"aaa\",version=\"1.0.0\",config_sha256=\"c2\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("config_sha256=\"c1\""), "a config change replaces the info series:\n{text}");
    }
}
