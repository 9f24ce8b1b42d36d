//! Admission's view of control-plane workloads: their agents' labels on every replica,
//! or that they have ended, cached briefly.

use burrow_host_core::admission::DirectoryAnswer;
use burrow_host_time::now_ms;

use super::{Lifecycle, DIRECTORY_MAX, DIRECTORY_TTL};

impl burrow_host_core::admission::WorkloadDirectory for Lifecycle {
    fn labels<'a>(
        &'a self,
        kind: &'a str,
        workload_id: &'a str,
    ) -> burrow_host_core::admission::LabelsFuture<'a> {
        Box::pin(async move {
            if let Some((at, answer, expires_at)) =
                self.directory.lock().unwrap_or_else(|p| p.into_inner()).get(workload_id)
            {
                if at.elapsed() < DIRECTORY_TTL {
                    if *expires_at != 0 && now_ms() >= *expires_at {
                        return DirectoryAnswer::Ended;
                    }
                    return answer.clone();
                }
            }
            let (answer, expires_at) = match self.store.get(workload_id).await {
                Ok(Some(record)) if record.kind == kind => match record.is_over(now_ms()) {
                    false => (DirectoryAnswer::Live(record.agent_labels()), record.expires_at),
                    true => (DirectoryAnswer::Ended, 0),
                },
                Ok(_) => (DirectoryAnswer::Unknown, 0),
                // Not cached: the next request asks again.
                Err(e) => {
                    tracing::debug!(workload_id, error = %e, "workload directory lookup failed");
                    return DirectoryAnswer::Unknown;
                }
            };
            let mut directory = self.directory.lock().unwrap_or_else(|p| p.into_inner());
            if directory.len() >= DIRECTORY_MAX {
                directory.clear();
            }
            directory
                .insert(workload_id.to_owned(), (tokio::time::Instant::now(), answer.clone(), expires_at));
            answer
        })
    }
}
