//! The workload lifecycle (protocol minor 2) against the small test host: final
//! refusals stop the agent (and set the binary's exit code), workload tokens are renewed
//! per session, and work items run through the hook and are reported.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use burrow_agent::{AgentError, ConnState, FinalReason, WorkHook};
use burrow_proto::pb::{self, host_control, WorkItemState};
use burrow_proto::SESSION_METADATA;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tonic::metadata::MetadataMap;
use tonic::Code;

use common::*;

fn go_away(code: pb::GoAwayCode, reason: &str) -> pb::HostControl {
    pb::HostControl {
        msg: Some(host_control::Msg::GoAway(pb::GoAway {
            reason: reason.into(),
            reconnect_after_ms: 0,
            code: code as i32,
        })),
    }
}

fn header<'a>(md: &'a MetadataMap, key: &str) -> &'a str {
    md.get(key).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn stopped_with(agent: burrow_agent::AgentHandle) -> (FinalReason, String) {
    match within("the agent to stop by itself", agent.wait()).await {
        Err(AgentError::Final { reason, message }) => (reason, message),
        other => panic!("expected a final refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_final_go_away_stops_every_connection_for_good() {
    let echo = echo_service().await;
    // No replica id: both connections may share the one host.
    let mut host =
        Host::start_with(HostOptions { replica_id: String::new(), ..HostOptions::default() }).await;
    let mut cfg = config(&host, echo, 1);
    cfg.connections = 2;
    let agent = burrow_agent::spawn(cfg);
    let first = within("control", host.controls.recv()).await.unwrap();
    within("second control", host.controls.recv()).await.unwrap();
    wait_status(&agent, "both connected", |s| s.connections.iter().all(|c| c.is_connected())).await;

    // One connection hears it; the whole agent stops.
    first.tx.send(Ok(go_away(pb::GoAwayCode::WorkloadTerminated, "terminated by the admin"))).await.unwrap();
    let status = agent.status();
    assert_eq!(
        stopped_with(agent).await,
        (FinalReason::WorkloadTerminated, "terminated by the admin".to_owned())
    );
    let s = status.borrow().clone();
    assert_eq!((s.final_reason, s.state), (Some(FinalReason::WorkloadTerminated), ConnState::Stopped));
    assert!(s.last_error.as_deref().unwrap().contains("terminated by the admin"));
    // `run` has returned, so the agent's own count of connection attempts is final: the
    // two first dials and no reconnect (no need to wait and see whether one comes).
    assert_eq!(s.connect_attempts, 2, "no reconnect after a final GoAway");
    assert_eq!(host.attempt_count(), 2, "no reconnect after a final GoAway");
}

#[tokio::test]
async fn each_final_go_away_code_maps_to_its_reason_and_reconnect_does_not() {
    let echo = echo_service().await;
    for (code, want) in [
        (pb::GoAwayCode::WorkloadEnded, FinalReason::WorkloadEnded),
        (pb::GoAwayCode::TokenExpired, FinalReason::TokenExpired),
    ] {
        let mut host = Host::start(Transport::Grpc, false).await;
        let agent = burrow_agent::spawn(config(&host, echo, 1));
        let control = within("control", host.controls.recv()).await.unwrap();
        control.tx.send(Ok(go_away(code, ""))).await.unwrap();
        assert_eq!(stopped_with(agent).await, (want, String::new()));
    }
    let mut host = Host::start(Transport::Grpc, false).await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    let control = within("control", host.controls.recv()).await.unwrap();
    control.tx.send(Ok(go_away(pb::GoAwayCode::Reconnect, "draining"))).await.unwrap();
    within("a reconnect", host.controls.recv()).await.unwrap();
    assert_eq!(agent.final_reason(), None);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_refused_control_with_burrow_final_stops_at_once() {
    let echo = echo_service().await;
    let host = Host::start_with(HostOptions {
        final_control: Some((Code::Unauthenticated, burrow_proto::FINAL_TOKEN_REVOKED)),
        ..HostOptions::default()
    })
    .await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    assert_eq!(stopped_with(agent).await, (FinalReason::TokenRevoked, "the workload is over".to_owned()));
    assert_eq!(host.attempt_count(), 1);
}

#[tokio::test]
async fn an_unknown_burrow_final_value_is_an_ordinary_refusal() {
    let echo = echo_service().await;
    let host = Host::start_with(HostOptions {
        final_control: Some((Code::Unauthenticated, "workload-paused")),
        ..HostOptions::default()
    })
    .await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    let s = wait_status(&agent, "auth back-off", |s| matches!(s.state, ConnState::BackingOff { .. })).await;
    assert!(matches!(s.state, ConnState::BackingOff { auth_failure: true, .. }), "{s:?}");
    assert_eq!(s.final_reason, None);
    agent.shutdown().await;
}

#[tokio::test]
async fn each_session_renews_its_workload_token_and_new_rpcs_use_the_newest() {
    let echo = echo_service().await;
    let mut host = Host::start_with(HostOptions {
        replica_id: String::new(),
        renew_ttl: Some(Duration::from_secs(3600)),
        ..HostOptions::default()
    })
    .await;
    // Four fifths of its life gone: due at once.
    let now = unix_ms();
    let original = workload_token(now - 80_000, now + 20_000, "original");
    let mut cfg = config(&host, echo, 1);
    cfg.token = burrow_agent::Secret::new(original.clone());
    cfg.connections = 2;
    let agent = burrow_agent::spawn(cfg);

    let mut sessions = HashSet::new();
    for _ in 0..2 {
        let md = within("a renewal", host.renewals.recv()).await.unwrap();
        let auth = header(&md, "authorization");
        assert!(auth.starts_with("Bearer bwt1."), "{auth}");
        sessions.insert(header(&md, SESSION_METADATA).to_owned());
    }
    assert_eq!(sessions.len(), 2, "each session renews itself: {sessions:?}");
    // The new tokens live an hour: no more renewals now.
    assert!(timeout(Duration::from_millis(1500), host.renewals.recv()).await.is_err());

    // A tunnel opened from now on presents a renewed token. (The two parked first were
    // opened before the renewals.)
    let mut t = host.next_tunnel().await;
    let _other = host.next_tunnel().await;
    dial_echo(&mut t, "req-1").await;
    let replacement = host.next_tunnel().await;
    let auth = header(&replacement.metadata, "authorization");
    assert!(auth.starts_with("Bearer bwt1.") && auth != format!("Bearer {original}"));
    drop(t);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_static_token_is_never_renewed() {
    let echo = echo_service().await;
    let mut host = Host::start_with(HostOptions {
        renew_ttl: Some(Duration::from_secs(3600)),
        ..HostOptions::default()
    })
    .await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    host.next_tunnel().await;
    assert!(timeout(Duration::from_millis(800), host.renewals.recv()).await.is_err());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_final_refusal_of_a_renewal_stops_the_agent() {
    let echo = echo_service().await;
    let host = Host::start_with(HostOptions {
        final_renew: Some(burrow_proto::FINAL_TOKEN_EXPIRED),
        ..HostOptions::default()
    })
    .await;
    let now = unix_ms();
    let mut cfg = config(&host, echo, 1);
    cfg.token = burrow_agent::Secret::new(workload_token(now - 80_000, now + 20_000, "t"));
    let agent = burrow_agent::spawn(cfg);
    assert_eq!(stopped_with(agent).await, (FinalReason::TokenExpired, "the token was revoked".to_owned()));
}

fn sh_hook(script: &str) -> WorkHook {
    WorkHook::new("/bin/sh").arg("-c").arg(script)
}

async fn next_status(host: &mut Host) -> (pb::UpdateStatusRequest, MetadataMap) {
    within("a status update", host.statuses.recv()).await.unwrap()
}

#[tokio::test]
async fn work_items_run_in_order_through_the_hook_and_are_reported() {
    let echo = echo_service().await;
    let mut host = Host::start_with(HostOptions { work: true, ..HostOptions::default() }).await;
    host.queue.push("item-1", b"first payload");
    host.queue.push("item-2", b"second payload");
    let mut cfg = config(&host, echo, 1);
    cfg.work_hook = Some(sh_hook(
        r#"cat; echo " id=$BURROW_WORK_ITEM_ID delivery=$BURROW_WORK_DELIVERY"; [ "$BURROW_WORK_ITEM_ID" = item-1 ] || exit 3"#,
    ));
    let agent = burrow_agent::spawn(cfg);
    let control = within("control", host.controls.recv()).await.unwrap();

    let poll = within("a GetWork", host.polls.recv()).await.unwrap();
    assert_eq!(header(&poll, "authorization"), format!("Bearer {TOKEN}"));
    assert_eq!(header(&poll, SESSION_METADATA), control.session);

    let (running, md) = next_status(&mut host).await;
    assert_eq!((running.item_id.as_str(), running.state()), ("item-1", WorkItemState::Running));
    assert_eq!(header(&md, SESSION_METADATA), control.session);
    let (done, _) = next_status(&mut host).await;
    assert_eq!((done.item_id.as_str(), done.state()), ("item-1", WorkItemState::Succeeded));
    assert_eq!(done.detail, "first payload id=item-1 delivery=1");

    let (running, _) = next_status(&mut host).await;
    assert_eq!((running.item_id.as_str(), running.state()), ("item-2", WorkItemState::Running));
    let (done, _) = next_status(&mut host).await;
    assert_eq!((done.item_id.as_str(), done.state()), ("item-2", WorkItemState::Failed));
    assert_eq!(done.detail, "second payload id=item-2 delivery=1\nexit status 3");
    assert_eq!(host.queue.len(), 0);

    // The queue is empty: the agent waits in GetWork, then runs what arrives.
    host.queue.push("item-3", b"third");
    let (running, _) = next_status(&mut host).await;
    assert_eq!(running.item_id, "item-3");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_host_without_a_work_queue_is_asked_once() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let mut cfg = config(&host, echo, 1);
    cfg.work_hook = Some(sh_hook("exit 0"));
    let agent = burrow_agent::spawn(cfg);
    within("a GetWork", host.polls.recv()).await.unwrap();
    assert!(timeout(Duration::from_millis(2500), host.polls.recv()).await.is_err(), "asked again");
    // The agent itself keeps serving.
    let mut t = host.next_tunnel().await;
    dial_echo(&mut t, "req-1").await;
    assert_eq!(echo_round_trip(&mut t, b"still serving").await, b"still serving");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_work_item_cut_off_by_shutdown_is_left_for_redelivery() {
    let echo = echo_service().await;
    let mut host = Host::start_with(HostOptions { work: true, ..HostOptions::default() }).await;
    host.queue.push("slow", b"");
    let mut cfg = config(&host, echo, 1);
    cfg.work_hook = Some(sh_hook("sleep 30"));
    let agent = burrow_agent::spawn(cfg);
    let (running, _) = next_status(&mut host).await;
    assert_eq!(running.state(), WorkItemState::Running);
    within("shutdown", agent.shutdown()).await;
    assert!(host.statuses.try_recv().is_err(), "no final status for an interrupted item");
    assert_eq!(host.queue.len(), 1);
}

/// The binary: a final refusal is a distinct exit code and one line on stderr.
#[tokio::test]
async fn the_binary_exits_with_the_final_reasons_code() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_burrow-agent"))
        .args(["--host", &host.url, "--service", &format!("echo={echo}"), "--connections", "1"])
        .args(["--work-hook", "/bin/sh", "--work-hook-arg", "-c", "--work-hook-arg", "cat"])
        .env("BURROW_AGENT_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let control = within("control", host.controls.recv()).await.unwrap();
    control.tx.send(Ok(go_away(pb::GoAwayCode::WorkloadTerminated, "maintenance"))).await.unwrap();
    let status = within("the agent to exit", child.wait()).await.unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.ends_with("burrow-agent: the workload was terminated (reason: maintenance); exiting\n"),
        "{stderr}"
    );
}
