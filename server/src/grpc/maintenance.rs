//! etcd's Maintenance service: Status, Alarm (alarms are replicated through Raft), Hash
//! and HashKV, Defragment (this member's engine file), Snapshot (a checksummed backup of
//! a frozen view, streamed while writes go on) and MoveLeader ([`crate::membership`]).
//! Downgrade answers UNIMPLEMENTED (there is one Cairn storage version).

use crate::node::Node;
use cairn_api::cairnpb::{raft_request, raft_response, RaftRequest};
use cairn_api::etcdserverpb::maintenance_server::Maintenance;
use cairn_api::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use std::io::{Read, Seek};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Bytes per Snapshot message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 64 << 10;

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
            db_size_in_use: node.engine.size_in_use() as i64,
            is_learner,
        }))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let who = self.node.identify(&req).await?;
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
                let resp = self.node.propose(self.node.client_request(&who, raft_request::Request::Alarm(r))?).await?;
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
        self.node.require_admin(&req).await?;
        Ok(Response::new(self.node.hash_kv_response(req.get_ref().revision)?))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.node.require_admin(&req).await?;
        let (hash, _, rev) = self.node.hash_kv(0).map_err(Status::from)?;
        Ok(Response::new(HashResponse { header: Some(self.node.header(rev)), hash }))
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.node.require_admin(&req).await?;
        self.node.defragment().await?;
        Ok(Response::new(DefragmentResponse { header: Some(self.node.current_header()) }))
    }

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<BoxStream<SnapshotResponse>>, Status> {
        self.node.require_admin(&req).await?;
        let node = self.node.clone();
        let (mut file, size, rev) = tokio::task::spawn_blocking(move || node.write_backup())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let header = self.node.header(rev);
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
                    version: ETCD_API_VERSION.to_string(),
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
        self.node.require_admin(&req).await?;
        crate::membership::change(&self.node, Change::MoveLeader(req.into_inner())).await?;
        Ok(Response::new(MoveLeaderResponse { header: Some(self.node.current_header()) }))
    }
}

impl Node {
    /// HashKV at `revision` (0: the current one) as etcd answers it.
    pub fn hash_kv_response(&self, revision: i64) -> crate::error::Result<HashKvResponse> {
        let (hash, compact_revision, current) = self.hash_kv(revision)?;
        let hash_revision = if revision > 0 { revision } else { current };
        Ok(HashKvResponse { header: Some(self.header(current)), hash, compact_revision, hash_revision })
    }

    /// A response header at the current revision.
    pub fn current_header(&self) -> cairn_api::etcdserverpb::ResponseHeader {
        self.header(self.read(|st| st.mvcc.current_revision()))
    }

    /// Write a backup of the store (as `Maintenance.Snapshot` streams it) to an unnamed
    /// file under the snapshot directory; returns it rewound, its size and the revision.
    pub fn write_backup(&self) -> crate::error::Result<(std::fs::File, u64, i64)> {
        use std::os::unix::fs::OpenOptionsExt;
        let internal = |e: std::io::Error| crate::error::Error::Internal(format!("snapshot: {e}"));
        let dir = self.config.data_dir.join("snap");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("backup-{nanos}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(internal)?;
        // Unlinked at once: the open file is all that is needed, and nothing is left behind.
        let _ = std::fs::remove_file(&path);
        let (view, rev) = self.read(|st| (self.engine.frozen_view(), st.mvcc.current_revision()));
        let mut out = std::io::BufWriter::new(&mut file);
        let size = match view? {
            Some(v) => cairn_store::backup::write(v.as_ref(), &mut out)?,
            // No frozen view (sled): hold applies back while the backup is written.
            None => {
                self.read(|_| cairn_store::backup::write(&cairn_store::engine::Live(self.engine.as_ref()), &mut out))?
            }
        };
        out.into_inner().map_err(|e| internal(e.into_error()))?;
        file.rewind().map_err(internal)?;
        Ok((file, size, rev))
    }

    /// Defragment this member's engine file, then clear this member's NOSPACE alarm if
    /// the file is back under the quota.
    pub async fn defragment(&self) -> crate::error::Result<()> {
        let engine = self.engine.clone();
        let before = engine.size_on_disk();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || engine.defragment())
            .await
            .map_err(|e| crate::error::Error::Internal(e.to_string()))??;
        let after = self.engine.size_on_disk();
        tracing::info!(before, after, took = ?started.elapsed(), "defragmented");
        self.clear_no_space().await
    }

    /// Propose clearing this member's NOSPACE alarm if its file fits the quota again.
    pub async fn clear_no_space(&self) -> crate::error::Result<()> {
        let raised = self.read(|st| st.alarms.contains(&(self.id, AlarmType::Nospace as i32)));
        let fits = self.engine.size_on_disk() <= self.config.quota_backend_bytes
            && self.free_disk() >= self.config.min_free_disk_bytes;
        if !raised || !fits {
            return Ok(());
        }
        tracing::info!("backend back under quota: clearing NOSPACE");
        let alarm = AlarmRequest {
            action: alarm_request::AlarmAction::Deactivate as i32,
            member_id: self.id,
            alarm: AlarmType::Nospace as i32,
        };
        self.propose(RaftRequest::internal(raft_request::Request::Alarm(alarm))).await.map(|_| ())
    }
}
