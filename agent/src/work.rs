//! The work queue (`--work-hook`): one loop per agent process long-polls `GetWork` on
//! any live session, runs each item through the hook, and reports it with
//! `UpdateStatus`.
//!
//! Items run one at a time and in order: the next `GetWork` goes out only once the final
//! status was accepted. A report that cannot get through is retried (on another session
//! when there is one) until it does or the agent stops; an item never acknowledged is
//! handed out again by the host, so delivery is at least once and the hook sees the
//! count in `BURROW_WORK_DELIVERY`.

use std::time::Duration;

use burrow_proto::pb::{self, WorkItemState};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, BackoffState};
use crate::final_reason;
use crate::hook::{self, HookEnd, HookInput, WorkHook};
use crate::session::describe_status;
use crate::shared::Shared;

/// How long the host may hold a `GetWork` open with nothing queued.
pub(crate) const WAIT_MS: u32 = 30_000;
/// Our deadline for a `GetWork` beyond `WAIT_MS`: room for the answer to travel.
const POLL_MARGIN: Duration = Duration::from_secs(5);
/// One `UpdateStatus` call's limit.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// An empty answer sooner than this (a host that does not hold the poll) is followed by
/// a pause, so polling never spins.
const MIN_POLL: Duration = Duration::from_secs(1);

/// Failed calls retry from 1 s, doubling to 30 s.
const RETRY: Backoff = crate::backoff::CALL_RETRY;

/// How a failed call is handled.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The host refused the agent for good (it has been told to stop).
    Final,
    /// The host has no work queue for this agent: stop asking.
    Unsupported(String),
    /// The host refused this request and will refuse it again.
    Rejected(String),
    /// Worth retrying, on another session if there is one.
    Transient(String),
}

/// What a failed call means. `item_call` is true for `UpdateStatus`, where FAILED_
/// PRECONDITION is about the item (already acknowledged, say), not about the agent.
fn classify(shared: &Shared, status: &Status, item_call: bool) -> Failure {
    if let Some(reason) = final_reason::from_status(status) {
        shared.finish(reason, status.message().to_owned());
        return Failure::Final;
    }
    let described = describe_status(status);
    match status.code() {
        Code::Unimplemented => Failure::Unsupported(described),
        Code::FailedPrecondition if !item_call => Failure::Unsupported(described),
        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument | Code::OutOfRange => {
            Failure::Rejected(described)
        }
        _ => Failure::Transient(described),
    }
}

/// Sleep `delay` unless `stop` fires first; false if it did.
async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = sleep(delay) => true,
    }
}

/// Run work items until the agent stops or the host says it has no queue for it.
pub(crate) async fn run(shared: &Shared, hook: &WorkHook) {
    let stop = &shared.stop;
    info!(program = %hook.program.display(), timeout = ?hook.timeout, "asking the host for work items");
    let mut backoff = BackoffState::new(RETRY);
    // The slot whose call failed last: the next call prefers another.
    let mut avoid = None;
    loop {
        let (slot, session) = tokio::select! {
            _ = stop.cancelled() => return,
            s = shared.live_session(avoid) => s,
        };
        let mut request = session.request(shared, pb::GetWorkRequest { wait_ms: WAIT_MS });
        let deadline = Duration::from_millis(u64::from(WAIT_MS)) + POLL_MARGIN;
        request.set_timeout(deadline);
        let mut client = session.client.clone();
        let asked = Instant::now();
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = timeout(deadline, client.get_work(request)) => r,
        };
        let failure = match answer {
            Ok(Ok(response)) => {
                backoff.reset();
                avoid = None;
                let go_on = match response.into_inner().item {
                    Some(item) => handle(shared, hook, item, stop).await,
                    None if asked.elapsed() < MIN_POLL => pause(MIN_POLL, stop).await,
                    None => true,
                };
                if !go_on {
                    return;
                }
                continue;
            }
            Ok(Err(status)) => classify(shared, &status, false),
            Err(_) => Failure::Transient(format!("no answer to GetWork within {deadline:?}")),
        };
        match failure {
            Failure::Final => return,
            Failure::Unsupported(error) => {
                warn!(%error, "the host has no work queue for this agent; not asking for work again");
                return;
            }
            Failure::Rejected(error) | Failure::Transient(error) => {
                avoid = Some(slot);
                let delay = backoff.next_delay();
                warn!(%error, retry_in = ?delay, "asking the host for work failed");
                if !pause(delay, stop).await {
                    return;
                }
            }
        }
    }
}

/// Run one item and report it. False when the agent is stopping.
async fn handle(shared: &Shared, hook: &WorkHook, item: pb::WorkItem, stop: &CancellationToken) -> bool {
    let pb::WorkItem { item_id, payload, delivery } = item;
    if item_id.is_empty() {
        // It cannot be acknowledged, so it would come back at once: pause like a failure.
        warn!("the host sent a work item without an id; ignoring it");
        return pause(RETRY.max, stop).await;
    }
    info!(item_id = %item_id, delivery, bytes = payload.len(), "running work item");
    match report(shared, &item_id, WorkItemState::Running, String::new(), stop).await {
        Report::Accepted => {}
        Report::Rejected => {
            // The host does not want this item run (acknowledged meanwhile, say). Pause
            // so that a host that keeps handing it out cannot make the agent spin.
            return pause(RETRY.initial, stop).await;
        }
        Report::Stopped => return false,
    }
    let started = Instant::now();
    let input = HookInput { item_id: &item_id, delivery, payload: &payload };
    let run = hook::run(hook, input, stop).await;
    if run.end == HookEnd::Cancelled {
        info!(item_id = %item_id, "the agent is stopping; the item is left for the host to hand out again");
        return false;
    }
    let state = if run.succeeded() { WorkItemState::Succeeded } else { WorkItemState::Failed };
    let outcome = run.failure().unwrap_or_else(|| "succeeded".to_owned());
    info!(item_id = %item_id, took = ?started.elapsed(), %outcome, "work item finished");
    match report(shared, &item_id, state, run.detail(), stop).await {
        Report::Accepted => true,
        // Unacknowledged, it may come straight back: never re-run it in a tight loop.
        Report::Rejected => pause(RETRY.initial, stop).await,
        Report::Stopped => false,
    }
}

/// How a status report went.
enum Report {
    Accepted,
    /// The host refused it for good; retrying cannot help.
    Rejected,
    /// The agent is stopping (or was refused for good).
    Stopped,
}

/// Send an `UpdateStatus` until the host accepts or rejects it.
async fn report(
    shared: &Shared,
    item_id: &str,
    state: WorkItemState,
    detail: String,
    stop: &CancellationToken,
) -> Report {
    let mut backoff = BackoffState::new(RETRY);
    let mut avoid = None;
    loop {
        let (slot, session) = tokio::select! {
            _ = stop.cancelled() => return Report::Stopped,
            s = shared.live_session(avoid) => s,
        };
        let update = pb::UpdateStatusRequest {
            item_id: item_id.to_owned(),
            state: state as i32,
            detail: detail.clone(),
        };
        let mut request = session.request(shared, update);
        request.set_timeout(STATUS_TIMEOUT);
        let mut client = session.client.clone();
        let answer = tokio::select! {
            _ = stop.cancelled() => return Report::Stopped,
            r = timeout(STATUS_TIMEOUT, client.update_status(request)) => r,
        };
        let error = match answer {
            Ok(Ok(_)) => {
                debug!(item_id, state = state.as_str_name(), "work item status accepted");
                return Report::Accepted;
            }
            Ok(Err(status)) => match classify(shared, &status, true) {
                Failure::Final => return Report::Stopped,
                Failure::Rejected(error) | Failure::Unsupported(error) => {
                    warn!(item_id, state = state.as_str_name(), %error, "the host refused the work item's status");
                    return Report::Rejected;
                }
                Failure::Transient(error) => error,
            },
            Err(_) => format!("no answer within {STATUS_TIMEOUT:?}"),
        };
        avoid = Some(slot);
        let delay = backoff.next_delay();
        warn!(item_id, state = state.as_str_name(), %error, retry_in = ?delay, "could not report the work item's status");
        if !pause(delay, stop).await {
            return Report::Stopped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::{MetadataMap, MetadataValue};

    fn shared() -> std::sync::Arc<Shared> {
        let config = crate::AgentConfig::new("grpc://127.0.0.1:1", "tok").unwrap();
        let (status, _) = tokio::sync::watch::channel(crate::AgentStatus::default());
        Shared::new(&config, status, CancellationToken::new(), CancellationToken::new()).unwrap()
    }

    #[test]
    fn failures_are_classified_per_call() {
        let s = shared();
        let st = |code| Status::new(code, "x");
        assert!(matches!(classify(&s, &st(Code::Unimplemented), false), Failure::Unsupported(_)));
        assert!(matches!(classify(&s, &st(Code::FailedPrecondition), false), Failure::Unsupported(_)));
        assert!(matches!(classify(&s, &st(Code::FailedPrecondition), true), Failure::Rejected(_)));
        assert!(matches!(classify(&s, &st(Code::NotFound), true), Failure::Rejected(_)));
        for code in [Code::Unavailable, Code::Unauthenticated, Code::Internal, Code::DeadlineExceeded] {
            assert!(matches!(classify(&s, &st(code), false), Failure::Transient(_)), "{code:?}");
        }
        assert!(!s.stop.is_cancelled());
        assert!(s.final_refusal().is_none());
    }

    #[test]
    fn a_final_refusal_stops_the_agent() {
        let s = shared();
        let mut md = MetadataMap::new();
        md.insert(burrow_proto::FINAL_METADATA, MetadataValue::from_static("workload-ended"));
        let status = Status::with_metadata(Code::FailedPrecondition, "the workload expired", md);
        assert_eq!(classify(&s, &status, false), Failure::Final);
        assert!(s.stop.is_cancelled());
        assert_eq!(
            s.final_refusal(),
            Some((crate::FinalReason::WorkloadEnded, "the workload expired".to_owned()))
        );
    }
}
