//! A claimed tunnel as a plain byte stream (`AsyncRead + AsyncWrite`), so any protocol
//! client (hyper for HTTP, later SSH or raw TCP) can run over it unchanged.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use burrow_proto::pb::{self, RefusalCode, ResetCode};
use burrow_proto::tunnel::{frames, Event, Role, Tunnel};
use bytes::{Buf, Bytes};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::PollSender;
use tonic::{Status, Streaming};

use crate::registry::{IdleTunnel, Session};
use burrow_host_metrics::{Metrics, RoutePath};

/// Why a dial over a claimed tunnel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// The agent answered with a refusal.
    #[error("agent refused: {message} ({code:?})")]
    Refused { code: RefusalCode, message: String },
    /// The tunnel ended before the agent answered: another tunnel may work.
    #[error("tunnel closed before the agent answered: {0}")]
    Gone(String),
    /// The agent did not answer in time.
    #[error("agent did not answer the dial within {0:?}")]
    Timeout(Duration),
    /// The agent broke the protocol.
    #[error("agent broke the tunnel protocol: {0}")]
    Protocol(String),
}

/// A tunnel the agent accepted a `Dial` on, as frames (the replica API relays these
/// without turning them into bytes).
pub struct Dialed {
    /// Frames from the agent, after its `DialResult`.
    pub inbound: Streaming<pb::AgentFrame>,
    /// Frames to the agent.
    pub outbound: crate::registry::HostFrameSender,
    /// The host side of the tunnel state machine, past the dial.
    pub state: Tunnel,
    /// The agent session the tunnel belongs to.
    pub session: Arc<Session>,
}

/// Sends `dial` on a parked tunnel and waits for the agent's answer.
pub async fn dial_raw(
    idle: IdleTunnel,
    dial: pb::Dial,
    answer_timeout: Duration,
) -> Result<Dialed, DialError> {
    let IdleTunnel { mut inbound, outbound, session } = idle;
    let mut state = Tunnel::new(Role::Host);
    state.send_dial(&dial).map_err(|e| DialError::Protocol(e.to_string()))?;
    outbound
        .send(Ok(pb::HostFrame { frame: Some(pb::host_frame::Frame::Dial(dial)) }))
        .await
        .map_err(|_| DialError::Gone("tunnel RPC already ended".into()))?;
    let first = tokio::time::timeout(answer_timeout, inbound.message())
        .await
        .map_err(|_| DialError::Timeout(answer_timeout))?;
    let frame = match first {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(DialError::Gone("agent ended the tunnel".into())),
        Err(status) => return Err(DialError::Gone(status.message().to_owned())),
    };
    match state.receive_agent_frame(frame) {
        Ok(Event::DialAccepted) => Ok(Dialed { inbound, outbound, state, session }),
        Ok(Event::DialRefused(refusal)) => {
            Err(DialError::Refused { code: refusal.code(), message: refusal.message })
        }
        Ok(Event::Reset(reset)) => Err(DialError::Gone(format!("agent reset the tunnel: {}", reset.message))),
        Ok(other) => Err(DialError::Protocol(format!("expected DialResult, got {other:?}"))),
        Err(e) => {
            let _ = outbound.try_send(Ok(frames::host_reset(ResetCode::ProtocolError, e.to_string())));
            Err(DialError::Protocol(e.to_string()))
        }
    }
}

/// Sends `dial` on a parked tunnel and returns the connection as bytes.
pub async fn dial(
    idle: IdleTunnel,
    dial: pb::Dial,
    answer_timeout: Duration,
    metrics: Option<Arc<Metrics>>,
) -> Result<TunnelStream, DialError> {
    dial_raw(idle, dial, answer_timeout).await.map(|d| TunnelStream::local(d, metrics))
}

/// An open tunnel to a workload's service: local (a stream parked on this replica) or
/// forwarded (relayed by the replica holding the agent's stream). Both behave the same.
pub struct TunnelStream {
    /// `None` once [`Self::into_session`] took it.
    inbound: Option<Streaming<pb::AgentFrame>>,
    outbound: PollSender<Result<pb::HostFrame, Status>>,
    state: Tunnel,
    read_buf: Bytes,
    session: Arc<Session>,
    path: RoutePath,
    metrics: Option<Arc<Metrics>>,
    to_agent: u64,
    from_agent: u64,
    /// Resolves when the agent session is cut (see [`Session::cut`]); polled by reads
    /// so a stalled read wakes up too. `None` for a forwarded tunnel's stand-in session,
    /// which the replica holding the agent cuts.
    cut: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

/// The error a cut tunnel gives its user.
fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the agent's session was ended")
}

impl TunnelStream {
    /// Wraps a tunnel dialed on this replica.
    pub fn local(dialed: Dialed, metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.tunnels_active.inc();
        }
        let Dialed { inbound, outbound, state, session } = dialed;
        Self::new(inbound, outbound, state, session, RoutePath::Local, metrics)
    }

    /// Wraps a tunnel relayed by another replica. `session` describes the far end.
    pub fn forwarded(
        inbound: Streaming<pb::AgentFrame>,
        outbound: crate::registry::HostFrameSender,
        state: Tunnel,
        session: Arc<Session>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self::new(inbound, outbound, state, session, RoutePath::Forwarded, metrics)
    }

    fn new(
        inbound: Streaming<pb::AgentFrame>,
        outbound: crate::registry::HostFrameSender,
        state: Tunnel,
        session: Arc<Session>,
        path: RoutePath,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            inbound: Some(inbound),
            outbound: PollSender::new(outbound),
            state,
            read_buf: Bytes::new(),
            path,
            metrics,
            to_agent: 0,
            from_agent: 0,
            cut: session.identity.is_some().then(|| Box::pin(session.cut.clone().cancelled_owned())),
            session,
        }
    }

    /// The agent session serving this tunnel.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Whether the tunnel is local or forwarded.
    pub fn path(&self) -> RoutePath {
        self.path
    }

    /// Turns a tunnel dialed with `DialKind::Session` into its two halves, which run
    /// concurrently (input and output of a session must never wait on each other). The
    /// halves take over this stream's duties: resetting the tunnel if it is dropped
    /// unfinished, and its metrics.
    pub fn into_session(mut self) -> (crate::session_io::SessionSender, crate::session_io::SessionReceiver) {
        let inbound = self.inbound.take().expect("inbound is only taken here, which consumes the stream");
        let outbound = self.outbound.get_ref().cloned();
        let halves = crate::session_io::split(
            inbound,
            outbound,
            self.state.clone(),
            self.session.clone(),
            self.path,
            self.metrics.take(),
        );
        // This stream no longer owns the tunnel: dropping it must not reset it.
        self.state.send_reset();
        self.outbound.close();
        halves
    }

    fn send_reset(&mut self, code: ResetCode, message: String) {
        self.state.send_reset();
        if let Some(tx) = self.outbound.get_ref() {
            let _ = tx.try_send(Ok(frames::host_reset(code, message)));
        }
        self.outbound.close();
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("agent_id", &self.session.agent_id)
            .field("phase", &self.state.phase())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(cut) = this.cut.as_mut() {
            if cut.as_mut().poll(cx).is_ready() {
                this.cut = None;
                this.send_reset(ResetCode::Cancelled, "the agent's session was ended".into());
                return Poll::Ready(Err(cut_error()));
            }
        }
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                buf.put_slice(&this.read_buf[..n]);
                this.read_buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if !this.state.can_receive() {
                // Eof received (clean end of the read side) or the tunnel is closed.
                return Poll::Ready(Ok(()));
            }
            let Some(inbound) = this.inbound.as_mut() else { return Poll::Ready(Ok(())) };
            match ready!(Pin::new(inbound).poll_next(cx)) {
                Some(Ok(frame)) => match this.state.receive_agent_frame(frame) {
                    Ok(Event::Data(data)) => {
                        this.from_agent += data.len() as u64;
                        this.read_buf = data
                    }
                    Ok(Event::Eof) => return Poll::Ready(Ok(())),
                    Ok(Event::Reset(reset)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            format!("agent reset the tunnel: {}", reset.message),
                        )))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        this.send_reset(ResetCode::ProtocolError, e.to_string());
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                },
                Some(Err(status)) => {
                    this.state.stream_ended();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("tunnel RPC failed: {}", status.message()),
                    )));
                }
                None => {
                    let clean = this.state.stream_ended();
                    return Poll::Ready(if clean {
                        Ok(())
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "agent closed the tunnel without Eof",
                        ))
                    });
                }
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.session.cut.is_cancelled() && this.session.identity.is_some() {
            this.send_reset(ResetCode::Cancelled, "the agent's session was ended".into());
            return Poll::Ready(Err(cut_error()));
        }
        if this.state.send_data().is_err() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel is closed for writing",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if ready!(this.outbound.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel RPC ended")));
        }
        let n = buf.len().min(burrow_proto::MAX_DATA_FRAME);
        let frame = frames::host_data(Bytes::copy_from_slice(&buf[..n]));
        if this.outbound.send_item(Ok(frame)).is_err() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel RPC ended")));
        }
        this.to_agent += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames go straight into the RPC's channel; HTTP/2 flushes them.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.state.can_send() {
            return Poll::Ready(Ok(()));
        }
        if ready!(this.outbound.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel RPC ended")));
        }
        let _ = this.state.send_eof();
        if this.outbound.send_item(Ok(frames::host_eof())).is_err() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel RPC ended")));
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if self.state.phase() != burrow_proto::tunnel::Phase::Closed {
            // The user went away (or the proxy gave up): tell the agent to drop its socket
            // to the workload rather than leave it half-open.
            self.send_reset(ResetCode::Cancelled, "the host closed the tunnel".into());
        }
        if let Some(m) = &self.metrics {
            m.tunnel_bytes(self.to_agent, self.from_agent);
            if self.path == RoutePath::Local {
                m.tunnels_active.dec();
            }
        }
    }
}
