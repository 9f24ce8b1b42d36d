//! Workloads found ended (a finished CI job, an expired terminal): their requests are
//! refused with 410 instead of waiting for an agent that will never come back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long an ended workload is remembered (its agents are refused at connect anyway).
const ENDED_WORKLOAD_MEMORY: Duration = Duration::from_secs(3600);
/// Ended workloads remembered at most; the oldest are forgotten first, so a peer that
/// ends workloads in a loop cannot grow this without bound.
const ENDED_WORKLOADS_MAX: usize = 100_000;

/// Workloads (kind, id) found ended, with when.
#[derive(Default)]
pub struct EndedWorkloads {
    ended: Mutex<HashMap<(String, String), Instant>>,
}

impl EndedWorkloads {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a workload has ended: its requests are refused (410) from now on.
    pub fn mark(&self, kind: &str, workload_id: &str) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if ended.len() >= ENDED_WORKLOADS_MAX {
            ended.retain(|_, at| now.duration_since(*at) < ENDED_WORKLOAD_MEMORY);
            if ended.len() >= ENDED_WORKLOADS_MAX {
                if let Some(oldest) = ended.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                    ended.remove(&oldest);
                }
            }
        }
        ended.insert((kind.to_owned(), workload_id.to_owned()), now);
    }

    /// Forgets that a workload ended (its plugin says it is live again).
    pub fn clear(&self, kind: &str, workload_id: &str) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if !ended.is_empty() {
            ended.remove(&(kind.to_owned(), workload_id.to_owned()));
        }
    }

    /// Whether the workload was found ended (within the last hour).
    pub fn contains(&self, kind: &str, workload_id: &str) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_empty() {
            return false;
        }
        ended
            .get(&(kind.to_owned(), workload_id.to_owned()))
            .is_some_and(|at| at.elapsed() < ENDED_WORKLOAD_MEMORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_ended_workload_is_remembered_for_an_hour_then_forgotten() {
        let ended = EndedWorkloads::new();
        ended.mark("ci-job", "42");
        assert!(ended.contains("ci-job", "42"));
        assert!(!ended.contains("ci-job", "43"));
        assert!(!ended.contains("workspace", "42"));
        tokio::time::advance(ENDED_WORKLOAD_MEMORY).await;
        assert!(!ended.contains("ci-job", "42"));
    }

    #[tokio::test(start_paused = true)]
    async fn clearing_a_workload_makes_it_live_again() {
        let ended = EndedWorkloads::new();
        ended.mark("terminal", "t1");
        ended.clear("terminal", "t1");
        assert!(!ended.contains("terminal", "t1"));
    }
}
