//! Forwarded vs local: the same small GET through the agent's replica and through the
//! other one, with the direct-to-workload baseline.

use std::time::Duration;

use burrow_tests::clients::{self, Client, Mode};
use burrow_tests::wait_connected;

use super::{agent_on, metric, Pair};
use crate::{latency_run, median, Args, HOST};

/// Per-run p50/p99 of one path, in µs.
#[derive(Default)]
pub(super) struct Series {
    pub(super) p50: Vec<f64>,
    pub(super) p99: Vec<f64>,
}

impl Series {
    pub(super) async fn run(&mut self, client: &mut Client, n: usize) {
        let l = latency_run(client, HOST, n).await;
        self.p50.push(l.p50_us);
        self.p99.push(l.p99_us);
    }
}

pub(super) struct ForwardFigures {
    pub(super) direct: (f64, f64),
    pub(super) local: (f64, f64),
    pub(super) forwarded: (f64, f64),
}

/// One way of running the forwarded-vs-local comparison.
pub(super) struct Variant {
    /// Extra `[ingress]` TOML for both replicas.
    pub(super) ingress_extra: &'static str,
    /// Requests per path per run.
    pub(super) requests: usize,
    /// Requests per path before the measured runs.
    pub(super) warm_up: usize,
    /// Start a fresh agent before each run, so tunnels a run leaves open (the leak check
    /// below reports them) cannot use up the agent's `max_streams` and fail later runs.
    pub(super) fresh_agent_per_run: bool,
}

/// Direct, local (r0) and forwarded (r1) small GETs, interleaved run by run, with the
/// order of local and forwarded alternating so neither always runs second.
pub(super) async fn forward_latency(args: &Args, v: &Variant) -> anyhow::Result<ForwardFigures> {
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
