//! Keys and values: get, put, delete, transactions and compaction, with option builders
//! over etcd's `Range`, `Put`, `DeleteRange`, `Txn` and `Compact` requests.

use crate::client::AuthChannel;
use crate::client::{Client, MAX_DECODE};
use crate::error::Result;
use cairn_api::etcdserverpb as pb;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::mvccpb::KeyValue;
pub use cairn_api::prefix_end;

/// The header every response carries: which cluster and member answered, and the store's
/// revision when it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// The cluster's ID.
    pub cluster_id: u64,
    /// The answering member's ID.
    pub member_id: u64,
    /// The store's revision when the request was served.
    pub revision: i64,
    /// The Raft term when the request was served.
    pub raft_term: u64,
}

impl From<Option<pb::ResponseHeader>> for Header {
    fn from(h: Option<pb::ResponseHeader>) -> Self {
        let h = h.unwrap_or_default();
        Header { cluster_id: h.cluster_id, member_id: h.member_id, revision: h.revision, raft_term: h.raft_term }
    }
}

/// Text views of a key-value pair's bytes.
pub trait KeyValueExt {
    /// The key as UTF-8, with invalid bytes replaced.
    fn key_str(&self) -> std::borrow::Cow<'_, str>;
    /// The value as UTF-8, with invalid bytes replaced.
    fn value_str(&self) -> std::borrow::Cow<'_, str>;
}

impl KeyValueExt for KeyValue {
    fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
    fn value_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// Which keys a request covers beyond its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Span {
    #[default]
    One,
    Prefix,
    FromKey,
    End(Vec<u8>),
}

impl Span {
    /// The request's `(key, range_end)`. An empty prefix means every key, which etcd
    /// spells `key = range_end = "\0"`.
    pub(crate) fn apply(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            Span::One => (key, Vec::new()),
            Span::Prefix if key.is_empty() => (vec![0], vec![0]),
            Span::Prefix => {
                let end = prefix_end(&key);
                (key, end)
            }
            Span::FromKey if key.is_empty() => (vec![0], vec![0]),
            Span::FromKey => (key, vec![0]),
            Span::End(e) => (key, e.clone()),
        }
    }
}

/// Gives an options type with a `span` field etcd's range builders.
macro_rules! span_builders {
    ($t:ty) => {
        impl $t {
            /// Cover every key that starts with the key (every key, if the key is empty).
            pub fn with_prefix(mut self) -> Self {
                self.span = Span::Prefix;
                self
            }
            /// Cover every key from the key on.
            pub fn with_from_key(mut self) -> Self {
                self.span = Span::FromKey;
                self
            }
            /// Cover the keys in `[key, end)`.
            pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
                self.span = Span::End(end.into());
                self
            }
        }
    };
}
pub(crate) use span_builders;

span_builders!(GetOptions);
span_builders!(DeleteOptions);

/// How results are sorted.
pub use pb::range_request::{SortOrder, SortTarget};

/// Options of a get (etcd's `RangeRequest`).
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    span: Span,
    revision: i64,
    limit: i64,
    sort: Option<(SortTarget, SortOrder)>,
    keys_only: bool,
    count_only: bool,
    serializable: bool,
    min_mod_revision: i64,
    max_mod_revision: i64,
    min_create_revision: i64,
    max_create_revision: i64,
}

impl GetOptions {
    /// No options: the one key, linearizable, at the current revision.
    pub fn new() -> Self {
        Self::default()
    }
    /// Read at an older revision (must not be compacted).
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }
    /// At most `limit` keys (`more` tells whether there were others).
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
    /// Sort by `target` in `order`.
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort = Some((target, order));
        self
    }
    /// Return keys without values.
    pub fn with_keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
    /// Return only the count.
    pub fn with_count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
    /// Read the answering member's local state without a quorum round (may be stale).
    pub fn with_serializable(mut self) -> Self {
        self.serializable = true;
        self
    }
    /// Only keys whose mod revision is within `[min, max]` (0 = unbounded).
    pub fn with_mod_revision_range(mut self, min: i64, max: i64) -> Self {
        self.min_mod_revision = min;
        self.max_mod_revision = max;
        self
    }
    /// Only keys whose create revision is within `[min, max]` (0 = unbounded).
    pub fn with_create_revision_range(mut self, min: i64, max: i64) -> Self {
        self.min_create_revision = min;
        self.max_create_revision = max;
        self
    }

    pub(crate) fn request(self, key: Vec<u8>) -> pb::RangeRequest {
        let (key, range_end) = self.span.apply(key);
        let (target, order) = self.sort.unwrap_or((SortTarget::Key, SortOrder::None));
        pb::RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: order as i32,
            sort_target: target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        }
    }
}

/// Options of a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    lease: i64,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

impl PutOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Attach the key to a lease: it is deleted when the lease ends.
    pub fn with_lease(mut self, lease: i64) -> Self {
        self.lease = lease;
        self
    }
    /// Return the key's previous value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Keep the current value (the key must exist; pass an empty value).
    pub fn with_ignore_value(mut self) -> Self {
        self.ignore_value = true;
        self
    }
    /// Keep the current lease (the key must exist).
    pub fn with_ignore_lease(mut self) -> Self {
        self.ignore_lease = true;
        self
    }
    pub(crate) fn request(self, key: Vec<u8>, value: Vec<u8>) -> pb::PutRequest {
        pb::PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    span: Span,
    prev_kv: bool,
}

impl DeleteOptions {
    /// The one key.
    pub fn new() -> Self {
        Self::default()
    }
    /// Return the deleted pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    pub(crate) fn request(self, key: Vec<u8>) -> pb::DeleteRangeRequest {
        let (key, range_end) = self.span.apply(key);
        pb::DeleteRangeRequest { key, range_end, prev_kv: self.prev_kv }
    }
}

/// The answer to a get.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GetResponse {
    /// Who answered, at which revision.
    pub header: Header,
    /// The pairs found (none with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched.
    pub count: i64,
}

impl From<pb::RangeResponse> for GetResponse {
    fn from(r: pb::RangeResponse) -> Self {
        GetResponse { header: r.header.into(), kvs: r.kvs, more: r.more, count: r.count }
    }
}

/// The answer to a put.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutResponse {
    /// Who answered; `revision` is the put's revision.
    pub header: Header,
    /// The previous pair, if asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

impl From<pb::PutResponse> for PutResponse {
    fn from(r: pb::PutResponse) -> Self {
        PutResponse { header: r.header.into(), prev_kv: r.prev_kv }
    }
}

/// The answer to a delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteResponse {
    /// Who answered, at which revision.
    pub header: Header,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted pairs, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

impl From<pb::DeleteRangeResponse> for DeleteResponse {
    fn from(r: pb::DeleteRangeResponse) -> Self {
        DeleteResponse { header: r.header.into(), deleted: r.deleted, prev_kvs: r.prev_kvs }
    }
}

/// What a transaction compares.
pub use pb::compare::CompareResult as CompareOp;

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(pub(crate) pb::Compare);

impl Compare {
    fn new(
        key: impl Into<Vec<u8>>,
        op: CompareOp,
        target: pb::compare::CompareTarget,
        tu: pb::compare::TargetUnion,
    ) -> Self {
        Compare(pb::Compare {
            result: op as i32,
            target: target as i32,
            key: key.into(),
            range_end: Vec::new(),
            target_union: Some(tu),
        })
    }
    /// The key's value compared with `value`.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, pb::compare::CompareTarget::Value, pb::compare::TargetUnion::Value(value.into()))
    }
    /// The key's version (0 = the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, pb::compare::CompareTarget::Version, pb::compare::TargetUnion::Version(version))
    }
    /// The key's create revision (0 = the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, pb::compare::CompareTarget::Create, pb::compare::TargetUnion::CreateRevision(revision))
    }
    /// The key's last modification revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, pb::compare::CompareTarget::Mod, pb::compare::TargetUnion::ModRevision(revision))
    }
    /// The key's lease (0 = none).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(key, op, pb::compare::CompareTarget::Lease, pb::compare::TargetUnion::Lease(lease))
    }
    /// Apply the condition to every key that starts with the key.
    pub fn with_prefix(mut self) -> Self {
        let (key, end) = Span::Prefix.apply(std::mem::take(&mut self.0.key));
        (self.0.key, self.0.range_end) = (key, end);
        self
    }
    /// Apply the condition to every key in `[key, end)`.
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.0.range_end = end.into();
        self
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnOp(pub(crate) pb::request_op::Request);

impl TxnOp {
    /// A get.
    pub fn get(key: impl Into<Vec<u8>>, opts: impl Into<Option<GetOptions>>) -> Self {
        TxnOp(pb::request_op::Request::RequestRange(opts.into().unwrap_or_default().request(key.into())))
    }
    /// A put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, opts: impl Into<Option<PutOptions>>) -> Self {
        TxnOp(pb::request_op::Request::RequestPut(opts.into().unwrap_or_default().request(key.into(), value.into())))
    }
    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>, opts: impl Into<Option<DeleteOptions>>) -> Self {
        TxnOp(pb::request_op::Request::RequestDeleteRange(opts.into().unwrap_or_default().request(key.into())))
    }
    /// A nested transaction.
    pub fn txn(txn: Txn) -> Self {
        TxnOp(pb::request_op::Request::RequestTxn(txn.request()))
    }
}

/// A transaction: if every comparison holds, the `and_then` operations run, else the
/// `or_else` ones — atomically, at one revision.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
/// use cairn_sdk::{Compare, CompareOp, Txn, TxnOp};
/// // Create "config" only if it does not exist yet.
/// let txn = Txn::new()
///     .when([Compare::version("config", CompareOp::Equal, 0)])
///     .and_then([TxnOp::put("config", "v1", None)])
///     .or_else([TxnOp::get("config", None)]);
/// let resp = client.txn(txn).await?;
/// println!("created: {}", resp.succeeded);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
}

impl Txn {
    /// An empty transaction (no comparisons: it succeeds).
    pub fn new() -> Self {
        Self::default()
    }
    /// Add comparisons (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares.into_iter().map(|c| c.0));
        self
    }
    /// Add operations run when every comparison holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops.into_iter().map(|o| pb::RequestOp { request: Some(o.0) }));
        self
    }
    /// Add operations run otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops.into_iter().map(|o| pb::RequestOp { request: Some(o.0) }));
        self
    }
    /// Whether any operation writes (a read-only transaction may be retried).
    fn read_only(&self) -> bool {
        fn ro(ops: &[pb::RequestOp]) -> bool {
            ops.iter().all(|o| match &o.request {
                Some(pb::request_op::Request::RequestRange(_)) | None => true,
                Some(pb::request_op::Request::RequestTxn(t)) => ro(&t.success) && ro(&t.failure),
                _ => false,
            })
        }
        ro(&self.success) && ro(&self.failure)
    }
    pub(crate) fn request(self) -> pb::TxnRequest {
        pb::TxnRequest { compare: self.compare, success: self.success, failure: self.failure }
    }
}

/// The answer to one operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnOpResponse {
    /// A get's answer.
    Get(GetResponse),
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    Delete(DeleteResponse),
    /// A nested transaction's answer.
    Txn(TxnResponse),
}

/// The answer to a transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnResponse {
    /// Who answered; `revision` is the transaction's revision.
    pub header: Header,
    /// Whether the comparisons held (so the `and_then` branch ran).
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

impl From<pb::TxnResponse> for TxnResponse {
    fn from(r: pb::TxnResponse) -> Self {
        use pb::response_op::Response as R;
        let responses = r
            .responses
            .into_iter()
            .filter_map(|o| o.response)
            .map(|o| match o {
                R::ResponseRange(g) => TxnOpResponse::Get(g.into()),
                R::ResponsePut(p) => TxnOpResponse::Put(p.into()),
                R::ResponseDeleteRange(d) => TxnOpResponse::Delete(d.into()),
                R::ResponseTxn(t) => TxnOpResponse::Txn(t.into()),
            })
            .collect();
        TxnResponse { header: r.header.into(), succeeded: r.succeeded, responses }
    }
}

fn kv(ch: AuthChannel) -> KvClient<AuthChannel> {
    KvClient::new(ch).max_decoding_message_size(MAX_DECODE).max_encoding_message_size(usize::MAX)
}

impl Client {
    /// Read a key, or a range of keys with [`GetOptions`].
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// use cairn_sdk::GetOptions;
    /// let one = client.get("/config/db", None).await?;
    /// let value = one.kvs.first().map(|kv| kv.value.clone());
    /// let all = client.get("/config/", GetOptions::new().with_prefix().with_limit(100)).await?;
    /// println!("{value:?}; {} keys under /config/ at revision {}", all.count, all.header.revision);
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl Into<Vec<u8>>, opts: impl Into<Option<GetOptions>>) -> Result<GetResponse> {
        let mut req = opts.into().unwrap_or_default().request(key.into());
        if let Some(ns) = &self.ns {
            ns.range_request(&mut req);
        }
        let mut r = self
            .unary(true, |ch| {
                let req = req.clone();
                async move { kv(ch).range(req).await }
            })
            .await?;
        if let Some(ns) = &self.ns {
            ns.range_response(&mut r);
        }
        Ok(r.into())
    }

    /// Write a key.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// use cairn_sdk::PutOptions;
    /// client.put("/config/db", "postgres://db:5432", None).await?;
    /// let r = client.put("/config/db", "postgres://db2:5432", PutOptions::new().with_prev_kv()).await?;
    /// println!("replaced {:?} at revision {}", r.prev_kv.map(|kv| kv.value), r.header.revision);
    /// # Ok(()) }
    /// ```
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: impl Into<Option<PutOptions>>,
    ) -> Result<PutResponse> {
        let mut req = opts.into().unwrap_or_default().request(key.into(), value.into());
        if let Some(ns) = &self.ns {
            ns.put_request(&mut req);
        }
        let mut r = self
            .unary(false, |ch| {
                let req = req.clone();
                async move { kv(ch).put(req).await }
            })
            .await?;
        if let Some(ns) = &self.ns {
            ns.put_response(&mut r);
        }
        Ok(r.into())
    }

    /// Delete a key, or a range of keys with [`DeleteOptions`].
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// use cairn_sdk::DeleteOptions;
    /// let gone = client.delete("/sessions/", DeleteOptions::new().with_prefix()).await?.deleted;
    /// println!("{gone} sessions removed");
    /// # Ok(()) }
    /// ```
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: impl Into<Option<DeleteOptions>>,
    ) -> Result<DeleteResponse> {
        let mut req = opts.into().unwrap_or_default().request(key.into());
        if let Some(ns) = &self.ns {
            ns.delete_request(&mut req);
        }
        let mut r = self
            .unary(false, |ch| {
                let req = req.clone();
                async move { kv(ch).delete_range(req).await }
            })
            .await?;
        if let Some(ns) = &self.ns {
            ns.delete_response(&mut r);
        }
        Ok(r.into())
    }

    /// Run a transaction (see [`Txn`]). Read-only transactions are retried like gets.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let read_only = txn.read_only();
        let mut req = txn.request();
        if let Some(ns) = &self.ns {
            ns.txn_request(&mut req);
        }
        let mut r = self
            .unary(read_only, |ch| {
                let req = req.clone();
                async move { kv(ch).txn(req).await }
            })
            .await?;
        if let Some(ns) = &self.ns {
            ns.txn_response(&mut r);
        }
        Ok(r.into())
    }

    /// Discard history before `revision`. With `physical`, wait until the space is
    /// reclaimed on the answering member.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<Header> {
        let req = pb::CompactionRequest { revision, physical };
        let r = self.unary(false, |ch| async move { kv(ch).compact(req).await }).await?;
        Ok(r.header.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b""), vec![0]);
        let all = GetOptions::new().with_prefix().request(Vec::new());
        assert_eq!((all.key, all.range_end), (vec![0], vec![0]));
    }

    #[test]
    fn read_only_txns_are_recognised() {
        let ro = Txn::new()
            .and_then([TxnOp::get("a", None)])
            .or_else([TxnOp::txn(Txn::new().and_then([TxnOp::get("b", None)]))]);
        assert!(ro.read_only());
        assert!(!Txn::new().or_else([TxnOp::delete("a", None)]).read_only());
    }
}
