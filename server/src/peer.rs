//! The peer-port service: receives openraft RPCs from other members (handed to Raft),
//! and the application calls members make of each other — the leader-side calls of the
//! [`crate::router`] (Propose, ReadIndex, LeaseRenew, LeaseTimeToLive, ChangeCluster,
//! answered with a typed refusal by a member that does not lead), Members, Campaign,
//! HashKv and LeaseFloors. Every message must carry this cluster's id, and Raft messages
//! this member's id; anything else is refused without touching Raft.

use crate::failover::Contact;
use crate::lease::leader::Leases;
use crate::membership::Membership;
use crate::raft::{decode, encode};
use crate::replica::Replica;
use crate::router::Failed;
use cairn_api::cairnpb::peer_server::{Peer, PeerServer};
use cairn_api::cairnpb::{
    CampaignRequest, ClusterChangeRequest, ClusterChangeResponse, Empty, HashKvPeerRequest, LeaderContactRequest,
    LeaderContactResponse, LeaseFloorsRequest, LeaseFloorsResponse, LeaseRenewRequest, LeaseRenewResponse,
    LeaseTtlRequest, MembersRequest, MembersResponse, PeerMember, ProposeRequest, RaftPayload, RaftResponse,
    ReadIndexRequest, ReadIndexResponse,
};
use cairn_api::etcdserverpb::{HashKvResponse, LeaseTimeToLiveResponse};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// The Peer gRPC service of one member.
pub struct PeerService {
    replica: Arc<Replica>,
    leases: Arc<Leases>,
    membership: Arc<Membership>,
    /// Votes are refused until then (a restart with lease reads: `member::quiet_start`).
    quiet_until: Option<Instant>,
    /// Counts Raft messages that could not be taken, by sender.
    received_failures: Option<prometheus::IntCounterVec>,
    /// When a leader was last heard from (`crate::failover`).
    contact: Arc<Contact>,
}

impl PeerService {
    /// The peer service over these layers.
    pub fn new(replica: Arc<Replica>, leases: Arc<Leases>, membership: Arc<Membership>) -> PeerService {
        PeerService { replica, leases, membership, quiet_until: None, received_failures: None, contact: Arc::default() }
    }

    /// Record leaders' AppendEntries in `contact` (and answer `LeaderContact` from it).
    pub fn contact(self, contact: Arc<Contact>) -> PeerService {
        PeerService { contact, ..self }
    }

    /// Count Raft messages that cannot be taken in `failures` (label `From`).
    pub fn received_failures(self, failures: prometheus::IntCounterVec) -> PeerService {
        PeerService { received_failures: Some(failures), ..self }
    }

    /// Refuse every vote until `until`.
    pub fn quiet_until(self, until: Option<Instant>) -> PeerService {
        PeerService { quiet_until: until, ..self }
    }
}

/// Serve the peer port on `listener` until `token` is cancelled.
pub async fn serve(
    service: PeerService,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: crate::tls::Http2Limits,
    token: tokio_util::sync::CancellationToken,
) {
    let svc = PeerServer::new(service).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    let mut builder = crate::tls::server_builder(limits);
    let router = builder.add_service(svc);
    let res = match tls {
        Some(tls) => {
            let incoming = crate::conn::tls(listener, tls, limits.keepalive_min_time);
            router.serve_with_incoming_shutdown(incoming, token.cancelled_owned()).await
        }
        None => {
            let incoming = crate::conn::plain(listener, limits.keepalive_min_time);
            router.serve_with_incoming_shutdown(incoming, token.cancelled_owned()).await
        }
    };
    if let Err(e) = res {
        tracing::error!("peer server: {e}");
    }
}

impl PeerService {
    fn check(&self, cluster_id: u64, target: Option<u64>) -> Result<(), Status> {
        if cluster_id != self.replica.cluster_id() {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member belongs to cluster {:x}, the message to {cluster_id:x}",
                self.replica.cluster_id()
            )));
        }
        if let Some(t) = target {
            if t != self.replica.id() {
                return Err(Status::failed_precondition(format!(
                    "member ID mismatch: this member is {:x}, the message is for {t:x}",
                    self.replica.id()
                )));
            }
        }
        Ok(())
    }

    fn payload<T: serde::de::DeserializeOwned>(&self, p: &RaftPayload) -> Result<T, Status> {
        let taken = self.check(p.cluster_id, Some(p.target)).and_then(|_| {
            decode(&p.data).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
        });
        if taken.is_err() {
            if let Some(f) = &self.received_failures {
                f.with_label_values(&[&format!("{:x}", p.from)]).inc();
            }
        }
        taken
    }

    fn reply<T: serde::Serialize>(&self, v: &T) -> Response<RaftPayload> {
        Response::new(RaftPayload {
            cluster_id: self.replica.cluster_id(),
            target: 0,
            data: encode(v),
            from: self.replica.id(),
        })
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.payload(req.get_ref())?;
        let answer = self.replica.raft().append_entries(rpc).await;
        // Taken from a leader of at least this member's term: it is alive.
        if !matches!(answer, Ok(openraft::raft::AppendEntriesResponse::HigherVote(_)) | Err(_)) {
            self.contact.heard();
        }
        Ok(self.reply(&answer))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: openraft::raft::VoteRequest<u64> = self.payload(req.get_ref())?;
        if self.quiet_until.is_some_and(|t| Instant::now() < t) {
            let vote = self.replica.raft().metrics().borrow().vote;
            tracing::info!(candidate = %rpc.vote, "vote refused: restarted within the longest election timeout");
            let refused: Result<_, openraft::error::RaftError<u64>> =
                Ok(openraft::raft::VoteResponse::new(vote, None, false));
            return Ok(self.reply(&refused));
        }
        let answer = self.replica.raft().vote(rpc).await;
        // A vote granted is an election under way: wait for its leader as for a live one
        // (as etcd's followers reset their election timer), so this member does not start a
        // rival campaign against the candidate it just voted for.
        if matches!(&answer, Ok(r) if r.vote_granted) {
            self.contact.heard();
        }
        Ok(self.reply(&answer))
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.payload(req.get_ref())?;
        Ok(self.reply(&self.replica.raft().install_snapshot(rpc).await))
    }

    async fn propose(&self, req: Request<ProposeRequest>) -> Result<Response<RaftResponse>, Status> {
        let req = req.into_inner();
        self.check(req.cluster_id, None)?;
        let request = req.request.ok_or_else(|| Status::invalid_argument("empty proposal"))?;
        Ok(Response::new(self.replica.propose_local(request).await?))
    }

    async fn lease_renew(&self, req: Request<LeaseRenewRequest>) -> Result<Response<LeaseRenewResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        let ttl = self.leases.renew_local(req.get_ref().id).await.map_err(refusal)?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTtlRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        self.check(req.cluster_id, None)?;
        let r = req.request.ok_or_else(|| Status::invalid_argument("empty request"))?;
        Ok(Response::new(self.leases.time_to_live_local(&r).map_err(refusal)?))
    }

    async fn read_index(&self, req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        Ok(Response::new(ReadIndexResponse { index: self.replica.read_index_local().await? }))
    }

    async fn change_cluster(
        &self,
        req: Request<ClusterChangeRequest>,
    ) -> Result<Response<ClusterChangeResponse>, Status> {
        let req = req.into_inner();
        self.check(req.cluster_id, None)?;
        let change = req.change.ok_or_else(|| Status::invalid_argument("empty cluster change"))?;
        Ok(Response::new(self.membership.execute(change).await?))
    }

    async fn members(&self, _req: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        let m = self.replica.raft().metrics().borrow().membership_config.clone();
        let members = self.replica.with_state(|st| {
            m.membership()
                .nodes()
                .map(|(id, n)| PeerMember {
                    id: *id,
                    name: n.name.clone(),
                    peer_urls: n.peer_urls.clone(),
                    client_urls: st.attrs.get(id).map(|a| a.client_urls.clone()).unwrap_or_default(),
                })
                .collect()
        });
        let membership_index = m.log_id().map_or(0, |l| l.index);
        Ok(Response::new(MembersResponse { cluster_id: self.replica.cluster_id(), members, membership_index }))
    }

    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<Empty>, Status> {
        self.check(req.get_ref().cluster_id, Some(req.get_ref().target))?;
        self.membership.campaign().await?;
        Ok(Response::new(Empty {}))
    }

    async fn hash_kv(&self, req: Request<HashKvPeerRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        Ok(Response::new(self.replica.hash_kv_response(req.get_ref().revision)?))
    }

    async fn lease_floors(&self, req: Request<LeaseFloorsRequest>) -> Result<Response<LeaseFloorsResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        Ok(Response::new(self.leases.floors_after(req.get_ref().applied_index).await))
    }

    async fn leader_contact(
        &self,
        req: Request<LeaderContactRequest>,
    ) -> Result<Response<LeaderContactResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        let leader = self.replica.leader() == Some(self.replica.id());
        Ok(Response::new(self.contact.answer(leader)))
    }
}

/// A failure of a leader-side call as the peer port answers it: a typed refusal when this
/// member does not lead.
fn refusal(f: Failed) -> Status {
    match f {
        Failed::NotDone => crate::error::Error::NotLeader.into(),
        Failed::Lost(e) | Failed::Err(e) => e.into(),
    }
}
