use crate::harness::*;
use cairn_recipes::{Discovery, RegistrationState, Registry, Strategy};
use cairn_testing::Cluster;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tower::discover::Change;

/// Instances register; discovery sees them (as a view, through pickers and as a tower
/// Discover stream); a partitioned instance leaves the view within its TTL and comes back
/// by itself after the partition heals; a dropped registration leaves at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_and_go_and_come_back_after_a_partition() {
    let c = Cluster::start(3, &[]).await;
    let observer = client(&c, 1).await;
    let discovery = Discovery::start(&observer, "/services/greeter").await.unwrap();
    assert!(discovery.instances().is_empty());
    let mut changes = discovery.discover(|i| Some(i.endpoint.clone()));

    let (flaky_client, proxy) = client_via_proxy(&c, 0).await;
    let flaky = Registry::new(&flaky_client)
        .with_ttl(2)
        .register("/services/greeter", "a", "127.0.0.1:7001", serde_json::json!({"zone": "z1"}))
        .await
        .unwrap();
    let steady_client = client(&c, 2).await;
    let steady = Registry::new(&steady_client)
        .with_ttl(10)
        .register("/services/greeter", "b", "127.0.0.1:7002", serde_json::Value::Null)
        .await
        .unwrap();
    // etcd's naming/endpoints layout and JSON.
    let raw = observer.get("/services/greeter/a", None).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw.kvs[0].value).unwrap();
    assert_eq!(json, serde_json::json!({"Addr": "127.0.0.1:7001", "Metadata": {"zone": "z1"}}));

    let ids = |d: &Discovery| d.instances().into_iter().map(|i| i.id).collect::<HashSet<_>>();
    eventually(Duration::from_secs(5), "both instances seen", || async { ids(&discovery).len() == 2 }).await;
    let a = discovery.instances().into_iter().find(|i| i.id == "a").unwrap();
    assert_eq!((a.endpoint.as_str(), &a.metadata), ("127.0.0.1:7001", &serde_json::json!({"zone": "z1"})));
    let mut inserted = HashSet::new();
    while inserted.len() < 2 {
        match within(Duration::from_secs(5), "discover inserts", changes.next()).await.unwrap().unwrap() {
            Change::Insert(id, endpoint) => assert!(inserted.insert((id, endpoint))),
            Change::Remove(id) => panic!("unexpected removal of {id}"),
        }
    }
    // Round robin alternates; power of two choices spreads in-flight picks.
    let rr = discovery.balancer(Strategy::RoundRobin);
    let picks: HashSet<String> = (0..4).map(|_| rr.pick().unwrap().instance.id.clone()).collect();
    assert_eq!(picks.len(), 2);
    let p2c = discovery.balancer(Strategy::PowerOfTwoChoices);
    let held: Vec<_> = (0..10).map(|_| p2c.pick().unwrap()).collect();
    let on_a = held.iter().filter(|p| p.instance.id == "a").count();
    assert!((3..=7).contains(&on_a), "p2c balanced in-flight picks: {on_a} of 10 on a");

    // Partition the flaky instance: gone within its TTL (plus a second of slack).
    let cut = Instant::now();
    proxy.cut();
    eventually(Duration::from_secs(8), "partitioned instance leaves the view", || async {
        !ids(&discovery).contains("a")
    })
    .await;
    assert!(cut.elapsed() < Duration::from_secs(5), "left after {:?} with TTL 2 s", cut.elapsed());
    match within(Duration::from_secs(5), "discover removal", changes.next()).await.unwrap().unwrap() {
        Change::Remove(id) => assert_eq!(id, "a"),
        Change::Insert(id, _) => panic!("unexpected insert of {id}"),
    }
    let mut state = flaky.subscribe();
    within(Duration::from_secs(10), "registration notices the loss", state.wait_for(|s| *s == RegistrationState::Lost))
        .await
        .unwrap();
    // Heal: it registers again by itself, under a new lease.
    proxy.heal();
    eventually(Duration::from_secs(15), "instance re-registered", || async { ids(&discovery).contains("a") }).await;
    // Watchers may see the new key a moment before the registrant has its put's answer.
    let registered = state.wait_for(|s| matches!(s, RegistrationState::Registered { .. }));
    within(Duration::from_secs(5), "registration reports itself registered", registered).await.unwrap();

    // Deregistration is immediate.
    steady.deregister().await.unwrap();
    eventually(Duration::from_secs(3), "deregistered instance leaves", || async { !ids(&discovery).contains("b") })
        .await;
    drop(flaky);
    eventually(Duration::from_secs(3), "dropped registration leaves", || async { ids(&discovery).is_empty() }).await;
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Meta {
    zone: String,
    version: u32,
}

/// Typed metadata, an update in place (watchers see one change, the instance never
/// leaves), draining (balancers pass it over while another instance is up), and URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_instances_update_in_place_and_drain() {
    use cairn_recipes::CacheEvent;
    let c = Cluster::start(1, &[]).await;
    let cl = client(&c, 0).await;
    let registry = Registry::new(&cl).with_ttl(5);
    let a = registry
        .register_typed("/svc/typed", "a", "10.0.0.1:80", &Meta { zone: "x".into(), version: 1 })
        .await
        .unwrap();
    let _b = registry
        .register_typed("/svc/typed", "b", "https://10.0.0.2:443", &Meta { zone: "y".into(), version: 1 })
        .await
        .unwrap();
    let view = Discovery::start(&cl, "/svc/typed").await.unwrap();
    let ia = view.instances().into_iter().find(|i| i.id == "a").expect("a");
    assert_eq!(ia.metadata_as::<Meta>().unwrap(), Meta { zone: "x".into(), version: 1 });
    assert_eq!(ia.url(), "http://10.0.0.1:80");
    assert_eq!(
        view.instances().into_iter().find(|i| i.id == "b").map(|i| i.url()).as_deref(),
        Some("https://10.0.0.2:443")
    );

    let mut events = view.cache().events();
    a.update(Some("10.0.0.9:80".into()), serde_json::to_value(Meta { zone: "x".into(), version: 2 }).unwrap())
        .await
        .unwrap();
    let ev = within(Duration::from_secs(5), "update event", events.recv()).await.unwrap();
    match ev {
        CacheEvent::Put { key, value, prev: Some(prev) } => {
            assert_eq!(key, "a");
            assert_eq!((value.endpoint.as_str(), prev.endpoint.as_str()), ("10.0.0.9:80", "10.0.0.1:80"));
            assert_eq!(value.metadata_as::<Meta>().unwrap().version, 2);
            assert_eq!(value.lease, prev.lease, "same lease: updated in place");
        }
        other => panic!("one in-place update expected: {other:?}"),
    }

    a.drain().await.unwrap();
    eventually(Duration::from_secs(5), "a drains", || {
        let draining = view.instances().iter().any(|i| i.id == "a" && i.is_draining());
        async move { draining }
    })
    .await;
    let balancer = view.balancer(Strategy::RoundRobin);
    for _ in 0..6 {
        assert_eq!(balancer.pick().expect("an instance").instance.id, "b", "draining a is passed over");
    }
    // Weights: c gets three times b's share.
    let c3 = registry.register("/svc/typed", "c", "10.0.0.3:80", serde_json::json!({})).await.unwrap();
    c3.set_weight(3).await.unwrap();
    eventually(Duration::from_secs(5), "c weighs 3", || {
        let ready = view.instances().iter().any(|i| i.id == "c" && i.weight() == 3);
        async move { ready }
    })
    .await;
    let weighted = view.balancer(Strategy::Weighted);
    let mut picks = std::collections::HashMap::new();
    for _ in 0..400 {
        *picks.entry(weighted.pick().expect("an instance").instance.id.clone()).or_insert(0) += 1;
    }
    let (b, c) = (picks.get("b").copied().unwrap_or(0), picks.get("c").copied().unwrap_or(0));
    assert!(!picks.contains_key("a"), "draining a picked: {picks:?}");
    assert!((60..=140).contains(&b) && b + c == 400, "b should get about a quarter: {picks:?}");
    drop(c3);
    drop(_b);
    eventually(Duration::from_secs(5), "b gone", || {
        let alone = view.instances().len() == 1;
        async move { alone }
    })
    .await;
    assert_eq!(balancer.pick().expect("a, draining, is all there is").instance.id, "a");
}
