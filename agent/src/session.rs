//! One connection's life: dial, `Hello`/`Welcome`, then watch the control stream while
//! the pool keeps tunnels parked.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::pb::agent_tunnel_client::AgentTunnelClient;
use burrow_proto::pb::{self, agent_control, host_control};
use burrow_proto::{MAX_HOST_MESSAGE_SIZE, MAX_MESSAGE_SIZE, PROTOCOL_MINOR, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::final_reason::{self, FinalReason};
use crate::shared::{Session, Shared, Slot};
use crate::token::CurrentToken;
use crate::transport::Transport;

/// Longest `GoAway` reconnect hint honoured; a larger one is most likely a mistake.
const MAX_GOAWAY_WAIT: Duration = Duration::from_secs(300);
/// Longest rate-limit retry-after honoured, for the same reason.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// UNAUTHENTICATED or PERMISSION_DENIED.
    Auth(String),
    /// FAILED_PRECONDITION: the host does not speak our protocol version.
    Version(String),
    /// RESOURCE_EXHAUSTED: too many connection attempts for this token. `retry_after`
    /// is the host's hint (capped at [`MAX_RETRY_AFTER`]), if it sent a valid one.
    RateLimited { message: String, retry_after: Option<Duration> },
    /// The host is draining and sent `GoAway` instead of `Welcome`.
    GoAway { reason: String, after: Duration },
    /// The host refused the agent for good (`burrow-final`, or a final `GoAway` code).
    Final { reason: FinalReason, message: String },
    /// Anything else: network, TLS, WebSocket, HTTP/2, unexpected replies.
    Other(String),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Auth(m) => write!(f, "host rejected the agent token: {m}"),
            AttemptError::Version(m) => write!(f, "protocol version rejected: {m}"),
            AttemptError::RateLimited { message, .. } => write!(f, "rate-limited: {message}"),
            AttemptError::GoAway { reason, .. } => write!(f, "host sent GoAway: {reason}"),
            AttemptError::Final { reason, message } => write!(f, "{reason}: {message}"),
            AttemptError::Other(m) => f.write_str(m),
        }
    }
}

/// How an established session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The agent is stopping.
    Shutdown,
    /// The host asked us to reconnect (it is draining).
    GoAway { reason: String, after: Duration },
    /// The connection or the control stream failed.
    Lost(String),
    /// The slot found a connection to a distinct replica; this one is draining.
    Replaced(Box<Established>),
    /// The host refused the agent for good: a final `GoAway`, or a final refusal of the
    /// control stream or of a token renewal.
    Final { reason: FinalReason, message: String },
}

/// A handshaken connection, ready to be supervised.
pub(crate) struct Established {
    pub session: Arc<Session>,
    pub welcome: pb::Welcome,
    /// The token the session said `Hello` with: the host ties the session's expiry to it.
    token: Arc<CurrentToken>,
    control: Streaming<pb::HostControl>,
    /// Keeps our half of the control stream open; dropping it tells the host we left.
    control_tx: mpsc::Sender<pb::AgentControl>,
    fatal_rx: mpsc::Receiver<String>,
}

/// `code: message` for logs and status, with the transport cause when there is one.
pub(crate) fn describe_status(status: &Status) -> String {
    use std::error::Error;
    let mut out = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = status.source() {
        let cause = crate::transport::chain(source);
        if !out.contains(&cause) {
            out.push_str(" (");
            out.push_str(&cause);
            out.push(')');
        }
    }
    out
}

fn classify(status: Status) -> AttemptError {
    if let Some(reason) = final_reason::from_status(&status) {
        return AttemptError::Final { reason, message: status.message().to_owned() };
    }
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => AttemptError::Auth(describe_status(&status)),
        Code::FailedPrecondition => AttemptError::Version(describe_status(&status)),
        Code::ResourceExhausted => {
            AttemptError::RateLimited { retry_after: retry_after(&status), message: describe_status(&status) }
        }
        _ => AttemptError::Other(describe_status(&status)),
    }
}

/// The host's `burrow-retry-after-ms` hint, capped.
pub(crate) fn retry_after(status: &Status) -> Option<Duration> {
    let ms = status.metadata().get(burrow_proto::RETRY_AFTER_METADATA)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_RETRY_AFTER))
}

fn go_away_wait(g: &pb::GoAway) -> Duration {
    Duration::from_millis(u64::from(g.reconnect_after_ms)).min(MAX_GOAWAY_WAIT)
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("host_replica_id", &self.welcome.host_replica_id)
            .field("agent_id", &self.welcome.agent_id)
            .finish_non_exhaustive()
    }
}

impl Established {
    /// The replica that welcomed this connection (empty if the host does not say).
    pub(crate) fn host_replica_id(&self) -> &str {
        &self.welcome.host_replica_id
    }
}

/// Dial `transport`'s host and complete the handshake, all within `connect_timeout`.
pub(crate) async fn establish(
    shared: &Shared,
    transport: &Transport,
    config: &AgentConfig,
) -> Result<Established, AttemptError> {
    let attempt = async {
        let channel = transport.connect().await.map_err(AttemptError::Other)?;
        let mut client = AgentTunnelClient::new(channel)
            .max_decoding_message_size(MAX_HOST_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);

        let hello = pb::Hello {
            protocol_version: PROTOCOL_VERSION,
            protocol_minor: PROTOCOL_MINOR,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            replica_id: config.replica_id.clone(),
            services: config
                .services
                .iter()
                .map(|s| s.name().to_owned())
                .chain(config.sessions.iter().flat_map(|s| s.names.iter().cloned()))
                .collect(),
        };
        let (control_tx, control_rx) = mpsc::channel(1);
        control_tx
            .send(pb::AgentControl { msg: Some(agent_control::Msg::Hello(hello)) })
            .await
            .map_err(|_| AttemptError::Other("control stream closed before Hello".to_owned()))?;
        let token = shared.token();
        let mut request = tonic::Request::new(ReceiverStream::new(control_rx));
        request.metadata_mut().insert("authorization", token.header.clone());
        let mut control = client.control(request).await.map_err(classify)?.into_inner();

        let welcome = match control.message().await.map_err(classify)? {
            Some(pb::HostControl { msg: Some(host_control::Msg::Welcome(w)) }) => w,
            Some(pb::HostControl { msg: Some(host_control::Msg::GoAway(g)) }) => {
                if let Some(reason) = final_reason::from_go_away(&g) {
                    return Err(AttemptError::Final { reason, message: g.reason });
                }
                return Err(AttemptError::GoAway { after: go_away_wait(&g), reason: g.reason });
            }
            Some(pb::HostControl { msg: None }) => {
                return Err(AttemptError::Other(
                    "host sent an empty control message instead of Welcome".to_owned(),
                ))
            }
            None => {
                return Err(AttemptError::Other("host closed the control stream before Welcome".to_owned()))
            }
        };
        if welcome.protocol_version != PROTOCOL_VERSION {
            return Err(AttemptError::Version(format!(
                "host answered with protocol version {} but this agent speaks {PROTOCOL_VERSION}",
                welcome.protocol_version
            )));
        }
        let mut session_header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            welcome.session_id.parse().map_err(|_| {
                AttemptError::Other("host sent a session id that is not valid metadata".to_owned())
            })?;
        if welcome.session_id.is_empty() {
            return Err(AttemptError::Other("host sent an empty session id".to_owned()));
        }
        session_header.set_sensitive(true);
        let (session, fatal_rx) = Session::new(client, session_header, shared.kill.child_token());
        Ok(Established { session, welcome, token, control, control_tx, fatal_rx })
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(AttemptError::Other(format!(
            "no Welcome from {} within {:?}",
            transport.url(),
            config.connect_timeout
        ))),
    }
}

/// Keep the session's tunnels parked and watch the control stream until it ends, or
/// until `replacement` yields a better connection for this slot.
pub(crate) async fn supervise(
    slot: &Arc<Slot>,
    est: Established,
    stop: &CancellationToken,
    replacement: impl Future<Output = Established>,
) -> SessionEnd {
    let Established { session, welcome: _, token, mut control, control_tx, mut fatal_rx } = est;
    slot.attach(&session);
    tokio::pin!(replacement);
    let renewal = crate::renew::run(&slot.shared, &session, token);
    tokio::pin!(renewal);
    let end = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break SessionEnd::Shutdown,
            Some(reason) = fatal_rx.recv() => break SessionEnd::Lost(reason),
            (reason, message) = &mut renewal => break SessionEnd::Final { reason, message },
            new = &mut replacement => break SessionEnd::Replaced(Box::new(new)),
            msg = control.message() => match msg {
                Ok(Some(pb::HostControl { msg: Some(host_control::Msg::GoAway(g)) })) => {
                    if let Some(reason) = final_reason::from_go_away(&g) {
                        break SessionEnd::Final { reason, message: g.reason };
                    }
                    break SessionEnd::GoAway { after: go_away_wait(&g), reason: g.reason };
                }
                Ok(Some(pb::HostControl { msg: Some(host_control::Msg::Welcome(_)) })) => {
                    warn!("host sent a second Welcome; ignoring it");
                }
                Ok(Some(pb::HostControl { msg: None })) => {}
                Ok(None) => break SessionEnd::Lost("host closed the control stream".to_owned()),
                Err(status) => match final_reason::from_status(&status) {
                    Some(reason) => break SessionEnd::Final { reason, message: status.message().to_owned() },
                    None => break SessionEnd::Lost(format!("control stream failed: {}", describe_status(&status))),
                },
            },
        }
    };
    // No new tunnels on this connection; parked ones go, active ones finish on it (as
    // on GoAway, and when leaving a duplicate replica for a distinct one).
    slot.detach();
    session.parked_cancel.cancel();
    drop(control_tx);
    match &end {
        SessionEnd::GoAway { reason, after } => {
            info!(%reason, ?after, "host sent GoAway; draining this connection and reconnecting");
        }
        SessionEnd::Replaced(new) => {
            info!(
                host_replica_id = %new.welcome.host_replica_id,
                "moved to a distinct host replica; draining the duplicate connection"
            );
        }
        _ => {}
    }
    end
}
