//! Which replica holds each control-plane workload's agent, and since when.

use std::sync::Arc;

use burrow_host_core::sessions::AgentPresence;
use burrow_host_time::now_ms;

use super::Lifecycle;
use crate::store::Store;

/// Keeps the "where is its agent held" record of managed workloads.
pub struct PresenceObserver(pub Arc<Lifecycle>);

impl AgentPresence for PresenceObserver {
    fn agent_up(&self, agent_id: &str) {
        // The agent's labels are kept per agent: no scan of every session.
        let labels = self.0.sessions.agent_labels(agent_id);
        if !labels.iter().any(|(k, v)| k == crate::record::MANAGED_LABEL && v == "true") {
            return;
        }
        let since = now_ms();
        self.0.presence.lock().unwrap_or_else(|p| p.into_inner()).insert(agent_id.to_owned(), since);
        if let Store::Redis(redis) = &self.0.store {
            let (redis, id, replica) = (redis.clone(), agent_id.to_owned(), self.0.replica_id.clone());
            tokio::spawn(async move {
                if let Err(e) = redis.workload_connection(&id, &replica, Some(since)).await {
                    tracing::debug!(id, error = %e, "could not record the workload's connection");
                }
            });
        }
    }

    fn agent_down(&self, agent_id: &str) {
        let was = self.0.presence.lock().unwrap_or_else(|p| p.into_inner()).remove(agent_id);
        if was.is_none() {
            return;
        }
        if let Store::Redis(redis) = &self.0.store {
            let (redis, id, replica) = (redis.clone(), agent_id.to_owned(), self.0.replica_id.clone());
            tokio::spawn(async move {
                if let Err(e) = redis.workload_connection(&id, &replica, None).await {
                    tracing::debug!(id, error = %e, "could not clear the workload's connection");
                }
            });
        }
    }
}
