//! etcd's Cluster service. MemberList is served from Raft's membership and the
//! attributes each member publishes; MemberAdd/Remove/Update/Promote are executed by the
//! leader through openraft's joint consensus ([`crate::membership`]).

use super::Ctx;
use crate::replica::Replica;
use cairn_api::cairnpb::cluster_change_request::Change;
use cairn_api::etcdserverpb::cluster_server::Cluster;
use cairn_api::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

/// The Cluster service of one member.
pub struct ClusterService {
    ctx: Ctx,
}

impl ClusterService {
    /// The Cluster service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { ctx: ctx.clone() }
    }
}

/// Every member of the current membership, as etcd lists them.
pub fn members(replica: &Replica) -> Vec<Member> {
    let m = replica.raft().metrics().borrow().membership_config.clone();
    let learners: Vec<u64> = m.membership().learner_ids().collect();
    replica.with_state(|st| {
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
            self.ctx.router.read_barrier().await?;
        }
        let rev = self.ctx.replica.with_state(|st| st.mvcc.current_revision());
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.replica.header(rev)),
            members: members(&self.ctx.replica),
        }))
    }

    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        let r = req.into_inner();
        let (urls, is_learner) = (r.peer_ur_ls.clone(), r.is_learner);
        let done = self.ctx.membership.change(Change::Add(r)).await?;
        let members = members(&self.ctx.replica);
        let member = members.iter().find(|m| m.id == done.member_id).cloned().unwrap_or(Member {
            id: done.member_id,
            peer_ur_ls: urls,
            is_learner,
            ..Default::default()
        });
        Ok(Response::new(MemberAddResponse {
            header: Some(self.ctx.replica.current_header()),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        self.ctx.membership.change(Change::Remove(req.into_inner())).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.ctx.replica.current_header()),
            members: members(&self.ctx.replica),
        }))
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        self.ctx.membership.change(Change::Update(req.into_inner())).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.ctx.replica.current_header()),
            members: members(&self.ctx.replica),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.ctx.gate.require_admin(&req).await?;
        self.ctx.membership.change(Change::Promote(req.into_inner())).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.ctx.replica.current_header()),
            members: members(&self.ctx.replica),
        }))
    }
}
