//! etcd's Maintenance service: Status, Alarm (alarms are replicated through Raft), Hash
//! and HashKV, Defragment (this member's engine file), Snapshot (a checksummed backup of
//! a frozen view, streamed while writes go on) and MoveLeader ([`crate::membership`]).
//! Downgrade answers UNIMPLEMENTED (there is one Cairn storage version).

use super::Ctx;
use cairn_api::cairnpb::{raft_request, raft_response};
use cairn_api::etcdserverpb::maintenance_server::Maintenance;
use cairn_api::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use std::io::Read;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Bytes per Snapshot message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 64 << 10;

/// An alarm as etcd prints it (`memberID:... alarm:NOSPACE`).
pub fn alarm_text(member: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm).map_or_else(|_| alarm.to_string(), |a| a.as_str_name().to_string());
    format!("memberID:{member} alarm:{name}")
}

/// The Maintenance service of one member.
pub struct MaintenanceService {
    ctx: Ctx,
}

impl MaintenanceService {
    /// The Maintenance service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { ctx: ctx.clone() }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let ctx = &self.ctx;
        let m = ctx.replica.raft().metrics().borrow().clone();
        let (rev, applied) =
            ctx.replica.with_state(|st| (st.mvcc.current_revision(), st.last_applied.map_or(0, |l| l.index)));
        let db_size = ctx.replica.engine().size_on_disk() as i64;
        let is_learner = m.membership_config.membership().learner_ids().any(|id| id == ctx.replica.id());
        Ok(Response::new(StatusResponse {
            header: Some(ctx.replica.header(rev)),
            version: crate::version::ETCD_API.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: applied,
            errors: ctx.replica.with_state(|st| st.alarms.iter().map(|(m, a)| alarm_text(*m, *a)).collect()),
            db_size_in_use: ctx.replica.engine().size_in_use() as i64,
            is_learner,
        }))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let r = req.into_inner();
        match alarm_request::AlarmAction::try_from(r.action) {
            Ok(alarm_request::AlarmAction::Get) => {
                let (rev, alarms) = self.ctx.replica.with_state(|st| {
                    let alarms = st
                        .alarms
                        .iter()
                        .filter(|(m, a)| (r.member_id == 0 || *m == r.member_id) && (r.alarm == 0 || *a == r.alarm))
                        .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
                        .collect();
                    (st.mvcc.current_revision(), alarms)
                });
                Ok(Response::new(AlarmResponse { header: Some(self.ctx.replica.header(rev)), alarms }))
            }
            Ok(alarm_request::AlarmAction::Activate | alarm_request::AlarmAction::Deactivate) => {
                if AlarmType::try_from(r.alarm).is_err() {
                    return Err(Status::invalid_argument("etcdserver: unknown alarm type"));
                }
                let resp = self
                    .ctx
                    .writer
                    .propose(self.ctx.gate.client_request(&who, raft_request::Request::Alarm(r))?)
                    .await?;
                match resp.response {
                    Some(raft_response::Response::Alarm(mut a)) => {
                        a.header = Some(self.ctx.replica.header(resp.revision));
                        Ok(Response::new(a))
                    }
                    other => Err(Status::internal(format!("etcdserver: unexpected apply result {other:?}"))),
                }
            }
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        Ok(Response::new(self.ctx.replica.hash_kv_response(req.get_ref().revision)?))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        let (hash, _, rev) = self.ctx.replica.hash_kv(0).map_err(Status::from)?;
        Ok(Response::new(HashResponse { header: Some(self.ctx.replica.header(rev)), hash }))
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        self.ctx.replica.defragment().await?;
        self.ctx.writer.clear_no_space().await?;
        // As etcd: no response header (clients, such as the etcd-client crate's tests, check).
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<BoxStream<SnapshotResponse>>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        let ctx = self.ctx.clone();
        let (mut file, size, rev) = tokio::task::spawn_blocking(move || ctx.replica.write_backup())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let header = self.ctx.replica.header(rev);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            let mut first = true;
            loop {
                let mut blob = vec![0u8; SNAPSHOT_CHUNK];
                let n = match file.read(&mut blob) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))));
                        return;
                    }
                };
                blob.truncate(n);
                sent += n as u64;
                let msg = SnapshotResponse {
                    header: first.then_some(header),
                    remaining_bytes: size.saturating_sub(sent),
                    blob,
                    version: crate::version::ETCD_API.to_string(),
                };
                first = false;
                // The client went away: stop reading.
                if tx.blocking_send(Ok(msg)).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        use cairn_api::cairnpb::cluster_change_request::Change;
        self.ctx.gate.require_admin(&req).await?;
        self.ctx.membership.change(Change::MoveLeader(req.into_inner())).await?;
        // As etcd: no response header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }
}
