//! `--namespace`: the proxy's clients see the keys under a prefix as the whole key space,
//! as etcd's proxy (clientv3's `namespace` package) does. Keys and ranges in requests get
//! the prefix; keys in responses lose it. A range to the end of the key space (`\0`) ends
//! at the end of the prefix, so nothing outside it can be read, written or watched.

use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::response_op::Response as OpResponse;
use cairn_api::etcdserverpb::*;
use cairn_api::mvccpb::KeyValue;
use cairn_api::v3electionpb::*;
use cairn_api::v3lockpb::*;

/// The prefix (empty: no namespace).
#[derive(Debug, Clone, Default)]
pub struct Namespace(Vec<u8>);

impl Namespace {
    pub fn new(prefix: &str) -> Namespace {
        Namespace(prefix.as_bytes().to_vec())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn key(&self, key: &mut Vec<u8>) {
        if !self.is_empty() {
            let mut k = self.0.clone();
            k.extend_from_slice(key);
            *key = k;
        }
    }

    /// A key and range end, as etcd's `prefixInterval`.
    pub fn range(&self, key: &mut Vec<u8>, end: &mut Vec<u8>) {
        if self.is_empty() {
            return;
        }
        self.key(key);
        if end.as_slice() == [0] {
            *end = cairn_api::prefix_end(&self.0);
        } else if !end.is_empty() {
            self.key(end);
        }
    }

    fn strip(&self, key: &mut Vec<u8>) {
        if !self.is_empty() && key.starts_with(&self.0) {
            key.drain(..self.0.len());
        }
    }

    pub fn strip_kv(&self, kv: &mut KeyValue) {
        self.strip(&mut kv.key);
    }
}

/// A message the namespace changes: requests on the way in, responses on the way out.
pub trait Namespaced {
    fn enter(&mut self, _ns: &Namespace) {}
    fn leave(&mut self, _ns: &Namespace) {}
}

/// Messages without keys.
macro_rules! keyless {
    ($($t:ty),* $(,)?) => { $( impl Namespaced for $t {} )* };
}

keyless!(
    PutResponse,
    CompactionRequest,
    CompactionResponse,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseTimeToLiveRequest,
    LeaseLeasesRequest,
    LeaseLeasesResponse,
    MemberAddRequest,
    MemberAddResponse,
    MemberRemoveRequest,
    MemberRemoveResponse,
    MemberUpdateRequest,
    MemberUpdateResponse,
    MemberListRequest,
    MemberListResponse,
    MemberPromoteRequest,
    MemberPromoteResponse,
    AlarmRequest,
    AlarmResponse,
    StatusRequest,
    StatusResponse,
    DefragmentRequest,
    DefragmentResponse,
    HashRequest,
    HashResponse,
    HashKvRequest,
    HashKvResponse,
    MoveLeaderRequest,
    MoveLeaderResponse,
    DowngradeRequest,
    DowngradeResponse,
    AuthEnableRequest,
    AuthEnableResponse,
    AuthDisableRequest,
    AuthDisableResponse,
    AuthStatusRequest,
    AuthStatusResponse,
    AuthenticateRequest,
    AuthenticateResponse,
    AuthUserAddRequest,
    AuthUserAddResponse,
    AuthUserGetRequest,
    AuthUserGetResponse,
    AuthUserListRequest,
    AuthUserListResponse,
    AuthUserDeleteRequest,
    AuthUserDeleteResponse,
    AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse,
    AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse,
    AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse,
    AuthRoleAddRequest,
    AuthRoleAddResponse,
    AuthRoleGetRequest,
    AuthRoleGetResponse,
    AuthRoleListRequest,
    AuthRoleListResponse,
    AuthRoleDeleteRequest,
    AuthRoleDeleteResponse,
    AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse,
    AuthRoleRevokePermissionRequest,
    AuthRoleRevokePermissionResponse,
    UnlockResponse,
    ProclaimResponse,
    ResignResponse,
);

impl Namespaced for RangeRequest {
    fn enter(&mut self, ns: &Namespace) {
        ns.range(&mut self.key, &mut self.range_end);
    }
}

impl Namespaced for RangeResponse {
    fn leave(&mut self, ns: &Namespace) {
        self.kvs.iter_mut().for_each(|kv| ns.strip_kv(kv));
    }
}

impl Namespaced for PutRequest {
    fn enter(&mut self, ns: &Namespace) {
        ns.key(&mut self.key);
    }
}

impl Namespaced for DeleteRangeRequest {
    fn enter(&mut self, ns: &Namespace) {
        ns.range(&mut self.key, &mut self.range_end);
    }
}

impl Namespaced for DeleteRangeResponse {
    fn leave(&mut self, ns: &Namespace) {
        self.prev_kvs.iter_mut().for_each(|kv| ns.strip_kv(kv));
    }
}

impl Namespaced for TxnRequest {
    fn enter(&mut self, ns: &Namespace) {
        for c in &mut self.compare {
            ns.range(&mut c.key, &mut c.range_end);
        }
        for op in self.success.iter_mut().chain(self.failure.iter_mut()) {
            match &mut op.request {
                Some(Op::RequestRange(r)) => r.enter(ns),
                Some(Op::RequestPut(r)) => r.enter(ns),
                Some(Op::RequestDeleteRange(r)) => r.enter(ns),
                Some(Op::RequestTxn(r)) => r.enter(ns),
                None => {}
            }
        }
    }
}

impl Namespaced for TxnResponse {
    fn leave(&mut self, ns: &Namespace) {
        for op in &mut self.responses {
            match &mut op.response {
                Some(OpResponse::ResponseRange(r)) => r.leave(ns),
                Some(OpResponse::ResponsePut(r)) => {
                    if let Some(kv) = r.prev_kv.as_mut() {
                        ns.strip_kv(kv);
                    }
                }
                Some(OpResponse::ResponseDeleteRange(r)) => r.leave(ns),
                Some(OpResponse::ResponseTxn(r)) => r.leave(ns),
                None => {}
            }
        }
    }
}

impl Namespaced for LeaseTimeToLiveResponse {
    fn leave(&mut self, ns: &Namespace) {
        self.keys.iter_mut().for_each(|k| ns.strip(k));
    }
}

impl Namespaced for LockRequest {
    fn enter(&mut self, ns: &Namespace) {
        ns.key(&mut self.name);
    }
}

impl Namespaced for LockResponse {
    fn leave(&mut self, ns: &Namespace) {
        ns.strip(&mut self.key);
    }
}

impl Namespaced for UnlockRequest {
    fn enter(&mut self, ns: &Namespace) {
        ns.key(&mut self.key);
    }
}

fn enter_leader(ns: &Namespace, l: &mut Option<LeaderKey>) {
    if let Some(l) = l.as_mut() {
        ns.key(&mut l.name);
        ns.key(&mut l.key);
    }
}

impl Namespaced for CampaignRequest {
    fn enter(&mut self, ns: &Namespace) {
        ns.key(&mut self.name);
    }
}

impl Namespaced for CampaignResponse {
    fn leave(&mut self, ns: &Namespace) {
        if let Some(l) = self.leader.as_mut() {
            ns.strip(&mut l.name);
            ns.strip(&mut l.key);
        }
    }
}

impl Namespaced for ProclaimRequest {
    fn enter(&mut self, ns: &Namespace) {
        enter_leader(ns, &mut self.leader);
    }
}

impl Namespaced for ResignRequest {
    fn enter(&mut self, ns: &Namespace) {
        enter_leader(ns, &mut self.leader);
    }
}

impl Namespaced for LeaderRequest {
    fn enter(&mut self, ns: &Namespace) {
        ns.key(&mut self.name);
    }
}

impl Namespaced for LeaderResponse {
    fn leave(&mut self, ns: &Namespace) {
        if let Some(kv) = self.kv.as_mut() {
            ns.strip_kv(kv);
        }
    }
}

impl Namespaced for WatchResponse {
    fn leave(&mut self, ns: &Namespace) {
        for e in &mut self.events {
            if let Some(kv) = e.kv.as_mut() {
                ns.strip_kv(kv);
            }
            if let Some(kv) = e.prev_kv.as_mut() {
                ns.strip_kv(kv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_inside_the_prefix() {
        let ns = Namespace::new("/t/");
        let range = |k: &[u8], e: &[u8]| {
            let (mut k, mut e) = (k.to_vec(), e.to_vec());
            ns.range(&mut k, &mut e);
            (k, e)
        };
        assert_eq!(range(b"a", b""), (b"/t/a".to_vec(), vec![]));
        assert_eq!(range(b"a", b"b"), (b"/t/a".to_vec(), b"/t/b".to_vec()));
        assert_eq!(range(b"", b"\0"), (b"/t/".to_vec(), b"/t0".to_vec()), "everything = the prefix");
        assert_eq!(range(b"a", b"\0"), (b"/t/a".to_vec(), b"/t0".to_vec()));
        let mut none = (b"a".to_vec(), b"\0".to_vec());
        Namespace::default().range(&mut none.0, &mut none.1);
        assert_eq!(none, (b"a".to_vec(), b"\0".to_vec()));
    }

    #[test]
    fn txns_enter_and_leave_recursively() {
        let ns = Namespace::new("p/");
        let inner = TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest { key: b"x".to_vec(), ..Default::default() })),
            }],
            ..Default::default()
        };
        let mut t = TxnRequest {
            compare: vec![Compare { key: b"k".to_vec(), ..Default::default() }],
            success: vec![RequestOp { request: Some(Op::RequestTxn(inner)) }],
            ..Default::default()
        };
        t.enter(&ns);
        assert_eq!(t.compare[0].key, b"p/k");
        let Some(Op::RequestTxn(inner)) = &t.success[0].request else { panic!("txn") };
        let Some(Op::RequestPut(put)) = &inner.success[0].request else { panic!("put") };
        assert_eq!(put.key, b"p/x");
        let kv = KeyValue { key: b"p/x".to_vec(), ..Default::default() };
        let mut resp = TxnResponse {
            responses: vec![ResponseOp {
                response: Some(OpResponse::ResponseRange(RangeResponse { kvs: vec![kv], ..Default::default() })),
            }],
            ..Default::default()
        };
        resp.leave(&ns);
        let Some(OpResponse::ResponseRange(r)) = &resp.responses[0].response else { panic!("range") };
        assert_eq!(r.kvs[0].key, b"x");
    }
}
