//! Namespaces ([`Client::with_namespace`]): a client whose whole key space is one prefix of
//! the cluster's, as clientv3's `namespace` package and etcd's `--namespace` proxy give.
//! Keys are prefixed on the way out and the prefix is taken off every key that comes back
//! (ranges, previous values, transactions at any depth, watch events, a lease's keys); a
//! range to the end of the key space (`\0`) ends at the end of the namespace. (The
//! `Client` side, `with_namespace`, is in `client.rs`: this module knows only prefixes.)

use cairn_api::etcdserverpb as pb;
use cairn_api::mvccpb::{Event, KeyValue};
use cairn_api::prefix_end;
use std::sync::Arc;

/// The prefix a namespaced client lives under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace(pub(crate) Arc<[u8]>);

impl Namespace {
    pub(crate) fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.0.to_vec();
        k.extend_from_slice(key);
        k
    }

    /// `(key, range_end)` of a request, moved into the namespace.
    fn range(&self, key: &mut Vec<u8>, end: &mut Vec<u8>) {
        let whole = key.as_slice() == [0] && end.as_slice() == [0];
        *key = if whole { self.0.to_vec() } else { self.key(key) };
        if end.as_slice() == [0] {
            // To the end of the key space: to the end of the namespace.
            *end = prefix_end(&self.0);
        } else if !end.is_empty() {
            *end = self.key(end);
        }
    }

    pub(crate) fn strip(&self, key: &mut Vec<u8>) {
        if key.starts_with(&self.0) {
            key.drain(..self.0.len());
        }
    }

    fn strip_kv(&self, kv: &mut KeyValue) {
        self.strip(&mut kv.key);
    }

    pub(crate) fn range_request(&self, r: &mut pb::RangeRequest) {
        self.range(&mut r.key, &mut r.range_end);
    }

    pub(crate) fn put_request(&self, r: &mut pb::PutRequest) {
        r.key = self.key(&r.key);
    }

    pub(crate) fn delete_request(&self, r: &mut pb::DeleteRangeRequest) {
        self.range(&mut r.key, &mut r.range_end);
    }

    pub(crate) fn txn_request(&self, t: &mut pb::TxnRequest) {
        for c in &mut t.compare {
            self.range(&mut c.key, &mut c.range_end);
        }
        for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
            match &mut op.request {
                Some(pb::request_op::Request::RequestRange(r)) => self.range_request(r),
                Some(pb::request_op::Request::RequestPut(r)) => self.put_request(r),
                Some(pb::request_op::Request::RequestDeleteRange(r)) => self.delete_request(r),
                Some(pb::request_op::Request::RequestTxn(t)) => self.txn_request(t),
                None => {}
            }
        }
    }

    pub(crate) fn watch_request(&self, r: &mut pb::WatchCreateRequest) {
        self.range(&mut r.key, &mut r.range_end);
    }

    pub(crate) fn range_response(&self, r: &mut pb::RangeResponse) {
        r.kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
    }

    pub(crate) fn put_response(&self, r: &mut pb::PutResponse) {
        if let Some(kv) = &mut r.prev_kv {
            self.strip_kv(kv);
        }
    }

    pub(crate) fn delete_response(&self, r: &mut pb::DeleteRangeResponse) {
        r.prev_kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
    }

    pub(crate) fn txn_response(&self, t: &mut pb::TxnResponse) {
        for op in &mut t.responses {
            match &mut op.response {
                Some(pb::response_op::Response::ResponseRange(r)) => self.range_response(r),
                Some(pb::response_op::Response::ResponsePut(r)) => self.put_response(r),
                Some(pb::response_op::Response::ResponseDeleteRange(r)) => self.delete_response(r),
                Some(pb::response_op::Response::ResponseTxn(t)) => self.txn_response(t),
                None => {}
            }
        }
    }

    pub(crate) fn events(&self, events: &mut [Event]) {
        for e in events {
            if let Some(kv) = &mut e.kv {
                self.strip_kv(kv);
            }
            if let Some(kv) = &mut e.prev_kv {
                self.strip_kv(kv);
            }
        }
    }

    /// A lease's keys: those in the namespace, without the prefix.
    pub(crate) fn lease_keys(&self, keys: &mut Vec<Vec<u8>>) {
        keys.retain(|k| k.starts_with(&self.0));
        keys.iter_mut().for_each(|k| self.strip(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        Namespace(b"/t/".to_vec().into())
    }

    #[test]
    fn ranges_move_into_the_namespace_as_clientv3_moves_them() {
        let mut r = (b"a".to_vec(), Vec::new());
        ns().range(&mut r.0, &mut r.1);
        assert_eq!(r, (b"/t/a".to_vec(), Vec::new()));
        let mut r = (b"a".to_vec(), b"c".to_vec());
        ns().range(&mut r.0, &mut r.1);
        assert_eq!(r, (b"/t/a".to_vec(), b"/t/c".to_vec()));
        // From a key on: to the end of the namespace.
        let mut r = (b"a".to_vec(), vec![0]);
        ns().range(&mut r.0, &mut r.1);
        assert_eq!(r, (b"/t/a".to_vec(), b"/t0".to_vec()));
        // Everything: the whole namespace, its prefix key included.
        let mut r = (vec![0], vec![0]);
        ns().range(&mut r.0, &mut r.1);
        assert_eq!(r, (b"/t/".to_vec(), b"/t0".to_vec()));
    }

    #[test]
    fn keys_coming_back_lose_the_prefix() {
        let mut keys = vec![b"/t/a".to_vec(), b"/other".to_vec()];
        ns().lease_keys(&mut keys);
        assert_eq!(keys, [b"a".to_vec()]);
        let mut ev = vec![Event {
            kv: Some(KeyValue { key: b"/t/x".to_vec(), ..Default::default() }),
            prev_kv: Some(KeyValue { key: b"/t/x".to_vec(), ..Default::default() }),
            ..Default::default()
        }];
        ns().events(&mut ev);
        assert_eq!(ev[0].kv.as_ref().map(|k| k.key.clone()), Some(b"x".to_vec()));
        assert_eq!(ev[0].prev_kv.as_ref().map(|k| k.key.clone()), Some(b"x".to_vec()));
    }
}
