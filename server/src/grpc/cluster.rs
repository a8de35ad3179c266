//! etcd's Cluster service. MemberList is served from Raft's membership and the
//! attributes each member publishes; MemberAdd/Remove/Update/Promote are executed by the
//! leader through openraft's joint consensus ([`crate::membership`]).

use crate::node::Node;
use cairn_api::cairnpb::cluster_change_request::Change;
use cairn_api::etcdserverpb::cluster_server::Cluster;
use cairn_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Cluster service of one member.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// The Cluster service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

/// Every member of the current membership, as etcd lists them.
pub fn members(node: &Node) -> Vec<Member> {
    let m = node.raft.metrics().borrow().membership_config.clone();
    let learners: Vec<u64> = m.membership().learner_ids().collect();
    node.read(|st| {
        m.membership()
            .nodes()
            .map(|(id, n)| {
                let attrs = st.attrs.get(id);
                Member {
                    id: *id,
                    // Until a member publishes its attributes, etcd shows the name it was
                    // bootstrapped with (`--initial-cluster`), empty for one added later.
                    name: attrs.map_or_else(|| n.name.clone(), |a| a.name.clone()),
                    peer_ur_ls: n.peer_urls.clone(),
                    client_ur_ls: attrs.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: learners.contains(id),
                }
            })
            .collect()
    })
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(&self, req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        if req.get_ref().linearizable {
            self.node.read_barrier().await?;
        }
        let rev = self.node.read(|st| st.mvcc.current_revision());
        Ok(Response::new(MemberListResponse { header: Some(self.node.header(rev)), members: members(&self.node) }))
    }

    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.node.require_admin(&req).await?;
        let r = req.into_inner();
        let (urls, is_learner) = (r.peer_ur_ls.clone(), r.is_learner);
        let done = crate::membership::change(&self.node, Change::Add(r)).await?;
        let members = members(&self.node);
        let member = members.iter().find(|m| m.id == done.member_id).cloned().unwrap_or(Member {
            id: done.member_id,
            peer_ur_ls: urls,
            is_learner,
            ..Default::default()
        });
        Ok(Response::new(MemberAddResponse { header: Some(self.node.current_header()), member: Some(member), members }))
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        self.node.require_admin(&req).await?;
        crate::membership::change(&self.node, Change::Remove(req.into_inner())).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.node.current_header()),
            members: members(&self.node),
        }))
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.node.require_admin(&req).await?;
        crate::membership::change(&self.node, Change::Update(req.into_inner())).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.node.current_header()),
            members: members(&self.node),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.node.require_admin(&req).await?;
        crate::membership::change(&self.node, Change::Promote(req.into_inner())).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.node.current_header()),
            members: members(&self.node),
        }))
    }
}
