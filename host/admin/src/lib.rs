//! The admin port: liveness, readiness and Prometheus metrics. Loopback by default;
//! put it on a private interface for a scraper or a load balancer's health checks.
//!
//! - `GET /healthz`: 200 while the process serves requests at all (liveness).
//! - `GET /readyz`: 200 when the replica should get new work, else 503 with the reasons
//!   (draining; Redis unreachable in cluster mode).
//! - `GET /metrics`: OpenMetrics text.
//! - The plugin API, with `Authorization: Bearer <token>` (the token in
//!   `admin.token_file`; without one configured the plugin API is off):
//!   - `GET /plugins`: every plugin with kind, role, source, manifest version, sha256,
//!     config sha256, load time, state, swaps and, after a rollback that still holds,
//!     `rolled_back_from`;
//!   - `POST /plugins/reload`: reload every plugin from its source;
//!   - `POST /plugins/<name>/reload`: reload one (canary first; the old one keeps serving
//!     if the new one fails, and the answer says why);
//!   - `POST /plugins/<name>/rollback`: put the previous version back (held until the
//!     plugin's source changes; a reload meanwhile answers `held`).
//!
//! # Layout
//! One file: [`AdminConfig`] (the `[admin]` table), [`serve`] (the accept loop, with its
//! connection cap, header and idle timeouts) and one handler per route above; the bearer
//! token is read by the ingress's header helpers and compared in constant time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use burrow_host_core::context::HostContext;

/// The `[admin]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin port at all. Default true.
    pub enabled: bool,
    /// Where it listens. Default `127.0.0.1:8084` (loopback: not reachable from outside).
    pub listen: SocketAddr,
    /// A file holding the bearer token of the plugin API (one line). Without it the
    /// plugin API answers 403: it can swap the code that decides who gets in.
    pub token_file: Option<std::path::PathBuf>,
    /// How long a client may take to send a request's headers, from the moment the
    /// connection opens or its previous answer was sent; a keep-alive connection waiting
    /// longer for its next request is closed too. Default 10s: probes and scrapers send
    /// their few header lines at once, and a trickling client cannot hold a socket.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed, whatever it
    /// is doing (a client that stops reading an answer, or stalls a request body).
    /// Default 30s: above any scrape or reload on a healthy network.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Admin connections open at once; more are closed as soon as they are accepted.
    /// Default 128: load balancers' health checks and a few scrapers need a handful at a
    /// time, and a flood of silent connections cannot take the host's file descriptors.
    /// 0: no cap.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: ([127, 0, 0, 1], 8084).into(),
            token_file: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 128,
        }
    }
}

impl AdminConfig {
    /// Checks that the token file exists and holds a usable token.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("admin.header_read_timeout", self.header_read_timeout),
            ("admin.idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: must be greater than zero"));
            }
        }
        if let Some(path) = &self.token_file {
            let token = read_token(path)?;
            if token.len() < 16 {
                return Err(format!(
                    "admin.token_file: the token in {} is shorter than 16 characters",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin.token_file: cannot read {}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// The plugin API's token, kept as a SHA-256 so comparisons are constant-time and the
/// token itself is not held in memory longer than needed.
struct AdminToken([u8; 32]);

impl AdminToken {
    fn check(&self, req: &Request<Incoming>) -> bool {
        let Some(presented) = burrow_host_ingress::headers::bearer_token(req.headers()) else { return false };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    response(status, "application/json", format!("{value}\n"))
}

async fn handle(
    ctx: &HostContext,
    token: Option<&AdminToken>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/plugins" || req.uri().path().starts_with("/plugins/") {
        return plugin_api(ctx, token, &req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match req.uri().path() {
        "/healthz" | "/livez" => {
            let body = serde_json::json!({ "status": "ok", "replica_id": ctx.replica_id });
            response(StatusCode::OK, "application/json", format!("{body}\n"))
        }
        "/readyz" => {
            let r = ctx.readiness();
            let body =
                serde_json::json!({ "ready": r.ready, "reasons": r.reasons, "replica_id": ctx.replica_id });
            let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            response(status, "application/json", format!("{body}\n"))
        }
        "/metrics" => {
            ctx.update_gauges();
            response(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ctx.metrics.encode(),
            )
        }
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz, /metrics or /plugins\n",
        ),
    }
}

async fn plugin_api(
    ctx: &HostContext,
    token: Option<&AdminToken>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(token) = token else {
        return json(
            StatusCode::FORBIDDEN,
            serde_json::json!({ "error": "the plugin API is off: set admin.token_file to enable it" }),
        );
    };
    if !token.check(req) {
        let mut r =
            json(StatusCode::UNAUTHORIZED, serde_json::json!({ "error": "missing or wrong bearer token" }));
        r.headers_mut().insert("www-authenticate", hyper::header::HeaderValue::from_static("Bearer"));
        return r;
    }
    let path = req.uri().path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let plugins = &ctx.plugins;
    let outcome =
        |result: Result<burrow_host_plugins::ReloadOutcome, burrow_host_plugins::PluginError>| match result {
            Ok(outcome) => json(StatusCode::OK, serde_json::to_value(outcome).unwrap_or_default()),
            Err(err @ burrow_host_plugins::PluginError::NotFound { .. }) => {
                json(StatusCode::NOT_FOUND, serde_json::json!({ "error": err.to_string() }))
            }
            Err(err) => json(StatusCode::CONFLICT, serde_json::json!({ "error": err.to_string() })),
        };
    match (req.method(), segments.as_slice()) {
        (&Method::GET, []) => json(StatusCode::OK, serde_json::json!({ "plugins": plugins.status() })),
        (&Method::POST, ["reload"]) => {
            let results: Vec<serde_json::Value> = plugins
                .reload_all()
                .await
                .into_iter()
                .map(|r| match r {
                    Ok(outcome) => serde_json::to_value(outcome).unwrap_or_default(),
                    Err(err) => serde_json::json!({ "result": "refused", "error": err.to_string() }),
                })
                .collect();
            let failed = results.iter().any(|r| r["result"] == "refused");
            let status = if failed { StatusCode::CONFLICT } else { StatusCode::OK };
            json(status, serde_json::json!({ "results": results }))
        }
        (&Method::POST, [name, "reload"]) => outcome(plugins.reload(name).await),
        (&Method::POST, [name, "rollback"]) => outcome(plugins.rollback(name).await),
        (_, [] | ["reload"] | [_, "reload" | "rollback"]) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({ "error": "use GET /plugins, POST /plugins/reload, POST /plugins/<name>/reload or /rollback" }),
        ),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({ "error": format!("no such endpoint: {path}") })),
    }
}

/// Serves the admin port until `shutdown`. It outlives the drain on purpose: readiness
/// must be observable (as 503) while the replica drains.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<HostContext>,
    config: Arc<AdminConfig>,
    shutdown: CancellationToken,
) {
    let token = match &config.token_file {
        Some(path) => match read_token(path) {
            Ok(token) => Some(Arc::new(AdminToken(Sha256::digest(token.as_bytes()).into()))),
            Err(e) => {
                tracing::error!("{e}; the plugin API is off");
                None
            }
        },
        None => None,
    };
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!(?local, "admin port listening");
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin port accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Counted from accept and closed at once past the cap: nothing queues, and the
        // timeouts below free the places that slow clients take.
        let Some(place) = OpenConnection::enter(&open, config.max_connections) else {
            ctx.metrics.limit_refused("admin_connections");
            tracing::debug!(%peer, max = config.max_connections, "admin port: at its connection cap; closed");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let token = token.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let _place = place;
            let activity = Arc::new(Activity::new());
            let handling = activity.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                let token = token.clone();
                // The host's own work (a plugin reload compiles) is not the client idling.
                let busy = handling.begin();
                async move {
                    let _busy = busy;
                    Ok::<_, Infallible>(handle(&ctx, token.as_deref(), req).await)
                }
            });
            let io = Watched { inner: stream, activity: activity.clone() };
            // hyper's header timer runs from the moment it waits for a request head (a new
            // connection, or a kept-alive one after its answer) until the head is complete.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(config.header_read_timeout)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = activity.quiet_for(config.idle_timeout) => {
                    tracing::debug!(%peer, idle = ?config.idle_timeout, "admin connection moved no byte; closed");
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

/// One open admin connection's place under `max_connections`.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    /// A place, or `None` when `max` (non-zero) are open.
    fn enter(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        if open.fetch_add(1, Ordering::AcqRel) >= max && max > 0 {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(open.clone()))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a connection last moved a byte, in milliseconds since it opened, and whether a
/// handler is running on it.
struct Activity {
    opened: tokio::time::Instant,
    last_ms: AtomicU64,
    handling: AtomicUsize,
}

/// A handler running; dropping it counts as activity.
struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Handling {
        self.handling.fetch_add(1, Ordering::AcqRel);
        Handling(self.clone())
    }

    /// Resolves once no byte moved for `idle` while no handler ran.
    async fn quiet_for(&self, idle: Duration) {
        loop {
            let deadline = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if tokio::time::Instant::now() >= deadline && self.handling.load(Ordering::Acquire) == 0 {
                return;
            }
            // A running handler touches on its end; until then, look again a period later.
            tokio::time::sleep_until(deadline.max(tokio::time::Instant::now() + idle / 2)).await;
        }
    }
}

/// A socket that records in [`Activity`] each time it reads or writes a byte.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_admin_connections_are_given_back_when_closed() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = OpenConnection::enter(&open, 2).unwrap();
        let _b = OpenConnection::enter(&open, 2).unwrap();
        assert!(OpenConnection::enter(&open, 2).is_none());
        drop(a);
        assert!(OpenConnection::enter(&open, 2).is_some());
        assert!(OpenConnection::enter(&open, 0).is_some(), "0: no cap");
    }

    #[test]
    fn config_defaults_and_zero_timeouts() {
        let config: AdminConfig = toml::from_str("").unwrap();
        assert_eq!(
            (config.header_read_timeout, config.idle_timeout, config.max_connections),
            (Duration::from_secs(10), Duration::from_secs(30), 128)
        );
        config.validate().unwrap();
        let zero: AdminConfig = toml::from_str("idle_timeout = \"0s\"").unwrap();
        assert!(zero.validate().unwrap_err().starts_with("admin.idle_timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_for_waits_for_a_running_handler() {
        let activity = Arc::new(Activity::new());
        let busy = activity.begin();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.quiet_for(Duration::from_secs(1)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "a handler at work is not the client idling");
        drop(busy);
        let ended = tokio::time::Instant::now();
        waiting.await.unwrap();
        assert!(ended.elapsed() >= Duration::from_secs(1), "counted from the handler's end");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_for_waits_out_the_last_byte() {
        let activity = Activity::new();
        tokio::time::sleep(Duration::from_millis(700)).await;
        activity.touch();
        let start = tokio::time::Instant::now();
        activity.quiet_for(Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1), "counted from the last byte, not the open");
    }
}
