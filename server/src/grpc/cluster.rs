//! etcd's Cluster service. MemberList is served from Raft's membership and the
//! attributes each member publishes; runtime membership changes (add, remove, update,
//! promote) belong to the cluster-operations work and answer UNIMPLEMENTED until then.

use crate::node::Node;
use cairn_api::etcdserverpb::cluster_server::Cluster;
use cairn_api::etcdserverpb::{Member, MemberListRequest, MemberListResponse};
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
                    // etcd shows an empty name for a member that has not started yet.
                    name: attrs.map(|a| a.name.clone()).unwrap_or_default(),
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
}
