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
//! One file: [`AdminConfig`] (the `[admin]` table), [`serve`] (the accept loop) and one
//! handler per route above; the bearer token is read by the ingress's header helpers and
//! compared in constant time.

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
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { enabled: true, listen: ([127, 0, 0, 1], 8084).into(), token_file: None }
    }
}

impl AdminConfig {
    /// Checks that the token file exists and holds a usable token.
    pub fn validate(&self) -> Result<(), String> {
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
        let token = token.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, token.as_deref(), req).await) }
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
