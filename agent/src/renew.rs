//! Renewing a workload token, per session.
//!
//! The host ties each session's expiry to the token it renewed last, and extends only the
//! session named in `burrow-session` on `RenewToken`. So every session renews itself,
//! scheduled by the token it is on (the one it said `Hello` with, then each one its own
//! renewal returned), while every new RPC of any session presents the newest token
//! ([`Shared::renewed`]). The host answers each call with a fresh token, so sessions that
//! renew at nearly the same time cost one small RPC each and nothing else.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::pb;
use tokio::time::{sleep, Instant};
use tonic::Code;
use tracing::{info, warn};

use crate::backoff::{Backoff, BackoffState};
use crate::final_reason::{self, FinalReason};
use crate::session::describe_status;
use crate::shared::{Session, Shared};
use crate::token::CurrentToken;

/// Failed renewals retry from 1 s, doubling to 30 s: soon enough that a token with
/// minutes left survives a short host hiccup, rarely enough not to load a struggling host.
const RETRY: Backoff = crate::backoff::CALL_RETRY;

/// One `RenewToken` call's limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Long sleeps are cut into pieces this long, so a machine that was suspended (the
/// monotonic clock stood still) re-checks the wall clock soon after it wakes.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Keep `session` on a valid token for as long as it lives. Resolves only when the host
/// refuses the renewal for good; with a token that is never renewed it never resolves.
pub(crate) async fn run(
    shared: &Shared,
    session: &Session,
    token: Arc<CurrentToken>,
) -> (FinalReason, String) {
    let mut token = token;
    loop {
        wait_until_due(&token).await;
        match renew(shared, session, &token).await {
            ControlFlow::Continue(renewed) => token = renewed,
            ControlFlow::Break(refusal) => return refusal,
        }
    }
}

/// Sleep until `token` is due for renewal; forever if it never is.
async fn wait_until_due(token: &CurrentToken) {
    loop {
        match token.schedule() {
            None => std::future::pending::<()>().await,
            Some(s) if s.renew_in.is_zero() => return,
            Some(s) => sleep(s.renew_in.min(MAX_SLEEP)).await,
        }
    }
}

/// Renew until it works, or the host says it never will.
async fn renew(
    shared: &Shared,
    session: &Session,
    old: &CurrentToken,
) -> ControlFlow<(FinalReason, String), Arc<CurrentToken>> {
    let mut backoff = BackoffState::new(RETRY);
    let mut warned_expired = false;
    loop {
        let mut client = session.client.clone();
        let request = session.request(shared, pb::RenewAgentTokenRequest {});
        let sent = Instant::now();
        let error = match tokio::time::timeout(CALL_TIMEOUT, client.renew_token(request)).await {
            Ok(Ok(response)) => {
                let answer = response.into_inner();
                match accept(answer, sent) {
                    Ok(token) => {
                        let token = Arc::new(token);
                        log_renewed(&token);
                        shared.renewed(CurrentToken::clone(&token));
                        return ControlFlow::Continue(token);
                    }
                    Err(e) => e,
                }
            }
            Ok(Err(status)) => {
                if let Some(reason) = final_reason::from_status(&status) {
                    return ControlFlow::Break((reason, status.message().to_owned()));
                }
                if status.code() == Code::Unimplemented {
                    warn!(
                        error = %describe_status(&status),
                        "the host cannot renew agent tokens; this connection ends when the token expires"
                    );
                    return std::future::pending().await;
                }
                describe_status(&status)
            }
            Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        let left = old.schedule().map_or(Duration::ZERO, |s| s.expires_in);
        if left.is_zero() && !warned_expired {
            warned_expired = true;
            warn!(error = %error, "could not renew the agent token, which has expired by this agent's clock; still trying until the host decides");
        }
        // Never sleep past the expiry in one go: the last tries are the ones that count.
        let delay = backoff.next_delay().min((left / 2).max(Duration::from_secs(1)));
        warn!(error = %error, retry_in = ?delay, expires_in = ?left, "could not renew the agent token");
        sleep(delay).await;
    }
}

/// A `RenewToken` answer as the token to use from now on.
fn accept(answer: pb::RenewAgentTokenResponse, sent: Instant) -> Result<CurrentToken, String> {
    if answer.token.trim().is_empty() {
        return Err("the host answered RenewToken without a token".to_owned());
    }
    // Timed from when the call went out: never later than the host's issue time.
    let mut token = CurrentToken::new(&answer.token, Some(sent))
        .ok_or_else(|| "the host answered RenewToken with a token that is not printable ASCII".to_owned())?;
    if let Some(lifetime) = &mut token.lifetime {
        // The answer's expiry is the host's word; the claims only say when it was issued.
        if answer.expires_at_ms > lifetime.issued_at_ms {
            lifetime.expires_at_ms = answer.expires_at_ms;
        }
    }
    Ok(token)
}

fn log_renewed(token: &CurrentToken) {
    match token.schedule() {
        Some(s) => {
            info!(expires_in = ?s.expires_in, next_renewal_in = ?s.renew_in, "renewed the agent token")
        }
        None => {
            info!("renewed the agent token (the new token is not a workload token; it will not be renewed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::workload_token;

    #[test]
    fn answers_become_fresh_tokens_timed_from_the_call() {
        let sent = Instant::now();
        let token = accept(
            pb::RenewAgentTokenResponse { token: workload_token(1_000, 3_601_000), expires_at_ms: 3_601_000 },
            sent,
        )
        .unwrap();
        assert_eq!(token.received, Some(sent));
        let s = token.schedule().unwrap();
        assert!(s.renew_in <= Duration::from_secs(2400) && s.renew_in > Duration::from_secs(2390), "{s:?}");
        // The answer's expiry wins over the claims'.
        let token = accept(
            pb::RenewAgentTokenResponse { token: workload_token(1_000, 3_601_000), expires_at_ms: 7_201_000 },
            sent,
        )
        .unwrap();
        assert_eq!(token.lifetime.unwrap().expires_at_ms, 7_201_000);
        assert!(accept(pb::RenewAgentTokenResponse { token: " ".into(), expires_at_ms: 5 }, sent).is_err());
        assert!(accept(pb::RenewAgentTokenResponse { token: "a\nb".into(), expires_at_ms: 5 }, sent).is_err());
        let plain =
            accept(pb::RenewAgentTokenResponse { token: "static".into(), expires_at_ms: 5 }, sent).unwrap();
        assert!(plain.schedule().is_none());
    }
}
