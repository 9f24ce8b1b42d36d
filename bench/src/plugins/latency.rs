//! Per-call latency of each path (p50 / p90 / p99 per run), and the native config-parse
//! cost a fresh instance repeats.

use std::time::{Duration, Instant};

use burrow_host::plugins::types::Principal;

use super::decide::{authorize_request, route_request, user_request, Decider, Input};
use super::USER;
use crate::{median, percentile};

/// Picks one measurement out of a path's [`Latencies`].
pub(super) type Column = fn(&Latencies) -> &Dist;

/// Per-run p50 / p90 / p99 of one measurement, in µs.
#[derive(Default)]
pub(super) struct Dist {
    pub(super) p50: Vec<f64>,
    pub(super) p90: Vec<f64>,
    pub(super) p99: Vec<f64>,
}

impl Dist {
    pub(super) fn add(&mut self, mut samples: Vec<Duration>) {
        samples.sort();
        self.p50.push(percentile(&samples, 0.5));
        self.p90.push(percentile(&samples, 0.9));
        self.p99.push(percentile(&samples, 0.99));
    }

    /// Medians over the runs: p50, p90, p99.
    pub(super) fn medians(&self) -> [f64; 3] {
        [median(self.p50.clone()), median(self.p90.clone()), median(self.p99.clone())]
    }
}

#[derive(Default)]
pub(super) struct Latencies {
    pub(super) resolve: Dist,
    pub(super) authorize_user: Dist,
    pub(super) decision: Dist,
    pub(super) authenticate_alone: Dist,
    pub(super) authorize_alone: Dist,
    pub(super) route: Dist,
}

/// `n` calls of `call`, into `dist`.
pub(super) async fn calls<F, Fut>(n: usize, dist: &mut Dist, mut call: F) -> anyhow::Result<()>
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

pub(super) async fn latency_run(
    decider: &Decider,
    input: &Input,
    n: usize,
    into: &mut Latencies,
) -> anyhow::Result<()> {
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

/// Time per parse of `json` by `parse`, p50 over `n` parses, in µs.
pub(super) fn parse_cost<T>(
    n: usize,
    json: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<f64> {
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
