//! The agents' work queue end to end: the control plane enqueues through the control API,
//! the workload's real agent long-polls over its connection and runs its hook (a real
//! program), and the status comes back. `cargo test queue` runs these.

use std::path::Path;
use std::time::Duration;

use burrow_host::control_api::client::ControlClient;
use burrow_proto::control_pb as pb;
use burrow_tests::lifecycle::{client, create, single_host, workspace, Dir};
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, wait_connected, TestHost};

/// An agent for a workload whose hook runs `script` with `sh -c`.
async fn agent(host: &TestHost, token: &str, web: &Workload, script: &str) -> burrow_agent::AgentHandle {
    let mut config = agent_config(&host.agent_url("grpc"), token, &[format!("web={}", web.addr)]);
    config.work_hook = Some(burrow_agent::WorkHook::new("/bin/sh").arg("-c").arg(script));
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    agent
}

async fn enqueue(control: &mut ControlClient, id: &str, payload: &[u8]) -> String {
    let request = control.request(pb::EnqueueWorkRequest { id: id.into(), payload: payload.to_vec() });
    control.api().enqueue_work(request).await.expect("EnqueueWork").into_inner().item_id
}

async fn items(control: &mut ControlClient, id: &str) -> Vec<pb::WorkItemStatus> {
    let request = control.request(pb::ListWorkRequest { id: id.into() });
    control.api().list_work(request).await.expect("ListWork").into_inner().items
}

/// Waits (for readiness) until the item reaches `state`; returns its status.
async fn wait_item(
    control: &mut ControlClient,
    id: &str,
    item: &str,
    state: pb::WorkState,
) -> pb::WorkItemStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let all = items(control, id).await;
        if let Some(found) = all.iter().find(|i| i.item_id == item && i.state == state as i32) {
            return found.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("work item {item} of {id} never reached {state:?}: {all:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_item_reaches_the_right_agent_exactly_once_and_its_status_is_read_back() {
    let dir = Dir::new("queue");
    let host = TestHost::start(single_host(dir.path()).build()).await;
    let mut control = client(&host).await;
    let web = Workload::start("ws").await;
    let log = |id: &str| dir.path().join(format!("{id}.log"));
    let mut agents = Vec::new();
    for id in ["ws-q1", "ws-q2"] {
        let token = create(&mut control, workspace(id)).await;
        let script = format!("cat >> {}; echo; echo applied $BURROW_WORK_ITEM_ID", log(id).display());
        agents.push(agent(&host, &token.token, &web, &script).await);
    }

    let first = enqueue(&mut control, "ws-q1", b"config v1\n").await;
    let second = enqueue(&mut control, "ws-q1", b"config v2\n").await;
    let done = wait_item(&mut control, "ws-q1", &second, pb::WorkState::Succeeded).await;
    assert_eq!(done.deliveries, 1);
    assert!(done.detail.contains(&format!("applied {second}")), "{}", done.detail);
    let all = items(&mut control, "ws-q1").await;
    assert_eq!(
        all.iter().map(|i| i.item_id.as_str()).collect::<Vec<_>>(),
        vec![first.as_str(), second.as_str()]
    );
    assert!(all.iter().all(|i| i.state == pb::WorkState::Succeeded as i32 && i.deliveries == 1), "{all:?}");
    // Each payload once, in order, and only on the workload it was queued for.
    assert_eq!(read(&log("ws-q1")), "config v1\nconfig v2\n");
    assert_eq!(read(&log("ws-q2")), "");
    assert!(items(&mut control, "ws-q2").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_item_is_delivered_again_after_the_agent_crashed_before_acknowledging() {
    let dir = Dir::new("queue-crash");
    let host = TestHost::start(single_host(dir.path()).build()).await;
    let mut control = client(&host).await;
    let web = Workload::start("ws").await;
    let token = create(&mut control, workspace("ws-q3")).await;
    let seen = dir.path().join("seen");
    // The first agent takes the item and never finishes it.
    let first = agent(&host, &token.token, &web, &format!("cat >> {}; exec sleep 600", seen.display())).await;
    let item = enqueue(&mut control, "ws-q3", b"job").await;
    wait_item(&mut control, "ws-q3", &item, pb::WorkState::Running).await;
    // The hook has the item (RUNNING is reported as it starts, before it reads stdin).
    burrow_tests::eventually(Duration::from_secs(20), "the first hook read the item", || {
        read(&seen) == "job"
    })
    .await;
    first.shutdown().await;

    let second = agent(&host, &token.token, &web, "cat > /dev/null; echo second").await;
    let done = wait_item(&mut control, "ws-q3", &item, pb::WorkState::Succeeded).await;
    assert_eq!(done.deliveries, 2, "delivered once to each agent");
    assert!(done.detail.contains("second"), "{}", done.detail);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_items_survive_a_host_restart_and_reach_the_agent_that_connects_after() {
    let dir = Dir::new("queue-restart");
    let mut host = TestHost::start(single_host(dir.path()).build()).await;
    let mut control = client(&host).await;
    let token = create(&mut control, workspace("ws-q4")).await;
    let item = enqueue(&mut control, "ws-q4", b"queued before the restart").await;
    host.restart().await;

    let web = Workload::start("ws").await;
    let out = dir.path().join("out");
    let _agent = agent(&host, &token.token, &web, &format!("cat > {}", out.display())).await;
    let mut control = client(&host).await;
    let done = wait_item(&mut control, "ws-q4", &item, pb::WorkState::Succeeded).await;
    assert_eq!(done.deliveries, 1);
    assert_eq!(read(&out), "queued before the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_reports_a_failing_hook_with_its_output_and_moves_on() {
    let dir = Dir::new("queue-fail");
    let host = TestHost::start(single_host(dir.path()).build()).await;
    let mut control = client(&host).await;
    let web = Workload::start("ws").await;
    let token = create(&mut control, workspace("ws-q5")).await;
    let _agent = agent(
        &host,
        &token.token,
        &web,
        "read line; [ \"$line\" = ok ] || { echo \"bad item: $line\" >&2; exit 3; }",
    )
    .await;
    let bad = enqueue(&mut control, "ws-q5", b"nope\n").await;
    let good = enqueue(&mut control, "ws-q5", b"ok\n").await;
    let failed = wait_item(&mut control, "ws-q5", &bad, pb::WorkState::Failed).await;
    assert!(failed.detail.contains("bad item: nope"), "{}", failed.detail);
    assert!(failed.detail.contains('3'), "the exit status is reported: {}", failed.detail);
    wait_item(&mut control, "ws-q5", &good, pb::WorkState::Succeeded).await;
}
