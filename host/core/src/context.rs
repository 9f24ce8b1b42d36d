//! The parts every server of the host shares (agent port, ingresses, replica API, admin),
//! assembled once in `run`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::dial::{DialRequest, Dialer, LocalDialer, OpenError};
use crate::lifecycle::Lifecycle;
use crate::registry::TunnelRegistry;
use crate::sessions::AgentSessions;
use crate::tunnel_io::TunnelStream;
use crate::workloads::EndedWorkloads;
use burrow_host_metrics::Metrics;
use burrow_host_plugins::Plugins;

/// Whether the host can take traffic, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// True when the host should receive new work.
    pub ready: bool,
    /// Why not (empty when ready).
    pub reasons: Vec<String>,
}

/// Something that can make the host unready (the cluster, when Redis is unreachable).
pub trait ReadinessCheck: Send + Sync {
    /// `Some(reason)` while it keeps the host from taking new work.
    fn not_ready(&self) -> Option<String>;
}

/// The protocol-neutral parts, before a dialer is chosen: what a cluster dialer wraps.
#[derive(Clone)]
pub struct HostCore {
    /// Authorizer, workload and router plugins.
    pub plugins: Arc<Plugins>,
    /// Parked tunnels.
    pub registry: Arc<dyn TunnelRegistry>,
    /// Live agent sessions.
    pub sessions: Arc<AgentSessions>,
    /// Workloads found ended.
    pub ended: Arc<EndedWorkloads>,
    /// Drain and shutdown state.
    pub lifecycle: Arc<Lifecycle>,
    /// Dials over this replica's own tunnels.
    pub local: Arc<LocalDialer>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// This host replica's id.
    pub replica_id: String,
    /// Control-plane workloads, for admission (with `[control]` only).
    pub directory: Option<Arc<dyn crate::admission::WorkloadDirectory>>,
    /// Labels of agents held by other replicas, for admission (cluster mode only).
    pub remote_labels: Option<Arc<dyn crate::admission::AgentLabelSource>>,
}

impl HostCore {
    /// The parts of a host; `dial_answer_timeout` bounds the wait for an agent's answer
    /// to `Dial`.
    pub fn new(
        plugins: Arc<Plugins>,
        registry: Arc<dyn TunnelRegistry>,
        replica_id: String,
        dial_answer_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lifecycle = Arc::new(Lifecycle::new());
        let local = Arc::new(LocalDialer::new(
            registry.clone(),
            dial_answer_timeout,
            lifecycle.clone(),
            metrics.clone(),
        ));
        Self {
            plugins,
            registry,
            sessions: Arc::new(AgentSessions::new()),
            ended: Arc::new(EndedWorkloads::new()),
            lifecycle,
            local,
            metrics,
            replica_id,
            directory: None,
            remote_labels: None,
        }
    }
}

/// Everything a request handler needs: the core parts, admission, and the one dialer.
pub struct HostContext {
    /// Authorizer, workload and router plugins.
    pub plugins: Arc<Plugins>,
    /// Parked tunnels.
    pub registry: Arc<dyn TunnelRegistry>,
    /// Live agent sessions.
    pub sessions: Arc<AgentSessions>,
    /// Workloads found ended: their requests get 410.
    pub ended: Arc<EndedWorkloads>,
    /// Who may reach what (every ingress asks it).
    pub admission: Admission,
    /// Dials over this replica's own tunnels (the replica API serves forwards with it).
    pub local: Arc<LocalDialer>,
    /// Drain and shutdown state.
    pub lifecycle: Arc<Lifecycle>,
    /// Cancelled when the host begins to shut down (after the drain began).
    pub shutdown: CancellationToken,
    /// This host replica's id.
    pub replica_id: String,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    dialer: Arc<dyn Dialer>,
    readiness: Vec<Arc<dyn ReadinessCheck>>,
}

impl HostContext {
    /// A context dialing with `dialer` (the core's local dialer, or a cluster dialer
    /// wrapping it), unready whenever one of `readiness` says so.
    pub fn new(core: HostCore, dialer: Arc<dyn Dialer>, readiness: Vec<Arc<dyn ReadinessCheck>>) -> Self {
        let HostCore {
            plugins,
            registry,
            sessions,
            ended,
            lifecycle,
            local,
            metrics,
            replica_id,
            directory,
            remote_labels,
        } = core;
        Self {
            admission: Admission::new(plugins.clone(), ended.clone(), sessions.clone())
                .with_directory(directory)
                .with_remote_labels(remote_labels),
            shutdown: lifecycle.shutdown().clone(),
            plugins,
            registry,
            sessions,
            ended,
            local,
            lifecycle,
            replica_id,
            metrics,
            dialer,
            readiness,
        }
    }

    /// A single-process context: dials only this replica's tunnels.
    pub fn local(core: HostCore) -> Self {
        let dialer = core.local.clone();
        Self::new(core, dialer, Vec::new())
    }

    /// Opens a stream to a workload's service, from wherever its agent's tunnels are.
    pub async fn dial(&self, request: DialRequest<'_>) -> Result<TunnelStream, OpenError> {
        let started = Instant::now();
        let result = self.dialer.dial(request).await;
        match &result {
            Ok(stream) => self.metrics.routed(stream.path(), started.elapsed().as_secs_f64()),
            Err(OpenError::NoTunnel { .. }) => {
                self.metrics.wait_timeouts.inc();
            }
            Err(_) => {}
        }
        result
    }

    /// Marks the host as draining: readiness turns false at once.
    pub fn begin_drain(&self) {
        self.lifecycle.begin_drain();
        self.metrics.draining.set(1);
    }

    /// True once the drain began.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// Whether a load balancer should send this replica new work.
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining".to_owned());
        }
        reasons.extend(self.readiness.iter().filter_map(|check| check.not_ready()));
        Readiness { ready: reasons.is_empty(), reasons }
    }

    /// Brings the state gauges up to date (called before each metrics scrape).
    pub fn update_gauges(&self) {
        let (agents, sessions) = self.sessions.counts();
        self.metrics.agents_connected.set(agents as i64);
        self.metrics.agent_sessions.set(sessions as i64);
        self.metrics.tunnels_idle.set(self.registry.stats().idle_tunnels as i64);
    }
}
