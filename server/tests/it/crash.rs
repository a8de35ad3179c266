//! kill -9 at arbitrary moments loses no acknowledged write, on both engines.

use super::harness::Cluster;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::{PutRequest, RangeRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Endpoint;

async fn acknowledged_writes_survive(engine: &str) {
    let mut c = Cluster::start(1, &["--storage-engine", engine]).await;
    let url = c.members[0].client_url.clone();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
        writers.push(tokio::spawn(async move {
            let channel = Endpoint::from_shared(url).expect("url").timeout(Duration::from_secs(2)).connect_lazy();
            let mut kv = KvClient::new(channel);
            let mut n = 0u32;
            // Bounded: at most 20,000 attempts per writer, and stopped by the test.
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                let key = format!("crash/{w}/{n:06}");
                n += 1;
                let put = PutRequest { key: key.clone().into(), value: key.clone().into(), ..Default::default() };
                match kv.put(put).await {
                    Ok(_) => acked.lock().expect("lock").push(key),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    for round in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(400 + 150 * round)).await;
        c.members[0].kill();
        c.members[0].start();
        c.wait_ready(0).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 50, "too few writes were acknowledged ({}) to test anything", acked.len());
    // One more crash after the last acknowledgement, then check every acknowledged write.
    c.members[0].kill();
    c.members[0].start();
    c.wait_ready(0).await;
    let mut kv = c.kv(0).await;
    let got = kv
        .range(RangeRequest { key: "crash/".into(), range_end: "crash0".into(), ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    let present: std::collections::HashMap<Vec<u8>, Vec<u8>> =
        got.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let lost: Vec<&String> =
        acked.iter().filter(|k| present.get(k.as_bytes()) != Some(&k.as_bytes().to_vec())).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after kill -9 ({engine}): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9_redb() {
    acknowledged_writes_survive("redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9_sled() {
    acknowledged_writes_survive("sled").await;
}
