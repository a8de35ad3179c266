//! The workloads: each builds its clients, optionally prepares data (not measured), and
//! hands one operation to the runner.

use crate::runner::{drive, Report};
use crate::{Consistency, Opts};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest};
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint};

/// Open `--conns` connections, spread over the endpoints (or all to the leader).
pub async fn connect(opts: &Opts) -> anyhow::Result<Vec<Channel>> {
    let mut endpoints: Vec<String> =
        opts.endpoints.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints given");
    if opts.target_leader {
        endpoints = vec![leader_endpoint(&endpoints).await?];
    }
    let mut chans = Vec::new();
    for i in 0..opts.conns.max(1) {
        let ep = &endpoints[i % endpoints.len()];
        let url = if ep.contains("://") { ep.clone() } else { format!("http://{ep}") };
        chans.push(Endpoint::from_shared(url)?.tcp_nodelay(true).connect().await?);
    }
    Ok(chans)
}

/// The endpoint whose member is the leader.
pub async fn leader_endpoint(endpoints: &[String]) -> anyhow::Result<String> {
    for ep in endpoints {
        let url = if ep.contains("://") { ep.clone() } else { format!("http://{ep}") };
        let Ok(mut c) = MaintenanceClient::connect(url).await else { continue };
        let Ok(s) = c.status(StatusRequest {}).await else { continue };
        let s = s.into_inner();
        if s.header.is_some_and(|h| h.member_id == s.leader) {
            return Ok(ep.clone());
        }
    }
    anyhow::bail!("no leader found among {endpoints:?}")
}

/// KV clients, one per connection.
async fn kv_clients(opts: &Opts) -> anyhow::Result<Arc<Vec<KvClient<Channel>>>> {
    Ok(Arc::new(connect(opts).await?.into_iter().map(KvClient::new).collect()))
}

/// The key for operation `seq`: zero-padded to --key-size.
pub fn key(opts: &Opts, seq: u64) -> Vec<u8> {
    let n = if opts.sequential_keys {
        seq % opts.key_space_size.max(1)
    } else {
        rand::rng().random_range(0..opts.key_space_size.max(1))
    };
    format!("{n:0width$}", width = opts.key_size).into_bytes()
}

fn value(opts: &Opts) -> Vec<u8> {
    vec![b'v'; opts.val_size]
}

fn put_req(opts: &Opts, seq: u64, value: &[u8]) -> PutRequest {
    PutRequest { key: key(opts, seq), value: value.to_vec(), ..Default::default() }
}

/// Puts.
pub async fn put(opts: &Opts) -> anyhow::Result<Report> {
    let kvs = kv_clients(opts).await?;
    let (o, v) = (opts.clone(), value(opts));
    Ok(drive("put", opts, move |c, seq| {
        let mut kv = kvs[c % kvs.len()].clone();
        let req = put_req(&o, seq, &v);
        async move { kv.put(req).await.map(|_| ()) }
    })
    .await)
}

/// Write every key of the key space once (at most 100,000), unmeasured.
async fn prefill(opts: &Opts) -> anyhow::Result<()> {
    let n = opts.key_space_size.clamp(1, 100_000);
    let fill = Opts {
        total: n,
        duration: None,
        sequential_keys: true,
        rate: 0.0,
        clients: 64,
        no_progress: true,
        ..opts.clone()
    };
    let r = put(&fill).await?;
    anyhow::ensure!(r.errors == 0, "prefill failed: {:?}", r.first_error);
    Ok(())
}

fn range_req(opts: &Opts, seq: u64, c: Consistency) -> RangeRequest {
    RangeRequest { key: key(opts, seq), serializable: c == Consistency::S, ..Default::default() }
}

/// Single-key ranges.
pub async fn range(opts: &Opts, consistency: Consistency) -> anyhow::Result<Report> {
    prefill(opts).await?;
    let kvs = kv_clients(opts).await?;
    let o = opts.clone();
    let name = match consistency {
        Consistency::L => "range (linearizable)",
        Consistency::S => "range (serializable)",
    };
    Ok(drive(name, opts, move |c, seq| {
        let mut kv = kvs[c % kvs.len()].clone();
        let req = range_req(&o, seq, consistency);
        async move { kv.range(req).await.map(|_| ()) }
    })
    .await)
}

fn txn_of_puts(opts: &Opts, seq: u64, n: usize, v: &[u8]) -> TxnRequest {
    // Distinct keys inside one txn (etcd refuses duplicates).
    let base = key(opts, seq);
    let success = (0..n.max(1))
        .map(|i| {
            let mut k = base.clone();
            if i > 0 {
                k.extend_from_slice(format!("/{i}").as_bytes());
            }
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k,
                    value: v.to_vec(),
                    ..Default::default()
                })),
            }
        })
        .collect();
    TxnRequest { success, ..Default::default() }
}

/// Txns of puts.
pub async fn txn_put(opts: &Opts, txn_ops: usize) -> anyhow::Result<Report> {
    let kvs = kv_clients(opts).await?;
    let (o, v) = (opts.clone(), value(opts));
    Ok(drive("txn-put", opts, move |c, seq| {
        let mut kv = kvs[c % kvs.len()].clone();
        let req = txn_of_puts(&o, seq, txn_ops, &v);
        async move { kv.txn(req).await.map(|_| ()) }
    })
    .await)
}

/// Ranges and txn puts at `rw_ratio` reads per write.
pub async fn txn_mixed(opts: &Opts, rw_ratio: f64, consistency: Consistency) -> anyhow::Result<Report> {
    prefill(opts).await?;
    let kvs = kv_clients(opts).await?;
    let (o, v) = (opts.clone(), value(opts));
    let (reads, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r2, w2) = (reads.clone(), writes.clone());
    let read_share = rw_ratio.max(0.0) / (1.0 + rw_ratio.max(0.0));
    let mut report = drive("txn-mixed", opts, move |c, seq| {
        let mut kv = kvs[c % kvs.len()].clone();
        let is_read = rand::rng().random_bool(read_share.clamp(0.0, 1.0));
        let (range, txn) = (range_req(&o, seq, consistency), txn_of_puts(&o, seq, 1, &v));
        let (reads, writes) = (r2.clone(), w2.clone());
        async move {
            if is_read {
                kv.range(range).await.map(|_| {
                    reads.fetch_add(1, Ordering::Relaxed);
                })
            } else {
                kv.txn(txn).await.map(|_| {
                    writes.fetch_add(1, Ordering::Relaxed);
                })
            }
        }
    })
    .await;
    report.extra.insert("reads".into(), reads.load(Ordering::Relaxed).into());
    report.extra.insert("writes".into(), writes.load(Ordering::Relaxed).into());
    Ok(report)
}
