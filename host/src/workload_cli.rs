//! `burrow-host workload ...`: drive the control API from a shell. Reads the host's
//! config for the control API's address and secret, signs its own control tokens.

use std::collections::HashMap;
use std::time::Duration;

use burrow_host_control::client::ControlClient;
use burrow_proto::control_pb as pb;

use crate::config::Config;

/// What to do.
#[derive(Debug, Clone)]
pub enum WorkloadAction {
    Create {
        kind: String,
        id: String,
        owner: String,
        users: Vec<String>,
        groups: Vec<String>,
        services: Vec<String>,
        expires_in: Option<Duration>,
        labels: Vec<(String, String)>,
        token_ttl: Option<Duration>,
    },
    Token {
        id: String,
        ttl: Option<Duration>,
    },
    Terminate {
        id: String,
        reason: String,
    },
    Get {
        id: String,
    },
    List {
        kind: String,
        all: bool,
    },
    Enqueue {
        id: String,
        payload: Vec<u8>,
    },
    Work {
        id: String,
    },
}

/// A `burrow-host workload` call failed; the message says why (a gRPC status's code
/// and message, or the config problem).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadCliError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Connect(#[from] burrow_host_control::client::ClientError),
    #[error("{}: {}", .0.code(), .0.message())]
    Call(#[from] tonic::Status),
}

fn secs(d: Option<Duration>) -> u32 {
    d.map_or(0, |d| d.as_secs().clamp(1, u32::MAX as u64) as u32)
}

/// The control API URL for `config` (its listen address; a wildcard means this machine).
pub fn control_url(config: &Config) -> Result<String, WorkloadCliError> {
    let control = config.control.as_ref().ok_or_else(|| {
        WorkloadCliError::Config("the config has no [control] table: this host runs no control API".into())
    })?;
    let mut addr = control.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("http://{addr}"))
}

/// Runs one action; returns what to print on stdout.
pub async fn run(
    config: &Config,
    url: Option<String>,
    action: WorkloadAction,
    json: bool,
) -> Result<String, WorkloadCliError> {
    let control = config
        .control
        .as_ref()
        .ok_or_else(|| WorkloadCliError::Config("the config has no [control] table".into()))?;
    let secret = control.load_secret().map_err(WorkloadCliError::Config)?;
    let url = match url {
        Some(u) => u,
        None => control_url(config)?,
    };
    let issuer = format!("cli@{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    let mut client = ControlClient::connect(&url, &secret, &issuer).await?;
    let out = match action {
        WorkloadAction::Create {
            kind,
            id,
            owner,
            users,
            groups,
            services,
            expires_in,
            labels,
            token_ttl,
        } => {
            let expires_at_ms = expires_in.map_or(0, |d| burrow_host_time::now_ms() + d.as_millis() as u64);
            let request = client.request(pb::CreateWorkloadRequest {
                kind,
                id,
                owner,
                allowed_users: users,
                allowed_groups: groups,
                services,
                expires_at_ms,
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
                token_ttl_s: secs(token_ttl),
            });
            let r = client.api().create_workload(request).await?.into_inner();
            let token = r.token.unwrap_or_default();
            if json {
                serde_json::json!({
                    "workload": r.workload.as_ref().map(workload_json),
                    "token": token.token,
                    "token_expires_at_ms": token.expires_at_ms,
                    "token_id": token.token_id,
                })
                .to_string()
            } else {
                // The token alone on stdout, for `BURROW_AGENT_TOKEN=$(burrow-host workload create ...)`.
                token.token
            }
        }
        WorkloadAction::Token { id, ttl } => {
            let request = client.request(pb::RenewTokenRequest { id, token_ttl_s: secs(ttl) });
            let token = client.api().renew_token(request).await?.into_inner().token.unwrap_or_default();
            if json {
                serde_json::json!({"token": token.token, "token_expires_at_ms": token.expires_at_ms, "token_id": token.token_id}).to_string()
            } else {
                token.token
            }
        }
        WorkloadAction::Terminate { id, reason } => {
            let request = client.request(pb::TerminateWorkloadRequest { id, reason });
            let w = client.api().terminate_workload(request).await?.into_inner().workload.unwrap_or_default();
            if json {
                workload_json(&w).to_string()
            } else {
                workload_line(&w)
            }
        }
        WorkloadAction::Get { id } => {
            let request = client.request(pb::GetWorkloadRequest { id });
            let w = client.api().get_workload(request).await?.into_inner();
            if json {
                workload_json(&w).to_string()
            } else {
                workload_line(&w)
            }
        }
        WorkloadAction::List { kind, all } => {
            let request = client.request(pb::ListWorkloadsRequest { kind, include_ended: all });
            let list = client.api().list_workloads(request).await?.into_inner().workloads;
            if json {
                serde_json::Value::Array(list.iter().map(workload_json).collect()).to_string()
            } else {
                list.iter().map(workload_line).collect::<Vec<_>>().join("\n")
            }
        }
        WorkloadAction::Enqueue { id, payload } => {
            let request = client.request(pb::EnqueueWorkRequest { id, payload });
            client.api().enqueue_work(request).await?.into_inner().item_id
        }
        WorkloadAction::Work { id } => {
            let request = client.request(pb::ListWorkRequest { id });
            let items = client.api().list_work(request).await?.into_inner().items;
            if json {
                serde_json::Value::Array(items.iter().map(work_json).collect()).to_string()
            } else {
                items
                    .iter()
                    .map(|i| {
                        format!(
                            "{} {} deliveries={} {}",
                            i.item_id,
                            work_state(i.state),
                            i.deliveries,
                            i.detail.trim()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    };
    Ok(out)
}

fn state_name(state: i32) -> &'static str {
    match pb::WorkloadState::try_from(state) {
        Ok(pb::WorkloadState::Waiting) => "waiting",
        Ok(pb::WorkloadState::Connected) => "connected",
        Ok(pb::WorkloadState::Terminated) => "terminated",
        Ok(pb::WorkloadState::Expired) => "expired",
        _ => "unknown",
    }
}

fn work_state(state: i32) -> &'static str {
    match pb::WorkState::try_from(state) {
        Ok(pb::WorkState::Queued) => "queued",
        Ok(pb::WorkState::Delivered) => "delivered",
        Ok(pb::WorkState::Running) => "running",
        Ok(pb::WorkState::Succeeded) => "succeeded",
        Ok(pb::WorkState::Failed) => "failed",
        _ => "unknown",
    }
}

fn workload_line(w: &pb::Workload) -> String {
    let replicas: Vec<&str> = w.connections.iter().map(|c| c.replica_id.as_str()).collect();
    let mut line = format!("{} {} {} owner={}", w.kind, w.id, state_name(w.state), w.owner);
    if !replicas.is_empty() {
        line.push_str(&format!(" on={}", replicas.join(",")));
    }
    if !w.end_reason.is_empty() {
        line.push_str(&format!(" reason={:?}", w.end_reason));
    }
    line
}

fn workload_json(w: &pb::Workload) -> serde_json::Value {
    serde_json::json!({
        "kind": w.kind,
        "id": w.id,
        "owner": w.owner,
        "allowed_users": w.allowed_users,
        "allowed_groups": w.allowed_groups,
        "services": w.services,
        "expires_at_ms": w.expires_at_ms,
        "labels": w.labels,
        "created_at_ms": w.created_at_ms,
        "state": state_name(w.state),
        "ended_at_ms": w.ended_at_ms,
        "end_reason": w.end_reason,
        "connections": w.connections.iter().map(|c| serde_json::json!({"replica_id": c.replica_id, "since_ms": c.since_ms})).collect::<Vec<_>>(),
    })
}

fn work_json(i: &pb::WorkItemStatus) -> serde_json::Value {
    serde_json::json!({
        "item_id": i.item_id,
        "state": work_state(i.state),
        "deliveries": i.deliveries,
        "detail": i.detail,
        "enqueued_at_ms": i.enqueued_at_ms,
        "updated_at_ms": i.updated_at_ms,
    })
}
