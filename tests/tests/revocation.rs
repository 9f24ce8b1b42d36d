//! Revocation and expiry stop traffic, not only new connections: an authorizer swap that
//! no longer accepts an agent's token ends its open user connections and the agent, and
//! an agent that ignores the GoAway after its identity expired loses even the tunnels it
//! opened on another TCP connection. `cargo test revo` runs these with the lifecycle's.

use std::time::Duration;

use burrow_proto::pb::{self, agent_tunnel_client::AgentTunnelClient};
use burrow_tests::lifecycle::{echo, wait_closed};
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, sha256_hex, wait_connected, ConfigParts, TestHost, AGENT, TOKEN};

fn authorizer(agents: &str) -> String {
    format!("source = \"builtin:authorizer-static\"\nconfig = {{ agents = [{agents}], default_access = \"open\" }}")
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_by_an_authorizer_swap_an_agent_loses_its_websocket_and_stops() {
    let a1 = format!("{{ id = \"{AGENT}\", token_sha256 = \"{}\" }}", sha256_hex(TOKEN));
    let host =
        TestHost::start(ConfigParts { authorizer: authorizer(&a1), ..Default::default() }.build()).await;
    let web = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[web.service("web")]));
    wait_connected(&agent).await;
    let mut ws = burrow_tests::clients::websocket(host.ingress_addr, "web-a1.localhost", "/ws").await;
    echo(&mut ws).await;

    // The new authorizer knows another agent only.
    let a2 = format!("{{ id = \"a2\", token_sha256 = \"{}\" }}", sha256_hex("another-token-0123456789"));
    let swapped = ConfigParts { authorizer: authorizer(&a2), ..Default::default() }.build();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let since = tokio::time::Instant::now();
    host.control
        .send(burrow_host::ControlRequest::ReloadPlugins(Box::new(swapped.plugins), Some(reply)))
        .await
        .unwrap();
    answer.await.unwrap().expect("the new authorizer loads");
    let took = wait_closed(&mut ws, since).await;
    assert!(took < Duration::from_secs(5), "the WebSocket closed {took:?} after the swap");
    assert_eq!(burrow_tests::lifecycle::final_reason(&agent).await, burrow_agent::FinalReason::TokenRevoked);
}

/// A rogue agent: opens `Control` on one connection and a `Tunnel` on another, and
/// ignores every GoAway.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_by_expiry_an_agent_that_ignores_goaway_loses_tunnels_on_other_connections() {
    let expires_at = burrow_host::time::now_ms() + 2_000;
    let a1 = format!(
        "{{ id = \"{AGENT}\", token_sha256 = \"{}\", expires_at = {expires_at} }}",
        sha256_hex(TOKEN)
    );
    let host =
        TestHost::start(ConfigParts { authorizer: authorizer(&a1), ..Default::default() }.build()).await;
    let connect = || async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", host.agent_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AgentTunnelClient::new(channel)
    };
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();

    // Connection 1: the control stream; its sender is kept so the stream stays open.
    let (hello_tx, hello_rx) = tokio::sync::mpsc::channel(1);
    hello_tx
        .send(pb::AgentControl {
            msg: Some(pb::agent_control::Msg::Hello(pb::Hello {
                protocol_version: burrow_proto::PROTOCOL_VERSION,
                protocol_minor: burrow_proto::PROTOCOL_MINOR,
                agent_version: "rogue".into(),
                replica_id: "rogue".into(),
                services: vec!["web".into()],
            })),
        })
        .await
        .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(hello_rx));
    request.metadata_mut().insert("authorization", bearer.clone());
    let mut control = connect().await.control(request).await.expect("accepted").into_inner();
    let session_id = match control.message().await.unwrap() {
        Some(pb::HostControl { msg: Some(pb::host_control::Msg::Welcome(w)) }) => w.session_id,
        other => panic!("expected Welcome, got {other:?}"),
    };

    // Connection 2: a parked tunnel of that session.
    let (_frames_tx, frames_rx) = tokio::sync::mpsc::channel::<pb::AgentFrame>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(frames_rx));
    request.metadata_mut().insert("authorization", bearer);
    request.metadata_mut().insert(burrow_proto::SESSION_METADATA, session_id.parse().unwrap());
    let mut tunnel = connect().await.tunnel(request).await.expect("tunnel accepted").into_inner();

    // The identity expires; the rogue ignores the GoAway and keeps both streams open.
    match control.message().await {
        Ok(Some(pb::HostControl { msg: Some(pb::host_control::Msg::GoAway(g)) })) => {
            assert_eq!(g.code, pb::GoAwayCode::TokenExpired as i32, "{g:?}")
        }
        other => panic!("expected a GoAway, got {other:?}"),
    }
    // The host ends the tunnel on the other connection by itself, soon after.
    let ended = tokio::time::timeout(Duration::from_secs(10), tunnel.message()).await;
    match ended {
        Err(_) => panic!("the tunnel on the other connection was still open 10 s after the identity expired"),
        Ok(Ok(Some(frame))) => panic!("expected the tunnel to end, got a frame {frame:?}"),
        Ok(_) => {}
    }
}
