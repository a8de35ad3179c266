//! etcd's Maintenance service. Status and Alarm(GET) are served now; Hash, HashKV,
//! Defragment, Snapshot, MoveLeader and Downgrade belong to the cluster-operations work
//! and answer UNIMPLEMENTED until then.

use crate::node::Node;
use cairn_api::etcdserverpb::maintenance_server::Maintenance;
use cairn_api::etcdserverpb::{alarm_request, AlarmRequest, AlarmResponse, StatusRequest, StatusResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The etcd API version Cairn speaks, reported by Status (clients gate features on it).
pub const ETCD_API_VERSION: &str = "3.5.0";

/// The Maintenance service of one member.
pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    /// The Maintenance service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let m = node.raft.metrics().borrow().clone();
        let (rev, applied) = node.read(|st| (st.mvcc.current_revision(), st.last_applied.map_or(0, |l| l.index)));
        let db_size = node.engine.size_on_disk() as i64;
        let is_learner = m.membership_config.membership().learner_ids().any(|id| id == node.id);
        Ok(Response::new(StatusResponse {
            header: Some(node.header(rev)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: applied,
            errors: vec![],
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let rev = self.node.read(|st| st.mvcc.current_revision());
        match alarm_request::AlarmAction::try_from(req.get_ref().action) {
            // No alarm can be raised yet (quotas and corruption checks come with cluster
            // operations), so the list is empty and disarming is a no-op.
            Ok(alarm_request::AlarmAction::Get) | Ok(alarm_request::AlarmAction::Deactivate) => {
                Ok(Response::new(AlarmResponse { header: Some(self.node.header(rev)), alarms: vec![] }))
            }
            Ok(alarm_request::AlarmAction::Activate) => {
                Err(Status::unimplemented("cairn: raising alarms by request is not implemented yet"))
            }
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
    }
}
