//! The `WorkloadControl` gRPC service over the lifecycle.

use std::sync::Arc;

use burrow_host_cluster::token::TokenKey;
use burrow_host_plugins::Plugins;
use burrow_host_workloads::queue::{WorkState, WorkStatus};
use burrow_host_workloads::record::{EndState, WorkloadRecord};
use burrow_host_workloads::{IssuedToken, Lifecycle, LifecycleError};
use burrow_proto::control_pb as pb;
use tonic::{Request, Response, Status};

/// Audience of control tokens.
pub const AUDIENCE: &str = "burrow-control";
/// Domain separating control tokens from replica tokens under the same HMAC construction.
pub const DOMAIN: &[u8] = b"burrow-control-token.v1.";

pub(crate) struct ControlService {
    pub lifecycle: Arc<Lifecycle>,
    pub plugins: Arc<Plugins>,
    pub key: TokenKey,
}

fn status_of(e: LifecycleError) -> Status {
    match e {
        LifecycleError::Invalid(m) => Status::invalid_argument(m),
        LifecycleError::NotFound(_) | LifecycleError::UnknownItem(_) => Status::not_found(e.to_string()),
        LifecycleError::Exists(_) => Status::already_exists(e.to_string()),
        LifecycleError::Ended { .. } | LifecycleError::UnknownKind(_) => {
            Status::failed_precondition(e.to_string())
        }
        LifecycleError::QueueFull(m) => Status::resource_exhausted(m),
        LifecycleError::Unavailable(m) => Status::unavailable(m),
    }
}

fn token_pb(t: IssuedToken) -> pb::AgentToken {
    pb::AgentToken { token: t.token, expires_at_ms: t.expires_at, token_id: t.token_id }
}

/// A record as the API shows it.
pub fn workload_pb(record: &WorkloadRecord, connections: &[(String, u64)]) -> pb::Workload {
    let now = burrow_host_time::now_ms();
    let end = record.end(now);
    let state = match &end {
        Some(e) if e.state == EndState::Terminated => pb::WorkloadState::Terminated,
        Some(_) => pb::WorkloadState::Expired,
        None if connections.is_empty() => pb::WorkloadState::Waiting,
        None => pb::WorkloadState::Connected,
    };
    pb::Workload {
        kind: record.kind.clone(),
        id: record.id.clone(),
        owner: record.owner.clone(),
        allowed_users: record.allowed_users.clone(),
        allowed_groups: record.allowed_groups.clone(),
        services: record.services.clone(),
        expires_at_ms: record.expires_at,
        labels: record.labels.clone().into_iter().collect(),
        created_at_ms: record.created_at,
        state: state as i32,
        ended_at_ms: end.as_ref().map_or(0, |e| e.at),
        end_reason: end.map(|e| e.reason).unwrap_or_default(),
        connections: if record.is_over(now) {
            Vec::new()
        } else {
            connections
                .iter()
                .map(|(replica, since)| pb::AgentConnection { replica_id: replica.clone(), since_ms: *since })
                .collect()
        },
    }
}

fn work_pb(s: WorkStatus) -> pb::WorkItemStatus {
    let state = match s.state {
        WorkState::Queued => pb::WorkState::Queued,
        WorkState::Delivered => pb::WorkState::Delivered,
        WorkState::Running => pb::WorkState::Running,
        WorkState::Succeeded => pb::WorkState::Succeeded,
        WorkState::Failed => pb::WorkState::Failed,
    };
    pb::WorkItemStatus {
        item_id: s.id,
        state: state as i32,
        deliveries: s.deliveries,
        detail: s.detail,
        enqueued_at_ms: s.enqueued_at,
        updated_at_ms: s.updated_at,
    }
}

impl ControlService {
    fn authorize<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let value = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization metadata (Bearer <control token>)")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be: Bearer <control token>")
            })?;
        self.key.verify(token.trim(), AUDIENCE).map_err(|e| {
            tracing::info!(error = %e, "control API call refused");
            Status::unauthenticated(format!("control token refused: {e}"))
        })
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    burrow_host_workloads::record::check_id(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::workload_control_server::WorkloadControl for ControlService {
    async fn create_workload(
        &self,
        request: Request<pb::CreateWorkloadRequest>,
    ) -> Result<Response<pb::CreateWorkloadResponse>, Status> {
        let caller = self.authorize(&request)?;
        let r = request.into_inner();
        burrow_host_workloads::record::check_kind(&r.kind)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !self.plugins.serves_kind(&r.kind) {
            return Err(status_of(LifecycleError::UnknownKind(r.kind)));
        }
        let record = WorkloadRecord {
            kind: r.kind,
            id: r.id,
            owner: r.owner,
            allowed_users: r.allowed_users,
            allowed_groups: r.allowed_groups,
            services: r.services,
            expires_at: r.expires_at_ms,
            labels: r.labels.into_iter().collect(),
            created_at: 0,
            ended: None,
        };
        let (record, token) = self.lifecycle.create(record, r.token_ttl_s).await.map_err(status_of)?;
        tracing::debug!(%caller, id = %record.id, "CreateWorkload");
        Ok(Response::new(pb::CreateWorkloadResponse {
            workload: Some(workload_pb(&record, &[])),
            token: Some(token_pb(token)),
        }))
    }

    async fn renew_token(
        &self,
        request: Request<pb::RenewTokenRequest>,
    ) -> Result<Response<pb::RenewTokenResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        check_id(&r.id)?;
        let token = self.lifecycle.renew(&r.id, r.token_ttl_s).await.map_err(status_of)?;
        Ok(Response::new(pb::RenewTokenResponse { token: Some(token_pb(token)) }))
    }

    async fn terminate_workload(
        &self,
        request: Request<pb::TerminateWorkloadRequest>,
    ) -> Result<Response<pb::TerminateWorkloadResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        check_id(&r.id)?;
        let record = self.lifecycle.terminate(&r.id, &r.reason).await.map_err(status_of)?;
        Ok(Response::new(pb::TerminateWorkloadResponse { workload: Some(workload_pb(&record, &[])) }))
    }

    async fn get_workload(
        &self,
        request: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        check_id(&r.id)?;
        let (record, connections) = self.lifecycle.get(&r.id).await.map_err(status_of)?;
        Ok(Response::new(workload_pb(&record, &connections)))
    }

    async fn list_workloads(
        &self,
        request: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let list = self.lifecycle.list(&r.kind, r.include_ended).await.map_err(status_of)?;
        Ok(Response::new(pb::ListWorkloadsResponse {
            workloads: list.iter().map(|(record, conns)| workload_pb(record, conns)).collect(),
        }))
    }

    async fn enqueue_work(
        &self,
        request: Request<pb::EnqueueWorkRequest>,
    ) -> Result<Response<pb::EnqueueWorkResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        check_id(&r.id)?;
        let item_id = self.lifecycle.enqueue(&r.id, &r.payload).await.map_err(status_of)?;
        Ok(Response::new(pb::EnqueueWorkResponse { item_id }))
    }

    async fn list_work(
        &self,
        request: Request<pb::ListWorkRequest>,
    ) -> Result<Response<pb::ListWorkResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        check_id(&r.id)?;
        let items = self.lifecycle.list_work(&r.id).await.map_err(status_of)?;
        Ok(Response::new(pb::ListWorkResponse { items: items.into_iter().map(work_pb).collect() }))
    }
}
