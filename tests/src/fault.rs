//! Tools for fault tests: a payload whose SHA-256 is known, a workload that pauses a
//! download at a chosen byte until the test releases it (so a fault lands mid-transfer
//! by construction, not by timing) and hashes uploads, a TCP proxy that cuts or
//! black-holes connections on command, and the `burrow-agent` binary as a child process.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::process::ChildLog;

// ---------------------------------------------------------------------------------
// The payload.

/// The payload repeats a random block whose length divides no chunk size used anywhere,
/// so a chunk lost, repeated or reordered changes the hash.
const BLOCK: usize = 1024 * 1024 + 13;
/// The most a [`payload`] slice holds (the workload's and the clients' chunk size).
pub const CHUNK: usize = 64 * 1024;

fn block() -> &'static Bytes {
    static BLOCK_BYTES: OnceLock<Bytes> = OnceLock::new();
    BLOCK_BYTES.get_or_init(|| {
        // xorshift64*: cheap, deterministic, no pattern a shift could line up with.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::with_capacity(BLOCK + CHUNK);
        while out.len() < BLOCK + CHUNK {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(BLOCK + CHUNK);
        Bytes::from(out)
    })
}

/// Bytes `offset..offset + len` of the payload (`len` at most [`CHUNK`]), zero-copy.
pub fn payload(offset: u64, len: usize) -> Bytes {
    assert!(len <= CHUNK);
    let start = (offset % BLOCK as u64) as usize;
    block().slice(start..start + len)
}

/// Hex SHA-256 of the first `len` bytes of the payload (computed once per length).
pub fn payload_sha256(len: u64) -> String {
    static CACHE: OnceLock<Mutex<HashMap<u64, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hash) = cache.lock().unwrap().get(&len) {
        return hash.clone();
    }
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(CHUNK as u64) as usize;
        hasher.update(payload(offset, n));
        offset += n as u64;
    }
    let hash = hex::encode(hasher.finalize());
    cache.lock().unwrap().insert(len, hash.clone());
    hash
}

// ---------------------------------------------------------------------------------
// The workload.

/// What the workload saw of one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSeen {
    /// Bytes of the body received.
    pub bytes: u64,
    /// Hex SHA-256 of those bytes.
    pub sha256: String,
    /// The body ended cleanly (all of `Content-Length`, or a chunked body's last chunk);
    /// false when it broke off.
    pub complete: bool,
}

struct BackendState {
    name: String,
    /// Bumped by [`Backend::release`]; a paused download waits for it to move past the
    /// value it read when its request arrived.
    release: watch::Sender<u64>,
    /// Body bytes received by all uploads so far, counted as they arrive.
    upload_bytes: AtomicU64,
    uploads: Mutex<Vec<UploadSeen>>,
    uploads_changed: watch::Sender<usize>,
}

/// A real HTTP/1.1 workload on `127.0.0.1:0`:
///
/// - `GET /hello` → `hello from <name>`
/// - `GET /download?bytes=N[&pause_at=M]` → the first N [`payload`] bytes with
///   `Content-Length: N`; with `pause_at`, it sends M bytes, then waits for
///   [`Backend::release`] before the rest
/// - `POST /upload` → hashes the body as it arrives; answers `<bytes> <sha256 hex>` and
///   records what it saw ([`Backend::uploads`]), also for a body that broke off
pub struct Backend {
    /// What an agent's `--service` points at.
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder().status(status).body(Full::new(body.into()).boxed()).unwrap()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

impl Backend {
    /// Starts the workload.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            release: watch::channel(0).0,
            upload_bytes: AtomicU64::new(0),
            uploads: Mutex::new(Vec::new()),
            uploads_changed: watch::channel(0).0,
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Backend { addr, state, task }
    }

    /// `name=addr` for an agent's service list.
    pub fn service(&self, name: &str) -> String {
        format!("{name}={}", self.addr)
    }

    /// Lets every download paused so far send the rest.
    pub fn release(&self) {
        self.state.release.send_modify(|n| *n += 1);
    }

    /// Upload body bytes received so far, all uploads together.
    pub fn upload_bytes(&self) -> u64 {
        self.state.upload_bytes.load(Ordering::SeqCst)
    }

    /// The uploads that have ended (cleanly or not), in the order they ended.
    pub fn uploads(&self) -> Vec<UploadSeen> {
        self.state.uploads.lock().unwrap().clone()
    }

    /// Waits until `n` uploads have ended; fails the test after 20 s.
    pub async fn wait_uploads(&self, n: usize) -> Vec<UploadSeen> {
        let mut changed = self.state.uploads_changed.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(20), changed.wait_for(|ended| *ended >= n))
            .await
            .unwrap_or_else(|_| panic!("the workload saw {:?}, not {n} ended uploads", self.uploads()))
            .expect("backend alive");
        self.uploads()
    }
}

async fn handle(req: Request<Incoming>, s: Arc<BackendState>) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        "/hello" => full(StatusCode::OK, format!("hello from {}", s.name)),
        "/download" => {
            let total = query(&req, "bytes").unwrap_or(0);
            let pause_at = query(&req, "pause_at");
            // Read now, before any byte is sent: a release the test sends after it saw the
            // first `pause_at` bytes is then always later than this value.
            let generation = *s.release.borrow();
            let mut released = s.release.subscribe();
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                let mut sent = 0u64;
                while sent < total {
                    let limit = match pause_at {
                        Some(at) if sent < at => at,
                        _ => total,
                    };
                    let n = (limit - sent).min(CHUNK as u64) as usize;
                    if tx.send(payload(sent, n)).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                    if Some(sent) == pause_at && released.wait_for(|g| *g != generation).await.is_err() {
                        return;
                    }
                }
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, total.into());
            resp
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut bytes = 0u64;
            let complete = loop {
                match body.frame().await {
                    None => break true,
                    Some(Err(_)) => break false,
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            bytes += data.len() as u64;
                            hasher.update(data);
                            s.upload_bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                        }
                    }
                }
            };
            let sha256 = hex::encode(hasher.finalize());
            let answer = format!("{bytes} {sha256}");
            s.uploads.lock().unwrap().push(UploadSeen { bytes, sha256, complete });
            s.uploads_changed.send_modify(|n| *n += 1);
            if complete {
                full(StatusCode::OK, answer)
            } else {
                full(StatusCode::BAD_REQUEST, "the body broke off")
            }
        }
        _ => full(StatusCode::NOT_FOUND, "no such path"),
    })
}

// ---------------------------------------------------------------------------------
// The network between agent and host.

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Bytes pass both ways.
    Pass,
    /// Nothing passes, nothing is closed: a partition the endpoints can only detect by
    /// timing out. New connections are accepted (the proxy's kernel would) and held.
    Blackhole,
    /// New connections are reset at once: the path is down and says so.
    Refuse,
}

#[derive(Debug, Clone, Copy)]
struct ProxyState {
    flow: Flow,
    /// Connections accepted under an older generation are reset.
    generation: u64,
}

/// A TCP proxy the test controls, standing for the network between an agent and a host:
/// [`CutProxy::cut`] resets every connection and refuses new ones, [`CutProxy::blackhole`]
/// silently stops all traffic, [`CutProxy::heal`] lets new connections through again.
pub struct CutProxy {
    /// Where the agent connects.
    pub addr: SocketAddr,
    state: watch::Sender<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Connection tasks end with the generation change.
        self.state.send_modify(|s| s.generation += 1);
    }
}

impl CutProxy {
    /// Starts forwarding `127.0.0.1:0` to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = watch::channel(ProxyState { flow: Flow::Pass, generation: 0 }).0;
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let now = *st.borrow();
                if now.flow == Flow::Refuse {
                    reset(client);
                    continue;
                }
                tokio::spawn(relay(client, target, st.subscribe(), now.generation));
            }
        });
        CutProxy { addr, state, task }
    }

    /// Resets every connection (both sides get an RST) and refuses new ones.
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.flow = Flow::Refuse;
            s.generation += 1;
        });
    }

    /// Stops all traffic without closing anything.
    pub fn blackhole(&self) {
        self.state.send_modify(|s| s.flow = Flow::Blackhole);
    }

    /// New connections pass again; connections held by a black hole are reset (the
    /// middlebox that lost them has no state for them any more).
    pub fn heal(&self) {
        self.state.send_modify(|s| {
            if s.flow == Flow::Blackhole {
                s.generation += 1;
            }
            s.flow = Flow::Pass;
        });
    }
}

fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<ProxyState>,
    generation: u64,
) {
    let mut killed = state.clone();
    let killed = async move {
        let _ = killed.wait_for(|s| s.generation != generation).await;
    };
    tokio::pin!(killed);
    // A connection accepted during a black hole never reaches the target.
    if state.wait_for(|s| s.flow == Flow::Pass || s.generation != generation).await.is_err() {
        return;
    }
    let server = tokio::select! {
        _ = &mut killed => return reset(client),
        server = TcpStream::connect(target) => match server {
            Ok(server) => server,
            Err(_) => return reset(client),
        },
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let mut server = server;
    {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let (s1, s2) = (state.clone(), state.clone());
        let both = async { tokio::try_join!(pump(&mut cr, &mut sw, s1), pump(&mut sr, &mut cw, s2)) };
        tokio::select! {
            _ = &mut killed => {}
            _ = both => {}
        }
    }
    reset(client);
    reset(server);
}

/// Copies one direction, passing each read on only while the flow is `Pass` (a black
/// hole holds it, and stops reading, so the sender's buffers fill as on a dead path).
async fn pump(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    mut state: watch::Receiver<ProxyState>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let _ = state.wait_for(|s| s.flow == Flow::Pass).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close passes through; the other direction may go on.
            return to.shutdown().await;
        }
        let _ = state.wait_for(|s| s.flow == Flow::Pass).await;
        to.write_all(&buf[..n]).await?;
    }
}

// ---------------------------------------------------------------------------------
// The agent as a process.

/// A `burrow-agent` process (the real command line); SIGKILLed on drop, its stderr
/// printed if the test fails.
pub struct AgentProcess {
    binary: String,
    args: Vec<String>,
    token: String,
    child: Option<Child>,
    stderr: ChildLog,
}

impl AgentProcess {
    /// Starts `binary` (pass `env!("CARGO_BIN_EXE_burrow-agent-bin")`) with `token` in
    /// `BURROW_AGENT_TOKEN` and `args`.
    pub fn start(binary: &str, token: &str, args: &[String]) -> AgentProcess {
        let mut agent = AgentProcess {
            binary: binary.to_owned(),
            args: args.to_vec(),
            token: token.to_owned(),
            child: None,
            stderr: ChildLog::create("agent"),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("BURROW_AGENT_TOKEN", &self.token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.stderr.stdio())
            .spawn()
            .expect("burrow-agent starts");
        self.child = Some(child);
    }

    /// SIGKILL: no drain, no goodbye to the host.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments (its log goes on in the same file).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.stderr.read()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
