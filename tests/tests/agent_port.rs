//! The agent port under bad input: it closes the offender and keeps serving.

use std::time::Duration;

use burrow_proto::pb::{self, agent_tunnel_client::AgentTunnelClient};
use burrow_tests::clients;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "web-a1.localhost";

/// Reads until the host closes the connection; returns what it sent.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
        .await
        .expect("the host closes the connection")
        .ok();
    got
}

#[tokio::test]
async fn garbage_and_malformed_prefaces_are_closed_and_the_host_keeps_serving() {
    let host = TestHost::start(default_config()).await;
    let workload = Workload::start("w").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;

    let cases: [&[u8]; 5] = [
        b"\x00\x01\x02\x03garbage",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        &[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01],
        b"hello?\r\n",
        // A valid preface followed by a nonsense frame: the HTTP/2 layer rejects it.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ];
    for case in cases {
        let mut tcp = TcpStream::connect(host.agent_addr).await.unwrap();
        tcp.write_all(case).await.unwrap();
        read_until_closed(&mut tcp).await;
    }
    // Silence is cut off by the preface timeout (2 s in the test config).
    let mut silent = TcpStream::connect(host.agent_addr).await.unwrap();
    read_until_closed(&mut silent).await;

    // Plain HTTP/1.1 gets a clear answer, not a hang.
    let mut tcp = TcpStream::connect(host.agent_addr).await.unwrap();
    tcp.write_all(b"GET /burrow/agent HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut tcp).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(answer.contains("Burrow agents only"), "{answer}");

    assert!(!host.is_finished());
    let (status, _, _) = clients::get(host.ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK, "traffic still flows through the existing agent");
    let second = burrow_agent::spawn(agent_config(&host.agent_url("ws"), TOKEN, &[workload.service("web")]));
    wait_connected(&second).await;
}

async fn raw_client(host: &TestHost) -> AgentTunnelClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", host.agent_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AgentTunnelClient::new(channel)
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn handshake_rejects_incompatible_versions_and_bad_sessions() {
    let host = TestHost::start(default_config()).await;
    let mut client = raw_client(&host).await;

    let hello = |version| pb::AgentControl {
        msg: Some(pb::agent_control::Msg::Hello(pb::Hello {
            protocol_version: version,
            protocol_minor: 0,
            agent_version: "test".into(),
            replica_id: "r".into(),
            services: vec!["web".into()],
        })),
    };
    let err = client
        .control(with_token(tokio_stream::iter(vec![hello(99)]), TOKEN))
        .await
        .expect_err("v99 is refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("v99") && err.message().contains("v1"), "{}", err.message());

    let err = client.control(tokio_stream::iter(vec![hello(1)])).await.expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let err =
        client.control(with_token(tokio_stream::iter(vec![hello(1)]), "wrong")).await.expect_err("bad token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // A tunnel with a made-up session is refused.
    let mut req = with_token(tokio_stream::iter(Vec::<pb::AgentFrame>::new()), TOKEN);
    req.metadata_mut()
        .insert(burrow_proto::SESSION_METADATA, "0123456789abcdef0123456789abcdef".parse().unwrap());
    let err = client.tunnel(req).await.expect_err("unknown session");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The good handshake works on the same connection afterwards.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello(1)).await.unwrap();
    let resp =
        client.control(with_token(tokio_stream::wrappers::ReceiverStream::new(rx), TOKEN)).await.unwrap();
    let mut inbound = resp.into_inner();
    match inbound.message().await.unwrap().unwrap().msg {
        Some(pb::host_control::Msg::Welcome(w)) => {
            assert_eq!(w.agent_id, AGENT);
            assert_eq!(w.protocol_version, burrow_proto::PROTOCOL_VERSION);
            assert_eq!(w.session_id.len(), 32);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_breaking_the_tunnel_protocol_fails_one_request_only() {
    // A hand-driven agent answers a Dial with data before any DialResult.
    let host = TestHost::start(
        ConfigParts { ingress: "stream_wait = \"10s\"".into(), ..Default::default() }.build(),
    )
    .await;
    let mut client = raw_client(&host).await;
    let (ctl_tx, ctl_rx) = tokio::sync::mpsc::channel(1);
    ctl_tx
        .send(pb::AgentControl {
            msg: Some(pb::agent_control::Msg::Hello(pb::Hello {
                protocol_version: 1,
                protocol_minor: 0,
                agent_version: "rogue".into(),
                replica_id: "rogue".into(),
                services: vec!["web".into()],
            })),
        })
        .await
        .unwrap();
    let mut control = client
        .control(with_token(tokio_stream::wrappers::ReceiverStream::new(ctl_rx), TOKEN))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::host_control::Msg::Welcome(welcome)) = control.message().await.unwrap().unwrap().msg else {
        panic!("no Welcome")
    };
    let (tun_tx, tun_rx) = tokio::sync::mpsc::channel(4);
    let mut req = with_token(tokio_stream::wrappers::ReceiverStream::new(tun_rx), TOKEN);
    req.metadata_mut().insert(burrow_proto::SESSION_METADATA, welcome.session_id.parse().unwrap());
    let mut tunnel = client.tunnel(req).await.unwrap().into_inner();

    let addr = host.ingress_addr;
    let user = tokio::spawn(async move { clients::get(addr, HOST, "/").await });
    let dial = tunnel.message().await.unwrap().unwrap();
    assert!(matches!(dial.frame, Some(pb::host_frame::Frame::Dial(ref d)) if d.service == "web"), "{dial:?}");
    tun_tx
        .send(burrow_proto::tunnel::frames::agent_data(bytes::Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n")))
        .await
        .unwrap();
    let (status, _, _) = user.await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(!host.is_finished());
}
