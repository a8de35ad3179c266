//! MVCC over a storage engine: etcd's KV semantics (Range, Put, DeleteRange, Txn,
//! Compact) with revisions, versions and history.
//!
//! Layout: the `Kv` table maps each 16-byte [`Revision`] to one byte of kind (put or
//! delete) followed by the encoded `mvccpb.KeyValue`; the key index ([`TreeIndex`])
//! lives in memory and is rebuilt from the `Kv` table on open, as etcd does.
//!
//! Writes are staged: each mutation updates the in-memory index at once and appends to
//! a pending [`WriteBatch`]; [`Mvcc::commit`] writes the batch (plus whatever the caller
//! adds, such as the applied Raft log id) atomically. Reads never see a half-applied
//! request because the caller holds the store exclusively while applying.

use crate::engine::{Engine, ReadView, Table, WriteBatch};
use crate::error::{Result, StoreError};
use crate::key_index::{KeyAt, TreeIndex};
use crate::revision::Revision;
use cairn_api::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use cairn_api::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The first byte of a `Kv` value: a put.
pub(crate) const KIND_PUT: u8 = 0;
/// The first byte of a `Kv` value: a delete (tombstone).
pub(crate) const KIND_DELETE: u8 = 1;
/// `Meta` key of the current revision.
pub const META_CURRENT_REV: &[u8] = b"current_rev";
/// `Meta` key of the compacted revision.
pub const META_COMPACT_REV: &[u8] = b"compact_rev";
/// Meta-table keys under this prefix hold users, roles and auth settings (the server's
/// auth state); they belong to the data, so a backup restore keeps them.
pub const META_AUTH_PREFIX: &[u8] = b"auth/";
/// Whether auth is on: one byte, 1 or 0.
pub const META_AUTH_ENABLED: &[u8] = b"auth/enabled";
/// The auth revision: a big-endian u64.
pub const META_AUTH_REVISION: &[u8] = b"auth/revision";
/// Users (`cairnpb.AuthUser`) by name after this prefix.
pub const META_AUTH_USER_PREFIX: &[u8] = b"auth/user/";
/// Roles (`authpb.Role`) by name after this prefix.
pub const META_AUTH_ROLE_PREFIX: &[u8] = b"auth/role/";

/// Tells the store whether a lease id exists (the lessor lives above the store).
pub type LeaseCheck<'a> = &'a dyn Fn(i64) -> bool;

/// The MVCC key-value store.
pub struct Mvcc {
    engine: Arc<dyn Engine>,
    index: TreeIndex,
    current_rev: i64,
    compact_rev: i64,
    /// Encoded values written since the last commit (not yet in the engine).
    pending: HashMap<Revision, Vec<u8>>,
    batch: WriteBatch,
    /// Events of the mutations since the last [`Mvcc::take_events`], in revision order.
    events: Vec<Event>,
    /// Live keys attached to each lease.
    attached: HashMap<i64, BTreeSet<Vec<u8>>>,
}

/// The key revisions a range returns, before their values are loaded
/// ([`Mvcc::range_keys_at`]).
#[derive(Debug)]
pub struct RangeKeys {
    header_rev: i64,
    count: i64,
    /// In the order they are returned (sorting by value waits for the values), at most
    /// `limit + 1` unless sorting by value.
    hits: Vec<KeyAt>,
    count_only: bool,
    keys_only: bool,
    limit: usize,
    /// Sort by value once loaded: `Some(descending)`.
    by_value: Option<bool>,
}

impl RangeKeys {
    /// How many values [`RangeKeys::finish`] will load.
    pub fn len(&self) -> usize {
        self.hits.len()
    }

    /// Whether there is no value to load.
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// Load the values with `load` and build the response.
    pub fn finish(self, load: &dyn Fn(Revision) -> Result<KeyValue>) -> Result<RangeResponse> {
        let mut resp = RangeResponse { header: header(self.header_rev), count: self.count, ..Default::default() };
        if self.count_only {
            return Ok(resp);
        }
        let mut kvs = Vec::with_capacity(self.hits.len());
        for ka in &self.hits {
            kvs.push(load(ka.modified)?);
        }
        if let Some(descending) = self.by_value {
            kvs.sort_by(|a, b| a.value.cmp(&b.value));
            if descending {
                kvs.reverse();
            }
        }
        if self.limit > 0 && kvs.len() > self.limit {
            kvs.truncate(self.limit);
            resp.more = true;
        }
        if self.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        resp.kvs = kvs;
        Ok(resp)
    }
}

/// Load the KeyValue stored at `rev` from a read view of the engine (see [`RangeKeys`]).
pub fn load_from(view: &dyn ReadView, rev: Revision) -> Result<KeyValue> {
    let raw = view.get_one(Table::Kv, &rev.to_bytes())?;
    let raw = raw.ok_or_else(|| StoreError::Corrupt(format!("missing revision {rev:?}")))?;
    let body = raw.get(1..).ok_or_else(|| StoreError::Corrupt("empty kv".into()))?;
    Ok(KeyValue::decode(body)?)
}

/// The engine part of [`Mvcc::history`] (events without previous values), from any read
/// view: a watcher catching up scans a frozen view without holding the store's lock.
pub fn history_in(
    view: &dyn ReadView,
    key: &[u8],
    end: &[u8],
    from: i64,
    to: i64,
    (limit, limit_bytes): (usize, usize),
) -> Result<Vec<Event>> {
    let mut out: Vec<Event> = Vec::new();
    if from > to {
        return Ok(out);
    }
    let (lo, hi) = (Revision::new(from, 0).to_bytes(), Revision::new(to.saturating_add(1), 0).to_bytes());
    let in_range = |k: &[u8]| {
        if end.is_empty() {
            k == key
        } else if end == [0] {
            k >= key
        } else {
            k >= key && k < end
        }
    };
    let (mut last_main, mut bytes) = (0, 0usize);
    view.scan(Table::Kv, &lo, Some(&hi), &mut |k, v| {
        let rev = Revision::from_bytes(k).ok_or_else(|| StoreError::Corrupt("revision key".into()))?;
        if (out.len() >= limit || bytes >= limit_bytes) && rev.main != last_main {
            return Ok(false);
        }
        let (kind, body) = v.split_first().ok_or_else(|| StoreError::Corrupt("empty kv".into()))?;
        let kv = KeyValue::decode(body)?;
        if in_range(&kv.key) {
            bytes += kv.key.len() + kv.value.len();
            let r#type = if *kind == KIND_DELETE { EventType::Delete } else { EventType::Put } as i32;
            out.push(Event { r#type, kv: Some(kv), prev_kv: None });
            last_main = rev.main;
        }
        Ok(true)
    })?;
    Ok(out)
}

/// A write transaction in progress: every change shares `rev`, with increasing `sub`.
/// It also remembers what it changed, so a write that fails halfway leaves nothing.
struct Writer {
    rev: i64,
    sub: i64,
    /// Length of the staged batch and event list when the write began.
    batch_mark: usize,
    events_mark: usize,
    /// Keys whose index entry this write changed.
    touched: Vec<Vec<u8>>,
    /// Lease attachments this write changed, in order: (lease, key, attached).
    links: Vec<(i64, Vec<u8>, bool)>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

fn read_i64(v: Option<Vec<u8>>) -> Result<i64> {
    match v {
        None => Ok(0),
        Some(b) => {
            Ok(i64::from_be_bytes(b.as_slice().try_into().map_err(|_| StoreError::Corrupt("meta integer".into()))?))
        }
    }
}

impl Mvcc {
    /// Open the store on `engine`, rebuilding the key index from disk.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let mut m = Mvcc {
            engine,
            index: TreeIndex::default(),
            current_rev: 1,
            compact_rev: 0,
            pending: HashMap::new(),
            batch: WriteBatch::new(),
            events: Vec::new(),
            attached: HashMap::new(),
        };
        m.reload()?;
        Ok(m)
    }

    /// Rebuild the in-memory state from the engine (after open or a snapshot install).
    pub fn reload(&mut self) -> Result<()> {
        self.pending.clear();
        self.batch = WriteBatch::new();
        let mut index = TreeIndex::default();
        let mut last = 0;
        // The lease of every live key with one, tracked through history in order.
        let mut lease_of: HashMap<Vec<u8>, i64> = HashMap::new();
        self.engine.scan(Table::Kv, &[], None, &mut |k, v| {
            let rev = Revision::from_bytes(k).ok_or_else(|| StoreError::Corrupt("revision key".into()))?;
            let (kind, body) = v.split_first().ok_or_else(|| StoreError::Corrupt("empty kv".into()))?;
            let kv = KeyValue::decode(body)?;
            match *kind {
                KIND_PUT => {
                    index.put(&kv.key, rev);
                    if kv.lease != 0 {
                        lease_of.insert(kv.key, kv.lease);
                    } else {
                        lease_of.remove(&kv.key);
                    }
                }
                KIND_DELETE => {
                    index.tombstone(&kv.key, rev);
                    lease_of.remove(&kv.key);
                }
                other => return Err(StoreError::Corrupt(format!("kv kind {other}"))),
            }
            last = rev.main;
            Ok(true)
        })?;
        let stored = read_i64(self.engine.get(Table::Meta, META_CURRENT_REV)?)?;
        self.compact_rev = read_i64(self.engine.get(Table::Meta, META_COMPACT_REV)?)?;
        // etcd starts at revision 1 on an empty store.
        self.current_rev = stored.max(last).max(self.compact_rev).max(1);
        self.index = index;
        self.attached.clear();
        for (key, lease) in lease_of {
            self.attached.entry(lease).or_default().insert(key);
        }
        Ok(())
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The latest revision.
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// Number of keys in the index (with any history since the last compaction).
    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    fn encode(kind: u8, kv: &KeyValue) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + kv.encoded_len());
        v.push(kind);
        kv.encode(&mut v).expect("Vec has unbounded capacity");
        v
    }

    /// Load the full KeyValue stored at `rev`.
    fn load(&self, rev: Revision) -> Result<KeyValue> {
        let raw = match self.pending.get(&rev) {
            Some(v) => v.clone(),
            None => self
                .engine
                .get(Table::Kv, &rev.to_bytes())?
                .ok_or_else(|| StoreError::Corrupt(format!("missing revision {rev:?}")))?,
        };
        let body = raw.get(1..).ok_or_else(|| StoreError::Corrupt("empty kv".into()))?;
        Ok(KeyValue::decode(body)?)
    }

    fn check_rev(&self, rev: i64) -> Result<i64> {
        let at = if rev <= 0 { self.current_rev } else { rev };
        if at > self.current_rev {
            return Err(StoreError::FutureRev);
        }
        if at < self.compact_rev {
            return Err(StoreError::Compacted);
        }
        Ok(at)
    }

    /// Range with every field of etcd's RangeRequest. The response header carries
    /// only the revision; the server fills in the rest.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let at = self.check_rev(req.revision)?;
        self.range_at(req, at, self.current_rev)
    }

    fn range_at(&self, req: &RangeRequest, at: i64, header_rev: i64) -> Result<RangeResponse> {
        self.range_keys(req, at, header_rev).finish(&|rev| self.load(rev))
    }

    /// The first half of a range, done under the store's lock: which key revisions it
    /// returns (from the in-memory index). [`RangeKeys::finish`] loads their values, from
    /// this store or from a frozen view taken under the same lock (so a large range does
    /// not hold writers back while its values are read).
    pub fn range_keys_at(&self, req: &RangeRequest) -> Result<RangeKeys> {
        let at = self.check_rev(req.revision)?;
        Ok(self.range_keys(req, at, self.current_rev))
    }

    /// Finish a range planned by [`Mvcc::range_keys_at`] from this store.
    pub fn finish_range(&self, keys: RangeKeys) -> Result<RangeResponse> {
        keys.finish(&|rev| self.load(rev))
    }

    fn range_keys(&self, req: &RangeRequest, at: i64, header_rev: i64) -> RangeKeys {
        use range_request::{SortOrder, SortTarget};
        let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        if target != SortTarget::Key && order == SortOrder::None {
            order = SortOrder::Ascend;
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let fetch_all = filtered || order != SortOrder::None;
        let limit = usize::try_from(req.limit).unwrap_or(0);

        let mut count = 0i64;
        let mut hits: Vec<KeyAt> = Vec::new();
        self.index.range(&req.key, &req.range_end, at, |_, ka| {
            count += 1;
            if !req.count_only && (fetch_all || limit == 0 || hits.len() <= limit) {
                hits.push(ka);
            }
            true
        });
        if filtered {
            hits.retain(|ka| {
                (req.max_mod_revision == 0 || ka.modified.main <= req.max_mod_revision)
                    && (req.min_mod_revision == 0 || ka.modified.main >= req.min_mod_revision)
                    && (req.max_create_revision == 0 || ka.created.main <= req.max_create_revision)
                    && (req.min_create_revision == 0 || ka.created.main >= req.min_create_revision)
            });
        }
        let by_value = target == SortTarget::Value && order != SortOrder::None;
        if !by_value && order != SortOrder::None {
            let key_of = |ka: &KeyAt| match target {
                SortTarget::Version => ka.version,
                SortTarget::Create => ka.created.main,
                SortTarget::Mod => ka.modified.main,
                SortTarget::Key | SortTarget::Value => 0,
            };
            if target != SortTarget::Key {
                // (The index already yields ascending keys.)
                hits.sort_by_key(key_of);
            }
            if order == SortOrder::Descend {
                hits.reverse();
            }
        }
        if !by_value && limit > 0 {
            hits.truncate(limit + 1);
        }
        RangeKeys {
            header_rev,
            count,
            hits,
            count_only: req.count_only,
            keys_only: req.keys_only,
            limit,
            by_value: by_value.then_some(order == SortOrder::Descend),
        }
    }

    /// Run `f` as one write transaction: everything it stages shares one revision, and
    /// if it fails nothing it staged survives (index, lease links, batch, events).
    /// Returns `f`'s result and the revision after the write.
    fn write<T>(&mut self, f: impl FnOnce(&mut Self, &mut Writer) -> Result<T>) -> Result<(T, i64)> {
        let mut w = Writer {
            rev: self.current_rev + 1,
            sub: 0,
            batch_mark: self.batch.len(),
            events_mark: self.events.len(),
            touched: Vec::new(),
            links: Vec::new(),
        };
        match f(self, &mut w) {
            Ok(v) => {
                if w.sub > 0 {
                    self.current_rev = w.rev;
                    self.batch.put(Table::Meta, META_CURRENT_REV, w.rev.to_be_bytes().to_vec());
                }
                Ok((v, self.current_rev))
            }
            Err(e) => {
                self.undo(w);
                Err(e)
            }
        }
    }

    /// Reverse everything a failed write staged.
    fn undo(&mut self, w: Writer) {
        for (lease, key, attached) in w.links.into_iter().rev() {
            if attached {
                self.unlink(lease, &key);
            } else {
                self.attached.entry(lease).or_default().insert(key);
            }
        }
        for key in &w.touched {
            self.index.undo(key, w.rev);
        }
        self.batch.truncate(w.batch_mark);
        self.events.truncate(w.events_mark);
        if w.sub > 0 {
            self.pending.retain(|r, _| r.main != w.rev);
        }
    }

    /// The revision reads inside `w` see (its own writes included).
    fn read_rev(&self, w: &Writer) -> i64 {
        if w.sub > 0 {
            w.rev
        } else {
            self.current_rev
        }
    }

    fn write_put(&mut self, w: &mut Writer, req: &PutRequest) -> Result<PutResponse> {
        let at = self.read_rev(w);
        let prev = match self.index.get(&req.key, at) {
            Some(ka) => Some((ka, self.load(ka.modified)?)),
            None => None,
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(StoreError::KeyNotFound);
        }
        let rev = Revision::new(w.rev, w.sub);
        w.sub += 1;
        let (create_revision, version) = match &prev {
            Some((ka, _)) => (ka.created.main, ka.version + 1),
            None => (rev.main, 1),
        };
        let value = match (&prev, req.ignore_value) {
            (Some((_, p)), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some((_, p)), true) => p.lease,
            _ => req.lease,
        };
        let kv = KeyValue { key: req.key.clone(), create_revision, mod_revision: rev.main, version, value, lease };
        let enc = Self::encode(KIND_PUT, &kv);
        self.batch.put(Table::Kv, rev.to_bytes().to_vec(), enc.clone());
        self.pending.insert(rev, enc);
        self.index.put(&req.key, rev);
        w.touched.push(req.key.clone());
        let prev = prev.map(|(_, p)| p);
        if let Some(p) = &prev {
            self.detach(w, p.lease, &req.key);
        }
        if lease != 0 && self.attached.entry(lease).or_default().insert(req.key.clone()) {
            w.links.push((lease, req.key.clone(), true));
        }
        self.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev.clone() });
        let prev_kv = if req.prev_kv { prev } else { None };
        Ok(PutResponse { header: header(rev.main), prev_kv })
    }

    fn write_delete(&mut self, w: &mut Writer, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let at = self.read_rev(w);
        let mut keys = Vec::new();
        self.index.range(&req.key, &req.range_end, at, |k, ka| {
            keys.push((k.to_vec(), ka));
            true
        });
        let mut prev_kvs = Vec::new();
        for (key, ka) in &keys {
            // Watchers may ask for the deleted value, so it is loaded either way.
            let prev = self.load(ka.modified)?;
            if req.prev_kv {
                prev_kvs.push(prev.clone());
            }
            let rev = Revision::new(w.rev, w.sub);
            w.sub += 1;
            let tomb = KeyValue { key: key.clone(), mod_revision: rev.main, ..Default::default() };
            let enc = Self::encode(KIND_DELETE, &tomb);
            self.batch.put(Table::Kv, rev.to_bytes().to_vec(), enc.clone());
            self.pending.insert(rev, enc);
            self.index.tombstone(key, rev);
            w.touched.push(key.clone());
            self.detach(w, prev.lease, key);
            self.events.push(Event { r#type: EventType::Delete as i32, kv: Some(tomb), prev_kv: Some(prev) });
        }
        let rev = if keys.is_empty() { self.current_rev } else { w.rev };
        Ok(DeleteRangeResponse { header: header(rev), deleted: keys.len() as i64, prev_kvs })
    }

    /// Detach `key` from `lease` as part of `w`.
    fn detach(&mut self, w: &mut Writer, lease: i64, key: &[u8]) {
        if lease != 0 && self.unlink(lease, key) {
            w.links.push((lease, key.to_vec(), false));
        }
    }

    /// Remove `key` from `lease`'s keys; true if it was there.
    fn unlink(&mut self, lease: i64, key: &[u8]) -> bool {
        let Some(keys) = self.attached.get_mut(&lease) else { return false };
        let was = keys.remove(key);
        if keys.is_empty() {
            self.attached.remove(&lease);
        }
        was
    }

    /// The live keys attached to `lease`, in key order.
    pub fn lease_keys(&self, lease: i64) -> Vec<Vec<u8>> {
        self.attached.get(&lease).map(|k| k.iter().cloned().collect()).unwrap_or_default()
    }

    /// Delete `keys` in one write transaction (one revision); returns how many existed.
    pub fn delete_keys(&mut self, keys: &[Vec<u8>]) -> Result<i64> {
        let (deleted, _) = self.write(|m, w| {
            let mut deleted = 0;
            for k in keys {
                deleted += m.write_delete(w, &DeleteRangeRequest { key: k.clone(), ..Default::default() })?.deleted;
            }
            Ok(deleted)
        })?;
        Ok(deleted)
    }

    /// Put one key (a one-operation write transaction).
    pub fn put(&mut self, req: &PutRequest, lease_ok: LeaseCheck<'_>) -> Result<PutResponse> {
        self.check_put(req, lease_ok)?;
        Ok(self.write(|m, w| m.write_put(w, req))?.0)
    }

    /// Delete a key or range.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        Ok(self.write(|m, w| m.write_delete(w, req))?.0)
    }

    /// Validate a put on the state before the write, as etcd does for a whole txn.
    fn check_put(&self, req: &PutRequest, lease_ok: LeaseCheck<'_>) -> Result<()> {
        if (req.ignore_value || req.ignore_lease) && self.index.get(&req.key, self.current_rev).is_none() {
            return Err(StoreError::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && !lease_ok(req.lease) {
            return Err(StoreError::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `compareToPath`: the branch every txn on the tree takes, decided once on
    /// the state before the txn writes anything, in depth-first order of the txns that
    /// run (the outer txn first, then each nested txn of the branch taken, recursively).
    fn txn_path(&self, req: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let succeeded = self.compare_all(&req.compare, self.current_rev)?;
        path.push(succeeded);
        for op in if succeeded { &req.success } else { &req.failure } {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                self.txn_path(t, path)?;
            }
        }
        Ok(())
    }

    /// The next branch of a decided path.
    fn next_branch(path: &mut std::slice::Iter<'_, bool>) -> Result<bool> {
        path.next().copied().ok_or_else(|| StoreError::Corrupt("txn path shorter than the txn".into()))
    }

    /// Check every operation on the decided path, on the state before the txn.
    fn check_txn(
        &self,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
        lease_ok: LeaseCheck<'_>,
    ) -> Result<()> {
        let ops = if Self::next_branch(path)? { &req.success } else { &req.failure };
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => self.check_put(p, lease_ok)?,
                Some(request_op::Request::RequestTxn(t)) => self.check_txn(t, path, lease_ok)?,
                Some(request_op::Request::RequestRange(r)) => {
                    self.check_rev(r.revision)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn compare_all(&self, cmps: &[Compare], at: i64) -> Result<bool> {
        for c in cmps {
            if !self.compare(c, at)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn compare(&self, c: &Compare, at: i64) -> Result<bool> {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let mut found = Vec::new();
        self.index.range(&c.key, &c.range_end, at, |_, ka| {
            found.push(ka);
            true
        });
        let check = |ord: std::cmp::Ordering| match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        };
        let int_target = |ka: Option<&KeyAt>, lease: i64| -> (i64, i64) {
            match (target, &c.target_union) {
                (CompareTarget::Version, Some(TargetUnion::Version(v))) => (ka.map_or(0, |k| k.version), *v),
                (CompareTarget::Version, _) => (ka.map_or(0, |k| k.version), 0),
                (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => (ka.map_or(0, |k| k.created.main), *v),
                (CompareTarget::Create, _) => (ka.map_or(0, |k| k.created.main), 0),
                (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => (ka.map_or(0, |k| k.modified.main), *v),
                (CompareTarget::Mod, _) => (ka.map_or(0, |k| k.modified.main), 0),
                (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => (lease, *v),
                (CompareTarget::Lease, _) => (lease, 0),
                (CompareTarget::Value, _) => (0, 0),
            }
        };
        if found.is_empty() {
            // etcd: a value compare on a missing key always fails; other targets
            // compare against a zero KeyValue.
            if target == CompareTarget::Value {
                return Ok(false);
            }
            let (have, want) = int_target(None, 0);
            return Ok(check(have.cmp(&want)));
        }
        for ka in &found {
            let ok = match target {
                CompareTarget::Value => {
                    let kv = self.load(ka.modified)?;
                    let want: &[u8] = match &c.target_union {
                        Some(TargetUnion::Value(v)) => v,
                        _ => &[],
                    };
                    check(kv.value.as_slice().cmp(want))
                }
                CompareTarget::Lease => {
                    let kv = self.load(ka.modified)?;
                    let (have, want) = int_target(Some(ka), kv.lease);
                    check(have.cmp(&want))
                }
                _ => {
                    let (have, want) = int_target(Some(ka), 0);
                    check(have.cmp(&want))
                }
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A transaction: compare, then the success or failure operations, atomically and
    /// at one revision. Every compare on the tree is decided on the state before the txn
    /// (etcd's semantics), the operations on that path are checked before anything is
    /// written, and a failure halfway leaves nothing staged. The request must already be
    /// validated (no key written twice).
    pub fn txn(&mut self, req: &TxnRequest, lease_ok: LeaseCheck<'_>) -> Result<TxnResponse> {
        let mut path = Vec::new();
        self.txn_path(req, &mut path)?;
        self.check_txn(req, &mut path.iter(), lease_ok)?;
        let (mut resp, rev) = self.write(|m, w| m.write_txn(w, req, &mut path.iter()))?;
        resp.header = header(rev);
        Ok(resp)
    }

    fn write_txn(
        &mut self,
        w: &mut Writer,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<TxnResponse> {
        let succeeded = Self::next_branch(path)?;
        let ops: &[RequestOp] = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                // Reads inside a txn see the txn's earlier writes (etcd's storeTxnWrite).
                Some(request_op::Request::RequestRange(r)) => {
                    let at_now = self.read_rev(w);
                    let at = if r.revision <= 0 { at_now } else { r.revision };
                    response_op::Response::ResponseRange(self.range_at(r, at, at_now)?)
                }
                Some(request_op::Request::RequestPut(p)) => response_op::Response::ResponsePut(self.write_put(w, p)?),
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.write_delete(w, d)?)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let mut inner = self.write_txn(w, t, path)?;
                    inner.header = header(self.read_rev(w));
                    response_op::Response::ResponseTxn(inner)
                }
                None => continue,
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: None, succeeded, responses })
    }

    /// A transaction whose branches only read (ranges and nested read-only txns):
    /// evaluated at the current revision without staging anything.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse> {
        let at = self.current_rev;
        let succeeded = self.compare_all(&req.compare, at)?;
        let ops: &[RequestOp] = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let rev = self.check_rev(r.revision)?;
                    response_op::Response::ResponseRange(self.range_at(r, rev, at)?)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let mut inner = self.read_txn(t)?;
                    inner.header = header(at);
                    response_op::Response::ResponseTxn(inner)
                }
                Some(_) => return Err(StoreError::Corrupt("write inside a read-only txn".into())),
                None => continue,
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: header(at), succeeded, responses })
    }

    /// Compact history up to `rev`: reads below it fail from now on and the space of
    /// superseded revisions is freed.
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        if rev <= self.compact_rev {
            return Err(StoreError::Compacted);
        }
        if rev > self.current_rev {
            return Err(StoreError::FutureRev);
        }
        for r in self.index.compact(rev) {
            self.pending.remove(&r);
            self.batch.delete(Table::Kv, r.to_bytes().to_vec());
        }
        self.compact_rev = rev;
        self.batch.put(Table::Meta, META_COMPACT_REV, rev.to_be_bytes().to_vec());
        Ok(())
    }

    /// The events of every mutation since the last call, in revision order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// History: the events with revision in `[from, to]` on keys of the etcd-form range
    /// `[key, end)`, in revision order, at most `limit` of them and about `limit_bytes` of
    /// keys and values (never splitting a revision). `prev_kv` loads each event's previous value when it is still retained.
    /// Fails with `Compacted` when `from` is below the compacted revision.
    pub fn history(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        to: i64,
        limits: (usize, usize),
        prev_kv: bool,
    ) -> Result<Vec<Event>> {
        if from < self.compact_rev {
            return Err(StoreError::Compacted);
        }
        let mut out = history_in(&crate::engine::Live(self.engine.as_ref()), key, end, from, to, limits)?;
        if prev_kv {
            self.fill_prev_kvs(&mut out);
        }
        Ok(out)
    }

    /// Set each event's previous value where it is still retained (for [`history_in`]).
    pub fn fill_prev_kvs(&self, events: &mut [Event]) {
        for ev in events {
            if let Some(kv) = &ev.kv {
                let before = kv.mod_revision - 1;
                if before >= self.compact_rev {
                    if let Some(ka) = self.index.get(&kv.key, before) {
                        ev.prev_kv = self.load(ka.modified).ok();
                    }
                }
            }
        }
    }

    /// Write everything staged since the last commit, plus `extra`, in one atomic batch.
    pub fn commit(&mut self, extra: WriteBatch, durable: bool) -> Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.extend(extra);
        let res = self.engine.write(batch, durable);
        self.pending.clear();
        res
    }
}
