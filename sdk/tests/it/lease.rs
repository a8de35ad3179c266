//! Leases, keep-alive and sessions.

use super::harness::Target;
use cairn_sdk::{Error, GetOptions, LeaseState, PutOptions, Session};
use std::time::Duration;

crate::on_both!(1: lifecycle, session_outlives_its_ttl, session_lost_when_revoked);

async fn lifecycle(t: Target) {
    let c = t.client().await;
    let g = c.lease_grant(60).await.unwrap();
    assert_eq!(g.ttl, 60);
    assert!(c.leases().await.unwrap().contains(&g.id));
    c.put("l/a", "1", PutOptions::new().with_lease(g.id)).await.unwrap();
    c.put("l/b", "2", PutOptions::new().with_lease(g.id)).await.unwrap();
    let ttl = c.lease_time_to_live(g.id, true).await.unwrap();
    assert_eq!((ttl.id, ttl.granted_ttl), (g.id, 60));
    assert!(ttl.ttl > 50 && ttl.ttl <= 60, "{ttl:?}");
    let mut keys = ttl.keys.clone();
    keys.sort();
    assert_eq!(keys, [b"l/a".to_vec(), b"l/b".to_vec()]);
    assert_eq!(c.lease_keep_alive_once(g.id).await.unwrap(), 60);

    let fixed = c.lease_grant_with_id(30, 0x7777).await.unwrap();
    assert_eq!(fixed.id, 0x7777);
    assert_eq!(c.lease_grant_with_id(30, 0x7777).await.unwrap_err(), Error::LeaseExists);

    c.lease_revoke(g.id).await.unwrap();
    assert_eq!(c.get("l/", GetOptions::new().with_prefix().with_count_only()).await.unwrap().count, 0);
    assert_eq!(c.lease_time_to_live(g.id, false).await.unwrap().ttl, -1);
    assert_eq!(c.lease_keep_alive_once(g.id).await.unwrap_err(), Error::LeaseNotFound);
    assert_eq!(c.lease_revoke(g.id).await.unwrap_err(), Error::LeaseNotFound);
    assert!(!c.leases().await.unwrap().contains(&g.id));
}

async fn session_outlives_its_ttl(t: Target) {
    let c = t.client().await;
    let s = Session::new(&c, 2).await.unwrap();
    c.put("s/me", "here", PutOptions::new().with_lease(s.lease_id())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!s.is_lost());
    assert_eq!(c.get("s/me", None).await.unwrap().count, 1, "the keep-alive kept the key");
    s.close().await.unwrap();
    assert_eq!(c.get("s/me", None).await.unwrap().count, 0, "closing revokes at once");

    // Dropping a session revokes its lease in the background.
    let s = Session::new(&c, 60).await.unwrap();
    let id = s.lease_id();
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.lease_time_to_live(id, false).await.unwrap().ttl != -1 {
        assert!(tokio::time::Instant::now() < deadline, "the dropped session's lease was not revoked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn session_lost_when_revoked(t: Target) {
    let c = t.client().await;
    let s = Session::new(&c, 2).await.unwrap();
    let mut states = s.subscribe().expect("a live session");
    tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|st| matches!(st, LeaseState::Alive { ttl: Some(_) })),
    )
    .await
    .expect("first renewal within 5 s")
    .unwrap();
    c.lease_revoke(s.lease_id()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.lost()).await.expect("loss noticed within the TTL + a renewal");
    assert!(s.is_lost());
}
