//! N agents in this process (`burrow_agent::spawn`, each with its own identity, token
//! and `AgentConfig` at the defaults users run), and what their status watches say:
//! which host generation each one is back on, and since when.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_agent::{AgentConfig, AgentHandle, AgentStatus, ConnState, ServiceSpec};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::host::generation_of;

/// One agent's identity in the host's static agent list.
pub(super) struct Identity {
    /// `b<i>`: `web-b<i>.localhost` reaches its service `web`.
    pub(super) id: String,
    pub(super) token: String,
    pub(super) token_sha256: String,
}

impl Identity {
    pub(super) fn new(i: usize, salt: u64) -> Identity {
        let token = format!("burrow-bench-agents-{salt:016x}-{i}");
        let token_sha256 = hex::encode(Sha256::digest(token.as_bytes()));
        Identity { id: format!("b{i}"), token, token_sha256 }
    }

    pub(super) fn host_name(&self) -> String {
        format!("web-{}.localhost", self.id)
    }
}

/// Where each agent stands, as its status watch last said. Written by one watcher task
/// per agent, read by the suite's polls and the client tasks.
pub(super) struct Board {
    /// The host generation the suite is waiting on (see `host::replica_id`).
    current: AtomicU32,
    epoch: Instant,
    /// Per agent: the last generation it was seen back on (0: none yet). "Back" means a
    /// connection is established with that host and has at least one tunnel parked:
    /// the host can route a request to it.
    back: Vec<AtomicU32>,
    /// Per agent: when it came back on `back[i]`, in µs since `epoch`.
    back_at_us: Vec<AtomicU64>,
    /// Per agent: the last generation on which every connection was established with
    /// its full idle pool parked (`connections × min_idle`).
    full: Vec<AtomicU32>,
    /// Agents back on the current generation, in the order they came back.
    back_list: Mutex<Vec<u32>>,
    /// Per agent: its connection attempts so far (all slots, duplicates included).
    attempts: Vec<AtomicU64>,
}

impl Board {
    fn new(n: usize) -> Board {
        Board {
            current: AtomicU32::new(0),
            epoch: Instant::now(),
            back: (0..n).map(|_| AtomicU32::new(0)).collect(),
            back_at_us: (0..n).map(|_| AtomicU64::new(0)).collect(),
            full: (0..n).map(|_| AtomicU32::new(0)).collect(),
            back_list: Mutex::new(Vec::new()),
            attempts: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// From now on the suite waits on host generation `gen`: agents still on an older
    /// one no longer count as back.
    pub(super) fn set_current(&self, gen: u32) {
        let mut list = self.back_list.lock().unwrap_or_else(|p| p.into_inner());
        self.current.store(gen, Ordering::SeqCst);
        list.clear();
        // Agents that were back on `gen` before it became current (none in practice).
        list.extend(
            (0..self.back.len()).filter(|&i| self.back[i].load(Ordering::SeqCst) == gen).map(|i| i as u32),
        );
    }

    pub(super) fn back_count(&self, gen: u32) -> usize {
        self.back.iter().filter(|g| g.load(Ordering::Relaxed) == gen).count()
    }

    pub(super) fn full_count(&self, gen: u32) -> usize {
        self.full.iter().filter(|g| g.load(Ordering::Relaxed) == gen).count()
    }

    /// When each agent back on `gen` came back, as an instant.
    pub(super) fn back_times(&self, gen: u32) -> Vec<Instant> {
        (0..self.back.len())
            .filter(|&i| self.back[i].load(Ordering::SeqCst) == gen)
            .map(|i| self.epoch + Duration::from_micros(self.back_at_us[i].load(Ordering::SeqCst)))
            .collect()
    }

    /// Every agent's connection attempts so far.
    pub(super) fn attempts(&self) -> Vec<u64> {
        self.attempts.iter().map(|a| a.load(Ordering::SeqCst)).collect()
    }

    /// The agent at position `k` (mod the count) of the first `limit` back on the
    /// current host.
    pub(super) fn pick_back(&self, k: u64, limit: usize) -> Option<u32> {
        let list = self.back_list.lock().unwrap_or_else(|p| p.into_inner());
        let n = list.len().min(limit) as u64;
        (n > 0).then(|| list[(k % n) as usize])
    }

    fn observe(&self, i: usize, status: &AgentStatus, full_idle: usize) {
        self.attempts[i].store(status.connect_attempts, Ordering::SeqCst);
        let mut back_on = None;
        for c in &status.connections {
            if let ConnState::Connected { host_replica_id, .. } = &c.state {
                if c.idle_streams > 0 {
                    back_on = back_on.max(generation_of(host_replica_id));
                }
            }
        }
        if let Some(gen) = back_on {
            if self.back[i].load(Ordering::SeqCst) != gen {
                let us = self.epoch.elapsed().as_micros() as u64;
                self.back_at_us[i].store(us, Ordering::SeqCst);
                self.back[i].store(gen, Ordering::SeqCst);
                let mut list = self.back_list.lock().unwrap_or_else(|p| p.into_inner());
                if self.current.load(Ordering::SeqCst) == gen {
                    list.push(i as u32);
                }
            }
        }
        let gens: Vec<Option<u32>> =
            status.connections.iter().map(|c| c.state.host_replica_id().and_then(generation_of)).collect();
        if let Some(Some(gen)) = gens.first() {
            if gens.iter().all(|g| *g == Some(*gen)) && status.idle_streams >= full_idle {
                self.full[i].store(*gen, Ordering::Relaxed);
            }
        }
    }
}

/// What the suite changes in the agents' config (`None`: the library's default).
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub(super) connections: Option<usize>,
    pub(super) min_idle: Option<usize>,
}

/// The agents and their watchers.
pub(super) struct Fleet {
    pub(super) board: Arc<Board>,
    handles: Vec<AgentHandle>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Parked tunnels of an agent with every connection up and its idle floor filled.
    pub(super) full_idle: usize,
    /// Connections per agent (the library's default).
    pub(super) connections: usize,
}

impl Fleet {
    pub(super) fn new(capacity: usize) -> Fleet {
        Fleet {
            board: Arc::new(Board::new(capacity)),
            handles: Vec::with_capacity(capacity),
            watchers: Vec::with_capacity(capacity),
            full_idle: 0,
            connections: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Starts agents `len()..upto`, each offering `web` = `service_addr`, dialing `url`,
    /// shaped by `shape`.
    pub(super) fn spawn_upto(
        &mut self,
        upto: usize,
        identities: &[Identity],
        url: &str,
        service_addr: &str,
        shape: Shape,
    ) -> anyhow::Result<()> {
        let first = self.handles.len();
        for (i, identity) in identities.iter().enumerate().take(upto).skip(first) {
            let mut config = AgentConfig::new(url, identity.token.clone())?;
            config.services = vec![ServiceSpec::parse(&format!("web={service_addr}"))?];
            // Would be `$HOSTNAME` (the same for all) or random; a stable one per agent
            // keeps the host's log readable. Everything else stays at its default.
            config.replica_id = format!("bench-agent-{i}");
            if let Some(c) = shape.connections {
                config.connections = c;
            }
            if let Some(m) = shape.min_idle {
                config.min_idle = m;
            }
            self.connections = config.connections;
            self.full_idle = config.connections * config.min_idle;
            let full_idle = self.full_idle;
            let handle = burrow_agent::spawn(config);
            let mut status = handle.status();
            let board = self.board.clone();
            self.watchers.push(tokio::spawn(async move {
                loop {
                    board.observe(i, &status.borrow_and_update(), full_idle);
                    if status.changed().await.is_err() {
                        return;
                    }
                }
            }));
            self.handles.push(handle);
        }
        Ok(())
    }

    /// Drops every agent at once (no grace: nothing is in flight).
    pub(super) fn abort(self) {
        for h in self.handles {
            h.abort();
        }
        for w in self.watchers {
            w.abort();
        }
    }
}
