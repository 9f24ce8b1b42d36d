//! Streaming behaviour: SSE, WebSocket, raw upgrades, half-close, client disconnects.

use std::time::Duration;

use burrow_tests::clients::{self, Mode};
use burrow_tests::workload::Workload;
use burrow_tests::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const HOST: &str = "web-a1.localhost";

async fn setup() -> (TestHost, Workload, burrow_agent::AgentHandle) {
    let host = TestHost::start(default_config()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    (host, workload, agent)
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let (host, workload, _agent) = setup().await;
    for mode in [Mode::h1(), Mode::h2()] {
        let mut client = clients::connect(host.ingress_addr, &mode).await;
        let resp = client.request("GET", HOST, "/sse?n=4", &[], clients::empty()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        for i in 0..4 {
            // The workload sends event i+1 only after we release it, so receiving event i
            // here proves nothing on the path held it back waiting for more.
            let mut got = Vec::new();
            while !got.ends_with(b"\n\n") {
                let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("event {i} was held back (h2={})", mode.h2))
                    .expect("stream open")
                    .expect("frame");
                if let Some(data) = frame.data_ref() {
                    got.extend_from_slice(data);
                }
            }
            assert_eq!(String::from_utf8(got).unwrap(), format!("data: event {i}\n\n"));
            workload.release_event();
        }
    }
}

#[tokio::test]
async fn websocket_echo() {
    let (host, _workload, _agent) = setup().await;
    let mut ws = clients::websocket(host.ingress_addr, HOST, "/ws").await;
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), text);
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn raw_upgrade_is_a_byte_pipe_with_half_close() {
    let (host, _workload, _agent) = setup().await;
    let (mut tcp, head) = clients::raw_upgrade(host.ingress_addr, HOST).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_lowercase().contains("upgrade: burrow-raw"), "{head}");
    assert!(head.to_lowercase().contains("x-workload: w1"), "{head}");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    let (mut rd, mut wr) = tcp.split();
    let writer = async {
        wr.write_all(&payload).await.unwrap();
        // Half-close: the workload sees EOF, answers "bye" and closes.
        wr.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert_eq!(got.len(), payload.len() + 3);
    assert_eq!(&got[..payload.len()], &payload[..]);
    assert_eq!(&got[payload.len()..], b"bye");
}

#[tokio::test]
async fn client_disconnect_closes_the_workload_stream() {
    let (host, workload, _agent) = setup().await;
    for mode in [Mode::h1(), Mode::h2()] {
        let before = workload.disconnects();
        let mut client = clients::connect(host.ingress_addr, &mode).await;
        let resp = client.request("GET", HOST, "/drip", &[], clients::empty()).await;
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        drop(client);
        eventually(Duration::from_secs(10), "the workload sees the user go away", || {
            workload.disconnects() > before
        })
        .await;
    }
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let (host, _workload, _agent) = setup().await;
    let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;
    let size = 20 * 1024 * 1024u64;
    let (status, _, body) = client.get(HOST, &format!("/download?bytes={size}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len() as u64, size);
    assert!(body.iter().enumerate().all(|(i, b)| *b == workload::pattern_byte(i as u64)));

    let upload: Vec<u8> = (0..size).map(workload::pattern_byte).collect();
    let resp = client.request("POST", HOST, "/upload", &[], clients::full(upload.clone())).await;
    let (status, _, body) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{size} {}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&upload)))
    );
}

use burrow_tests::workload;
