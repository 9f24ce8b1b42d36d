//! The host's own endpoints, under `/_burrow/` on every address it serves:
//!
//! - `/_burrow/assets/<name>`: the web terminal's scripts and styles, public, served
//!   before any plugin is asked.
//! - `<workload address>/_burrow/terminal`: the web terminal (action `terminal`). `GET`
//!   returns the page; a WebSocket upgrade starts a session in a PTY of the agent's
//!   shell (see `burrow_host_terminal`).
//! - `<workload address>/_burrow/forward`: a port-forward (action `port-forward`) to the
//!   service the address names. A WebSocket upgrade carries one TCP connection as binary
//!   messages (the `burrow forward` client opens one per local connection); a plain
//!   `GET` only runs admission and answers `204`, so a client can report a wrong address
//!   or token before it starts listening.
//!
//! Both WebSockets are admitted like any request, then checked for a same-origin
//! `Origin` and dialed before the `101`, so every refusal is an ordinary error page.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::errors::ProxyError;
use super::proxy::{Proxy, ResponseBody};
use super::websocket;
use burrow_host_core::admission::Admitted;
use burrow_proto::pb::DialKind;

/// The path suffix naming a workload's port-forward endpoint.
pub const FORWARD_SUFFIX: &str = "/_burrow/forward";

/// How often the host pings a terminal page.
const TERMINAL_PING: Duration = Duration::from_secs(30);

/// Largest message a terminal page may send: a big paste arrives as one message.
const TERMINAL_MAX_MESSAGE: usize = 1024 * 1024;

/// One of the host's endpoints on a workload's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Terminal,
    Forward,
}

/// The endpoint `path` (without its query) names, if any.
pub(super) fn endpoint(path: &str) -> Option<Endpoint> {
    if burrow_host_terminal::is_terminal_path(path) {
        Some(Endpoint::Terminal)
    } else if path.ends_with(FORWARD_SUFFIX) {
        Some(Endpoint::Forward)
    } else {
        None
    }
}

/// A static asset, for `GET`/`HEAD` of a path under `/_burrow/assets/`.
pub(super) fn asset(request: &Request<Incoming>) -> Option<Result<Response<ResponseBody>, ProxyError>> {
    let path = request.uri().path();
    if !path.starts_with(burrow_host_terminal::ASSETS_PREFIX) {
        return None;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Some(Err(ProxyError::BadRequest("assets are read with GET".into())));
    }
    Some(match burrow_host_terminal::asset_response(path, request.headers()) {
        Some(response) => Ok(boxed(response)),
        None => Err(ProxyError::BadRequest(format!("no asset named {path:?}"))),
    })
}

/// Serves an admitted request to one of the endpoints.
pub(super) async fn serve(
    proxy: &Proxy,
    endpoint: Endpoint,
    mut request: Request<Incoming>,
    admitted: &Admitted,
    websocket: bool,
    raw_host: &str,
    request_id: &str,
) -> Result<Response<ResponseBody>, ProxyError> {
    if !websocket {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err(ProxyError::BadRequest(format!("{} is not served here", request.method())));
        }
        return Ok(match endpoint {
            Endpoint::Terminal => boxed(burrow_host_terminal::page_response()),
            Endpoint::Forward => {
                let mut response = Response::new(super::proxy::empty_body());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
        });
    }
    let response = websocket::accept(request.method(), request.headers(), raw_host)?;
    let target = &admitted.target;
    let kind = match endpoint {
        Endpoint::Terminal => DialKind::Session,
        Endpoint::Forward => DialKind::Tcp,
    };
    let dial = admitted.dial(request_id, proxy.stream_wait(), kind);
    let stream = proxy.ctx.dial(dial).await.map_err(|error| ProxyError::Open {
        agent_id: target.agent_id.clone(),
        service: target.service.clone(),
        error,
    })?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let size = burrow_host_terminal::initial_size(request.uri().query());
    let guard = proxy.in_flight.enter();
    let force_close = proxy.force_close.clone();
    let shutdown = proxy.shutdown.clone();
    let id = request_id.to_owned();
    tokio::spawn(async move {
        let _guard = guard;
        let config = match endpoint {
            Endpoint::Terminal => WebSocketConfig::default()
                .max_message_size(Some(TERMINAL_MAX_MESSAGE))
                .max_frame_size(Some(TERMINAL_MAX_MESSAGE)),
            Endpoint::Forward => burrow_proto::ws::ws_config(),
        };
        let ws = match websocket::server(on_upgrade, config).await {
            Ok(ws) => ws,
            Err(error) => {
                tracing::debug!(request_id = %id, %error, "WebSocket upgrade did not complete");
                return;
            }
        };
        let run = async {
            match endpoint {
                Endpoint::Terminal => {
                    let options = burrow_host_terminal::RelayOptions {
                        request_id: id.clone(),
                        size,
                        ping_interval: TERMINAL_PING,
                        shutdown,
                    };
                    burrow_host_terminal::relay(ws, stream, options).await;
                }
                Endpoint::Forward => {
                    let mut ws = burrow_proto::ws::WsIo::new(ws);
                    let mut stream = stream;
                    match tokio::io::copy_bidirectional(&mut ws, &mut stream).await {
                        Ok((up, down)) => tracing::debug!(request_id = %id, up, down, "port-forward closed"),
                        Err(error) => {
                            tracing::debug!(request_id = %id, %error, "port-forward ended with an error")
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = run => {}
            () = force_close.cancelled() => {
                tracing::debug!(request_id = %id, "WebSocket cut at the end of the shutdown grace period");
            }
        }
    });
    Ok(response)
}

fn boxed(response: Response<Bytes>) -> Response<ResponseBody> {
    response.map(|body| Full::new(body).map_err(|never| match never {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_path() {
        assert_eq!(endpoint("/_burrow/terminal"), Some(Endpoint::Terminal));
        assert_eq!(endpoint("/terminal/t1/_burrow/terminal"), Some(Endpoint::Terminal));
        assert_eq!(endpoint("/_burrow/forward"), Some(Endpoint::Forward));
        assert_eq!(endpoint("/_burrow/forwarder"), None);
        assert_eq!(endpoint("/app/_burrow"), None);
    }
}
