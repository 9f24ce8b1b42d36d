//! Users' requests during a reconnect storm: paced `GET /hello` through the new host's
//! ingress, each to an agent the bench has seen back on that host, over keep-alive
//! HTTP/1.1 connections (a small client of its own: a failed request must be recorded,
//! not panic, and the connection replaced).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::fleet::{Board, Identity};

/// Concurrent client connections.
pub(super) const CLIENTS: usize = 4;
/// Pause between two requests of one client: 4 clients × 50/s = 200 requests/s at most,
/// enough for percentiles without adding much load to the storm it measures.
pub(super) const PACE: Duration = Duration::from_millis(20);
/// Requests go to the first this many agents back. After a request the host keeps the
/// tunnel pooled, and with it the agent's connection to the workload: two file
/// descriptors in this process (agent and workload side) per agent ever asked, which
/// the open-files budget counts (spread over all 9,000 agents of a 2-connection run,
/// they ran the bench out of descriptors and the agents' dials to the workload failed).
pub(super) const TARGETS: usize = 1000;
/// A request slower than this counts as failed (the host's own `stream_wait` is 20 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The workload's answer to `GET /hello` (`burrow_tests::workload`).
const BODY: &[u8] = b"hello from bench";

/// One request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    /// When it was sent.
    pub(super) sent: Instant,
    pub(super) latency: Duration,
    /// The HTTP status; 0 when the request failed without one (connection error,
    /// timeout, or a 200 with another body).
    pub(super) status: u16,
    pub(super) agent: u32,
}

impl Sample {
    pub(super) fn ok(&self) -> bool {
        self.status == 200
    }
}

/// A keep-alive HTTP/1.1 connection to the ingress.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Conn { stream: BufReader::new(tcp) })
    }

    /// `GET /hello` for `host`: the status and whether the connection may be reused.
    async fn get(&mut self, host: &str) -> anyhow::Result<(u16, Vec<u8>, bool)> {
        let request = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("status line {line:?}"))?;
        let (mut length, mut keep) = (None, true);
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed in the response head");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                keep = false;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Not sent by the workload or the host's error pages; read to the end.
                keep = false;
            }
        }
        let mut body = Vec::new();
        match length {
            Some(n) => {
                body.resize(n, 0);
                self.stream.read_exact(&mut body).await?;
            }
            None => {
                self.stream.read_to_end(&mut body).await?;
                keep = false;
            }
        }
        Ok((status, body, keep))
    }
}

/// What one client saw: every request, and the first failures' answers (status and the
/// start of the body, or the error), to say why.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) samples: Vec<Sample>,
    pub(super) failures: Vec<String>,
}

/// Failures kept verbatim per client.
const FAILURES_KEPT: usize = 3;

/// One client: every [`PACE`], a request to an agent back on the current host (one of
/// the first [`TARGETS`] back, visited in a scattered order), until `stop`; `done`
/// counts the requests answered (or failed) by all clients.
pub(super) async fn client(
    index: usize,
    ingress: SocketAddr,
    board: Arc<Board>,
    identities: Arc<Vec<Identity>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<Conn> = None;
    let mut k = index as u64;
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Nothing to ask until an agent is back.
        let Some(agent) = board.pick_back(k, TARGETS) else { continue };
        // A prime stride visits the agents back so far in a scattered order.
        k = k.wrapping_add(7919);
        let host = identities[agent as usize].host_name();
        let sent = Instant::now();
        let attempt = async {
            if conn.is_none() {
                conn = Some(Conn::open(ingress).await?);
            }
            let c = conn.as_mut().expect("just opened");
            c.get(&host).await
        };
        let (status, failure) = match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(Ok((status, body, keep))) => {
                if !keep {
                    conn = None;
                }
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                match status {
                    200 if body == BODY => (200, None),
                    200 => (0, Some(format!("200 with another body: {text}"))),
                    _ => (status, Some(format!("{status}: {text}"))),
                }
            }
            Ok(Err(e)) => {
                conn = None;
                (0, Some(format!("error: {e:#}")))
            }
            Err(_) => {
                conn = None;
                (0, Some(format!("no answer within {REQUEST_TIMEOUT:?}")))
            }
        };
        if let Some(f) = failure.filter(|_| out.failures.len() < FAILURES_KEPT) {
            out.failures.push(format!("{host}: {f}"));
        }
        out.samples.push(Sample { sent, latency: sent.elapsed(), status, agent });
        done.fetch_add(1, Ordering::Relaxed);
    }
    out
}
