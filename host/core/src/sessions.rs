//! The agent sessions open on this replica, which agents they serve, and who is told
//! when an agent appears or goes away.
//!
//! Sessions publish [`AgentPresence`] events instead of calling into whoever cares (the
//! cluster announces agents in Redis; a future control plane may count them), so this
//! module depends on none of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::registry::Session;

/// Told when the first session of an agent opens here and when its last one closes.
pub trait AgentPresence: Send + Sync {
    /// `agent_id` gained its first session on this replica.
    fn agent_up(&self, agent_id: &str);
    /// `agent_id`'s last session on this replica closed.
    fn agent_down(&self, agent_id: &str);
}

/// An agent's labels, shared by its sessions.
type AgentLabels = Arc<[(String, String)]>;

/// Live agent sessions by session id, and per-agent counts and labels.
#[derive(Default)]
pub struct AgentSessions {
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Agent ids with at least one session here, with the session count.
    agents: Mutex<HashMap<String, usize>>,
    /// Labels of each agent held here (from its latest session's identity).
    labels: Mutex<HashMap<String, AgentLabels>>,
    observers: RwLock<Vec<Arc<dyn AgentPresence>>>,
}

impl AgentSessions {
    /// No sessions, no observers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an observer of agents appearing and going away. Agents already held are not
    /// replayed: observers are added while the host starts, before the agent port opens.
    pub fn observe(&self, observer: Arc<dyn AgentPresence>) {
        self.observers.write().unwrap_or_else(|p| p.into_inner()).push(observer);
    }

    /// Records a new agent session (and tells the observers if it is the agent's first
    /// session here).
    pub fn opened(&self, session: &Arc<Session>) {
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.session_id.clone(), session.clone());
        let first = {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            let n = agents.entry(session.agent_id.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if let Some(identity) = &session.identity {
            self.labels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(session.agent_id.clone(), identity.identity.labels.clone().into());
        }
        if first {
            for observer in self.observers.read().unwrap_or_else(|p| p.into_inner()).iter() {
                observer.agent_up(&session.agent_id);
            }
        }
    }

    /// Forgets an agent session.
    pub fn closed(&self, session: &Session) {
        let removed = self.sessions.write().unwrap_or_else(|p| p.into_inner()).remove(&session.session_id);
        if removed.is_none() {
            return;
        }
        let last = {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            match agents.get_mut(&session.agent_id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    agents.remove(&session.agent_id);
                    self.labels.lock().unwrap_or_else(|p| p.into_inner()).remove(&session.agent_id);
                    true
                }
                None => false,
            }
        };
        if last {
            for observer in self.observers.read().unwrap_or_else(|p| p.into_inner()).iter() {
                observer.agent_down(&session.agent_id);
            }
        }
    }

    /// The session with this id.
    pub fn get(&self, session_id: &str) -> Option<Arc<Session>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner()).get(session_id).cloned()
    }

    /// The open agent sessions.
    pub fn snapshot(&self) -> Vec<Arc<Session>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// True while at least one session of `agent_id` is open on this replica.
    pub fn holds_agent(&self, agent_id: &str) -> bool {
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).contains_key(agent_id)
    }

    /// Sessions of `agent_id` open on this replica.
    pub fn sessions_of(&self, agent_id: &str) -> usize {
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).get(agent_id).copied().unwrap_or(0)
    }

    /// Agent identities with a session here, and the number of sessions.
    pub fn counts(&self) -> (usize, usize) {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        (agents.len(), agents.values().sum())
    }

    /// The labels of one of `agent_id`'s sessions here (empty when it has none here).
    pub fn agent_labels(&self, agent_id: &str) -> Vec<(String, String)> {
        self.labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent_id)
            .map(|l| l.to_vec())
            .unwrap_or_default()
    }
}
