//! Create-to-connected: from sending `CreateWorkload` until the control API shows the
//! workload's agent connected, with the agent spawned the moment its token arrives.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use burrow_agent::ConnState;

use super::{ms_between, rpc, spawn_agent, unix_ns, Setup, PATIENCE, POLL};

/// One workload's timings, in ms from the moment before `CreateWorkload` was sent.
pub(super) struct CreateSample {
    /// The `CreateWorkload` call (the token is back).
    pub(super) create_rpc: f64,
    /// The agent's status watch reported `Connected`.
    pub(super) agent_connected: f64,
    /// The first `GetWorkload` answer showing `WORKLOAD_STATE_CONNECTED` arrived.
    pub(super) api_connected: f64,
    /// The replica's `connections[].since_ms` (when it recorded the agent as held; the
    /// host's clock, whole ms) minus the wall clock when the create was sent.
    pub(super) host_since: f64,
    /// `GetWorkload` calls until it showed CONNECTED.
    pub(super) polls: u32,
    /// The agent was already `Connected` when its status was first read: its instant
    /// is late.
    pub(super) seen_late: bool,
}

fn connected(state: &ConnState) -> bool {
    matches!(state, ConnState::Connected { .. })
}

/// Creates workload `id` through the setup's control replica, spawns its agent with the
/// returned token against the setup's agent replica, polls `GetWorkload` until it shows
/// the agent connected; then (untimed) stops the agent and terminates the workload.
pub(super) async fn create_once(setup: &mut Setup, web: &str, id: &str) -> anyhow::Result<CreateSample> {
    let sent_ns = unix_ns();
    let sent = Instant::now();
    let token = rpc::create(&mut setup.control, id).await?;
    let created = Instant::now();
    let agent = spawn_agent(&setup.agent_url, &token, web, None);
    let mut status = agent.status();
    let seen_late = connected(&status.borrow().state);
    let watch = tokio::spawn(async move {
        loop {
            if connected(&status.borrow_and_update().state) {
                return Some(Instant::now());
            }
            if status.changed().await.is_err() {
                return None;
            }
        }
    });

    let mut polls = 0u32;
    let (seen, since_ms) = loop {
        let workload = rpc::get(&mut setup.control, id).await?;
        polls += 1;
        if workload.state == rpc::WORKLOAD_STATE_CONNECTED {
            if let Some(since) = workload.since_ms.first() {
                break (Instant::now(), *since);
            }
        }
        if sent.elapsed() > PATIENCE {
            bail!(
                "workload {id} on {}: not CONNECTED after {PATIENCE:?} (state {})",
                setup.name,
                workload.state
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let agent_at = tokio::time::timeout(PATIENCE, watch)
        .await
        .context("the agent's status never showed Connected")??
        .context("the agent stopped before connecting")?;

    agent.shutdown().await;
    rpc::terminate(&mut setup.control, id).await?;
    let host_since = (i128::from(since_ms) * 1_000_000 - sent_ns) as f64 / 1e6;
    Ok(CreateSample {
        create_rpc: ms_between(sent, created),
        agent_connected: ms_between(sent, agent_at),
        api_connected: ms_between(sent, seen),
        host_since,
        polls,
        seen_late,
    })
}

/// A pause between samples, so the previous agent's session has ended on every replica
/// before the next create (not timed).
pub(super) const SETTLE: Duration = Duration::from_millis(50);
