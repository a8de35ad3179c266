//! The Lock and Election services: behaviour through the generated client, exclusion with
//! `etcdctl lock`/`elect` (etcd's client-side recipes), and errors side by side with etcd.

use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, RangeRequest};
use cairn_api::v3electionpb::election_client::ElectionClient;
use cairn_api::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest};
use cairn_api::v3lockpb::lock_client::LockClient;
use cairn_api::v3lockpb::{LockRequest, UnlockRequest};
use cairn_testing::{etcd_binary, etcdctl_command, Cluster, Streaming};
use std::time::Duration;
use tonic::transport::Channel;

async fn channel(c: &Cluster, i: usize) -> Channel {
    Channel::from_shared(c.members[i].client_url.clone()).unwrap().connect().await.unwrap()
}

async fn grant(ch: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl, id: 0 }).await.unwrap().into_inner().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_for_the_holder_and_excludes_etcdctl() {
    let c = Cluster::start(3, &[]).await;
    let (ch0, ch1) = (channel(&c, 0).await, channel(&c, 1).await);
    let (l1, l2) = (grant(&ch0, 30).await, grant(&ch1, 30).await);
    let held = LockClient::new(ch0.clone())
        .lock(LockRequest { name: b"jobs".to_vec(), lease: l1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.key, format!("jobs/{l1:x}").into_bytes(), "etcd's key layout");
    // A second locker (through another member) waits...
    let mut second = LockClient::new(ch1.clone());
    let waiting = tokio::spawn(async move { second.lock(LockRequest { name: b"jobs".to_vec(), lease: l2 }).await });
    // ...and so does etcdctl.
    let mut cmd = etcdctl_command(&c.endpoints());
    cmd.args(["lock", "jobs"]);
    let etcdctl = Streaming::spawn(cmd);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a second holder while the first holds");
    assert_eq!(etcdctl.try_line(Duration::from_millis(200)), None);
    let unlocked = LockClient::new(ch0.clone()).unlock(UnlockRequest { key: held.key }).await.unwrap().into_inner();
    assert!(unlocked.header.unwrap().revision > held.header.unwrap().revision);
    let got = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(got.key, format!("jobs/{l2:x}").into_bytes());
    // Revoking the holder's lease releases the lock to etcdctl, first in line after it.
    LeaseClient::new(ch1.clone()).lease_revoke(LeaseRevokeRequest { id: l2 }).await.unwrap();
    let line = etcdctl.try_line(Duration::from_secs(10)).expect("etcdctl gets the lock");
    assert!(line.starts_with("jobs/"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_without_a_lease_gets_one_and_a_cancelled_waiter_withdraws() {
    let c = Cluster::start(1, &[]).await;
    let ch = channel(&c, 0).await;
    let held = LockClient::new(ch.clone()).lock(LockRequest { name: b"x".to_vec(), lease: 0 }).await.unwrap();
    let key = held.into_inner().key;
    let kv = cairn_api::etcdserverpb::kv_client::KvClient::new(ch.clone())
        .range(RangeRequest { key: key.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .remove(0);
    let ttl = LeaseClient::new(ch.clone())
        .lease_time_to_live(LeaseTimeToLiveRequest { id: kv.lease, keys: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60, "etcd's default session TTL");
    // A waiter that gives up leaves no key to block later lockers.
    let lease = grant(&ch, 30).await;
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        LockClient::new(ch.clone()).lock(LockRequest { name: b"x".to_vec(), lease }),
    )
    .await;
    assert!(attempt.is_err(), "waited while held");
    let count = || async {
        cairn_api::etcdserverpb::kv_client::KvClient::new(ch.clone())
            .range(RangeRequest {
                key: b"x/".to_vec(),
                range_end: b"x0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .count
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count().await != 1 {
        assert!(std::time::Instant::now() < deadline, "the cancelled waiter's key was not withdrawn");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_observe_proclaim_resign_with_etcdctl_watching() {
    let c = Cluster::start(3, &[]).await;
    let (ch0, ch2) = (channel(&c, 0).await, channel(&c, 2).await);
    let (l1, l2) = (grant(&ch0, 30).await, grant(&ch2, 30).await);
    let mut e0 = ElectionClient::new(ch0.clone());
    let mut observe =
        ElectionClient::new(ch2.clone()).observe(LeaderRequest { name: b"sched".to_vec() }).await.unwrap().into_inner();
    let won = e0
        .campaign(CampaignRequest { name: b"sched".to_vec(), lease: l1, value: b"one".to_vec() })
        .await
        .unwrap()
        .into_inner();
    let leader = won.leader.unwrap();
    assert_eq!(leader.key, format!("sched/{l1:x}").into_bytes());
    assert_eq!((leader.name.as_slice(), leader.lease), (b"sched".as_slice(), l1));
    assert_eq!(next(&mut observe).await.kv.unwrap().value, b"one");
    let mut cmd = etcdctl_command(&c.endpoints());
    cmd.args(["elect", "-l", "sched"]);
    let etcdctl = Streaming::spawn(cmd);
    assert_eq!(etcdctl.take(2), vec![format!("sched/{l1:x}"), "one".into()]);

    e0.proclaim(ProclaimRequest { leader: Some(leader.clone()), value: b"uno".to_vec() }).await.unwrap();
    assert_eq!(next(&mut observe).await.kv.unwrap().value, b"uno");
    assert_eq!(etcdctl.take(2)[1], "uno");
    let current = e0.leader(LeaderRequest { name: b"sched".to_vec() }).await.unwrap().into_inner();
    assert_eq!(current.kv.unwrap().value, b"uno");

    let mut e2 = ElectionClient::new(ch2.clone());
    let second = tokio::spawn(async move {
        e2.campaign(CampaignRequest { name: b"sched".to_vec(), lease: l2, value: b"two".to_vec() }).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "two leaders");
    e0.resign(ResignRequest { leader: Some(leader.clone()) }).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second).await.unwrap().unwrap().unwrap();
    assert_eq!(second.into_inner().leader.unwrap().key, format!("sched/{l2:x}").into_bytes());
    assert_eq!(next(&mut observe).await.kv.unwrap().value, b"two");
    assert_eq!(etcdctl.take(2)[1], "two");
    // The old leader key no longer leads.
    let stale = e0.proclaim(ProclaimRequest { leader: Some(leader), value: b"late".to_vec() }).await.unwrap_err();
    assert_eq!(stale.message(), "election: not leader");
}

/// The errors a client can get, compared with etcd 3.4's for the same calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_match_etcd() {
    async fn errors(c: &Cluster) -> Vec<(tonic::Code, String)> {
        let ch = channel(c, 0).await;
        let mut e = ElectionClient::new(ch.clone());
        let mut out = Vec::new();
        let mut push = |r: Result<(), tonic::Status>| {
            let s = r.expect_err("an error");
            out.push((s.code(), s.message().to_string()));
        };
        push(e.leader(LeaderRequest { name: b"none".to_vec() }).await.map(|_| ()));
        push(e.proclaim(ProclaimRequest { leader: None, value: b"v".to_vec() }).await.map(|_| ()));
        let bogus = LeaderKey { name: b"none".to_vec(), key: b"none/1".to_vec(), rev: 5, lease: 1 };
        push(e.proclaim(ProclaimRequest { leader: Some(bogus), value: b"v".to_vec() }).await.map(|_| ()));
        push(e.campaign(CampaignRequest { name: b"e".to_vec(), lease: 12345, value: b"v".to_vec() }).await.map(|_| ()));
        push(LockClient::new(ch.clone()).lock(LockRequest { name: b"l".to_vec(), lease: 12345 }).await.map(|_| ()));
        out
    }
    let cairn = Cluster::start(1, &[]).await;
    let etcd = Cluster::start_bin(&etcd_binary(), 1, &["--log-level", "error"]).await;
    assert_eq!(errors(&cairn).await, errors(&etcd).await);
}

async fn next(
    o: &mut tonic::Streaming<cairn_api::v3electionpb::LeaderResponse>,
) -> cairn_api::v3electionpb::LeaderResponse {
    tokio::time::timeout(Duration::from_secs(10), o.message()).await.unwrap().unwrap().unwrap()
}
