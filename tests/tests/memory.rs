//! 200 MB each way through host and agent with flat memory. Its own test binary, so no
//! other test shares the process whose resident memory is measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_tests::clients::{self, Mode};
use burrow_tests::workload::{pattern_byte, Workload};
use burrow_tests::*;
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};

const HOST: &str = "web-a1.localhost";
const SIZE: u64 = 200 * 1024 * 1024;
/// Growth allowed over the warmed-up baseline: generous for allocator noise, far below
/// what buffering even a quarter of a body would take.
const ALLOWED_GROWTH: u64 = 48 * 1024 * 1024;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

fn sample_peak(peak: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            peak.fetch_max(rss_bytes(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_megabytes_each_way_with_flat_memory() {
    let host = TestHost::start(default_config()).await;
    let workload = Workload::start("big").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;

    // Warm up every path once so lazily allocated pools count in the baseline.
    let (status, _, _) = client.get(HOST, "/download?bytes=4000000").await;
    assert_eq!(status, StatusCode::OK);
    let baseline = rss_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = sample_peak(peak.clone());

    // Download with a slow reader for the first stretch: backpressure must hold the
    // workload back instead of queueing its output anywhere.
    let resp = client.request("GET", HOST, &format!("/download?bytes={SIZE}"), &[], clients::empty()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0u64;
    let mut frames = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            assert!(
                data.iter().enumerate().all(|(i, b)| *b == pattern_byte(received + i as u64)),
                "corrupt byte near {received}"
            );
            received += data.len() as u64;
            frames += 1;
            if frames < 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert_eq!(received, SIZE);

    // Upload generated on the fly: the client never holds the body either.
    let chunk = 64 * 1024u64;
    let chunks = stream::iter((0..SIZE / chunk).map(move |i| {
        let mut b = BytesMut::with_capacity(chunk as usize);
        b.extend((i * chunk..(i + 1) * chunk).map(pattern_byte));
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(b)))
    }));
    let resp = client.request("POST", HOST, "/upload", &[], StreamBody::new(chunks).boxed()).await;
    let (status, _, answer) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    let mut hasher = Sha256::new();
    for i in 0..SIZE / chunk {
        let b: Vec<u8> = (i * chunk..(i + 1) * chunk).map(pattern_byte).collect();
        hasher.update(&b);
    }
    assert_eq!(String::from_utf8_lossy(&answer), format!("{SIZE} {}", hex::encode(hasher.finalize())));

    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(rss_bytes());
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < ALLOWED_GROWTH,
        "resident memory grew by {} MiB while moving {} MiB each way (baseline {} MiB)",
        growth >> 20,
        SIZE >> 20,
        baseline >> 20
    );
}
