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
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds the `--user`'s auth token to every call.
#[derive(Clone)]
pub struct Token(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// A connection with the token of `--user` (if any).
pub type Ch = InterceptedService<Channel, Token>;

/// Log in as `name:password` over `ch`.
async fn log_in(ch: &Channel, user: &str) -> anyhow::Result<AsciiMetadataValue> {
    use cairn_api::etcdserverpb::{auth_client::AuthClient, AuthenticateRequest};
    let (name, password) = user.split_once(':').ok_or_else(|| anyhow::anyhow!("--user wants name:password"))?;
    let req = AuthenticateRequest { name: name.into(), password: password.into() };
    let token = AuthClient::new(ch.clone()).authenticate(req).await?.into_inner().token;
    Ok(token.parse()?)
}

/// Open `--conns` connections, spread over the endpoints (or all to the leader).
pub async fn connect(opts: &Opts) -> anyhow::Result<Vec<Ch>> {
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
    let token = match (&opts.user, chans.first()) {
        (Some(user), Some(ch)) => Some(log_in(ch, user).await?),
        _ => None,
    };
    Ok(chans.into_iter().map(|ch| InterceptedService::new(ch, Token(token.clone()))).collect())
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
async fn kv_clients(opts: &Opts) -> anyhow::Result<Arc<Vec<KvClient<Ch>>>> {
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

/// Watch fan-out: `watchers` watchers on one prefix, spread over `streams` streams,
/// while the clients put keys under it. Reports events delivered per second and the
/// put-to-event latency (each value carries its send time).
pub async fn watch(opts: &Opts, watchers: usize, streams: usize, name: &str) -> anyhow::Result<Report> {
    use cairn_api::etcdserverpb::watch_client::WatchClient;
    use cairn_api::etcdserverpb::watch_request::RequestUnion;
    use cairn_api::etcdserverpb::{WatchCreateRequest, WatchRequest};
    use tokio::time::Instant;

    const PREFIX: &str = "bench-watch/";
    let chans = connect(opts).await?;
    let epoch = Instant::now();
    let streams = streams.clamp(1, watchers.max(1));
    let puts = if opts.duration.is_some() { u64::MAX } else { opts.total };
    let deadline = epoch + std::time::Duration::from_secs(opts.max_seconds);
    let mut readers = Vec::new();
    for s in 0..streams {
        let n = watchers / streams + usize::from(s < watchers % streams);
        let mut client = WatchClient::new(chans[s % chans.len()].clone()).max_decoding_message_size(64 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(n.max(1) + 1);
        for _ in 0..n {
            let mut end = PREFIX.as_bytes().to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            let create = WatchCreateRequest { key: PREFIX.into(), range_end: end, ..Default::default() };
            tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await?;
        }
        let mut inbound = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let mut created = 0;
        while created < n {
            match inbound.message().await? {
                Some(r) if r.created => created += 1,
                Some(_) => {}
                None => anyhow::bail!("watch stream closed while creating watchers"),
            }
        }
        readers.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut h = crate::runner::histogram();
            let (mut events, mut last) = (0u64, epoch);
            let want = (n as u64).saturating_mul(puts);
            while events < want {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                let Ok(Some(r)) = msg else { break };
                let now = Instant::now();
                for e in r.events {
                    if let Some(sent) =
                        e.kv.as_ref()
                            .and_then(|kv| kv.value.get(..8))
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                    {
                        let us = (now - epoch).as_micros() as u64;
                        let _ = h.record(us.saturating_sub(sent).max(1));
                    }
                    events += 1;
                    last = now;
                }
            }
            (events, h, last)
        }));
    }
    let keys = opts.clone();
    let kvs = kv_clients(opts).await?;
    let size = opts.val_size.max(8);
    let first_put = Instant::now();
    let cpu = crate::runner::CpuWindow::start(opts);
    let put_report = drive("puts", opts, move |c, seq| {
        let mut kv = kvs[c % kvs.len()].clone();
        let mut key = PREFIX.as_bytes().to_vec();
        key.extend_from_slice(&crate::workloads::key(&keys, seq));
        let mut value = vec![b'v'; size];
        value[..8].copy_from_slice(&((Instant::now() - epoch).as_micros() as u64).to_le_bytes());
        async move { kv.put(PutRequest { key, value, ..Default::default() }).await.map(|_| ()) }
    })
    .await;
    // With --duration, readers stop once the puts they can expect have arrived or time runs out.
    let mut h = crate::runner::histogram();
    let (mut events, mut last) = (0u64, first_put);
    let expected = put_report.ops * watchers as u64;
    let wait_until = Instant::now() + std::time::Duration::from_secs(30);
    for r in readers {
        let res = if opts.duration.is_some() {
            // Readers wait for u64::MAX puts; give them until the grace period ends.
            tokio::time::timeout_at(wait_until, r).await.ok().and_then(|x| x.ok())
        } else {
            r.await.ok()
        };
        if let Some((n, rh, l)) = res {
            events += n;
            let _ = h.add(&rh);
            last = last.max(l);
        }
    }
    let seconds = (last - first_put).as_secs_f64().max(1e-9);
    let mut report = Report {
        workload: name.to_string(),
        ops: events,
        errors: put_report.errors + expected.saturating_sub(events),
        seconds,
        throughput: events as f64 / seconds,
        latency_ms: crate::runner::Latency::of(&h),
        first_error: put_report.first_error.clone(),
        extra: Default::default(),
    };
    cpu.finish(&mut report);
    report.extra.insert("watchers".into(), watchers.into());
    report.extra.insert("puts".into(), put_report.ops.into());
    report.extra.insert("put_throughput".into(), put_report.throughput.into());
    report.extra.insert("events_expected".into(), expected.into());
    Ok(report)
}

/// Lease keepalives: each client grants one lease and renews it over its own keepalive
/// stream, one request at a time (latency = request to response).
pub async fn lease_keepalive(opts: &Opts) -> anyhow::Result<Report> {
    use cairn_api::etcdserverpb::lease_client::LeaseClient;
    use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
    use tokio::sync::Mutex;

    let chans = connect(opts).await?;
    let mut streams = Vec::new();
    for c in 0..opts.clients.max(1) {
        let mut lc = LeaseClient::new(chans[c % chans.len()].clone());
        let id = lc.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await?.into_inner().id;
        let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
        // Prime the stream: etcd (grpc-go) sends no response headers before its first
        // message, so awaiting the call before sending anything would never return.
        tx.send(LeaseKeepAliveRequest { id }).await?;
        let mut inbound = lc.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        inbound.message().await?;
        streams.push((id, lc, Arc::new(Mutex::new((tx, inbound)))));
    }
    let handles: Arc<Vec<(i64, Arc<Mutex<_>>)>> = Arc::new(streams.iter().map(|(id, _, s)| (*id, s.clone())).collect());
    let report = drive("lease-keepalive", opts, move |c, _| {
        let (id, s) = handles[c % handles.len()].clone();
        async move {
            let mut s = s.lock().await;
            s.0.send(LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| tonic::Status::unavailable("keepalive stream closed"))?;
            match s.1.message().await? {
                Some(r) if r.ttl > 0 => Ok(()),
                Some(_) => Err(tonic::Status::not_found("lease expired")),
                None => Err(tonic::Status::unavailable("keepalive stream ended")),
            }
        }
    })
    .await;
    for (id, mut lc, _) in streams {
        let _ = lc.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(report)
}

/// A fleet of `leases` leases of `ttl` seconds, each renewed every TTL/3 as client libraries
/// do (paced, spread over `--clients` keepalive streams), for `--duration` (default 20 s).
/// Reports the keepalives and, in `extra`, the Raft entries the member committed meanwhile
/// (`raft_entries_per_s`, from Status: the cost of replicating lease state).
pub async fn lease_fleet(opts: &Opts, leases: u64, ttl: i64) -> anyhow::Result<Report> {
    use cairn_api::etcdserverpb::lease_client::LeaseClient;
    use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
    use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, StatusRequest};
    use tokio::sync::Mutex;

    let chans = connect(opts).await?;
    // Granted 64 at a time, in the order they are renewed (the first is renewed first).
    let mut ids = Vec::with_capacity(leases as usize);
    let mut lc = LeaseClient::new(chans[0].clone());
    for chunk in (0..leases).collect::<Vec<_>>().chunks(64) {
        let grants = chunk.iter().map(|i| {
            let mut lc = LeaseClient::new(chans[*i as usize % chans.len()].clone());
            async move { lc.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await.map(|r| r.into_inner().id) }
        });
        for id in futures_join_all(grants).await {
            ids.push(id?);
        }
    }
    let mut streams = Vec::new();
    for c in 0..opts.clients.max(1) {
        let mut lc = LeaseClient::new(chans[c % chans.len()].clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
        tx.send(LeaseKeepAliveRequest { id: ids[c % ids.len()] }).await?;
        let mut inbound = lc.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        inbound.message().await?;
        streams.push(Arc::new(Mutex::new((tx, inbound))));
    }
    let raft_index = |ch: Ch| async move {
        MaintenanceClient::new(ch).status(StatusRequest {}).await.map(|s| s.into_inner().raft_index)
    };
    let before = raft_index(chans[0].clone()).await?;
    let paced = Opts {
        rate: leases as f64 * 3.0 / ttl.max(1) as f64,
        duration: Some(opts.duration.unwrap_or(20)),
        ..opts.clone()
    };
    let (ids, handles) = (Arc::new(ids), Arc::new(streams));
    let ids_op = ids.clone();
    let mut report = drive("lease-fleet", &paced, move |c, seq| {
        let id = ids_op[(seq % ids_op.len() as u64) as usize];
        let s = handles[c % handles.len()].clone();
        async move {
            let mut s = s.lock().await;
            s.0.send(LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| tonic::Status::unavailable("keepalive stream closed"))?;
            match s.1.message().await? {
                Some(r) if r.ttl > 0 => Ok(()),
                Some(_) => Err(tonic::Status::not_found("lease expired")),
                None => Err(tonic::Status::unavailable("keepalive stream ended")),
            }
        }
    })
    .await;
    let after = raft_index(chans[0].clone()).await?;
    for id in ids.iter() {
        let _ = lc.lease_revoke(LeaseRevokeRequest { id: *id }).await;
    }
    let entries = after.saturating_sub(before);
    report.extra.insert("leases".into(), leases.into());
    report.extra.insert("ttl_s".into(), ttl.into());
    report.extra.insert("raft_entries".into(), entries.into());
    report.extra.insert("raft_entries_per_s".into(), (entries as f64 / report.seconds.max(1e-9)).into());
    Ok(report)
}

/// Await every future, in order (a small join_all: tokio has none for a Vec).
async fn futures_join_all<T: Send + 'static>(
    futs: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Grant a lease and revoke it again: one operation = both calls.
pub async fn lease_grant_revoke(opts: &Opts) -> anyhow::Result<Report> {
    use cairn_api::etcdserverpb::lease_client::LeaseClient;
    use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};

    let clients: Arc<Vec<LeaseClient<Ch>>> = Arc::new(connect(opts).await?.into_iter().map(LeaseClient::new).collect());
    Ok(drive("lease-grant-revoke", opts, move |c, _| {
        let mut lc = clients[c % clients.len()].clone();
        async move {
            let id = lc.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await?.into_inner().id;
            lc.lease_revoke(LeaseRevokeRequest { id }).await.map(|_| ())
        }
    })
    .await)
}

/// A revocation storm: `leases` leases of the minimum TTL (every tenth with a key), then
/// the normal put workload while they all expire. Reports the puts made during the storm
/// and, in `extra`, how long after the last grant every lease was gone.
pub async fn lease_storm(opts: &Opts, leases: u64) -> anyhow::Result<Report> {
    use cairn_api::etcdserverpb::lease_client::LeaseClient;
    use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseLeasesRequest};
    use tokio::time::Instant;

    let chans = connect(opts).await?;
    let granters = 64u64;
    let mut set = tokio::task::JoinSet::new();
    for g in 0..granters {
        let ch = chans[g as usize % chans.len()].clone();
        set.spawn(async move {
            let mut lc = LeaseClient::new(ch.clone());
            let mut kv = KvClient::new(ch);
            for i in (g..leases).step_by(granters as usize) {
                let id = lc.lease_grant(LeaseGrantRequest { ttl: 1, id: 0 }).await?.into_inner().id;
                if i % 10 == 0 {
                    let key = format!("bench-storm/{i:08}").into_bytes();
                    kv.put(PutRequest { key, value: b"v".to_vec(), lease: id, ..Default::default() }).await?;
                }
            }
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let granted_at = Instant::now();
    let mut lc = LeaseClient::new(chans[0].clone());
    let limit = std::time::Duration::from_secs(opts.max_seconds);
    let watcher = tokio::spawn(async move {
        loop {
            match lc.lease_leases(LeaseLeasesRequest {}).await {
                Ok(r) if r.get_ref().leases.is_empty() => return Some(granted_at.elapsed().as_secs_f64()),
                _ if granted_at.elapsed() > limit => return None,
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    });
    let during = Opts { duration: Some(opts.duration.unwrap_or(10)), ..opts.clone() };
    let mut report = put(&during).await?;
    report.workload = "lease-storm (puts while leases expire)".into();
    let revoked = watcher.await.ok().flatten();
    report.extra.insert("leases".into(), leases.into());
    report.extra.insert("all_revoked_after_s".into(), revoked.map_or(serde_json::Value::Null, Into::into));
    if revoked.is_none() {
        report.errors += 1;
        report.first_error.get_or_insert_with(|| "leases still present at --max-seconds".into());
    }
    Ok(report)
}
