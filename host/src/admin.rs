//! The admin port: liveness, readiness and Prometheus metrics. Loopback by default;
//! put it on a private interface for a scraper or a load balancer's health checks.
//!
//! - `GET /healthz`: 200 while the process serves requests at all (liveness).
//! - `GET /readyz`: 200 when the replica should get new work, else 503 with the reasons
//!   (draining; Redis unreachable in cluster mode).
//! - `GET /metrics`: OpenMetrics text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::HostContext;

/// The `[admin]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin port at all. Default true.
    pub enabled: bool,
    /// Where it listens. Default `127.0.0.1:8084` (loopback: not reachable from outside).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { enabled: true, listen: ([127, 0, 0, 1], 8084).into() }
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

fn handle(ctx: &HostContext, req: &Request<Incoming>) -> Response<Full<Bytes>> {
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
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found: try /healthz, /readyz or /metrics\n"),
    }
}

/// Serves the admin port until `shutdown`. It outlives the drain on purpose: readiness
/// must be observable (as 503) while the replica drains.
pub async fn serve(listener: TcpListener, ctx: Arc<HostContext>, shutdown: CancellationToken) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!(?local, "admin port listening");
    loop {
        let (stream, _) = tokio::select! {
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
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = handle(&ctx, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}
