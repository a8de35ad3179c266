//! Cluster membership and maintenance: members, status, alarms, hashes, defragmentation
//! and leadership transfer. Answers are etcd's protobuf messages (see [`crate::proto`]).

use crate::client::AuthChannel;
use crate::client::{Client, MAX_DECODE};
use crate::error::Result;
use cairn_api::etcdserverpb as pb;
use cairn_api::etcdserverpb::cluster_client::ClusterClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;

pub use pb::alarm_request::AlarmAction;
pub use pb::{AlarmMember, AlarmType, Member};

fn cluster(ch: AuthChannel) -> ClusterClient<AuthChannel> {
    ClusterClient::new(ch).max_decoding_message_size(MAX_DECODE)
}

fn maintenance(ch: AuthChannel) -> MaintenanceClient<AuthChannel> {
    MaintenanceClient::new(ch).max_decoding_message_size(MAX_DECODE)
}

impl Client {
    /// The cluster's members (linearizable: asked of the leader).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// for m in client.member_list().await? {
    ///     println!("{:x} {} {:?}", m.id, m.name, m.client_ur_ls);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn member_list(&self) -> Result<Vec<Member>> {
        Ok(self.member_list_with_header().await?.1)
    }

    /// The cluster's members (linearizable), with the header of the member that answered.
    pub async fn member_list_with_header(&self) -> Result<(crate::Header, Vec<Member>)> {
        let req = pb::MemberListRequest { linearizable: true };
        let r = self.unary(true, |ch| async move { cluster(ch).member_list(req).await }).await?;
        Ok((crate::Header::from(r.header), r.members))
    }

    /// Add a member with `peer_urls` (as a learner if `is_learner`).
    pub async fn member_add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<pb::MemberAddResponse> {
        let req = pb::MemberAddRequest { peer_ur_ls: peer_urls, is_learner };
        self.unary(false, |ch| {
            let req = req.clone();
            async move { cluster(ch).member_add(req).await }
        })
        .await
    }

    /// Remove a member.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>> {
        Ok(self
            .unary(false, |ch| {
                let req = pb::MemberRemoveRequest { id };
                async move { cluster(ch).member_remove(req).await }
            })
            .await?
            .members)
    }

    /// Change a member's peer URLs.
    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<Vec<Member>> {
        let req = pb::MemberUpdateRequest { id, peer_ur_ls: peer_urls };
        Ok(self
            .unary(false, |ch| {
                let req = req.clone();
                async move { cluster(ch).member_update(req).await }
            })
            .await?
            .members)
    }

    /// Promote a learner to a voting member.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>> {
        Ok(self
            .unary(false, |ch| {
                let req = pb::MemberPromoteRequest { id };
                async move { cluster(ch).member_promote(req).await }
            })
            .await?
            .members)
    }

    /// The connected member's status (version, sizes, leader, Raft indexes).
    pub async fn status(&self) -> Result<pb::StatusResponse> {
        self.unary(true, |ch| {
            let req = pb::StatusRequest {};
            async move { maintenance(ch).status(req).await }
        })
        .await
    }

    /// The cluster's active alarms.
    pub async fn alarms(&self) -> Result<Vec<AlarmMember>> {
        Ok(self.alarms_with_header().await?.1)
    }

    /// The cluster's active alarms, with the header of the member that answered.
    pub async fn alarms_with_header(&self) -> Result<(crate::Header, Vec<AlarmMember>)> {
        let req = pb::AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
        let r = self.unary(true, |ch| async move { maintenance(ch).alarm(req).await }).await?;
        Ok((r.header.into(), r.alarms))
    }

    /// Clear an alarm (`member_id` 0 and `AlarmType::None`: every alarm); returns the
    /// alarms that were cleared.
    pub async fn alarm_disarm(&self, member_id: u64, alarm: AlarmType) -> Result<Vec<AlarmMember>> {
        Ok(self.alarm_disarm_with_header(member_id, alarm).await?.1)
    }

    /// [`Client::alarm_disarm`], with the header of the member that answered.
    pub async fn alarm_disarm_with_header(
        &self,
        member_id: u64,
        alarm: AlarmType,
    ) -> Result<(crate::Header, Vec<AlarmMember>)> {
        let req = pb::AlarmRequest { action: AlarmAction::Deactivate as i32, member_id, alarm: alarm as i32 };
        let r = self.unary(false, |ch| async move { maintenance(ch).alarm(req).await }).await?;
        Ok((r.header.into(), r.alarms))
    }

    /// A hash of the connected member's key-value history up to `revision` (0: current).
    pub async fn hash_kv(&self, revision: i64) -> Result<pb::HashKvResponse> {
        self.unary(true, |ch| {
            let req = pb::HashKvRequest { revision };
            async move { maintenance(ch).hash_kv(req).await }
        })
        .await
    }

    /// Defragment the connected member's store.
    pub async fn defragment(&self) -> Result<()> {
        self.unary(false, |ch| {
            let req = pb::DefragmentRequest {};
            async move { maintenance(ch).defragment(req).await }
        })
        .await?;
        Ok(())
    }

    /// Stream a backup of the connected member's store (`snapshot save`): messages carry
    /// the next bytes and how many remain. Not retried, and not bounded by the request
    /// timeout (a large store takes a while).
    pub async fn snapshot(&self) -> Result<tonic::Streaming<pb::SnapshotResponse>> {
        let conn = self.inner.conn().await?;
        match maintenance(conn.channel.clone()).snapshot(pb::SnapshotRequest {}).await {
            Ok(s) => Ok(s.into_inner()),
            Err(s) => {
                self.inner.failed(&conn);
                Err(s.into())
            }
        }
    }

    /// Hand leadership to member `target_id` (ask the leader).
    pub async fn move_leader(&self, target_id: u64) -> Result<()> {
        self.unary(false, |ch| {
            let req = pb::MoveLeaderRequest { target_id };
            async move { maintenance(ch).move_leader(req).await }
        })
        .await?;
        Ok(())
    }
}
