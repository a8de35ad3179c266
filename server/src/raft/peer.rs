//! The peer-port service: receives openraft RPCs from other members, and the two
//! leader-side calls followers make (Propose for forwarded writes, ReadIndex for
//! linearizable reads). Every message must carry this cluster's id, and Raft messages
//! this member's id; anything else is refused without touching Raft.

use super::{decode, encode};
use crate::node::Node;
use cairn_api::cairnpb::peer_server::{Peer, PeerServer};
use cairn_api::cairnpb::{
    CampaignRequest, ClusterChangeRequest, ClusterChangeResponse, Empty, HashKvPeerRequest, LeaseFloor,
    LeaseFloorsRequest, LeaseFloorsResponse, LeaseRenewRequest, LeaseRenewResponse, LeaseTtlRequest, MembersRequest,
    MembersResponse, PeerMember, ProposeRequest, RaftPayload, RaftResponse, ReadIndexRequest, ReadIndexResponse,
};
use cairn_api::etcdserverpb::{HashKvResponse, LeaseTimeToLiveResponse};
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// The Peer gRPC service of one member.
pub struct PeerService {
    node: Arc<Node>,
}

/// Serve the peer port on `listener` until the member shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
    let token = node.shutdown.clone();
    let limits = node.config.http2;
    let svc =
        PeerServer::new(PeerService { node }).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
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
        if cluster_id != self.node.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: this member belongs to cluster {:x}, the message to {cluster_id:x}",
                self.node.cluster_id
            )));
        }
        if let Some(t) = target {
            if t != self.node.id {
                return Err(Status::failed_precondition(format!(
                    "member ID mismatch: this member is {:x}, the message is for {t:x}",
                    self.node.id
                )));
            }
        }
        Ok(())
    }

    fn payload<T: serde::de::DeserializeOwned>(&self, p: &RaftPayload) -> Result<T, Status> {
        self.check(p.cluster_id, Some(p.target))?;
        decode(&p.data).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }

    fn reply<T: serde::Serialize>(&self, v: &T) -> Response<RaftPayload> {
        Response::new(RaftPayload { cluster_id: self.node.cluster_id, target: 0, data: encode(v) })
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.payload(req.get_ref())?;
        Ok(self.reply(&self.node.raft.append_entries(rpc).await))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.payload(req.get_ref())?;
        Ok(self.reply(&self.node.raft.vote(rpc).await))
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = self.payload(req.get_ref())?;
        Ok(self.reply(&self.node.raft.install_snapshot(rpc).await))
    }

    async fn propose(&self, req: Request<ProposeRequest>) -> Result<Response<RaftResponse>, Status> {
        let req = req.into_inner();
        self.check(req.cluster_id, None)?;
        let request = req.request.ok_or_else(|| Status::invalid_argument("empty proposal"))?;
        Ok(Response::new(self.node.propose_local(request).await?))
    }

    async fn lease_renew(&self, req: Request<LeaseRenewRequest>) -> Result<Response<LeaseRenewResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        if !self.node.lessor.is_leader() {
            return Err(Status::failed_precondition(crate::error::msg::NOT_LEADER));
        }
        Ok(Response::new(LeaseRenewResponse { ttl: self.node.lease_renew(req.get_ref().id).await? }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTtlRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        self.check(req.cluster_id, None)?;
        if !self.node.lessor.is_leader() {
            return Err(Status::failed_precondition(crate::error::msg::NOT_LEADER));
        }
        let r = req.request.ok_or_else(|| Status::invalid_argument("empty request"))?;
        Ok(Response::new(self.node.lease_time_to_live(r).await?))
    }

    async fn read_index(&self, req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        Ok(Response::new(ReadIndexResponse { index: self.node.read_index_local().await? }))
    }

    async fn change_cluster(
        &self,
        req: Request<ClusterChangeRequest>,
    ) -> Result<Response<ClusterChangeResponse>, Status> {
        let req = req.into_inner();
        self.check(req.cluster_id, None)?;
        let change = req.change.ok_or_else(|| Status::invalid_argument("empty cluster change"))?;
        Ok(Response::new(crate::membership::execute(&self.node, change).await?))
    }

    async fn members(&self, _req: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        let m = self.node.raft.metrics().borrow().membership_config.clone();
        let members = m
            .membership()
            .nodes()
            .map(|(id, n)| PeerMember { id: *id, name: n.name.clone(), peer_urls: n.peer_urls.clone() })
            .collect();
        let membership_index = m.log_id().map_or(0, |l| l.index);
        Ok(Response::new(MembersResponse { cluster_id: self.node.cluster_id, members, membership_index }))
    }

    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<Empty>, Status> {
        self.check(req.get_ref().cluster_id, Some(req.get_ref().target))?;
        crate::membership::campaign(&self.node).await?;
        Ok(Response::new(Empty {}))
    }

    async fn hash_kv(&self, req: Request<HashKvPeerRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        Ok(Response::new(self.node.hash_kv_response(req.get_ref().revision)?))
    }

    async fn lease_floors(&self, req: Request<LeaseFloorsRequest>) -> Result<Response<LeaseFloorsResponse>, Status> {
        self.check(req.get_ref().cluster_id, None)?;
        // The applied index first: floors read after it include at least its records.
        let applied_index = self.node.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let now = tokio::time::Instant::now();
        let floors = self
            .node
            .lessor
            .floors()
            .into_iter()
            .map(|(id, floor)| {
                let left = floor.saturating_duration_since(now);
                LeaseFloor { id, remaining_ms: left.as_millis().min(i64::MAX as u128) as i64 }
            })
            .collect();
        Ok(Response::new(LeaseFloorsResponse { applied_index, floors }))
    }
}
