//! One `Tunnel` RPC: open it, park it, and when the host claims it, dial the service and
//! pipe bytes both ways.
//!
//! Memory per tunnel is bounded: at most [`FRAME_QUEUE`] frames of ≤ 32 KiB wait to go
//! to the host, one frame from the host is written to the service before the next is
//! read, and HTTP/2 flow control (1 MiB stream window) holds back the rest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_proto::pb::{self, RefusalCode, ResetCode};
use burrow_proto::tunnel::{frames, Event, Kind, ProtocolError, Role, Tunnel};
use burrow_proto::{MAX_DATA_FRAME, SESSION_METADATA};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{debug, info, warn, Instrument};

use crate::shared::{Session, Shared, Slot};

/// Frames queued towards the host per tunnel.
const FRAME_QUEUE: usize = 4;
/// After the tunnel is finished, how long to wait for the host to end the RPC cleanly
/// before cancelling it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

type Outbound = mpsc::Sender<pb::AgentFrame>;

/// Run one tunnel from open to close. The pool already counts it as opening.
pub(crate) async fn run(slot: Arc<Slot>, session: Arc<Session>, delay: Option<Duration>) {
    if let Some(delay) = delay {
        tokio::select! {
            _ = sleep(delay) => {}
            _ = session.parked_cancel.cancelled() => return slot.idle_closed(false, Duration::MAX),
        }
    }
    let opened_at = Instant::now();
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", slot.shared.auth_header());
    request.metadata_mut().insert(SESSION_METADATA, session.session_header.clone());
    let mut client = session.client.clone();
    let opened = tokio::select! {
        biased;
        _ = session.parked_cancel.cancelled() => return slot.idle_closed(false, Duration::MAX),
        r = client.tunnel(request) => r,
    };
    let mut inbound = match opened {
        Ok(response) => response.into_inner(),
        Err(status)
            if status.code() == tonic::Code::ResourceExhausted
                && crate::final_reason::from_status(&status).is_none() =>
        {
            // Over the host's per-agent cap on parked or open tunnels: the session is
            // fine (its other tunnels serve), so keep it and open this one again after
            // the host's retry-after instead of at once, which would only be refused again.
            return slot.idle_refused(crate::session::retry_after(&status), &status);
        }
        Err(status) => {
            slot.idle_failed(false);
            if let Some(reason) = crate::final_reason::from_status(&status) {
                slot.shared.finish(reason, status.message().to_owned());
            }
            session.fail(format!("host rejected a tunnel: {}", crate::session::describe_status(&status)));
            return;
        }
    };
    slot.parked_ok();

    let mut machine = Tunnel::new(Role::Agent);
    let idle = sleep(slot.shared.idle_timeout);
    tokio::pin!(idle);
    let dial = loop {
        tokio::select! {
            biased;
            _ = session.parked_cancel.cancelled() => return slot.idle_closed(true, Duration::MAX),
            msg = inbound.message() => {
                let frame = match msg {
                    Ok(Some(frame)) => frame,
                    Ok(None) => {
                        debug!("host closed a parked tunnel");
                        return slot.idle_closed(true, opened_at.elapsed());
                    }
                    Err(status) => {
                        debug!(status = %crate::session::describe_status(&status), "parked tunnel ended");
                        return slot.idle_closed(true, opened_at.elapsed());
                    }
                };
                match machine.receive_host_frame(frame) {
                    Ok(Event::Dial(dial)) => break dial,
                    Ok(Event::Ignored) => {}
                    Ok(Event::Reset(reset)) => {
                        debug!(message = %reset.message, "host reset a parked tunnel");
                        return slot.idle_closed(true, opened_at.elapsed());
                    }
                    Ok(other) => {
                        warn!(?other, "unexpected frame on a parked tunnel");
                        let _ = tx.try_send(frames::agent_reset(ResetCode::ProtocolError, "expected Dial"));
                        return slot.idle_closed(true, opened_at.elapsed());
                    }
                    Err(e) => {
                        warn!(error = %e, "protocol violation on a parked tunnel");
                        let _ = tx.try_send(frames::agent_reset(ResetCode::ProtocolError, e.to_string()));
                        return slot.idle_closed(true, opened_at.elapsed());
                    }
                }
            }
            _ = &mut idle => {
                if slot.idle_expired() {
                    debug!("closing a surplus idle tunnel");
                    return;
                }
                idle.as_mut().reset(Instant::now() + slot.shared.idle_timeout);
            }
        }
    };

    // Replacements first: the host may be holding more requests for this agent.
    slot.claimed();
    let span = tracing::info_span!("tunnel", service = %dial.service, request_id = %dial.request_id);
    serve(&slot.shared, machine, dial, inbound, tx).instrument(span).await;
    slot.active_closed();
}

/// Answer the `Dial` and, if the service connects, pipe until both sides are done.
async fn serve(
    shared: &Shared,
    mut machine: Tunnel,
    dial: pb::Dial,
    inbound: Streaming<pb::HostFrame>,
    tx: Outbound,
) {
    let kind = Kind::of(&dial);
    let name = dial.service.clone();
    if shared.stopping() {
        return refuse(
            shared,
            machine,
            inbound,
            tx,
            RefusalCode::ShuttingDown,
            "the agent is shutting down".to_owned(),
        )
        .await;
    }
    let is_session = shared.sessions.as_ref().is_some_and(|s| s.names.contains(&name));
    match kind {
        Kind::Unknown => {
            info!(kind = dial.kind, "refused: unknown dial kind");
            let msg = format!("dial kind {} is not supported by this agent", dial.kind);
            return refuse(shared, machine, inbound, tx, RefusalCode::Unsupported, msg).await;
        }
        Kind::Session if is_session => {
            let permit = match crate::shell::admit(shared, shared.sessions.as_ref()) {
                Ok(permit) => permit,
                Err((code, msg)) => return refuse(shared, machine, inbound, tx, code, msg).await,
            };
            let config = shared.sessions.as_ref().expect("is_session implies sessions");
            return crate::shell::serve(shared, config, permit, machine, dial, inbound, tx).await;
        }
        Kind::Session if shared.services.contains_key(&name) => {
            let msg = format!("service {name:?} is a TCP service, not a session");
            return refuse(shared, machine, inbound, tx, RefusalCode::Unsupported, msg).await;
        }
        Kind::Tcp if is_session => {
            let msg = format!("service {name:?} is a session service; name a TCP service");
            return refuse(shared, machine, inbound, tx, RefusalCode::Unsupported, msg).await;
        }
        Kind::Session | Kind::Tcp => {}
    }
    // The allow-list: the host names a service, never an address.
    let Some(service) = shared.services.get(&name) else {
        info!("refused: unknown service");
        let msg = format!("service {name:?} is not offered by this agent");
        return refuse(shared, machine, inbound, tx, RefusalCode::UnknownService, msg).await;
    };
    let connect = tokio::select! {
        r = timeout(shared.dial_timeout, TcpStream::connect((service.host(), service.port()))) => r,
        _ = shared.kill.cancelled() => {
            return refuse(shared, machine, inbound, tx, RefusalCode::ShuttingDown, "the agent is shutting down".to_owned()).await;
        }
    };
    let socket = match connect {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => {
            warn!(addr = %service.addr(), error = %e, "dial failed");
            // The address stays private to the agent; the OS error is what helps.
            let msg = format!("could not connect to service {name:?}: {e}");
            return refuse(shared, machine, inbound, tx, RefusalCode::DialFailed, msg).await;
        }
        Err(_) => {
            warn!(addr = %service.addr(), "dial timed out");
            let msg = format!("connecting to service {name:?} timed out after {:?}", shared.dial_timeout);
            return refuse(shared, machine, inbound, tx, RefusalCode::DialFailed, msg).await;
        }
    };
    if let Err(e) = socket.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY");
    }
    if machine.send_dial_result(true).is_err() || tx.send(frames::dial_ok()).await.is_err() {
        return;
    }
    debug!("connected");
    pipe(shared, machine, socket, &name, inbound, tx).await;
}

/// Send a refusal, end our side, and give the host a moment to end the RPC.
async fn refuse(
    shared: &Shared,
    mut machine: Tunnel,
    inbound: Streaming<pb::HostFrame>,
    tx: Outbound,
    code: RefusalCode,
    message: String,
) {
    if machine.send_dial_result(false).is_ok() && tx.send(frames::dial_refused(code, message)).await.is_ok() {
        drop(tx);
        finish(shared, inbound).await;
    }
}

/// Our side is done: wait briefly for the host's end of the RPC so it completes
/// cleanly instead of being cancelled.
async fn finish(shared: &Shared, mut inbound: Streaming<pb::HostFrame>) {
    let drain = timeout(CLOSE_WAIT, async { while let Ok(Some(_)) = inbound.message().await {} });
    tokio::select! {
        _ = drain => {}
        _ = shared.kill.cancelled() => {}
    }
}

/// Why a tunnel stopped early.
enum Abort {
    /// We reset: tell the host.
    Local(ResetCode, String),
    /// The host reset or the RPC broke: nothing to tell.
    Remote(String),
}

impl From<ProtocolError> for Abort {
    fn from(e: ProtocolError) -> Self {
        Abort::Local(ResetCode::ProtocolError, e.to_string())
    }
}

async fn pipe(
    shared: &Shared,
    machine: Tunnel,
    socket: TcpStream,
    name: &str,
    mut inbound: Streaming<pb::HostFrame>,
    tx: Outbound,
) {
    // Each direction runs on its own so a service that is not reading cannot stall the
    // other direction. They share the state machine through a lock never held across
    // an await.
    let machine = Mutex::new(machine);
    let lock = || machine.lock().unwrap_or_else(|e| e.into_inner());
    let (mut rd, mut wr) = socket.into_split();

    let up = async {
        loop {
            let mut buf = BytesMut::with_capacity(MAX_DATA_FRAME);
            let n = rd.read_buf(&mut (&mut buf).limit(MAX_DATA_FRAME)).await.map_err(|e| {
                Abort::Local(ResetCode::IoError, format!("reading from service {name:?}: {e}"))
            })?;
            let gone = || Abort::Remote("tunnel RPC closed".to_owned());
            if n == 0 {
                lock().send_eof()?;
                tx.send(frames::agent_eof()).await.map_err(|_| gone())?;
                return Ok::<(), Abort>(());
            }
            lock().send_data()?;
            tx.send(frames::agent_data(buf.freeze())).await.map_err(|_| gone())?;
        }
    };
    let down = async {
        loop {
            let frame = match inbound.message().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(Abort::Remote("host ended the tunnel without Eof".to_owned())),
                Err(status) => return Err(Abort::Remote(crate::session::describe_status(&status))),
            };
            let event = lock().receive_host_frame(frame)?;
            match event {
                Event::Data(data) => wr.write_all(&data).await.map_err(|e| {
                    Abort::Local(ResetCode::IoError, format!("writing to service {name:?}: {e}"))
                })?,
                Event::Eof => {
                    // Half-close: the service sees EOF and may still answer.
                    wr.shutdown().await.map_err(|e| {
                        Abort::Local(ResetCode::IoError, format!("closing service {name:?} for writing: {e}"))
                    })?;
                    return Ok(());
                }
                Event::Reset(reset) => return Err(Abort::Remote(format!("host reset: {}", reset.message))),
                Event::Ignored => {}
                other => return Err(Abort::Local(ResetCode::ProtocolError, format!("unexpected {other:?}"))),
            }
        }
    };

    let result = tokio::select! {
        r = futures_util::future::try_join(up, down) => r.map(|_| ()),
        _ = shared.kill.cancelled() => Err(Abort::Local(ResetCode::Shutdown, "the agent is shutting down".to_owned())),
    };
    match result {
        Ok(()) => {
            debug!("tunnel finished");
            drop(tx);
            finish(shared, inbound).await;
        }
        Err(Abort::Local(code, message)) => {
            debug!(%message, "resetting tunnel");
            lock().send_reset();
            // The host may not be reading; do not wait on it for long.
            let _ = timeout(Duration::from_secs(1), tx.send(frames::agent_reset(code, message))).await;
            drop(tx);
            finish(shared, inbound).await;
        }
        Err(Abort::Remote(reason)) => {
            debug!(%reason, "tunnel aborted by the host side");
        }
    }
}
