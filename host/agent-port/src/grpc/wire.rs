//! What the `AgentTunnel` service reads from and writes to the agent besides frames: the
//! bearer token and other handshake metadata, refusal statuses (retry-after, final),
//! `GoAway` messages and session ids.

use std::time::Duration;

use burrow_host_workloads::AgentRefusal;
use burrow_proto::pb::{self, host_control, HostControl};
use burrow_proto::{FINAL_METADATA, RETRY_AFTER_METADATA};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The retry-after hint on a refused `Tunnel`: room comes back when a user claims a
/// parked tunnel or an active one ends, which a few seconds usually see; the agent
/// waits this long before opening the refused tunnel again.
const TUNNEL_RETRY_AFTER_MS: u64 = 5_000;

/// RESOURCE_EXHAUSTED for a `Tunnel` over a per-agent cap, with the retry-after hint.
pub(super) fn tunnel_refusal(message: String) -> Status {
    let mut status = Status::resource_exhausted(message);
    status
        .metadata_mut()
        .insert(RETRY_AFTER_METADATA, tonic::metadata::MetadataValue::from(TUNNEL_RETRY_AFTER_MS));
    status
}

/// A refusal the agent must not retry: the status carries `burrow-final`.
pub(super) fn final_status(
    code: tonic::Code,
    final_code: &'static str,
    message: impl Into<String>,
) -> Status {
    let mut status = Status::new(code, message.into());
    status.metadata_mut().insert(FINAL_METADATA, tonic::metadata::MetadataValue::from_static(final_code));
    status
}

pub(super) fn refusal_status(refusal: AgentRefusal) -> Status {
    match refusal {
        AgentRefusal::Final { final_code, message } => {
            let code = match final_code {
                burrow_proto::FINAL_TOKEN_EXPIRED | burrow_proto::FINAL_TOKEN_REVOKED => {
                    tonic::Code::Unauthenticated
                }
                _ => tonic::Code::FailedPrecondition,
            };
            final_status(code, final_code, message)
        }
        AgentRefusal::Unavailable(message) => Status::unavailable(message),
    }
}

/// `age` ±10%, so agents that connected together (after a deploy) leave at different times.
pub(super) fn jittered(age: Duration) -> Duration {
    age.mul_f64(rand::random_range(0.9..1.1))
}

pub(super) fn bearer_token(metadata: &MetadataMap) -> Result<String, Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing authorization metadata (expected: Bearer <agent token>)")
    })?;
    let value = value.to_str().map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(token.trim().to_owned())
        }
        _ => Err(Status::unauthenticated("authorization metadata must be: Bearer <agent token>")),
    }
}

pub(super) fn go_away(reason: &str) -> HostControl {
    go_away_with(pb::GoAwayCode::Reconnect, reason)
}

pub(super) fn go_away_with(code: pb::GoAwayCode, reason: &str) -> HostControl {
    HostControl {
        msg: Some(host_control::Msg::GoAway(pb::GoAway {
            reason: reason.into(),
            reconnect_after_ms: 0,
            code: code as i32,
        })),
    }
}

pub(super) fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(super) fn new_session_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// What the agent sent besides its token: ASCII metadata, lowercased keys, without
/// credentials or transport headers.
pub(super) fn handshake_metadata(metadata: &MetadataMap) -> Vec<(String, String)> {
    const SKIP: &[&str] =
        &["authorization", "te", "content-type", "user-agent", "grpc-accept-encoding", "grpc-timeout"];
    metadata
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .filter(|(k, _)| !SKIP.contains(&k.as_str()) && !k.starts_with(':'))
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&md("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&md("bearer  abc ")).unwrap(), "abc");
        assert_eq!(bearer_token(&md("Basic abc")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(bearer_token(&md("Bearer ")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(bearer_token(&MetadataMap::new()).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn session_ids_are_unique_and_long() {
        let a = new_session_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_session_id());
    }
}
