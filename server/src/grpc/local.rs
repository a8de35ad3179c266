//! An in-process client of this member's own KV, Lease and Watch services, for the
//! services built on them (Lock, Election) — etcd's `v3client` in Cairn. Requests go
//! through the same handlers (validation, Raft, read index) as a remote client's.

use super::kv::KvService;
use super::lease::LeaseService;
use super::Ctx;
use crate::auth::gate::Identity;
use crate::watch::{WatchHub, STREAM_BUFFER};
use cairn_api::etcdserverpb::kv_server::Kv;
use cairn_api::etcdserverpb::lease_server::Lease;
use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_api::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchResponse,
};
use cairn_api::mvccpb::{event::EventType, KeyValue};
use cairn_api::prefix_end;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Status};

/// A lock or candidacy whose lease was not given lives this long (etcd's session default).
pub const DEFAULT_TTL: i64 = 60;

/// A client of this member, inside it, acting for one caller.
pub struct Local {
    pub ctx: Ctx,
    kv: KvService,
    lease: LeaseService,
    who: Identity,
}

/// The first key under `prefix` in create-revision `order`, among those created at or
/// before `max_create_revision` (0: all).
fn by_create(prefix: &[u8], order: SortOrder, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

impl Local {
    /// A client of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Local {
        Local { kv: KvService::new(ctx), lease: LeaseService::new(ctx), ctx: ctx.clone(), who: Identity::default() }
    }

    /// The same client acting for the caller of `req`: its requests are checked against
    /// the caller's permissions, as etcd's Lock and Election act with the caller's token.
    pub async fn acting_for<T>(&self, req: &Request<T>) -> Result<Arc<Local>, Status> {
        let who = self.ctx.gate.identify(req).await?;
        Ok(Arc::new(Local {
            ctx: self.ctx.clone(),
            kv: KvService::new(&self.ctx),
            lease: LeaseService::new(&self.ctx),
            who,
        }))
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.extensions_mut().insert(self.who.clone());
        r
    }

    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv.txn(self.request(r)).await?.into_inner())
    }

    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse, Status> {
        Ok(self.kv.range(self.request(r)).await?.into_inner())
    }

    pub async fn get(&self, key: &[u8]) -> Result<RangeResponse, Status> {
        self.range(RangeRequest { key: key.to_vec(), ..Default::default() }).await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<i64, Status> {
        let r = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
        let resp = self.kv.delete_range(self.request(r)).await?.into_inner();
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// `lease`, or a new lease of [`DEFAULT_TTL`] if it is 0 (as etcd's Lock/Election).
    pub async fn lease_or_new(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let r = LeaseGrantRequest { ttl: DEFAULT_TTL, id: 0 };
        Ok(self.lease.lease_grant(self.request(r)).await?.into_inner().id)
    }

    /// The first-created key under `prefix` (the lock holder, the leader) and the read's header.
    pub async fn first_created(&self, prefix: &[u8]) -> Result<(Option<KeyValue>, RangeResponse), Status> {
        let mut resp = self.range(by_create(prefix, SortOrder::Ascend, 0)).await?;
        Ok((resp.kvs.pop(), resp))
    }

    /// Wait until no key under `prefix` created at or before `max_create_revision` is left,
    /// watching only the latest of them each time.
    pub async fn wait_deletes(&self, prefix: &[u8], max_create_revision: i64) -> Result<(), Status> {
        loop {
            let resp = self.range(by_create(prefix, SortOrder::Descend, max_create_revision)).await?;
            let Some(kv) = resp.kvs.first() else { return Ok(()) };
            let seen = resp.header.map_or(0, |h| h.revision);
            self.wait_delete(&kv.key, kv.create_revision, seen).await?;
        }
    }

    /// Wait until `key`, created at `create_revision` and seen at revision `seen`, is deleted.
    async fn wait_delete(&self, key: &[u8], create_revision: i64, mut seen: i64) -> Result<(), Status> {
        loop {
            let mut w =
                self.watch(WatchCreateRequest { key: key.to_vec(), start_revision: seen + 1, ..Default::default() });
            w.create().await;
            while let Some(resp) = w.next().await {
                if resp.events.iter().any(|e| e.r#type() == EventType::Delete) {
                    return Ok(());
                }
                if resp.canceled {
                    break;
                }
            }
            // The watch ended (compaction): is the key still the one we wait for?
            let now = self.get(key).await?;
            match now.kvs.first() {
                Some(kv) if kv.create_revision == create_revision => seen = now.header.map_or(seen, |h| h.revision),
                _ => return Ok(()),
            }
        }
    }

    /// A watch on this member's hub.
    pub fn watch(&self, create: WatchCreateRequest) -> LocalWatch {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let hub = self.ctx.replica.hub().clone();
        let sid = hub.open_stream(tx.clone());
        LocalWatch { hub, sid, tx, rx, create: Some(create) }
    }
}

/// One watcher on this member's hub; closed when dropped.
pub struct LocalWatch {
    hub: Arc<WatchHub>,
    sid: u64,
    tx: crate::watch::StreamTx,
    rx: mpsc::Receiver<Result<crate::watch::outgoing::Outgoing, crate::error::Error>>,
    create: Option<WatchCreateRequest>,
}

impl LocalWatch {
    /// Register the watcher (its `created` answer is skipped by [`LocalWatch::next`]).
    pub async fn create(&mut self) {
        if let Some(c) = self.create.take() {
            // In-process watchers serve Lock and Election calls, checked when they were made.
            self.hub.create(self.sid, c, None, &self.tx).await;
        }
    }

    /// The next response with events, or a cancellation; `None` if the hub went away.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        loop {
            match self.rx.recv().await? {
                // `created` answers and progress notifications carry nothing to wait for.
                Ok(r) if r.events.is_empty() && !r.head.canceled => continue,
                Ok(r) => return r.decode().ok(),
                Err(_) => return None,
            }
        }
    }
}

impl Drop for LocalWatch {
    fn drop(&mut self) {
        self.hub.close_stream(self.sid);
    }
}
