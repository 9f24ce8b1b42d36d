//! The control API calls the suite makes, through the host's own [`ControlClient`] (a
//! fresh HMAC control token per call, as `burrow-host workload` and a control plane do).
//!
//! The bench does not depend on `burrow-proto` (adding a dependency would change
//! `Cargo.lock`), so it cannot name the generated request types. [`message`] gets each
//! one from the RPC it is passed to; the enum values it compares are copied from
//! `proto/proto/burrow/control/v1/control.proto`.

use anyhow::Context;
use burrow_host::control_api::client::ControlClient;

/// `WORKLOAD_STATE_CONNECTED` (`WorkloadState` in control.proto).
pub(super) const WORKLOAD_STATE_CONNECTED: i32 = 2;
/// `WORK_STATE_SUCCEEDED` (`WorkState` in control.proto).
pub(super) const WORK_STATE_SUCCEEDED: i32 = 4;
/// `WORK_STATE_FAILED`.
pub(super) const WORK_STATE_FAILED: i32 = 5;

/// Calls `send` with a message of the type it sends, made with `Default` and then filled
/// in by `fill`. `send` comes first so the compiler learns the type from the RPC call in
/// it before it checks the field assignments in `fill`.
fn message<T: Default, R>(send: impl FnOnce(T) -> R, fill: impl FnOnce(&mut T)) -> R {
    let mut message = T::default();
    fill(&mut message);
    send(message)
}

/// `CreateWorkload` of a workspace owned by alice offering `web` (the tests' request);
/// returns the agent token.
pub(super) async fn create(control: &mut ControlClient, id: &str) -> anyhow::Result<String> {
    let request = control.request(burrow_tests::lifecycle::workspace(id));
    let response =
        control.api().create_workload(request).await.with_context(|| format!("CreateWorkload {id}"))?;
    Ok(response.into_inner().token.context("CreateWorkload returned no token")?.token)
}

/// A workload's state and, per replica holding its agent, since when (Unix ms, the
/// host's clock).
pub(super) struct Workload {
    pub(super) state: i32,
    pub(super) since_ms: Vec<u64>,
}

pub(super) async fn get(control: &mut ControlClient, id: &str) -> anyhow::Result<Workload> {
    let workload = message(
        |m| {
            let request = control.request(m);
            control.api().get_workload(request)
        },
        |m| m.id = id.to_owned(),
    )
    .await
    .with_context(|| format!("GetWorkload {id}"))?
    .into_inner();
    Ok(Workload {
        state: workload.state,
        since_ms: workload.connections.iter().map(|c| c.since_ms).collect(),
    })
}

pub(super) async fn terminate(control: &mut ControlClient, id: &str) -> anyhow::Result<()> {
    message(
        |m| {
            let request = control.request(m);
            control.api().terminate_workload(request)
        },
        |m| {
            m.id = id.to_owned();
            m.reason = "burrow-bench: sample done".to_owned();
        },
    )
    .await
    .with_context(|| format!("TerminateWorkload {id}"))?;
    Ok(())
}

/// `EnqueueWork`; returns the item id.
pub(super) async fn enqueue(control: &mut ControlClient, id: &str, payload: &[u8]) -> anyhow::Result<String> {
    let response = message(
        |m| {
            let request = control.request(m);
            control.api().enqueue_work(request)
        },
        |m| {
            m.id = id.to_owned();
            m.payload = payload.to_vec();
        },
    )
    .await
    .with_context(|| format!("EnqueueWork {id}"))?;
    Ok(response.into_inner().item_id)
}

/// One work item's status as `ListWork` shows it.
pub(super) struct Item {
    pub(super) item_id: String,
    pub(super) state: i32,
    pub(super) deliveries: u32,
    pub(super) detail: String,
    /// When the host recorded the latest state (Unix ms, the host's clock).
    pub(super) updated_at_ms: u64,
}

pub(super) async fn list_work(control: &mut ControlClient, id: &str) -> anyhow::Result<Vec<Item>> {
    let response = message(
        |m| {
            let request = control.request(m);
            control.api().list_work(request)
        },
        |m| m.id = id.to_owned(),
    )
    .await
    .with_context(|| format!("ListWork {id}"))?;
    Ok(response
        .into_inner()
        .items
        .into_iter()
        .map(|i| Item {
            item_id: i.item_id,
            state: i.state,
            deliveries: i.deliveries,
            detail: i.detail,
            updated_at_ms: i.updated_at_ms,
        })
        .collect())
}
