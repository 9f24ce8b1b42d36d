//! Helpers for the workload lifecycle tests: hosts with a `[control]` table, a control
//! API client, and workload agents started with the token `CreateWorkload` returned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_host::control_api::client::ControlClient;
use burrow_proto::control_pb as pb;

use crate::{sha256_hex, ConfigParts, TestHost, ALICE_TOKEN, BOB_TOKEN};

/// The control API secret the tests share with their hosts.
pub const CONTROL_SECRET: &str = "test-control-secret-0123456789abcdef";

/// A directory for a test's key, secret and state files, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "burrow-{name}-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("control.secret"), CONTROL_SECRET).unwrap();
        Dir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `[control]` table for files in `dir` (one shared signing key; a state file on a
/// single host), plus `extra` keys.
pub fn control_table(dir: &Path, extra: &str) -> String {
    format!(
        "\n[control]\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{}\"\nsigning_keys = [\"{}\"]\nstate_file = \"{}\"\nresync = \"1s\"\n{extra}\n",
        dir.join("control.secret").display(),
        dir.join("agent-token.key").display(),
        dir.join("workloads.json").display(),
    )
}

/// Users alice and bob (by [`ALICE_TOKEN`], [`BOB_TOKEN`]) and no rules: control-plane
/// workloads decide by their own owner, users and groups.
pub fn users_only() -> String {
    format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ default_access = \"deny\", users = [{{ name = \"alice\", token_sha256 = \"{}\" }}, {{ name = \"bob\", token_sha256 = \"{}\", groups = [\"dev\"] }}] }}",
        sha256_hex(ALICE_TOKEN),
        sha256_hex(BOB_TOKEN)
    )
}

/// Config parts for a single host with the lifecycle (and a `ci-job` kind besides
/// `workspace`).
pub fn single_host(dir: &Path) -> ConfigParts {
    ConfigParts {
        authorizer: users_only(),
        extra: format!(
            "[[plugins.workload]]\nsource = \"builtin:workload-ci-job\"\nconfig = {{ root_domains = [\"ci.localhost\"] }}\n{}",
            control_table(dir, "")
        ),
        ..Default::default()
    }
}

/// A control API client for `host`.
pub async fn client(host: &TestHost) -> ControlClient {
    let addr = host.control_addr.expect("the host has a [control] table");
    ControlClient::connect(&format!("http://{addr}"), CONTROL_SECRET.as_bytes(), "test")
        .await
        .expect("control API")
}

/// A `CreateWorkload` request for a workspace owned by alice offering `web`.
pub fn workspace(id: &str) -> pb::CreateWorkloadRequest {
    pb::CreateWorkloadRequest {
        kind: "workspace".into(),
        id: id.into(),
        owner: "alice".into(),
        allowed_users: vec![],
        allowed_groups: vec![],
        services: vec!["web".into()],
        expires_at_ms: 0,
        labels: HashMap::new(),
        token_ttl_s: 0,
    }
}

/// Creates a workload; returns its first agent token.
pub async fn create(client: &mut ControlClient, request: pb::CreateWorkloadRequest) -> pb::AgentToken {
    let request = client.request(request);
    client.api().create_workload(request).await.expect("CreateWorkload").into_inner().token.expect("a token")
}

/// Terminates a workload.
pub async fn terminate(client: &mut ControlClient, id: &str, reason: &str) -> pb::Workload {
    let request = client.request(pb::TerminateWorkloadRequest { id: id.into(), reason: reason.into() });
    client.api().terminate_workload(request).await.expect("TerminateWorkload").into_inner().workload.unwrap()
}

/// Reads a workload.
pub async fn get(client: &mut ControlClient, id: &str) -> pb::Workload {
    let request = client.request(pb::GetWorkloadRequest { id: id.into() });
    client.api().get_workload(request).await.expect("GetWorkload").into_inner()
}

/// Waits (for readiness, never to time anything) until `check` holds for the workload.
pub async fn wait_workload(
    client: &mut ControlClient,
    id: &str,
    what: &str,
    check: impl Fn(&pb::Workload) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let w = get(client, id).await;
        if check(&w) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for workload {id}: {what}; last seen {w:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a `Control` RPC with `token` the way an agent does and returns the refusal's
/// `burrow-final` value and message (panics if the host accepted it).
pub async fn refusal(agent_addr: std::net::SocketAddr, token: &str) -> (Option<String>, tonic::Code, String) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{agent_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = burrow_proto::pb::agent_tunnel_client::AgentTunnelClient::new(channel);
    let hello = burrow_proto::pb::AgentControl {
        msg: Some(burrow_proto::pb::agent_control::Msg::Hello(burrow_proto::pb::Hello {
            protocol_version: burrow_proto::PROTOCOL_VERSION,
            protocol_minor: burrow_proto::PROTOCOL_MINOR,
            agent_version: "test".into(),
            replica_id: "probe".into(),
            services: vec![],
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![hello]));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match client.control(request).await {
        Ok(_) => panic!("the host accepted the token"),
        Err(status) => (
            status
                .metadata()
                .get(burrow_proto::FINAL_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            status.code(),
            status.message().to_owned(),
        ),
    }
}

/// Waits until the agent has stopped for good and returns why.
pub async fn final_reason(agent: &burrow_agent::AgentHandle) -> burrow_agent::FinalReason {
    let mut status = agent.status();
    let wait = async {
        loop {
            if let Some(reason) = status.borrow_and_update().final_reason {
                return reason;
            }
            if status.changed().await.is_err() {
                return agent.final_reason().expect("the agent stopped with a final reason");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("the agent stopped for good within 20 s")
}

/// A WebSocket to the workload's `/ws` echo through the ingress, as alice.
pub async fn websocket_as_alice(
    ingress: std::net::SocketAddr,
    host: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(ingress).await.unwrap();
    let mut request = format!("ws://{host}/ws").into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", crate::ALICE_TOKEN).parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(request, tcp).await.expect("WebSocket handshake");
    ws
}

/// One echo round trip on an open WebSocket.
pub async fn echo(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("ping")).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "ping"),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Waits until the WebSocket ends (close frame, error or EOF); returns the time since
/// `since`. Fails the test after 10 s.
pub async fn wait_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    since: tokio::time::Instant,
) -> Duration {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => panic!("the WebSocket stayed open 10 s after the workload was terminated"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return since.elapsed(),
            Ok(Some(Ok(_))) => continue,
        }
    }
}
