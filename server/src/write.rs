//! Admission of writes: every write a handler or a background task makes goes through
//! [`Writer::propose`], which refuses what etcd refuses before a write reaches the log —
//! too large, over the quota or the disk almost full (raising NOSPACE), a CORRUPT alarm
//! raised — counts it, and sends it to the leader through the [`Router`].

use crate::error::{msg, Error, Result};
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::router::Router;
use cairn_api::cairnpb::{raft_request, RaftRequest, RaftResponse};
use cairn_api::etcdserverpb::alarm_request::AlarmAction;
use cairn_api::etcdserverpb::{AlarmRequest, AlarmType};
use prost::Message;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The limits a write is admitted under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: u64,
    /// Free bytes the data directory's file system must keep.
    pub min_free_disk_bytes: u64,
    /// The data directory (whose file system is watched).
    pub data_dir: PathBuf,
}

/// Admits and proposes writes (see the module docs).
pub struct Writer {
    router: Arc<Router>,
    replica: Arc<Replica>,
    metrics: Arc<Metrics>,
    limits: Limits,
    free_disk: Mutex<Option<(Instant, u64)>>,
}

impl Writer {
    /// A writer proposing through `router` under `limits`.
    pub fn new(router: Arc<Router>, replica: Arc<Replica>, metrics: Arc<Metrics>, limits: Limits) -> Writer {
        Writer { router, replica, metrics, limits, free_disk: Mutex::new(None) }
    }

    /// Replicate a write through Raft and return its applied result. From a follower
    /// the write is forwarded to the leader. Apply errors come back as `Err`.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse> {
        if req.encoded_len() > self.limits.max_request_bytes {
            return Err(Error::InvalidArgument(msg::REQUEST_TOO_LARGE));
        }
        if crate::apply::adds_data(&req) {
            self.check_quota().await?;
        }
        if crate::apply::changes_data(&req) && self.replica.with_state(|st| st.corrupt()) {
            return Err(Error::etcd(tonic::Code::DataLoss, msg::CORRUPT));
        }
        // Counted down when done or when the caller gives up (the future is dropped).
        struct Pending<'a>(&'a prometheus::IntGauge);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.metrics.proposals_pending.inc();
        let _pending = Pending(&self.metrics.proposals_pending);
        let res = self.router.propose(req).await;
        if matches!(res, Err(Error::Timeout | Error::NoLeader | Error::ConnectionLost | Error::Stopped)) {
            self.metrics.proposals_failed.inc();
        }
        res
    }

    /// Refuse a write that adds data once the store is over `--quota-backend-bytes`,
    /// raising this member's NOSPACE alarm (through Raft, so every member refuses such
    /// writes until it is disarmed), as etcd's quota check does.
    async fn check_quota(&self) -> Result<()> {
        let no_space = || Error::Remote { code: tonic::Code::ResourceExhausted as i32, message: msg::NO_SPACE.into() };
        if self.replica.with_state(|st| st.no_space()) {
            return Err(no_space());
        }
        // Read on every write, not cached: a defragment shrinks the file at once, and a
        // stale size would raise NOSPACE again right after it was cleared.
        let size = self.replica.engine().size_on_disk();
        let free = self.free_disk();
        if !self.over(size, free) {
            return Ok(());
        }
        tracing::warn!(
            size,
            quota = self.limits.quota_backend_bytes,
            free_disk = free,
            min_free = self.limits.min_free_disk_bytes,
            "backend over quota or disk almost full: raising NOSPACE"
        );
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.replica.id(),
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self.router.propose(RaftRequest::internal(raft_request::Request::Alarm(alarm))).await {
            tracing::warn!("raising NOSPACE: {e}");
        }
        Err(no_space())
    }

    fn over(&self, size: u64, free: u64) -> bool {
        size > self.limits.quota_backend_bytes || free < self.limits.min_free_disk_bytes
    }

    /// Free bytes on the data directory's file system (checked at most every 250 ms;
    /// `u64::MAX` if it cannot be read).
    pub fn free_disk(&self) -> u64 {
        let mut cached = self.free_disk.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, free)) = *cached {
            if at.elapsed() < Duration::from_millis(250) {
                return free;
            }
        }
        let free =
            rustix::fs::statvfs(&self.limits.data_dir).map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize));
        *cached = Some((Instant::now(), free));
        free
    }

    /// Propose clearing this member's NOSPACE alarm if its file fits the quota again.
    pub async fn clear_no_space(&self) -> Result<()> {
        let id = self.replica.id();
        let raised = self.replica.with_state(|st| st.alarms.contains(&(id, AlarmType::Nospace as i32)));
        if !raised || self.over(self.replica.engine().size_on_disk(), self.free_disk()) {
            return Ok(());
        }
        tracing::info!("backend back under quota: clearing NOSPACE");
        let alarm =
            AlarmRequest { action: AlarmAction::Deactivate as i32, member_id: id, alarm: AlarmType::Nospace as i32 };
        self.propose(RaftRequest::internal(raft_request::Request::Alarm(alarm))).await.map(|_| ())
    }
}
