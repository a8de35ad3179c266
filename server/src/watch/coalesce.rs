//! The outgoing side of a watch stream: responses queued while the client was not reading
//! are merged, per watcher, into fewer and larger responses when the stream is polled.
//!
//! A client that keeps up sees one response per applied batch, as soon as it is applied. A
//! client that falls behind (or a transport whose window is full) leaves responses queued in
//! the stream's channel; each poll then takes everything queued and folds the events of
//! consecutive responses of one watcher into one response. Every response and encode, HTTP/2
//! frame and client-side decode costs about the same whatever it carries, so under load the
//! same events cost the server and the client far less, and a stream drains its backlog
//! before the hub must treat its watchers as slow. etcd batches too, on a timer; this batches
//! only what is already late.
//!
//! What is preserved: the order of each watcher's events; control responses (created,
//! canceled, progress notifications, fragments, errors) are barriers — nothing queued after
//! one is moved before it, and nothing before it after it — so a progress notification still
//! follows every event it vouches for. A merged response carries the header of the newest
//! response merged into it and stays under the hub's response size limit.

use super::outgoing::Outgoing;
use crate::error::Error;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::Stream;

type Item = Result<Outgoing, Error>;

/// Responses taken from the channel per poll at most.
const DRAIN: usize = 1024;

/// A stream over `rx` that merges queued event responses (see the module documentation).
pub struct Coalesced {
    rx: mpsc::Receiver<Item>,
    /// Merged responses ready to go, in order.
    ready: VecDeque<Item>,
    max_bytes: usize,
}

impl Coalesced {
    /// Merge responses from `rx`, keeping each merged response under `max_bytes` encoded.
    pub fn new(rx: mpsc::Receiver<Item>, max_bytes: usize) -> Self {
        Self { rx, ready: VecDeque::new(), max_bytes }
    }
}

/// Whether a response only carries events for one watcher, so more may be appended.
fn mergeable(o: &Outgoing) -> bool {
    let r = &o.head;
    !o.events.is_empty()
        && r.watch_id >= 0
        && !r.created
        && !r.canceled
        && !r.fragment
        && r.compact_revision == 0
        && r.cancel_reason.is_empty()
}

/// Fold `batch` (in channel order) into as few responses as the rules allow.
fn merge(batch: Vec<Item>, max_bytes: usize, out: &mut VecDeque<Item>) {
    // Index in `out` and encoded size of each watcher's open response since the last barrier.
    let mut open: HashMap<i64, (usize, usize)> = HashMap::new();
    for item in batch {
        match item {
            Ok(r) if mergeable(&r) => {
                let size = r.encoded_len();
                if let Some((at, open_size)) = open.get_mut(&r.head.watch_id) {
                    if *open_size + size <= max_bytes {
                        if let Some(Ok(target)) = out.get_mut(*at) {
                            *open_size += size;
                            target.head.header = r.head.header;
                            target.events.extend(r.events);
                            continue;
                        }
                    }
                }
                open.insert(r.head.watch_id, (out.len(), size));
                out.push_back(Ok(r));
            }
            barrier => {
                open.clear();
                out.push_back(barrier);
            }
        }
    }
}

impl Stream for Coalesced {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = &mut *self;
        if let Some(r) = this.ready.pop_front() {
            return Poll::Ready(Some(r));
        }
        let first = match this.rx.poll_recv(cx) {
            Poll::Ready(Some(r)) => r,
            other => return other,
        };
        let mut batch = vec![first];
        while batch.len() < DRAIN {
            match this.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if batch.len() == 1 {
            return Poll::Ready(batch.pop());
        }
        merge(batch, this.max_bytes, &mut this.ready);
        Poll::Ready(this.ready.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::outgoing::encode_event;
    use cairn_api::etcdserverpb::{ResponseHeader, WatchResponse};
    use cairn_api::mvccpb::{Event, KeyValue};
    use tokio_stream::StreamExt;

    fn events(id: i64, revs: &[i64]) -> Item {
        let head = WatchResponse {
            header: Some(ResponseHeader { revision: *revs.last().unwrap_or(&0), ..Default::default() }),
            watch_id: id,
            ..Default::default()
        };
        let event = |r: &i64| Event {
            kv: Some(KeyValue { key: b"k".to_vec(), mod_revision: *r, ..Default::default() }),
            ..Default::default()
        };
        Ok(Outgoing { head, events: revs.iter().map(|r| encode_event(&event(r), false)).collect() })
    }

    fn progress(rev: i64) -> Item {
        Ok(Outgoing::control(WatchResponse {
            header: Some(ResponseHeader { revision: rev, ..Default::default() }),
            watch_id: -1,
            ..Default::default()
        }))
    }

    /// (watch id, header revision, event revisions) of each response.
    fn shape(items: &[Item]) -> Vec<(i64, i64, Vec<i64>)> {
        items
            .iter()
            .map(|i| {
                let r = i.as_ref().expect("ok").clone().decode().expect("decodes");
                let revs = r.events.iter().map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision)).collect();
                (r.watch_id, r.header.map_or(0, |h| h.revision), revs)
            })
            .collect()
    }

    async fn drain(items: Vec<Item>, max_bytes: usize) -> Vec<Item> {
        let (tx, rx) = mpsc::channel(64);
        for i in items {
            tx.send(i).await.expect("send");
        }
        drop(tx);
        Coalesced::new(rx, max_bytes).collect().await
    }

    #[tokio::test]
    async fn queued_responses_of_a_watcher_merge_in_order_and_take_the_newest_header() {
        let out = drain(vec![events(0, &[2]), events(1, &[2]), events(0, &[3, 4]), events(1, &[3])], 1 << 20).await;
        assert_eq!(shape(&out), vec![(0, 4, vec![2, 3, 4]), (1, 3, vec![2, 3])]);
    }

    #[tokio::test]
    async fn nothing_crosses_a_progress_notification() {
        let out = drain(vec![events(0, &[2]), progress(2), events(0, &[3]), events(0, &[4])], 1 << 20).await;
        assert_eq!(shape(&out), vec![(0, 2, vec![2]), (-1, 2, vec![]), (0, 4, vec![3, 4])]);
    }

    #[tokio::test]
    async fn created_canceled_and_fragments_are_left_alone() {
        let created = Ok(Outgoing::control(WatchResponse { watch_id: 1, created: true, ..Default::default() }));
        let mut frag = events(0, &[5]);
        if let Ok(r) = &mut frag {
            r.head.fragment = true;
        }
        let out = drain(vec![events(0, &[4]), created, frag, events(0, &[5]), events(0, &[6])], 1 << 20).await;
        assert_eq!(
            shape(&out),
            vec![(0, 4, vec![4]), (1, 0, vec![]), (0, 5, vec![5]), (0, 6, vec![5, 6])],
            "the fragment's last part (rev 5) may take later events; the fragment itself is untouched"
        );
    }

    #[tokio::test]
    async fn a_merged_response_stays_under_the_size_limit() {
        let one = match &events(0, &[1]) {
            Ok(r) => r.encoded_len(),
            Err(_) => 0,
        };
        let out = drain((1..=6).map(|r| events(0, &[r])).collect(), 2 * one + 1).await;
        assert_eq!(shape(&out).iter().map(|s| s.2.len()).collect::<Vec<_>>(), vec![2, 2, 2]);
    }
}
