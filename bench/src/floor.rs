//! `cairn-bench floor`: a gRPC server of etcd's KV and Lease services that keeps nothing
//! and answers at once — a Range with one key of `--val-size` bytes, a Put or a lease
//! grant with a header, a keepalive with the lease's id and a TTL. It is not an etcd: it
//! stores nothing, syncs nothing, checks nothing. Loaded like a real server
//! (`bench/floor.sh`), it measures what the gRPC transport alone (tonic, hyper, h2 and the
//! kernel's TCP on loopback) costs per request on this machine: the floor under any
//! server's CPU per operation here, Cairn's (which serves on the same stack) and etcd's.

use cairn_api::etcdserverpb::kv_server::{Kv, KvServer};
use cairn_api::etcdserverpb::lease_server::{Lease, LeaseServer};
use cairn_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
};
use cairn_api::mvccpb::KeyValue;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// The TTL every keepalive reports.
const TTL: i64 = 60;

fn header() -> Option<ResponseHeader> {
    Some(ResponseHeader { cluster_id: 1, member_id: 1, revision: 1, raft_term: 1 })
}

#[derive(Clone)]
struct Floor {
    value: Arc<Vec<u8>>,
    next_lease: Arc<AtomicI64>,
}

#[tonic::async_trait]
impl Kv for Floor {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let key = req.into_inner().key;
        let kv =
            KeyValue { key, value: self.value.to_vec(), create_revision: 1, mod_revision: 1, version: 1, lease: 0 };
        Ok(Response::new(RangeResponse { header: header(), kvs: vec![kv], more: false, count: 1 }))
    }

    async fn put(&self, _req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(PutResponse { header: header(), prev_kv: None }))
    }
}

#[tonic::async_trait]
impl Lease for Floor {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let ttl = req.into_inner().ttl;
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(LeaseGrantResponse { header: header(), id, ttl, error: String::new() }))
    }

    async fn lease_revoke(&self, _req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(LeaseRevokeResponse { header: header() }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<LeaseKeepAliveResponse>>, Status> {
        // Each response made by the stream that sends it: no task or channel in between.
        let answers =
            req.into_inner().map(|r| r.map(|ka| LeaseKeepAliveResponse { header: header(), id: ka.id, ttl: TTL }));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Serve on `listen` (host:port; port 0 picks a free one) until interrupted, answering
/// ranges with `val_size`-byte values. The address it listens on is the first line on
/// stdout.
pub async fn serve(listen: &str, val_size: usize) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let floor = Floor { value: Arc::new(vec![b'v'; val_size]), next_lease: Arc::new(AtomicI64::new(1)) };
    println!("{addr}");
    eprintln!("floor server on {addr}: KV (range, put) and Lease (grant, revoke, keepalive), nothing stored");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(KvServer::new(floor.clone()))
        .add_service(LeaseServer::new(floor))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
