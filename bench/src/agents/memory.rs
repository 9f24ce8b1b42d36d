//! The memory figure: agents connected in steps on one host process, and the host's
//! RSS once it has stopped changing after each step.

use std::time::Duration;

use tokio::time::Instant;

use super::fleet::{Fleet, Shape};
use super::host::{HostProc, Launch, Memory, Ports};
use super::metrics::{self, HostGauges};

/// How long N agents may take to come up with every connection and parked tunnel.
const CONNECT_PATIENCE: Duration = Duration::from_secs(180);
/// Pause between polls of the host's metrics and the agents' statuses.
const POLL: Duration = Duration::from_millis(50);
/// RSS sampling: every `RSS_EVERY`; settled when the last `RSS_WINDOW` samples lie
/// within `RSS_BAND` of each other (or 256 KiB, whichever is more); at most
/// `RSS_PATIENCE`, then the last reading is taken and flagged.
const RSS_EVERY: Duration = Duration::from_millis(200);
const RSS_WINDOW: usize = 10;
const RSS_BAND: f64 = 0.0025;
const RSS_PATIENCE: Duration = Duration::from_secs(30);

/// One step: the host with `agents` agents connected.
pub(super) struct Point {
    pub(super) agents: usize,
    pub(super) memory: Memory,
    pub(super) gauges: HostGauges,
    /// From spawning the step's agents until all were fully connected.
    pub(super) connect: Duration,
    /// From then until RSS stopped changing.
    pub(super) settle: Duration,
    pub(super) settled: bool,
    /// Every agent came up fully within the patience.
    pub(super) complete: bool,
    /// Host CPU seconds and handshakes accepted while the step's agents came up, and
    /// the seconds the agent authenticator's calls took meanwhile.
    pub(super) host_cpu: f64,
    pub(super) handshakes: f64,
    pub(super) auth_seconds: f64,
}

/// Waits until the host's RSS stops changing; the last reading, how long it took and
/// whether it settled before the bound.
pub(super) async fn settle_rss(host: &mut HostProc) -> anyhow::Result<(Memory, Duration, bool)> {
    let start = Instant::now();
    let mut window: Vec<Memory> = Vec::with_capacity(RSS_WINDOW + 1);
    let mut tick = tokio::time::interval(RSS_EVERY);
    loop {
        tick.tick().await;
        host.check_alive()?;
        window.push(host.memory()?);
        if window.len() > RSS_WINDOW {
            window.remove(0);
        }
        let last = window[window.len() - 1];
        if window.len() == RSS_WINDOW {
            let (lo, hi) = window
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), m| (lo.min(m.rss_kib), hi.max(m.rss_kib)));
            if hi - lo <= (last.rss_kib * RSS_BAND).max(256.0) {
                return Ok((last, start.elapsed(), true));
            }
        }
        if start.elapsed() > RSS_PATIENCE {
            return Ok((last, start.elapsed(), false));
        }
    }
}

/// Starts agents up to `upto`, `batch` at a time (0: all at once), each batch only once
/// the host holds every agent so far with all its connections and parked tunnels (its
/// metrics) and every agent says so (its status); then waits until RSS settles.
#[allow(clippy::too_many_arguments)]
pub(super) async fn step(
    fleet: &mut Fleet,
    host: &mut HostProc,
    upto: usize,
    batch: usize,
    launch: &Launch,
    url: &str,
    service: &str,
    shape: Shape,
) -> anyhow::Result<Point> {
    let ports = launch.ports;
    let cpu_before = crate::procfs::process_cpu_seconds(host.pid)?;
    let before = metrics::gauges(Ports::addr(ports.admin)).await?;
    let start = Instant::now();
    let (mut gauges, mut complete) = (HostGauges::default(), true);
    while complete && fleet.len() < upto {
        let next = if batch == 0 { upto } else { (fleet.len() + batch).min(upto) };
        fleet.spawn_upto(next, &launch.agents, url, service, shape)?;
        (gauges, complete) = wait_full(fleet, host, next, ports, start).await?;
    }
    let connect = start.elapsed();
    let host_cpu = crate::procfs::process_cpu_seconds(host.pid)? - cpu_before;
    let handshakes = gauges.accepted - before.accepted;
    let auth_seconds = gauges.auth_seconds - before.auth_seconds;
    let (memory, settle, settled) = settle_rss(host).await?;
    // What the host holds at the reading (the duplicate connections' re-dials may still
    // have moved a session meanwhile).
    let gauges = metrics::gauges(Ports::addr(ports.admin)).await.unwrap_or(gauges);
    Ok(Point {
        agents: upto,
        memory,
        gauges,
        connect,
        settle,
        settled,
        complete,
        host_cpu,
        handshakes,
        auth_seconds,
    })
}

/// Waits until the host holds `upto` agents with all their connections and parked
/// tunnels and every agent's status says so; the last scrape, and false if the wait hit
/// its bound. Progress every 5 s since `start`.
async fn wait_full(
    fleet: &Fleet,
    host: &mut HostProc,
    upto: usize,
    ports: Ports,
    start: Instant,
) -> anyhow::Result<(HostGauges, bool)> {
    let (sessions, tunnels) = ((upto * fleet.connections) as f64, (upto * fleet.full_idle) as f64);
    let began = Instant::now();
    let mut tick = tokio::time::interval(POLL);
    let mut next_progress = began + Duration::from_secs(5);
    loop {
        tick.tick().await;
        host.check_alive()?;
        let g = metrics::gauges(Ports::addr(ports.admin)).await?;
        let full = fleet.board.full_count(host.gen);
        if g.agents == upto as f64 && g.sessions == sessions && g.tunnels_idle == tunnels && full == upto {
            return Ok((g, true));
        }
        let now = Instant::now();
        if now >= next_progress {
            next_progress = now + Duration::from_secs(5);
            println!(
                "    {:.0} s: {full}/{upto} agents fully up; host: {} agents, {} sessions, {} parked tunnels, \
                 {} handshakes accepted, {} refused",
                start.elapsed().as_secs_f64(),
                g.agents,
                g.sessions,
                g.tunnels_idle,
                g.accepted,
                g.refused
            );
        }
        if began.elapsed() > CONNECT_PATIENCE {
            println!(
                "    WARNING: after {CONNECT_PATIENCE:?} only {full}/{upto} agents are fully up (host: {} agents, \
                 {} sessions, {} parked tunnels); measuring what is there",
                g.agents, g.sessions, g.tunnels_idle
            );
            return Ok((g, false));
        }
    }
}
