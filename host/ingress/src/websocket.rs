//! Accepting WebSockets the host itself ends (the web terminal, port-forwards), as
//! opposed to WebSockets passed through to a workload (`upgrade.rs`).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::errors::ProxyError;
use super::proxy::{empty_body, ResponseBody};

/// Checks a WebSocket opening handshake (RFC 6455 §4.2.1) and returns the `101` answer.
/// `host` is the raw `Host` the request named: a browser's `Origin` must be that same
/// host, so a page of another site (or of a sibling workload) cannot open a terminal
/// with the user's cookie. Clients that send no `Origin` are not browsers and carry
/// their own credential.
pub(super) fn accept(
    method: &Method,
    headers: &HeaderMap,
    host: &str,
) -> Result<Response<ResponseBody>, ProxyError> {
    if method != Method::GET {
        return Err(ProxyError::BadRequest("a WebSocket opens with GET".into()));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(ProxyError::BadRequest("only WebSocket version 13 is supported".into()));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ProxyError::BadRequest("Sec-WebSocket-Key is missing".into()))?;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !same_host(origin, host) {
            return Err(ProxyError::CrossOrigin { origin: origin.chars().take(200).collect() });
        }
    }
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|error| ProxyError::Internal(error.to_string()))?;
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(response)
}

/// Whether `origin` (`scheme://host[:port]`) names `host` (`host[:port]`, as sent).
fn same_host(origin: &str, host: &str) -> bool {
    let Some((_, authority)) = origin.split_once("://") else { return false };
    authority.eq_ignore_ascii_case(host)
}

/// The server side of an accepted WebSocket, once hyper hands over the connection.
pub(super) async fn server(
    upgrade: OnUpgrade,
    config: WebSocketConfig,
) -> Result<WebSocketStream<TokioIo<Upgraded>>, hyper::Error> {
    let upgraded = upgrade.await?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn accepts_a_valid_handshake_from_its_own_origin() {
        let response =
            accept(&Method::GET, &handshake(Some("https://t.example:8443")), "T.example:8443").unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455's worked example.
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(accept(&Method::GET, &handshake(None), "t.example").is_ok(), "non-browser clients");
    }

    #[test]
    fn refuses_other_origins_and_bad_handshakes() {
        for origin in ["https://evil.example", "https://other-workload.example", "null", "t.example"] {
            let error = accept(&Method::GET, &handshake(Some(origin)), "t.example").unwrap_err();
            assert_eq!(error.code(), "cross_origin", "{origin}");
        }
        assert_eq!(accept(&Method::POST, &handshake(None), "t.example").unwrap_err().code(), "bad_request");
        let mut old = handshake(None);
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(accept(&Method::GET, &old, "t.example").unwrap_err().code(), "bad_request");
        let mut keyless = handshake(None);
        keyless.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(accept(&Method::GET, &keyless, "t.example").unwrap_err().code(), "bad_request");
    }
}
