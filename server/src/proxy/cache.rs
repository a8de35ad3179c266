//! The serializable range cache. A `Range` with `serializable` set (etcdctl's
//! `--consistency=s`) at the current revision is answered from the proxy's memory when it
//! asked the same (same caller credentials, same request) before, so repeated reads never
//! leave the machine. One watch of the whole key space keeps it honest: every event
//! removes the entries whose range holds its key, and an answer older than an event
//! already seen is not kept — the cache never serves a value older than the last event it
//! saw. Without that watch (not yet created, broken, or refused because the proxy may not
//! read everything) nothing is cached or served from it. Linearizable reads and every write
//! pass through.

use super::upstream::{pass, Upstream};
use super::ProxyMetrics;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest};
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;

/// Entries kept at most (then the cache starts over).
const MAX_ENTRIES: usize = 4096;

/// A request as the cache knows it: the caller's credentials and the encoded request.
type CacheKey = (Option<Vec<u8>>, Vec<u8>);

#[derive(Default)]
struct State {
    /// The watch is live: entries may be kept and served.
    live: bool,
    /// The newest revision of an event seen (or of the watch's start).
    seen: i64,
    entries: HashMap<CacheKey, RangeResponse>,
    /// Single-key entries by their key; range entries with their range.
    by_key: HashMap<Vec<u8>, Vec<CacheKey>>,
    ranged: Vec<(CacheKey, Vec<u8>, Vec<u8>)>,
}

impl State {
    fn clear(&mut self) {
        self.entries.clear();
        self.by_key.clear();
        self.ranged.clear();
    }

    /// Drop what an event on `key` may have changed.
    fn invalidate(&mut self, key: &[u8]) {
        if let Some(ks) = self.by_key.remove(key) {
            for k in ks {
                self.entries.remove(&k);
            }
        }
        let entries = &mut self.entries;
        self.ranged.retain(|(k, from, end)| {
            let covers = key >= from.as_slice() && (end.as_slice() == [0] || key < end.as_slice());
            if covers {
                entries.remove(k);
            }
            !covers
        });
    }
}

/// The cache and its watch.
pub struct RangeCache {
    state: Mutex<State>,
    metrics: ProxyMetrics,
}

impl RangeCache {
    /// A cache kept by a watch over `up` until `stop`.
    pub fn start(up: Arc<Upstream>, metrics: ProxyMetrics, stop: CancellationToken) -> Arc<RangeCache> {
        let cache = Arc::new(RangeCache { state: Mutex::default(), metrics });
        tokio::spawn(cache.clone().watch(up, stop));
        cache
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(meta: &MetadataMap, req: &RangeRequest) -> Option<CacheKey> {
        (req.serializable && req.revision == 0).then(|| (super::upstream::caller(meta), req.encode_to_vec()))
    }

    /// A cached answer to `req`, if there is one.
    pub fn get(&self, meta: &MetadataMap, req: &RangeRequest) -> Option<RangeResponse> {
        let key = Self::key(meta, req)?;
        let st = self.state();
        let hit = st.live.then(|| st.entries.get(&key).cloned()).flatten();
        drop(st);
        match &hit {
            Some(_) => self.metrics.range_cache_hits_total.inc(),
            None => self.metrics.range_cache_misses_total.inc(),
        }
        hit
    }

    /// Keep `resp`, the cluster's answer to `req`, unless an event newer than it was seen.
    pub fn put(&self, meta: &MetadataMap, req: &RangeRequest, resp: &RangeResponse) {
        let Some(key) = Self::key(meta, req) else { return };
        let mut st = self.state();
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if !st.live || rev < st.seen {
            return;
        }
        if st.entries.len() >= MAX_ENTRIES {
            st.clear();
        }
        if req.range_end.is_empty() {
            st.by_key.entry(req.key.clone()).or_default().push(key.clone());
        } else {
            st.ranged.push((key.clone(), req.key.clone(), req.range_end.clone()));
        }
        st.entries.insert(key, resp.clone());
    }

    /// Watch every key; on any trouble drop everything and watch again from now.
    async fn watch(self: Arc<Self>, up: Arc<Upstream>, stop: CancellationToken) {
        let mut failures = 0u64;
        loop {
            let create = WatchCreateRequest { key: vec![0], range_end: vec![0], ..Default::default() };
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.try_send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) });
            let mut client = WatchClient::new(up.channel()).max_decoding_message_size(usize::MAX);
            let opened = tokio::select! {
                _ = stop.cancelled() => return,
                r = client.watch(pass(&MetadataMap::new(), ReceiverStream::new(rx))) => r,
            };
            if let Ok(resp) = opened {
                let mut events = resp.into_inner();
                loop {
                    let r = tokio::select! {
                        _ = stop.cancelled() => return,
                        r = events.next() => r,
                    };
                    let Some(Ok(r)) = r else { break };
                    if r.canceled {
                        if failures == 0 {
                            tracing::warn!(reason = %r.cancel_reason, "the range cache's watch was refused: serializable reads are not cached");
                        }
                        break;
                    }
                    let mut st = self.state();
                    let rev = r.header.as_ref().map_or(0, |h| h.revision);
                    if r.created {
                        st.seen = rev;
                        st.live = true;
                        failures = 0;
                    }
                    for e in &r.events {
                        if let Some(kv) = &e.kv {
                            st.invalidate(&kv.key);
                            st.seen = st.seen.max(kv.mod_revision);
                        }
                    }
                    self.metrics.range_cache_revision.set(st.seen);
                }
            }
            {
                let mut st = self.state();
                st.live = false;
                st.clear();
            }
            failures += 1;
            let wait = Duration::from_millis(200 * failures.min(25));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            drop(tx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_removes_exactly_the_entries_holding_its_key() {
        let mut st = State { live: true, ..Default::default() };
        let k = |n: u8| (None, vec![n]);
        for (n, key, end) in
            [(1u8, &b"a"[..], &b""[..]), (2, b"b", b""), (3, b"a", b"c"), (4, b"x", b"\0"), (5, b"c", b"d")]
        {
            st.entries.insert(k(n), RangeResponse::default());
            if end.is_empty() {
                st.by_key.entry(key.to_vec()).or_default().push(k(n));
            } else {
                st.ranged.push((k(n), key.to_vec(), end.to_vec()));
            }
        }
        st.invalidate(b"b");
        let mut left: Vec<u8> = st.entries.keys().map(|(_, v)| v[0]).collect();
        left.sort();
        assert_eq!(left, [1, 4, 5], "the key b and the range a..c");
        st.invalidate(b"zz");
        let mut left: Vec<u8> = st.entries.keys().map(|(_, v)| v[0]).collect();
        left.sort();
        assert_eq!(left, [1, 5], "x.. to the end holds zz");
    }
}
