//! Members, status and alarms.

use super::harness::Target;

crate::on_both!(1: members_and_status);

async fn members_and_status(t: Target) {
    let c = t.client().await;
    // A member publishes its name and client URLs through Raft just after it starts.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let members = loop {
        let m = c.member_list().await.unwrap();
        if m.iter().all(|m| !m.client_ur_ls.is_empty()) || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(members.len(), 1);
    let m = &members[0];
    assert_eq!(m.name, "m0");
    assert_eq!(m.client_ur_ls, [t.cluster.members[0].client_url.clone()]);
    assert_eq!(m.peer_ur_ls, [t.cluster.members[0].peer_url.clone()]);
    let s = c.status().await.unwrap();
    assert_eq!(s.leader, m.id);
    assert_eq!(s.header.unwrap_or_default().member_id, m.id);
    assert!(s.version.starts_with("3."), "{}", s.version);
    assert!(s.db_size > 0 && s.raft_index > 0);
    assert!(c.alarms().await.unwrap().is_empty());
    assert!(c.alarm_disarm(0, cairn_sdk::AlarmType::None).await.unwrap().is_empty());
}
