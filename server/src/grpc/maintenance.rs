//! etcd's Maintenance service: Status, Alarm (alarms are replicated through Raft),
//! Hash and HashKV. Defragment, Snapshot, MoveLeader and Downgrade belong to the rest of
//! the cluster-operations work and answer UNIMPLEMENTED until then.

use crate::node::Node;
use cairn_api::cairnpb::{raft_request, raft_response, RaftRequest};
use cairn_api::etcdserverpb::maintenance_server::Maintenance;
use cairn_api::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, HashKvRequest, HashKvResponse, HashRequest,
    HashResponse, StatusRequest, StatusResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The etcd API version Cairn speaks, reported by Status (clients gate features on it).
pub const ETCD_API_VERSION: &str = "3.5.0";

/// An alarm as etcd prints it (`memberID:... alarm:NOSPACE`).
pub fn alarm_text(member: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm).map_or_else(|_| alarm.to_string(), |a| a.as_str_name().to_string());
    format!("memberID:{member} alarm:{name}")
}

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
            errors: node.read(|st| st.alarms.iter().map(|(m, a)| alarm_text(*m, *a)).collect()),
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = req.into_inner();
        match alarm_request::AlarmAction::try_from(r.action) {
            Ok(alarm_request::AlarmAction::Get) => {
                let (rev, alarms) = self.node.read(|st| {
                    let alarms = st
                        .alarms
                        .iter()
                        .filter(|(m, a)| (r.member_id == 0 || *m == r.member_id) && (r.alarm == 0 || *a == r.alarm))
                        .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
                        .collect();
                    (st.mvcc.current_revision(), alarms)
                });
                Ok(Response::new(AlarmResponse { header: Some(self.node.header(rev)), alarms }))
            }
            Ok(alarm_request::AlarmAction::Activate | alarm_request::AlarmAction::Deactivate) => {
                if AlarmType::try_from(r.alarm).is_err() {
                    return Err(Status::invalid_argument("etcdserver: unknown alarm type"));
                }
                let resp = self.node.propose(RaftRequest { request: Some(raft_request::Request::Alarm(r)) }).await?;
                match resp.response {
                    Some(raft_response::Response::Alarm(mut a)) => {
                        a.header = Some(self.node.header(resp.revision));
                        Ok(Response::new(a))
                    }
                    other => Err(Status::internal(format!("etcdserver: unexpected apply result {other:?}"))),
                }
            }
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let (hash, compact_revision, rev) = self.node.hash_kv(req.get_ref().revision).map_err(Status::from)?;
        let hash_revision = if req.get_ref().revision > 0 { req.get_ref().revision } else { rev };
        Ok(Response::new(HashKvResponse { header: Some(self.node.header(rev)), hash, compact_revision, hash_revision }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, _, rev) = self.node.hash_kv(0).map_err(Status::from)?;
        Ok(Response::new(HashResponse { header: Some(self.node.header(rev)), hash }))
    }
}
