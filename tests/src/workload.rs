//! A real HTTP/1.1 workload with the endpoints the tests need.
//!
//! - `GET /hello` → `hello from <name>`
//! - `GET /headers` → the request headers as a JSON object (lower-case names; repeated
//!   names joined with ", ")
//! - `POST /echo` → streams the request body back
//! - `POST /upload` → consumes the body; answers `<bytes> <sha256 hex>`
//! - `GET /download?bytes=N` → N bytes of a repeating pattern, generated as it is sent
//! - `GET /sse?n=N` → N events; event i+1 is sent only after the test releases it with
//!   [`Workload::release_event`], which proves events are not held back
//! - `GET /ws` → WebSocket echo
//! - `GET /raw` with `Upgrade: burrow-raw` → 101, then echoes bytes back raw; on the
//!   client's half-close it writes `bye` and closes
//! - `GET /drip` → sends a chunk every 20 ms until the connection goes away, then
//!   counts a disconnect in [`Workload::disconnects`]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

type Body = BoxBody<Bytes, hyper::Error>;

struct Shared {
    name: String,
    sse_gate: Semaphore,
    disconnects: AtomicUsize,
    connections: AtomicUsize,
    /// `/hold` requests waiting for [`Workload::release_holds`].
    held: AtomicUsize,
    hold_release: tokio::sync::watch::Sender<bool>,
}

/// A running workload.
pub struct Workload {
    /// Its address (what an agent's `--service` points at).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Workload {
    /// Starts a workload on `127.0.0.1:0`.
    pub async fn start(name: &str) -> Workload {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            sse_gate: Semaphore::new(0),
            disconnects: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            hold_release: tokio::sync::watch::channel(false).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Workload { addr, shared, task }
    }

    /// `name=addr` for an agent's service list.
    pub fn service(&self, name: &str) -> String {
        format!("{name}={}", self.addr)
    }

    /// Lets `/sse` send one more event.
    pub fn release_event(&self) {
        self.shared.sse_gate.add_permits(1);
    }

    /// How many `/hold` requests are waiting (reached the workload, not yet answered).
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Answers every waiting and future `/hold` request.
    pub fn release_holds(&self) {
        self.shared.hold_release.send_replace(true);
    }

    /// How many `/drip` responses ended because the connection went away.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()).map_err(|never| match never {}).boxed())
        .unwrap()
}

fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    let stream =
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, hyper::Error>(Frame::data(b)));
    BodyExt::boxed(StreamBody::new(stream))
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

const PERIOD: u64 = 251;
const CHUNK: usize = 64 * 1024;

/// The repeating byte pattern `/download` sends; tests check it.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PERIOD) as u8
}

fn pattern_buffer() -> Bytes {
    static BUFFER: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let mut b = BytesMut::with_capacity(CHUNK + PERIOD as usize);
            b.extend((0..(CHUNK as u64 + PERIOD)).map(pattern_byte));
            b.freeze()
        })
        .clone()
}

async fn handle(mut req: Request<Incoming>, s: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        "/hello" => full(StatusCode::OK, format!("hello from {}", s.name)),
        "/hold" => {
            let mut released = s.hold_release.subscribe();
            s.held.fetch_add(1, Ordering::SeqCst);
            let _ = released.wait_for(|r| *r).await;
            s.held.fetch_sub(1, Ordering::SeqCst);
            full(StatusCode::OK, format!("released by {}", s.name))
        }
        "/headers" => {
            let mut map = serde_json::Map::new();
            for name in req.headers().keys() {
                let values: Vec<&str> =
                    req.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                map.insert(name.as_str().to_owned(), serde_json::Value::String(values.join(", ")));
            }
            full(StatusCode::OK, serde_json::Value::Object(map).to_string())
        }
        "/echo" => Response::new(req.into_body().boxed()),
        // Cookies of every kind a workload might set: its own, host-only and for its own
        // name; the host's session cookie; and one for the parent domain of all workloads.
        "/set-cookie" => {
            let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let host = host.rsplit_once(':').map_or(host, |(name, _)| name).to_owned();
            let mut response = full(StatusCode::OK, "cookies set");
            for value in [
                "theme=dark; Path=/".to_owned(),
                format!("own=1; Domain={host}; Path=/"),
                "burrow_session=planted-by-the-workload; Path=/".to_owned(),
                "burrow_sign_in=planted-by-the-workload; Path=/".to_owned(),
                "wide=1; Domain=localhost; Path=/".to_owned(),
            ] {
                response.headers_mut().append(http::header::SET_COOKIE, value.parse().unwrap());
            }
            response
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return Ok(full(StatusCode::BAD_REQUEST, "body error")) };
                if let Some(data) = frame.data_ref() {
                    n += data.len() as u64;
                    hasher.update(data);
                }
            }
            full(StatusCode::OK, format!("{n} {}", hex::encode(hasher.finalize())))
        }
        "/download" => {
            let total = query_u64(&req, "bytes").unwrap_or(0);
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                // The pattern repeats every PERIOD bytes, so every chunk is a zero-copy slice
                // of one buffer: the workload must not be what limits throughput figures.
                let pattern = pattern_buffer();
                let mut sent = 0u64;
                while sent < total {
                    let n = (total - sent).min(CHUNK as u64) as usize;
                    let offset = (sent % PERIOD) as usize;
                    if tx.send(pattern.slice(offset..offset + n)).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                }
            });
            let mut resp = Response::new(channel_body(rx));
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, total.into());
            resp
        }
        "/sse" => {
            let n = query_u64(&req, "n").unwrap_or(3);
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..n {
                    if i > 0 {
                        let Ok(permit) = s.sse_gate.acquire().await else { return };
                        permit.forget();
                    }
                    if tx.send(Bytes::from(format!("data: event {i}\n\n"))).await.is_err() {
                        return;
                    }
                }
            });
            let mut resp = Response::new(channel_body(rx));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
            resp
        }
        "/drip" => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tx.closed() => break,
                        sent = tx.send(Bytes::from_static(b"drip\n")) => if sent.is_err() { break },
                    }
                    tokio::select! {
                        _ = tx.closed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                s.disconnects.fetch_add(1, Ordering::SeqCst);
            });
            Response::new(channel_body(rx))
        }
        "/ws" => match burrow_demo::websocket_echo(&mut req) {
            Some(switching) => switching.map(|empty| empty.map_err(|never| match never {}).boxed()),
            None => full(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade"),
        },
        "/raw" => {
            let wants = req.headers().get(http::header::UPGRADE).is_some_and(|v| v == "burrow-raw");
            if !wants {
                return Ok(full(StatusCode::BAD_REQUEST, "expected Upgrade: burrow-raw"));
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                // The client half-closed; this side can still write.
                let _ = io.write_all(b"bye").await;
                let _ = io.shutdown().await;
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(http::header::CONNECTION, "Upgrade")
                .header(http::header::UPGRADE, "burrow-raw")
                .header("x-workload", s.name.clone())
                .body(Full::new(Bytes::new()).map_err(|never| match never {}).boxed())
                .unwrap()
        }
        _ => full(StatusCode::NOT_FOUND, "no such path"),
    })
}
