//! The user-facing HTTP(S) proxy.
//!
//! hyper serves HTTP/1.1 and h2 (cleartext, or TLS with ALPN `h2`/`http/1.1`). Each request
//! becomes a neutral admission request for the core (`burrow_host_core::admission`: workload
//! plugins, then the authorizer) and is sent as HTTP/1.1 over a stream from the core's
//! dialer: ordinary requests through a pool of keep-alive connections per (agent, service),
//! upgrades over a dedicated tunnel that becomes a raw byte pipe after `101`. Bodies
//! stream both ways; nothing is buffered whole.
//!
//! # Layout
//! - `proxy.rs`: one request, from the user's socket to the workload's answer.
//! - `pool.rs`: keep-alive connections to workloads, keyed by (agent, service).
//! - `upgrade.rs`: `101` upgrades (WebSocket, SPDY) as raw byte pipes.
//! - `reserved.rs`: the host's own endpoints under `/_burrow/` (web terminal, port-forward,
//!   assets); `websocket.rs` accepts the WebSockets the host itself ends.
//! - `headers.rs`: host parsing, hop-by-hop headers, forwarding headers, credentials.
//! - `errors.rs`: one error enum deciding status, stable code and the page users see.
//! - `overload.rs`: caps on connections and requests in progress, per port and per address.
//! - `config.rs`: the `[ingress]` table.

mod config;
mod errors;
pub mod headers;
mod overload;
mod pool;
mod proxy;
mod reserved;
mod sign_in;
mod upgrade;
mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use config::{IngressConfig, IngressConfigError};
pub use errors::{IngressError, ProxyError};

use burrow_host_core::context::HostContext;
use overload::{AddressSlot, Over, PerAddress, RequestLimits, RequestPermit};
use proxy::{ConnInfo, Proxy, ResponseBody};

/// ALPN protocols offered to TLS clients, preferred first.
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// How long to pause after a failed `accept` (e.g. out of file descriptors) before retrying,
/// so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves users on `listener` until `shutdown` is cancelled, then stops accepting, lets requests
/// and upgraded connections in flight finish for up to `grace`, closes whatever remains and
/// returns.
///
/// Fails only at start-up (invalid config, unreadable TLS files); per-connection and
/// per-request failures are logged and answered, never fatal.
pub async fn serve(
    listener: TcpListener,
    config: Arc<IngressConfig>,
    ctx: Arc<HostContext>,
    shutdown: CancellationToken,
    grace: Duration,
    sign_in: Option<Arc<burrow_host_signin::SignIn>>,
) -> Result<(), IngressError> {
    config.validate()?;
    let tls = match &config.tls {
        Some(tls) => Some(TlsAcceptor::from(burrow_host_tls::server_config(tls, ALPN)?)),
        None => None,
    };
    let local_addr = listener.local_addr().map_err(IngressError::Listener)?;
    let in_flight = Arc::new(InFlight::default());
    let force_close = CancellationToken::new();
    let metrics = ctx.metrics.clone();
    let proxy = Arc::new(Proxy::new(
        config.clone(),
        ctx,
        in_flight.clone(),
        force_close.clone(),
        shutdown.clone(),
        sign_in,
    ));
    let requests = Arc::new(RequestLimits::new(config.max_requests, config.max_requests_per_address));
    let per_address = PerAddress::new(config.max_connections_per_address);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.keepalive_interval))
        .keep_alive_timeout(config.keepalive_timeout);
    let server =
        Arc::new(Server { builder, proxy, tls, config, shutdown: shutdown.clone(), force_close, requests });
    tracing::info!(%local_addr, tls = server.tls.is_some(), "ingress listening");

    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Counted from accept, before anything is read, and closed at once past a
                // cap: silent or slow clients cannot pile up, and nothing queues. Upgraded
                // pipes count in `in_flight` too.
                let max = server.config.max_connections;
                if max > 0 && in_flight.count() >= max {
                    metrics.limit_refused("ingress_connections");
                    tracing::debug!(%peer, max, "ingress: at its connection cap; closed");
                    drop(stream);
                    continue;
                }
                let Some(slot) = per_address.acquire(peer.ip()) else {
                    metrics.limit_refused("ingress_connections_per_address");
                    tracing::debug!(%peer, "ingress: too many connections from this address; closed");
                    drop(stream);
                    continue;
                };
                // Small writes (SSE events, WebSocket frames) must leave at once.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
                }
                let guard = in_flight.enter();
                tokio::spawn(server.clone().serve_connection(stream, peer, (guard, slot)));
            }
            Err(error) => {
                tracing::warn!(%local_addr, %error, "ingress accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);

    let open = in_flight.count();
    tracing::info!(%local_addr, connections = open, ?grace, "ingress stopped accepting; draining");
    if tokio::time::timeout(grace, in_flight.wait_idle()).await.is_err() {
        tracing::warn!(
            connections = in_flight.count(),
            ?grace,
            "ingress grace period over; closing remaining connections"
        );
        server.force_close.cancel();
        in_flight.wait_idle().await;
    }
    tracing::info!(%local_addr, "ingress stopped");
    Ok(())
}

/// Everything a connection task needs.
struct Server {
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    config: Arc<IngressConfig>,
    shutdown: CancellationToken,
    force_close: CancellationToken,
    requests: Arc<RequestLimits>,
}

impl Server {
    /// Serves one connection; `_held` (its place in the port's and its address's count)
    /// is given back when it ends.
    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        _held: (InFlightGuard, AddressSlot),
    ) {
        let conn = ConnInfo { peer, tls: self.tls.is_some() };
        // Set by the first request: until then the connection may be a client that connects
        // and sends nothing, which hyper's header timeout does not cover while it sniffs the
        // protocol version, nor for h2.
        let first_request = Arc::new(AtomicBool::new(false));
        let proxy = self.proxy.clone();
        let seen = first_request.clone();
        let activity = Arc::new(Activity::default());
        let busy = activity.clone();
        let server = self.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            seen.store(true, Ordering::Relaxed);
            let proxy = proxy.clone();
            let busy = busy.clone();
            // Before anything else (no plugin, no tunnel): shedding load must be cheap.
            let admitted = server.requests.admit(peer.ip());
            let server = server.clone();
            async move {
                let _request = busy.begin();
                let response = match admitted {
                    // The response body holds the permit: a streamed answer counts until it ends.
                    Ok(permit) => {
                        proxy.handle(request, conn).await.map(|body| Held::new(body, permit).boxed_unsync())
                    }
                    Err(over) => server.refuse(&request, peer, over),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let deadline = self.config.header_read_timeout;
        let idle_timeout = self.config.idle_timeout;
        // Resolves with whether the connection ever made a request.
        let idle_guard = async move {
            tokio::time::sleep(deadline).await;
            if !first_request.load(Ordering::Relaxed) {
                return false;
            }
            // After the first request: closed once nothing was asked for `idle_timeout`.
            activity.idle_for(idle_timeout).await;
            true
        };

        match &self.tls {
            None => {
                let connection = self.builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                self.drive(connection, idle_guard, peer).await;
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(deadline, acceptor.accept(stream));
                let tls_stream = tokio::select! {
                    result = handshake => match result {
                        Ok(Ok(tls_stream)) => tls_stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "ingress TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, ?deadline, "ingress TLS handshake timed out");
                            return;
                        }
                    },
                    () = self.shutdown.cancelled() => return,
                };
                let connection =
                    self.builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
                self.drive(connection, idle_guard, peer).await;
            }
        }
    }

    /// The answer to a request over a request cap: 429 (its address) or 503 (the port),
    /// with `Retry-After`, the stable code and the request id, as every error page.
    fn refuse(&self, request: &Request<Incoming>, peer: SocketAddr, over: Over) -> Response<ResponseBody> {
        let request_id = headers::request_id(request.headers(), self.config.trust_forwarded);
        let (error, limit) = match over {
            Over::Address { limit } => {
                (ProxyError::TooManyRequests { limit }, "ingress_requests_per_address")
            }
            Over::Port { limit } => (ProxyError::Overloaded { limit }, "ingress_requests"),
        };
        let metrics = &self.proxy.ctx.metrics;
        metrics.limit_refused(limit);
        metrics.request(error.code());
        tracing::debug!(%request_id, %peer, status = error.status().as_u16(), %error, "request refused");
        error
            .to_response(&request_id, errors::wants_json(request.headers()))
            .map(|body| body.map_err(|never| match never {}).boxed_unsync())
    }

    /// Runs one HTTP connection: closes it if no request arrives in time (or none for
    /// `idle_timeout` after the last one, gracefully: open streams finish), asks it to finish
    /// gracefully on shutdown (h1: after the request in flight; h2: GOAWAY), and drops it when
    /// the grace period ends.
    async fn drive<C>(&self, connection: C, idle_guard: impl Future<Output = bool>, peer: SocketAddr)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let mut connection = std::pin::pin!(connection);
        let finished = tokio::select! {
            result = connection.as_mut() => Some(result),
            served = idle_guard => {
                if !served {
                    tracing::debug!(%peer, "ingress connection sent no request in time; closing");
                    return;
                }
                tracing::debug!(%peer, "ingress connection idle; closing it gracefully");
                // GOAWAY (h2) or close after the response (h1); what is open finishes.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = self.force_close.cancelled() => {}
                }
                return;
            }
            () = self.shutdown.cancelled() => None,
        };
        let result = match finished {
            Some(result) => result,
            None => {
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection.as_mut() => result,
                    () = self.force_close.cancelled() => return,
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%peer, %error, "ingress connection ended with an error");
        }
    }
}

/// A response body holding its request's place under the request caps until hyper has
/// sent it (or dropped it: the client went away).
struct Held<B> {
    body: B,
    _permit: RequestPermit,
}

impl<B> Held<B> {
    fn new(body: B, permit: RequestPermit) -> Self {
        Self { body, _permit: permit }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Requests in progress on one user connection, so an idle one can be closed.
#[derive(Default)]
struct Activity {
    active: AtomicUsize,
    changed: Notify,
}

/// One request in progress; dropping it marks the end.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once no request has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = tokio::time::sleep(idle) => return,
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// Counts connections and upgraded pipes still running, so shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a guard dropped in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by each connection task and upgraded pipe; dropping it may wake the shutdown.
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_flight_waits_for_every_guard() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.wait_idle().await;
        let a = in_flight.enter();
        let b = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.wait_idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        waiter.await.unwrap();
        assert_eq!(in_flight.count(), 0);
    }
}
