use crate::harness::*;
use cairn_recipes::{Config, ConfigUpdate, Error};
use cairn_testing::Cluster;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize, PartialEq)]
struct Settings {
    log_level: String,
    max_conns: u32,
}

fn check(s: &Settings) -> Result<(), String> {
    if ["debug", "info", "warn", "error"].contains(&s.log_level.as_str()) {
        Ok(())
    } else {
        Err(format!("unknown log level {}", s.log_level))
    }
}

async fn next<T>(w: &mut cairn_recipes::ConfigWatch<T>) -> ConfigUpdate<T> {
    within(Duration::from_secs(10), "config update", w.next()).await.expect("subscription alive")
}

/// valid, invalid, valid: the subscriber applies the first and third and reports the
/// second, keeping the last good value meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_publications_are_reported_and_the_last_good_value_kept() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    // Nothing stored yet: nothing to start from.
    let missing = Config::<Settings>::key("/app/config").subscribe(&client).await;
    assert!(matches!(missing, Err(Error::Invalid { .. })));
    client.put("/app/config", r#"{"log_level":"info","max_conns":10}"#, None).await.unwrap();
    let mut cfg = Config::<Settings>::key("/app/config").validate(check).subscribe(&client).await.unwrap();
    assert_eq!(cfg.current().max_conns, 10);

    client.put("/app/config", r#"{"log_level":"debug","max_conns":20}"#, None).await.unwrap();
    let ConfigUpdate::Applied { value, .. } = next(&mut cfg).await else { panic!("expected applied") };
    assert_eq!(*value, Settings { log_level: "debug".into(), max_conns: 20 });

    client.put("/app/config", r#"{"log_level":"loud","max_conns":30}"#, None).await.unwrap();
    let ConfigUpdate::Rejected { reason, .. } = next(&mut cfg).await else { panic!("expected rejected") };
    assert!(reason.contains("unknown log level loud"), "{reason}");
    client.put("/app/config", "not json at all", None).await.unwrap();
    assert!(matches!(next(&mut cfg).await, ConfigUpdate::Rejected { .. }));
    assert_eq!(cfg.current().max_conns, 20, "the last good value stays");

    let put = client.put("/app/config", r#"{"log_level":"warn","max_conns":40}"#, None).await.unwrap();
    let ConfigUpdate::Applied { value, revision } = next(&mut cfg).await else { panic!("expected applied") };
    assert_eq!((value.max_conns, revision), (40, put.header.revision));
    assert_eq!(cfg.revision(), put.header.revision);
}

/// The subscriber is cut off while the config changes and the history is compacted: when
/// it reconnects it cannot resume its watch, so it reads the config again and converges.
/// A prefix reads as one object, one field per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_converges_after_compaction_behind_a_partition() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    client.put("/svc/log_level", "info", None).await.unwrap();
    client.put("/svc/max_conns", "10", None).await.unwrap();
    let (sub_client, proxy) = client_via_proxy(&c, 0).await;
    let mut cfg = Config::<Settings>::prefix("/svc/").validate(check).subscribe(&sub_client).await.unwrap();
    assert_eq!(*cfg.current(), Settings { log_level: "info".into(), max_conns: 10 });

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.put("/svc/max_conns", "50", None).await.unwrap();
    let last = client.put("/svc/log_level", "error", None).await.unwrap();
    client.compact(last.header.revision, true).await.unwrap();
    proxy.heal();

    let want = Settings { log_level: "error".into(), max_conns: 50 };
    loop {
        match next(&mut cfg).await {
            ConfigUpdate::Applied { value, .. } if *value == want => break,
            ConfigUpdate::Applied { .. } => continue,
            ConfigUpdate::Rejected { reason, .. } => panic!("rejected {reason}"),
        }
    }
    assert_eq!(cfg.revision(), last.header.revision);
    // And it keeps following after the re-read.
    client.put("/svc/max_conns", "60", None).await.unwrap();
    let ConfigUpdate::Applied { value, .. } = next(&mut cfg).await else { panic!("expected applied") };
    assert_eq!(value.max_conns, 60);
}
