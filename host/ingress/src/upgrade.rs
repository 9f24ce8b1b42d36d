//! `Connection: upgrade` requests (WebSocket, SPDY/3.1 for `kubectl exec`, anything else): sent
//! on a dedicated tunnel connection; after a `101` both sides become one raw byte pipe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::errors::ProxyError;
use super::headers;
use super::pool::handshake;
use super::proxy::{empty_body, error_chain, relay_response, Proxy, ResponseBody};
use burrow_host_core::admission::Admitted;
use burrow_proto::pb::DialKind;

/// Sends an upgrade request (headers already prepared, origin-form URI) to the workload over
/// its own tunnel, outside the pool: an upgraded connection must never serve another request.
/// On `101` the client gets the workload's `101` and a task splices the two upgraded streams.
pub(super) async fn forward(
    proxy: &Proxy,
    admitted: &Admitted,
    request: Request<Incoming>,
    client_upgrade: OnUpgrade,
    request_id: &str,
    host: &str,
) -> Result<Response<ResponseBody>, ProxyError> {
    let route = &admitted.target;
    let dial = admitted.dial(request_id, proxy.stream_wait(), DialKind::Tcp);
    let io = proxy.ctx.dial(dial).await.map_err(|error| ProxyError::Open {
        agent_id: route.agent_id.clone(),
        service: route.service.clone(),
        error,
    })?;
    let workload_error = |error: hyper::Error| ProxyError::Workload {
        agent_id: route.agent_id.clone(),
        service: route.service.clone(),
        message: error_chain(&error),
    };
    let (mut sender, connection) = handshake(io).await.map_err(workload_error)?;
    let id = request_id.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(request_id = %id, error = %error_chain(&error), "upgrade connection to workload failed");
        }
    });
    let mut response = sender.send_request(request).await.map_err(workload_error)?;
    // No second request ever goes on this connection; dropping the sender lets it close once
    // a non-101 response has been read.
    drop(sender);
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(relay_response(response, host, &proxy.reserved_cookies(), request_id));
    }

    let workload_upgrade = hyper::upgrade::on(&mut response);
    let protocol = response.headers().get(header::UPGRADE).cloned();
    let (mut parts, _empty) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_planted_cookies(&mut parts.headers, host, &proxy.reserved_cookies());
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(protocol) = protocol {
        parts.headers.insert(header::UPGRADE, protocol);
    }

    let guard = proxy.in_flight.enter();
    let force_close = proxy.force_close.clone();
    let id = request_id.to_owned();
    let idle = proxy.upgrade_idle_timeout();
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            () = splice(client_upgrade, workload_upgrade, &id, idle) => {}
            () = force_close.cancelled() => {
                tracing::debug!(request_id = %id, "upgraded connection cut at the end of the shutdown grace period");
            }
        }
    });
    Ok(Response::from_parts(parts, empty_body()))
}

/// Pipes bytes both ways until both directions have ended; an EOF on one side is passed on as
/// a half-close (write shutdown) to the other. With an `idle` limit (non-zero), a pipe that
/// carries no byte either way for that long is closed.
async fn splice(client: OnUpgrade, workload: OnUpgrade, request_id: &str, idle: Duration) {
    let (client, workload) = match tokio::try_join!(client, workload) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(request_id, error = %error_chain(&error), "upgrade did not complete");
            return;
        }
    };
    let last = Arc::new(AtomicU64::new(0));
    let started = tokio::time::Instant::now();
    let mut client = Watched { io: TokioIo::new(client), last: last.clone(), started };
    let mut workload = Watched { io: TokioIo::new(workload), last: last.clone(), started };
    let watchdog = async {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
            if quiet_since.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(quiet_since + idle).await;
        }
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut workload);
    tokio::pin!(copy);
    let result = tokio::select! {
        result = &mut copy => result,
        () = watchdog => {
            tracing::debug!(request_id, ?idle, "upgraded connection idle; closed (ingress.upgrade_idle_timeout)");
            return;
        }
    };
    match result {
        Ok((up, down)) => tracing::debug!(request_id, up, down, "upgraded connection closed"),
        Err(error) => tracing::debug!(request_id, %error, "upgraded connection ended with an error"),
    }
}

/// An upgraded stream that records when bytes last moved (ms since `started`).
struct Watched<T> {
    io: T,
    last: Arc<AtomicU64>,
    started: tokio::time::Instant,
}

impl<T> Watched<T> {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(poll, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
