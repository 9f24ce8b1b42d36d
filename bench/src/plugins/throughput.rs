//! Decision throughput: decisions per second of wall time and CPU per decision when
//! several tasks share the work.

use std::sync::Arc;
use std::time::Instant;

use super::decide::{Decider, Input};
use crate::procfs::cpu_seconds;

/// Per path: decisions/s and CPU µs per decision of every run.
pub(super) type ThroughputSeries = [(Vec<f64>, Vec<Option<f64>>); 3];

/// Runs shorter than this in CPU time get no CPU figure: `/proc` counts in 10 ms ticks.
pub(super) const MIN_CPU_SECONDS: f64 = 0.2;

pub(super) struct Throughput {
    pub(super) per_second: f64,
    /// `None` when the run used less than [`MIN_CPU_SECONDS`].
    pub(super) cpu_us_per_decision: Option<f64>,
}

/// `tasks` tasks share `decisions` decisions.
pub(super) async fn throughput_run(
    decider: &Decider,
    tasks: usize,
    decisions: usize,
) -> anyhow::Result<Throughput> {
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
