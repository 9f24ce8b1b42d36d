//! The reconnect figure: with N agents connected, the host process is stopped (SIGTERM,
//! graceful; or SIGKILL) and a new one started on the same ports once the old one has
//! exited. From the new agent port accepting, its `/metrics` is polled every 50 ms
//! until it holds all N agents, while paced requests go through its ingress to agents
//! the bench has seen back.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::Signal;
use tokio::time::Instant;

use super::fleet::Fleet;
use super::host::{HostProc, Launch, Ports};
use super::metrics::{self, HostGauges, ListenQueue};
use super::traffic::{self, Sample, CLIENTS};

/// The metrics poll period.
const POLL: Duration = Duration::from_millis(50);
/// How long after the new agent port accepts all N agents may take to come back.
const PATIENCE: Duration = Duration::from_secs(120);
/// Requests measured after all agents are back, across all clients.
pub(super) const SETTLED_REQUESTS: usize = 1000;
/// The bound on the settled phase (at 200 requests/s it takes about 5 s).
const SETTLED_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    Term,
    Kill,
}

impl Variant {
    pub(super) fn parse(s: &str) -> Option<Variant> {
        match s {
            "term" => Some(Variant::Term),
            "kill" => Some(Variant::Kill),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Variant::Term => "term",
            Variant::Kill => "kill",
        }
    }

    fn signal(self) -> Signal {
        match self {
            Variant::Term => Signal::TERM,
            Variant::Kill => Signal::KILL,
        }
    }
}

/// One poll of the new host.
pub(super) struct CurvePoint {
    pub(super) since_listening: Duration,
    pub(super) gauges: HostGauges,
    pub(super) bench_back: usize,
}

/// What one restart measured.
pub(super) struct Restart {
    pub(super) old_exit: String,
    pub(super) signal_to_exit: Duration,
    pub(super) exit_to_listening: Duration,
    pub(super) listening_to_serving: Duration,
    /// Listening → the host's `burrow_agents_connected` reached N (`None`: never).
    pub(super) all_host: Option<Duration>,
    /// Listening → every agent back per its own status (`None`: never).
    pub(super) all_bench: Option<Duration>,
    /// When each agent came back, since listening (may be negative: none expected).
    pub(super) back_times: Vec<f64>,
    pub(super) curve: Vec<CurvePoint>,
    /// Requests sent before all agents were back, and after.
    pub(super) storm: Vec<(f64, Sample)>,
    pub(super) settled: Vec<(f64, Sample)>,
    /// CPU seconds of the new host and of the bench (its agents and clients) from the
    /// signal until all were back, and that wall time.
    pub(super) host_cpu: f64,
    pub(super) bench_cpu: f64,
    pub(super) storm_wall: Duration,
    /// Listen-queue trouble over the same span (machine-wide counters).
    pub(super) listen: ListenQueue,
    /// The machine's CPU use over the same span, % of all cores: all of it, and what
    /// neither the bench nor the new host used (other processes, the old host's exit).
    pub(super) machine_busy: f64,
    pub(super) others: f64,
    /// Per agent: connection attempts (dials) from the signal until all were back.
    pub(super) dials: Vec<u64>,
    /// The first failed requests' answers, a few per client.
    pub(super) failures: Vec<String>,
}

/// The host's agents-connected gauge at `t` after listening (the last poll at or before).
pub(super) fn connected_at(curve: &[CurvePoint], t: Duration) -> f64 {
    curve.iter().take_while(|p| p.since_listening <= t).last().map_or(0.0, |p| p.gauges.agents)
}

pub(super) async fn restart(
    old: HostProc,
    variant: Variant,
    fleet: &Fleet,
    launch: &Launch,
) -> anyhow::Result<(HostProc, Restart)> {
    let (n, ports) = (fleet.len(), launch.ports);
    let gen = old.gen + 1;
    let queue_before = ListenQueue::read();
    let bench_cpu_before = crate::procfs::cpu_seconds()?;
    let attempts_before = fleet.board.attempts();
    let meter = crate::procfs::CpuMeter::start(&[])?;
    let (mut machine_busy, mut others) = (f64::NAN, f64::NAN);
    let mut dials = Vec::new();
    let signalled = Instant::now();
    let (exited, old_exit) = old.stop(variant.signal()).await?;
    let mut host = HostProc::spawn(launch, gen)?;
    fleet.board.set_current(gen);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(traffic::client(
                c,
                Ports::addr(ports.ingress),
                fleet.board.clone(),
                launch.agents.clone(),
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();
    let listening = host.wait_listening(ports.agents).await?;
    let mut curve = Vec::new();
    let mut serving = None;
    let mut all_host = None;
    let mut all_bench = None;
    let mut settled_from = None;
    let mut done_before = 0;
    let (mut host_cpu, mut bench_cpu, mut listen) = (f64::NAN, f64::NAN, ListenQueue::default());
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        host.check_alive()?;
        // Until the host serves, the scrape fails: it is still loading its plugins.
        let Ok(gauges) = metrics::gauges(Ports::addr(ports.admin)).await else { continue };
        let now = Instant::now();
        serving.get_or_insert(now);
        let bench_back = fleet.board.back_count(gen);
        if all_host.is_none() && gauges.agents >= n as f64 {
            all_host = Some(now);
        }
        if all_bench.is_none() && bench_back == n {
            all_bench = Some(now);
        }
        curve.push(CurvePoint { since_listening: now - listening, gauges, bench_back });
        if settled_from.is_none() {
            if let (Some(a), Some(b)) = (all_host, all_bench) {
                settled_from = Some(a.max(b));
                host_cpu = crate::procfs::process_cpu_seconds(host.pid)?;
                bench_cpu = crate::procfs::cpu_seconds()? - bench_cpu_before;
                listen = ListenQueue::read().since(queue_before);
                // The meter counts the bench's own CPU; the new host's is taken out here.
                let (busy, not_bench) = meter.read()?;
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                let host_share = host_cpu / ((now - signalled).as_secs_f64() * cores) * 100.0;
                (machine_busy, others) = (busy, (not_bench - host_share).max(0.0));
                dials = fleet.board.attempts().iter().zip(&attempts_before).map(|(a, b)| a - b).collect();
                done_before = done.load(Ordering::Relaxed);
                println!(
                    "    all {n} back {:.2} s after the agent port accepted",
                    (a.max(b) - listening).as_secs_f64()
                );
            } else if now - listening > PATIENCE {
                println!(
                    "    WARNING: {PATIENCE:?} after listening only {} agents connected (host), {bench_back} back \
                     (bench)",
                    gauges.agents
                );
                break;
            }
        }
        if let Some(from) = settled_from {
            // The settled phase ends after SETTLED_REQUESTS more requests (about 5 s at
            // the clients' pace), or at its bound.
            if done.load(Ordering::Relaxed) - done_before >= SETTLED_REQUESTS || now - from > SETTLED_PATIENCE
            {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut samples, mut failures) = (Vec::new(), Vec::new());
    for c in clients {
        let out = c.await?;
        samples.extend(out.samples);
        failures.extend(out.failures);
    }
    let since =
        |t: Instant| (t.saturating_duration_since(listening).as_secs_f64() * 1e3) - before_ms(t, listening);
    let from = settled_from.unwrap_or_else(Instant::now);
    let (mut storm, mut settled) = (Vec::new(), Vec::new());
    for s in samples {
        let at = since(s.sent);
        if s.sent < from {
            storm.push((at, s));
        } else {
            settled.push((at, s));
        }
    }
    let back_times = fleet.board.back_times(gen).into_iter().map(|t| since(t) / 1e3).collect();
    let result = Restart {
        old_exit,
        signal_to_exit: exited - signalled,
        exit_to_listening: listening - exited,
        listening_to_serving: serving.map_or(Duration::ZERO, |s| s - listening),
        all_host: all_host.map(|t| t - listening),
        all_bench: all_bench.map(|t| t - listening),
        back_times,
        curve,
        storm,
        settled,
        host_cpu,
        bench_cpu,
        storm_wall: settled_from.map_or(Duration::ZERO, |t| t - signalled),
        listen,
        machine_busy,
        others,
        dials,
        failures,
    };
    Ok((host, result))
}

/// Milliseconds `t` lies before `reference` (0 if after): times are reported signed.
fn before_ms(t: Instant, reference: Instant) -> f64 {
    reference.saturating_duration_since(t).as_secs_f64() * 1e3
}
