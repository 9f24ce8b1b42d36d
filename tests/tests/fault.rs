//! A fault run: a replica, Redis, the agent and the network between agent and host fail
//! while real transfers are in flight. Every transfer either completes byte-exact (its
//! SHA-256 checked) or fails loudly (an error the client sees, never a short body that
//! looks complete), and service comes back when the fault ends.
//!
//! A fault lands mid-transfer by construction: the workload sends the first
//! [`PAUSE_AT`] bytes of a download and then waits for the test, which injects the fault
//! once the client has read them (uploads: once the workload has received them), and
//! only then lets the rest go.

use std::net::SocketAddr;
use std::time::Duration;

use burrow_tests::clients::{self, Client, Mode};
use burrow_tests::fault::{payload, payload_sha256, AgentProcess, Backend, CutProxy, CHUNK};
use burrow_tests::process::ReplicaProcess;
use burrow_tests::redis::RedisServer;
use burrow_tests::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const REPLICA: &str = env!("CARGO_BIN_EXE_burrow-replica");
const AGENT_BIN: &str = env!("CARGO_BIN_EXE_burrow-agent-bin");
const HOST: &str = "web-a1.localhost";
const MIB: u64 = 1024 * 1024;
/// Each transfer's size.
const TOTAL: u64 = 32 * MIB;
/// Where a download pauses (and an upload is held) until the fault is in place.
const PAUSE_AT: u64 = 4 * MIB;
/// Patience for anything that must happen: a hang fails the test instead of stalling it.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------
// Replicas.

fn cluster_replica(replica: &str, redis: &RedisServer) -> ConfigParts {
    // The shared test config: the replica API over mutual TLS, as deployed.
    cluster_parts(replica, &redis.url(), "")
}

async fn wait_ready(r: &ReplicaProcess) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = timeout(Duration::from_secs(2), clients::get(r.admin_addr, "localhost", "/readyz")).await;
        if matches!(ready, Ok((StatusCode::OK, _, _))) {
            return;
        }
        assert!(Instant::now() < deadline, "replica never became ready; its log:\n{}", r.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_replica(parts: &ConfigParts) -> ReplicaProcess {
    let r = ReplicaProcess::start(REPLICA, parts);
    wait_ready(&r).await;
    r
}

// ---------------------------------------------------------------------------------
// Transfers.

/// How a transfer ended, as its client saw it.
#[derive(Debug)]
enum Outcome {
    /// Every byte announced arrived: this many, with this hash.
    Complete { bytes: u64, sha256: String },
    /// A download's client got an error after this many bytes of the body.
    Failed { bytes: u64, error: String },
    /// An upload's client got an error answer (a status other than 200, with its body, or
    /// a broken connection) after sending this many bytes. What it sent says nothing about
    /// what arrived: the host's and the tunnel's buffers may take the whole body before
    /// the fault is noticed (the workload's own record says what reached it).
    Refused { sent: u64, error: String },
}

impl Outcome {
    /// A fault in flight must show: a download's client got an error and never all the
    /// bytes; an upload's client got an error answer, never a 200.
    fn assert_failed_loudly(&self, what: &str) {
        match self {
            Outcome::Failed { bytes, error } => {
                assert!(*bytes < TOTAL, "{what}: failed after all {bytes} bytes arrived: {error}")
            }
            Outcome::Refused { .. } => {}
            Outcome::Complete { bytes, sha256 } => panic!(
                "{what}: the transfer cut by the fault looked complete ({bytes} bytes, sha256 {sha256}; \
                 expected {TOTAL} bytes, sha256 {})",
                payload_sha256(TOTAL)
            ),
        }
    }

    /// A transfer with no fault on its path arrives whole and exact.
    fn assert_exact(&self, what: &str) {
        match self {
            Outcome::Complete { bytes, sha256 } => {
                assert_eq!(*bytes, TOTAL, "{what}: byte count");
                assert_eq!(*sha256, payload_sha256(TOTAL), "{what}: SHA-256");
            }
            Outcome::Failed { bytes, error } => panic!("{what}: failed after {bytes} bytes: {error}"),
            Outcome::Refused { sent, error } => panic!("{what}: refused after sending {sent} bytes: {error}"),
        }
    }
}

/// A download in progress through the ingress at `addr`, hashed as it is read.
struct Download {
    body: hyper::body::Incoming,
    bytes: u64,
    hasher: Sha256,
}

impl Download {
    /// `GET /download` of [`TOTAL`] bytes, pausing at `pause_at`; the response head must
    /// be a 200 announcing the length (so a short body is detectable at all).
    async fn start(addr: SocketAddr, pause_at: Option<u64>) -> Download {
        let path = match pause_at {
            Some(at) => format!("/download?bytes={TOTAL}&pause_at={at}"),
            None => format!("/download?bytes={TOTAL}"),
        };
        let mut client = clients::connect(addr, &Mode::h1()).await;
        let resp = timeout(PATIENCE, client.request("GET", HOST, &path, &[], clients::empty()))
            .await
            .expect("download response head");
        if resp.status() != StatusCode::OK {
            let (status, _, body) = clients::collect(resp).await;
            panic!("download: {status}: {}", String::from_utf8_lossy(&body));
        }
        let length = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        assert_eq!(length, Some(TOTAL.to_string().as_str()), "download Content-Length");
        Download { body: resp.into_body(), bytes: 0, hasher: Sha256::new() }
    }

    /// Reads until at least `n` bytes arrived (all the workload sends before its pause).
    async fn read_at_least(&mut self, n: u64) {
        timeout(PATIENCE, async {
            while self.bytes < n {
                let frame = self.body.frame().await.expect("body open").expect("body frame");
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                    self.hasher.update(data);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of the first {n} bytes arrived", self.bytes));
    }

    /// Reads the rest; never hangs.
    async fn finish(mut self) -> Outcome {
        let read = timeout(PATIENCE, async {
            loop {
                match self.body.frame().await {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(format!("{e}: {:?}", std::error::Error::source(&e))),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            self.bytes += data.len() as u64;
                            self.hasher.update(data);
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the download hung after {} bytes", self.bytes));
        match read {
            Ok(()) => Outcome::Complete { bytes: self.bytes, sha256: hex::encode(self.hasher.finalize()) },
            Err(error) => Outcome::Failed { bytes: self.bytes, error },
        }
    }
}

/// An upload in progress: the test feeds the body, the response is awaited in a task.
struct Upload {
    body: mpsc::Sender<Result<hyper::body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>,
    sent: u64,
    response: tokio::task::JoinHandle<Result<(StatusCode, String), String>>,
}

impl Upload {
    /// `POST /upload` announcing [`TOTAL`] bytes; nothing of the body sent yet.
    async fn start(addr: SocketAddr) -> Upload {
        let (tx, rx) = mpsc::channel(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let request = http::Request::post("/upload")
            .header(http::header::HOST, HOST)
            .header(http::header::CONTENT_LENGTH, TOTAL)
            .body(BodyExt::boxed(body))
            .unwrap();
        let Client::H1(mut sender) = clients::connect(addr, &Mode::h1()).await else { unreachable!() };
        let response = tokio::spawn(async move {
            sender.ready().await.map_err(|e| e.to_string())?;
            let resp = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        });
        Upload { body: tx, sent: 0, response }
    }

    /// Sends the body up to byte `n`.
    async fn send_until(&mut self, n: u64) {
        while self.sent < n {
            let len = (n - self.sent).min(CHUNK as u64) as usize;
            let chunk = payload(self.sent, len);
            let sent = timeout(PATIENCE, self.body.send(Ok(hyper::body::Frame::data(chunk))))
                .await
                .unwrap_or_else(|_| panic!("upload stalled at {} bytes", self.sent));
            if sent.is_err() {
                // The request is over (it failed): the response says how.
                return;
            }
            self.sent += len as u64;
        }
    }

    /// Sends the rest of the body and reads the answer; never hangs.
    async fn finish(mut self) -> Outcome {
        let answer = timeout(PATIENCE, async {
            self.send_until(TOTAL).await;
            // The body ends here (a clean end, once all of it was sent).
            let (tx, _) = mpsc::channel(1);
            drop(std::mem::replace(&mut self.body, tx));
            (&mut self.response).await.expect("upload task")
        })
        .await
        .unwrap_or_else(|_| panic!("the upload hung after {} bytes", self.sent));
        let sent = self.sent;
        match answer {
            Ok((StatusCode::OK, text)) => {
                // The workload's own count and hash of what reached it.
                let (bytes, sha256) = text.split_once(' ').expect("`<bytes> <sha256>`");
                Outcome::Complete { bytes: bytes.parse().unwrap(), sha256: sha256.to_owned() }
            }
            Ok((status, text)) => Outcome::Refused { sent, error: format!("{status}: {text}") },
            Err(error) => Outcome::Refused { sent, error },
        }
    }
}

/// One download and one upload, both mid-way (the workload has sent, or received, the
/// first [`PAUSE_AT`] bytes) when this returns.
async fn transfers_in_flight(addr: SocketAddr, backend: &Backend) -> (Download, Upload) {
    let mut download = Download::start(addr, Some(PAUSE_AT)).await;
    download.read_at_least(PAUSE_AT).await;
    let before = backend.upload_bytes();
    let mut upload = Upload::start(addr).await;
    upload.send_until(PAUSE_AT).await;
    eventually(PATIENCE, "the workload to receive the first bytes of the upload", || {
        backend.upload_bytes() >= before + PAUSE_AT
    })
    .await;
    (download, upload)
}

/// A full download and upload with no fault, both checked byte for byte.
async fn transfers_exact(addr: SocketAddr, what: &str) {
    let download = Download::start(addr, None).await;
    let mut upload = Upload::start(addr).await;
    let (d, u) = tokio::join!(download.finish(), async {
        upload.send_until(TOTAL).await;
        upload.finish().await
    });
    d.assert_exact(&format!("download {what}"));
    u.assert_exact(&format!("upload {what}"));
}

/// The workload never took a broken-off upload for a whole one: whatever it saw end
/// cleanly is the full payload.
fn assert_no_truncated_upload_completed(backend: &Backend) {
    for seen in backend.uploads() {
        if seen.complete {
            assert_eq!(
                (seen.bytes, seen.sha256.as_str()),
                (TOTAL, payload_sha256(TOTAL).as_str()),
                "{seen:?}"
            );
        }
    }
}

/// GET `/hello`; the status, the request id header and the body.
async fn hello(addr: SocketAddr) -> (StatusCode, String, String) {
    let mut client = clients::connect(addr, &Mode::h1()).await;
    let resp =
        client.request("GET", HOST, "/hello", &[("accept", "application/json")], clients::empty()).await;
    let (status, headers, body) = clients::collect(resp).await;
    let id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, id, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/hello` until it answers 200 (each try may wait out the stream wait).
async fn wait_served(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _, body) = hello(addr).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_status(
    agent: &burrow_agent::AgentHandle,
    what: &str,
    f: impl FnMut(&burrow_agent::AgentStatus) -> bool,
) -> burrow_agent::AgentStatus {
    let mut status = agent.status();
    let got = timeout(PATIENCE, status.wait_for(f)).await;
    match got {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("agent never reached: {what}; status {:?}", *agent.status().borrow()),
    }
}

async fn metrics(addr: SocketAddr) -> String {
    String::from_utf8_lossy(&clients::get(addr, "localhost", "/metrics").await.2).into_owned()
}

// ---------------------------------------------------------------------------------
// The faults.

/// The agent holds connections to r1 and r2; a user downloads through r0, which forwards
/// to one of them. That one is SIGKILLed with the download half done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_replica_killed_mid_download_fails_it_loudly_while_new_requests_use_the_other_replica() {
    let redis = RedisServer::start();
    let r0 = start_replica(&cluster_replica("r0", &redis)).await;
    let mut held = [
        start_replica(&cluster_replica("r1", &redis)).await,
        start_replica(&cluster_replica("r2", &redis)).await,
    ];
    let backend = Backend::start("w1").await;
    let mut config = agent_config(&held[0].agent_url(), TOKEN, &[backend.service("web")]);
    config = config.with_host(&held[1].agent_url()).unwrap();
    config.connections = 2;
    let agent = burrow_agent::spawn(config);
    wait_status(&agent, "connections on r1 and r2", |s| {
        let r = s.connected_replicas();
        r.len() == 2 && s.connections.iter().all(|c| c.idle_streams > 0)
    })
    .await;

    let mut download = Download::start(r0.ingress_addr, Some(PAUSE_AT)).await;
    download.read_at_least(PAUSE_AT).await;
    // The one tunnel in use tells which replica carries the download.
    let status = wait_status(&agent, "the download's tunnel", |s| s.active_streams == 1).await;
    let carrier = status.connections.iter().find(|c| c.active_streams == 1).unwrap();
    let carrier = carrier.state.host_replica_id().unwrap().to_owned();
    let (killed, other) = if carrier == "r1" { (0, 1) } else { (1, 0) };
    held[killed].kill();

    // New requests through r0 at once reach the agent over the surviving replica.
    for i in 0..5 {
        let (status, id, body) = hello(r0.ingress_addr).await;
        assert_eq!(status, StatusCode::OK, "request {i} ({id}) after the crash: {body}");
        assert_eq!(body, "hello from w1");
    }
    assert_eq!(hello(held[other].ingress_addr).await.0, StatusCode::OK);

    // The download the crash interrupted fails; its bytes are not passed off as whole.
    backend.release();
    download.finish().await.assert_failed_loudly("the download through the killed replica");

    // And a whole download through r0 now arrives exact over the survivor.
    Download::start(r0.ingress_addr, None).await.finish().await.assert_exact("a download after the crash");
    agent.shutdown().await;
}

/// The agent is on r1 only. Redis goes down with a download on r1 in flight, and comes
/// back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_redis_outage_keeps_local_transfers_and_503s_forwarding_until_redis_returns() {
    let mut redis = RedisServer::start();
    let mut p0 = cluster_replica("r0", &redis);
    // No pooled workload connections: every request through r0 must look the agent up,
    // so what it answers shows what Redis allows.
    p0.ingress.push_str("\nmax_idle_per_workload = 0");
    let r0 = start_replica(&p0).await;
    let r1 = start_replica(&cluster_replica("r1", &redis)).await;
    let backend = Backend::start("w1").await;
    let mut config = agent_config(&r1.agent_url(), TOKEN, &[backend.service("web")]);
    config.connections = 1;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    wait_served(r0.ingress_addr, "forwarding through r0 before the outage").await;

    let mut local = Download::start(r1.ingress_addr, Some(PAUSE_AT)).await;
    local.read_at_least(PAUSE_AT).await;
    redis.kill();

    // Requests to the agent's own replica need no Redis.
    for i in 0..5 {
        let (status, id, body) = hello(r1.ingress_addr).await;
        assert_eq!(status, StatusCode::OK, "local request {i} ({id}) during the outage: {body}");
    }
    // Through r0 the agent cannot be found: a clear 503, with its request id.
    let (status, id, body) = hello(r0.ingress_addr).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "cluster_unavailable", "{json}");
    assert!(!id.is_empty() && json["request_id"] == id.as_str(), "request id {id:?} in {json}");
    // The transfer in flight on r1 finishes exact.
    backend.release();
    local.finish().await.assert_exact("the local download across the outage");

    // Redis returns empty: r1 re-registers the agent at its next heartbeat, and r0 finds
    // it again.
    redis.restart();
    wait_served(r0.ingress_addr, "forwarding through r0 after Redis returned").await;
    transfers_exact(r0.ingress_addr, "forwarded after the outage").await;
    let text = metrics(r0.admin_addr).await;
    assert!(metric(&text, "burrow_routing_duration_seconds_count{path=\"forwarded\"}") >= 1.0, "{text}");
    agent.shutdown().await;
}

/// The `burrow-agent` process is SIGKILLed with a download and an upload in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_agent_killed_fails_in_flight_transfers_loudly_answers_504_with_request_id_and_a_restart_serves(
) {
    let parts = ConfigParts { ingress: "stream_wait = \"1s\"".into(), ..ConfigParts::default() };
    let host = start_replica(&parts).await;
    let backend = Backend::start("w1").await;
    let args = [
        "--host".to_owned(),
        host.agent_url(),
        "--service".to_owned(),
        backend.service("web"),
        "--connections".to_owned(),
        "1".to_owned(),
        "--replica-id".to_owned(),
        "fault-agent".to_owned(),
    ];
    let mut agent = AgentProcess::start(AGENT_BIN, TOKEN, &args);
    wait_served(host.ingress_addr, "the agent process").await;

    let (download, upload) = transfers_in_flight(host.ingress_addr, &backend).await;
    agent.kill();
    backend.release();
    let (d, u) = tokio::join!(download.finish(), upload.finish());
    d.assert_failed_loudly("the download through the killed agent");
    u.assert_failed_loudly("the upload through the killed agent");
    // The workload saw the upload break off, not end.
    let seen = backend.wait_uploads(1).await;
    assert!(!seen[0].complete && seen[0].bytes < TOTAL, "{seen:?}");

    // With the agent gone, a request waits out the stream wait and gets a clear error
    // page naming the agent, with the request id in the header and the body.
    let (status, id, body) = hello(host.ingress_addr).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "no_tunnel", "{json}");
    assert!(json["message"].as_str().unwrap().contains("\"a1\""), "{json}");
    assert!(!id.is_empty() && json["request_id"] == id.as_str(), "request id {id:?} in {json}");

    agent.restart();
    wait_served(host.ingress_addr, "the restarted agent").await;
    transfers_exact(host.ingress_addr, "through the restarted agent").await;
    assert_no_truncated_upload_completed(&backend);
}

/// An in-process agent whose only path to the host is through `proxy`, with keepalives
/// short enough that a silent path is found dead within a couple of seconds.
async fn agent_behind(proxy: &CutProxy, backend: &Backend) -> burrow_agent::AgentHandle {
    let mut config = agent_config(&format!("grpc://{}", proxy.addr), TOKEN, &[backend.service("web")]);
    config.connections = 1;
    config.keepalive_interval = Duration::from_millis(500);
    config.keepalive_timeout = Duration::from_secs(1);
    config.backoff = burrow_agent::Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.2,
        reset_after: Duration::from_secs(25),
    };
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    agent
}

/// A host with the same short keepalives, so it too notices a silent agent.
async fn host_for_network_faults() -> ReplicaProcess {
    let parts = ConfigParts {
        agents: "keepalive_interval = \"500ms\"\nkeepalive_timeout = \"1s\"".into(),
        ..ConfigParts::default()
    };
    start_replica(&parts).await
}

/// The network between agent and host is cut (every connection reset, new ones refused)
/// with a download and an upload in flight, then restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_network_cut_fails_in_flight_transfers_loudly_and_the_agent_reconnects_when_it_ends() {
    let host = host_for_network_faults().await;
    let backend = Backend::start("w1").await;
    let proxy = CutProxy::start(host.agent_addr).await;
    let agent = agent_behind(&proxy, &backend).await;
    let attempts = agent.status().borrow().connect_attempts;

    let (download, upload) = transfers_in_flight(host.ingress_addr, &backend).await;
    proxy.cut();
    backend.release();
    let (d, u) = tokio::join!(download.finish(), upload.finish());
    d.assert_failed_loudly("the download across the cut");
    u.assert_failed_loudly("the upload across the cut");
    let seen = backend.wait_uploads(1).await;
    assert!(!seen[0].complete, "{seen:?}");
    // The agent noticed, and is refused while the cut lasts.
    wait_status(&agent, "the agent to lose its connection and retry", |s| {
        !s.is_connected() && s.connect_attempts > attempts
    })
    .await;

    proxy.heal();
    wait_status(&agent, "the agent to reconnect", |s| s.is_connected() && s.idle_streams > 0).await;
    transfers_exact(host.ingress_addr, "after the cut").await;
    assert_no_truncated_upload_completed(&backend);
    agent.shutdown().await;
}

/// The network between agent and host silently drops everything (nothing is closed) with
/// a download and an upload in flight; the keepalives must find it, then it heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_network_blackhole_fails_in_flight_transfers_loudly_and_the_agent_reconnects_when_it_ends() {
    let host = host_for_network_faults().await;
    let backend = Backend::start("w1").await;
    let proxy = CutProxy::start(host.agent_addr).await;
    let agent = agent_behind(&proxy, &backend).await;

    let (download, upload) = transfers_in_flight(host.ingress_addr, &backend).await;
    proxy.blackhole();
    backend.release();
    let (d, u) = tokio::join!(download.finish(), upload.finish());
    d.assert_failed_loudly("the download across the black hole");
    u.assert_failed_loudly("the upload across the black hole");
    let seen = backend.wait_uploads(1).await;
    assert!(!seen[0].complete, "{seen:?}");
    wait_status(&agent, "the agent to find its connection dead", |s| !s.is_connected()).await;

    proxy.heal();
    wait_status(&agent, "the agent to reconnect", |s| s.is_connected() && s.idle_streams > 0).await;
    transfers_exact(host.ingress_addr, "after the black hole").await;
    assert_no_truncated_upload_completed(&backend);
    agent.shutdown().await;
}
