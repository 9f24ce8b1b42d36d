//! [`WasmHost`]: the [`Host`] trait over the component's real imports.

use crate::bindings::imports::burrow::plugin::{clock, config, kv, types as wit};
use crate::bindings::imports::wasi::http::{outgoing_handler, types as http};
use crate::bindings::imports::wasi::io::streams::StreamError;
use crate::host::{ConfigValue, Host, KvError, LogLevel};
use crate::http::{split_url, HttpError, HttpRequest, HttpResponse};

/// The host as seen from inside the component: every method calls an import.
///
/// The `export_*!` macros hand it to your plugin; outside a component (in native tests)
/// calling it panics, so use [`crate::MockHost`] there.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmHost;

/// `wasi:io` streams move at most this much per blocking write.
const WRITE_CHUNK: usize = 4096;
/// Bytes asked for per blocking read of a response body.
const READ_CHUNK: u64 = 64 * 1024;

impl Host for WasmHost {
    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Trace => wit::LogLevel::Trace,
            LogLevel::Debug => wit::LogLevel::Debug,
            LogLevel::Info => wit::LogLevel::Info,
            LogLevel::Warn => wit::LogLevel::Warn,
            LogLevel::Error => wit::LogLevel::Error,
        };
        crate::bindings::imports::burrow::plugin::log::log(level, message);
    }

    fn config_json(&self) -> String {
        config::json()
    }

    fn config_toml(&self) -> String {
        config::toml()
    }

    fn config_get(&self, key: &str) -> Option<ConfigValue> {
        config::get(key).map(|value| match value {
            config::ConfigValue::Text(s) => ConfigValue::Text(s),
            config::ConfigValue::Integer(i) => ConfigValue::Integer(i),
            config::ConfigValue::Float(f) => ConfigValue::Float(f),
            config::ConfigValue::Boolean(b) => ConfigValue::Boolean(b),
            config::ConfigValue::Json(j) => ConfigValue::Json(j),
        })
    }

    fn now(&self) -> u64 {
        clock::now()
    }

    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        kv::get(key).map_err(kv_error)
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        kv::set(key, value, ttl_ms).map_err(kv_error)
    }

    fn kv_delete(&self, key: &str) -> Result<bool, KvError> {
        kv::delete(key).map_err(kv_error)
    }

    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        kv::increment(key, delta, ttl_ms).map_err(kv_error)
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        send(request)
    }
}

fn kv_error(err: kv::KvError) -> KvError {
    match err {
        kv::KvError::Unavailable(reason) => KvError::Unavailable(reason),
        kv::KvError::TooLarge => KvError::TooLarge,
        kv::KvError::QuotaExceeded => KvError::QuotaExceeded,
    }
}

fn method(name: &str) -> http::Method {
    match name {
        "GET" => http::Method::Get,
        "HEAD" => http::Method::Head,
        "POST" => http::Method::Post,
        "PUT" => http::Method::Put,
        "DELETE" => http::Method::Delete,
        "CONNECT" => http::Method::Connect,
        "OPTIONS" => http::Method::Options,
        "TRACE" => http::Method::Trace,
        "PATCH" => http::Method::Patch,
        other => http::Method::Other(other.to_string()),
    }
}

fn error_code(code: http::ErrorCode) -> HttpError {
    use http::ErrorCode as E;
    match code {
        E::HttpRequestDenied => HttpError::Denied,
        E::DnsTimeout
        | E::ConnectionTimeout
        | E::ConnectionReadTimeout
        | E::ConnectionWriteTimeout
        | E::HttpResponseTimeout => HttpError::Timeout,
        E::DnsError(payload) => {
            HttpError::Transport(format!("DNS error: {}", payload.rcode.as_deref().unwrap_or("no answer")))
        }
        E::ConnectionRefused => HttpError::Transport("connection refused".into()),
        E::DestinationNotFound => HttpError::Transport("destination not found".into()),
        E::DestinationUnavailable => HttpError::Transport("destination unavailable".into()),
        E::DestinationIpProhibited => HttpError::Prohibited,
        E::TlsCertificateError | E::TlsProtocolError | E::TlsAlertReceived(_) => {
            HttpError::Transport(format!("TLS error: {code:?}"))
        }
        E::InternalError(Some(message)) => HttpError::Transport(message),
        other => HttpError::Transport(format!("{other:?}")),
    }
}

fn stream_error(err: StreamError) -> HttpError {
    match err {
        StreamError::Closed => HttpError::Transport("stream closed early".into()),
        StreamError::LastOperationFailed(e) => match http::http_error_code(&e) {
            Some(code) => error_code(code),
            None => HttpError::Transport(e.to_debug_string()),
        },
    }
}

fn send(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
    let url = split_url(&request.url)?;
    let invalid = |what: &str| HttpError::InvalidRequest(format!("{what} for {}", request.url));

    let mut entries: Vec<(String, Vec<u8>)> =
        request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec())).collect();
    // The body is known in full, so say how long it is: not every server takes chunked
    // requests, and the host then checks the body against it.
    let sized = entries.iter().any(|(n, _)| n == "content-length" || n == "transfer-encoding");
    let has_body = !request.body.is_empty() || matches!(request.method.as_str(), "POST" | "PUT" | "PATCH");
    if !sized && has_body {
        entries.push(("content-length".into(), request.body.len().to_string().into_bytes()));
    }
    let headers = http::Fields::from_list(&entries)
        .map_err(|e| HttpError::InvalidRequest(format!("header rejected: {e:?}")))?;
    let outgoing = http::OutgoingRequest::new(headers);
    outgoing.set_method(&method(&request.method)).map_err(|()| invalid("invalid method"))?;
    let scheme = if url.https { http::Scheme::Https } else { http::Scheme::Http };
    outgoing.set_scheme(Some(&scheme)).map_err(|()| invalid("invalid scheme"))?;
    outgoing.set_authority(Some(url.authority)).map_err(|()| invalid("invalid authority"))?;
    outgoing.set_path_with_query(Some(&url.path_with_query)).map_err(|()| invalid("invalid path"))?;

    let options = request.timeout.map(|timeout| {
        let options = http::RequestOptions::new();
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // A host that does not support a timeout refuses to set it; its own defaults apply.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        options
    });

    let body = outgoing.body().map_err(|()| invalid("request body unavailable"))?;
    // Dispatch before writing the body: the host buffers only a chunk or so of it, so a
    // large body written first would wait forever for a reader.
    let future = outgoing_handler::handle(outgoing, options).map_err(error_code)?;
    {
        let stream = body.write().map_err(|()| invalid("request body stream unavailable"))?;
        for chunk in request.body.chunks(WRITE_CHUNK) {
            stream.blocking_write_and_flush(chunk).map_err(stream_error)?;
        }
        // The stream must be dropped before the body is finished.
    }
    http::OutgoingBody::finish(body, None).map_err(error_code)?;

    let response = loop {
        match future.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(code))) => return Err(error_code(code)),
            Some(Err(())) => return Err(HttpError::Transport("response already taken".into())),
            None => future.subscribe().block(),
        }
    };

    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let incoming =
        response.consume().map_err(|()| HttpError::Transport("response body unavailable".into()))?;
    let mut body = Vec::new();
    {
        let stream =
            incoming.stream().map_err(|()| HttpError::Transport("response body unavailable".into()))?;
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => {
                    if body.len() + chunk.len() > request.max_response_bytes {
                        return Err(HttpError::TooLarge { limit: request.max_response_bytes });
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(err) => return Err(stream_error(err)),
            }
        }
    }
    drop(incoming);
    Ok(HttpResponse { status, headers, body })
}
