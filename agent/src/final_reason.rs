//! Final refusals: the host saying that reconnecting cannot help, because the workload is
//! over or the token is dead. The agent then stops for good, and the binary exits with a
//! code that tells a supervisor (a pod's restart policy, a CI runner) not to retry.

use std::fmt;

use burrow_proto::pb::GoAwayCode;
use burrow_proto::{
    FINAL_METADATA, FINAL_TOKEN_EXPIRED, FINAL_TOKEN_REVOKED, FINAL_WORKLOAD_ENDED, FINAL_WORKLOAD_TERMINATED,
};
use tonic::Status;
use tracing::warn;

/// Why the host refused this agent for good. Each reason has its own process exit code
/// ([`exit_code`](Self::exit_code)); 0 is a normal shutdown, 1 any other error, 2 a
/// command-line usage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinalReason {
    /// The workload was terminated through the control API. Exit code 3.
    WorkloadTerminated,
    /// The workload ended by itself (it expired, or its plugin says it has ended). Exit
    /// code 4.
    WorkloadEnded,
    /// The agent token expired before it was renewed. Exit code 5.
    TokenExpired,
    /// The agent token is not (or no longer) valid: revoked, badly signed, unknown key
    /// or workload. Exit code 6.
    TokenRevoked,
}

impl FinalReason {
    /// Every reason, in exit-code order.
    pub const ALL: [FinalReason; 4] = [
        FinalReason::WorkloadTerminated,
        FinalReason::WorkloadEnded,
        FinalReason::TokenExpired,
        FinalReason::TokenRevoked,
    ];

    /// The `burrow-agent` process exit code for this reason.
    pub fn exit_code(self) -> u8 {
        match self {
            FinalReason::WorkloadTerminated => 3,
            FinalReason::WorkloadEnded => 4,
            FinalReason::TokenExpired => 5,
            FinalReason::TokenRevoked => 6,
        }
    }

    /// The `burrow-final` metadata value naming this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalReason::WorkloadTerminated => FINAL_WORKLOAD_TERMINATED,
            FinalReason::WorkloadEnded => FINAL_WORKLOAD_ENDED,
            FinalReason::TokenExpired => FINAL_TOKEN_EXPIRED,
            FinalReason::TokenRevoked => FINAL_TOKEN_REVOKED,
        }
    }

    /// The reason a `burrow-final` metadata value names; `None` for a value this agent
    /// does not know (a newer host's), which is then not treated as final.
    pub fn from_metadata_value(value: &str) -> Option<Self> {
        let value = value.trim();
        Self::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(value))
    }

    /// The reason a `GoAway.code` gives; `None` for `RECONNECT` and for codes this agent
    /// does not know, after which it reconnects as before minor 2.
    pub fn from_go_away_code(code: i32) -> Option<Self> {
        match GoAwayCode::try_from(code).ok()? {
            GoAwayCode::Reconnect => None,
            GoAwayCode::WorkloadTerminated => Some(FinalReason::WorkloadTerminated),
            GoAwayCode::WorkloadEnded => Some(FinalReason::WorkloadEnded),
            GoAwayCode::TokenExpired => Some(FinalReason::TokenExpired),
            GoAwayCode::TokenRevoked => Some(FinalReason::TokenRevoked),
        }
    }
}

impl fmt::Display for FinalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FinalReason::WorkloadTerminated => "the workload was terminated",
            FinalReason::WorkloadEnded => "the workload has ended",
            FinalReason::TokenExpired => "the agent token expired",
            FinalReason::TokenRevoked => "the agent token was revoked or is not valid",
        })
    }
}

/// A `GoAway` code as a final reason, with a warning for a code this agent does not know
/// (so an operator sees why a newer host's instruction was ignored).
pub(crate) fn from_go_away(go_away: &burrow_proto::pb::GoAway) -> Option<FinalReason> {
    let reason = FinalReason::from_go_away_code(go_away.code);
    if reason.is_none() && GoAwayCode::try_from(go_away.code).is_err() {
        warn!(code = go_away.code, "host sent a GoAway code this agent does not know; reconnecting");
    }
    reason
}

/// The final reason a refused RPC carries in its `burrow-final` metadata (headers or
/// trailers), with a warning for a value this agent does not know.
pub(crate) fn from_status(status: &Status) -> Option<FinalReason> {
    let value = status.metadata().get(FINAL_METADATA)?;
    let Ok(text) = value.to_str() else {
        warn!("host sent unreadable {FINAL_METADATA} metadata; not treating the refusal as final");
        return None;
    };
    let reason = FinalReason::from_metadata_value(text);
    if reason.is_none() {
        warn!(
            value = text,
            "host sent a {FINAL_METADATA} value this agent does not know; not treating the refusal as final"
        );
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::{MetadataMap, MetadataValue};
    use tonic::Code;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let codes: Vec<u8> = FinalReason::ALL.iter().map(|r| r.exit_code()).collect();
        assert_eq!(codes, [3, 4, 5, 6]);
    }

    #[test]
    fn go_away_codes() {
        let cases = [
            (GoAwayCode::Reconnect, None),
            (GoAwayCode::WorkloadTerminated, Some(FinalReason::WorkloadTerminated)),
            (GoAwayCode::WorkloadEnded, Some(FinalReason::WorkloadEnded)),
            (GoAwayCode::TokenExpired, Some(FinalReason::TokenExpired)),
            (GoAwayCode::TokenRevoked, Some(FinalReason::TokenRevoked)),
        ];
        for (code, want) in cases {
            assert_eq!(FinalReason::from_go_away_code(code as i32), want, "{code:?}");
            let g = burrow_proto::pb::GoAway { code: code as i32, ..Default::default() };
            assert_eq!(from_go_away(&g), want);
        }
        // A newer host's code: reconnect, as a minor-1 agent would.
        assert_eq!(FinalReason::from_go_away_code(99), None);
        assert_eq!(from_go_away(&burrow_proto::pb::GoAway { code: -1, ..Default::default() }), None);
    }

    #[test]
    fn metadata_values_round_trip_and_unknown_ones_are_not_final() {
        for r in FinalReason::ALL {
            assert_eq!(FinalReason::from_metadata_value(r.as_str()), Some(r));
        }
        assert_eq!(
            FinalReason::from_metadata_value(" Workload-Terminated "),
            Some(FinalReason::WorkloadTerminated)
        );
        for unknown in ["", "workload-paused", "token", "final"] {
            assert_eq!(FinalReason::from_metadata_value(unknown), None, "{unknown:?}");
        }
    }

    fn refused(code: Code, value: Option<&'static str>) -> Status {
        let mut md = MetadataMap::new();
        if let Some(v) = value {
            md.insert(FINAL_METADATA, MetadataValue::from_static(v));
        }
        Status::with_metadata(code, "refused", md)
    }

    #[test]
    fn statuses_are_final_only_with_a_known_value() {
        let cases = [
            (refused(Code::Unauthenticated, Some(FINAL_TOKEN_EXPIRED)), Some(FinalReason::TokenExpired)),
            (refused(Code::Unauthenticated, Some(FINAL_TOKEN_REVOKED)), Some(FinalReason::TokenRevoked)),
            (refused(Code::FailedPrecondition, Some(FINAL_WORKLOAD_ENDED)), Some(FinalReason::WorkloadEnded)),
            (
                refused(Code::PermissionDenied, Some(FINAL_WORKLOAD_TERMINATED)),
                Some(FinalReason::WorkloadTerminated),
            ),
            // Any code: the metadata decides.
            (refused(Code::Unavailable, Some(FINAL_WORKLOAD_ENDED)), Some(FinalReason::WorkloadEnded)),
            (refused(Code::Unauthenticated, None), None),
            (refused(Code::Unauthenticated, Some("something-new")), None),
        ];
        for (status, want) in cases {
            assert_eq!(from_status(&status), want, "{status:?}");
        }
    }

    #[test]
    fn reasons_read_as_sentences() {
        assert_eq!(FinalReason::WorkloadTerminated.to_string(), "the workload was terminated");
        assert_eq!(FinalReason::TokenExpired.to_string(), "the agent token expired");
    }
}
