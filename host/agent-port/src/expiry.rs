//! Periodically asks each connected workload's plugin whether the workload has ended
//! (`workload.expired`), and ends the sessions of those that have: their agents get a
//! GoAway, are refused if they reconnect, and users get 410.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use burrow_host_core::context::HostContext;
use burrow_host_core::registry::Session;
use burrow_host_plugins::types::{AgentAuthOutcome, ExpiryRequest};

/// Runs until `shutdown`, checking every `interval`.
pub async fn run(ctx: Arc<HostContext>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; agents were just checked at connect.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        check_once(&ctx).await;
        recheck_agents(&ctx).await;
    }
}

/// Asks the agent authenticator again about every session it did not accept itself
/// (the authorizer or its config was swapped since): a token it no longer accepts ends
/// its sessions, and their traffic, as a revoked one. Returns how many were ended.
pub async fn recheck_agents(ctx: &Arc<HostContext>) -> usize {
    let current = ctx.plugins.agent_authenticator_version();
    let mut revoked = 0;
    for session in ctx.sessions.snapshot() {
        let Some(identity) = &session.identity else { continue };
        let hello = {
            let recheck = identity.recheck.lock().unwrap_or_else(|p| p.into_inner());
            match recheck.as_ref() {
                Some(r) if r.accepted_by != current => r.hello.clone(),
                _ => continue,
            }
        };
        match ctx.plugins.authenticate_agent(&hello).await {
            Ok(AgentAuthOutcome::Accepted(again)) if again.agent_id == session.agent_id => {
                if let Some(r) = identity.recheck.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    r.accepted_by = current.clone();
                }
            }
            Ok(outcome) => {
                let reason = match outcome {
                    AgentAuthOutcome::Rejected(reason) => {
                        format!("the agent token is no longer accepted: {reason}")
                    }
                    AgentAuthOutcome::Accepted(_) => "the agent token now names another agent".to_owned(),
                };
                tracing::info!(agent_id = %session.agent_id, remote = %session.remote_addr, %reason, "agent revoked by the authorizer; ending its session");
                session.retire();
                identity.end(burrow_proto::pb::GoAwayCode::TokenRevoked, reason);
                revoked += 1;
            }
            // A failing authorizer must not end every agent; new connections fail closed.
            Err(e) => {
                tracing::warn!(agent_id = %session.agent_id, "re-checking the agent after an authorizer change failed: {e}")
            }
        }
    }
    revoked
}

/// One pass: one `expired` call per (kind, workload), however many sessions it has.
pub async fn check_once(ctx: &Arc<HostContext>) -> usize {
    let mut workloads: HashMap<(String, String), Vec<Arc<Session>>> = HashMap::new();
    for session in ctx.sessions.snapshot() {
        if let Some(id) = &session.identity {
            let key = (id.identity.workload_kind.clone(), id.identity.workload_id.clone());
            workloads.entry(key).or_default().push(session);
        }
    }
    let mut ended = 0;
    for ((kind, workload_id), sessions) in workloads {
        let first = sessions[0].identity.as_ref().expect("grouped by identity");
        let request = ExpiryRequest {
            workload_id: workload_id.clone(),
            agent_id: first.identity.agent_id.clone(),
            connected_at: sessions
                .iter()
                .filter_map(|s| s.identity.as_ref())
                .map(|i| i.connected_at)
                .min()
                .unwrap_or(0),
            agent_labels: first.identity.labels.clone(),
        };
        match ctx.plugins.expired(&kind, &request).await {
            Ok(true) => {
                tracing::info!(kind, workload = %workload_id, sessions = sessions.len(), "workload has ended; disconnecting its agents");
                ctx.ended.mark(&kind, &workload_id);
                for session in &sessions {
                    if let Some(id) = &session.identity {
                        id.end(burrow_proto::pb::GoAwayCode::WorkloadEnded, "the workload has ended");
                    }
                }
                ended += 1;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(kind, workload = %workload_id, "workload expiry check failed: {err}"),
        }
    }
    ended
}
