//! Agents' labels in the registry, so a replica that does not hold an agent decides about
//! it as the one that does: each registration carries the agent's labels (from its
//! sessions here), and admission asks for those of an agent held elsewhere.

use std::sync::Arc;

use burrow_host_core::admission::{AgentLabelSource, AgentLabelsFuture};
use burrow_host_core::sessions::AgentSessions;

use super::{store, Cluster};

/// Remote agents whose labels a replica keeps at once; beyond it the cache starts over.
const MAX_REMOTE_LABELS: usize = 16_384;

impl Cluster {
    /// Hears of this replica's agent sessions: registers their agents (with their labels)
    /// as they come and go.
    pub fn attach(self: &Arc<Self>, sessions: &Arc<AgentSessions>) {
        let _ = self.sessions.set(sessions.clone());
        sessions.observe(self.clone());
    }

    /// `agents` with the labels of their sessions here.
    pub(crate) fn labelled(&self, agents: &[String]) -> Vec<(String, store::AgentLabels)> {
        agents
            .iter()
            .map(|agent| {
                let labels = self.sessions.get().map(|s| s.agent_labels(agent)).unwrap_or_default();
                (agent.clone(), labels.into())
            })
            .collect()
    }
}

impl AgentLabelSource for Cluster {
    /// From Redis, where the replicas holding the agent registered its labels, cached for
    /// one heartbeat (labels change only when an agent reconnects with another identity).
    /// Redis unreachable: no labels, as for an agent connected nowhere.
    fn agent_labels<'a>(&'a self, agent_id: &'a str) -> AgentLabelsFuture<'a> {
        Box::pin(async move {
            let now = tokio::time::Instant::now();
            if let Some((at, labels)) =
                self.remote_labels.lock().unwrap_or_else(|p| p.into_inner()).get(agent_id)
            {
                if now.duration_since(*at) < self.config.heartbeat {
                    return labels.to_vec();
                }
            }
            let labels = match self.store.agent_labels(agent_id).await {
                Ok(labels) => labels.unwrap_or_else(|| Vec::new().into()),
                Err(e) => {
                    self.redis_failed("agent_labels", &e);
                    return Vec::new();
                }
            };
            let mut cache = self.remote_labels.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_REMOTE_LABELS {
                cache.retain(|_, (at, _)| now.duration_since(*at) < self.config.heartbeat);
                if cache.len() >= MAX_REMOTE_LABELS {
                    cache.clear();
                }
            }
            cache.insert(agent_id.to_owned(), (now, labels.clone()));
            labels.to_vec()
        })
    }
}
