//! Publishing applied batches to the hub from a task of its own.
//!
//! The state machine hands each applied batch's events to [`Publisher::publish`] and
//! returns: matching and queueing them for every watcher then runs in the publisher's task,
//! in the order the batches applied, while the writers of the batch are answered and the
//! next batch is proposed. The task yields before each batch, so the tasks woken with it
//! (the batch's answers among them) run first: under fan-out the writers otherwise wait
//! for their own batch's events to be matched and queued (measured with 100 watchers and
//! 16 writers: 7-14% more events a second; docs/PERFORMANCE.md, "Answers before events").
//! The hub copes with a store ahead of what it has published: a watcher catching up reads
//! the store and, once past the last published revision, drops the older events still to
//! come (`min_rev`). With no watch stream open and nothing queued, a batch is published in
//! place (there is nothing to deliver, and no hand-off is worth paying).

use super::WatchHub;
use cairn_api::mvccpb::Event;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Batches queued for the publisher before the apply waits for it.
const QUEUE: usize = 8;

enum Item {
    Events(i64, Vec<Event>),
    Barrier(oneshot::Sender<()>),
}

/// The state machine's handle to the publisher task.
pub struct Publisher {
    hub: Arc<WatchHub>,
    tx: mpsc::Sender<Item>,
    /// Items sent and not yet handled.
    pending: Arc<AtomicUsize>,
}

impl Publisher {
    /// Start the publisher of `hub` (on the hub's tasks; it ends when the hub stops or the
    /// publisher is dropped). Needs a tokio runtime.
    pub fn start(hub: &Arc<WatchHub>) -> Publisher {
        let (tx, mut rx) = mpsc::channel::<Item>(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let (h, p) = (hub.clone(), pending.clone());
        hub.tasks.spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = h.shutdown.cancelled() => return,
                    item = rx.recv() => match item { Some(i) => i, None => return },
                };
                match item {
                    Item::Events(rev, events) => {
                        // The batch's answers first (see the module notes).
                        tokio::task::yield_now().await;
                        h.notify(rev, events)
                    }
                    Item::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
                p.fetch_sub(1, Ordering::AcqRel);
            }
        });
        Publisher { hub: hub.clone(), tx, pending }
    }

    /// Publish the events of the batch that brought the store to `rev`, after every batch
    /// published before it.
    pub async fn publish(&self, rev: i64, events: Vec<Event>) {
        if self.pending.load(Ordering::Acquire) == 0 && !self.hub.has_streams() {
            self.hub.notify(rev, events);
            return;
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(Item::Events(rev, events))) = self.tx.send(Item::Events(rev, events)).await {
            // The publisher has stopped (the member is stopping): publish in place.
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.hub.notify(rev, events);
        }
    }

    /// Wait until everything published before has reached the hub.
    pub async fn drained(&self) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(Item::Barrier(tx)).await.is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Headers, SmState};
    use cairn_api::etcdserverpb::{PutRequest, WatchCreateRequest};
    use cairn_store::WriteBatch;
    use std::sync::RwLock;
    use std::time::Duration;

    #[tokio::test]
    async fn batches_reach_watchers_in_order_and_a_barrier_waits_for_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = cairn_store::engine::open(cairn_store::EngineKind::Redb, &dir.path().join("db")).expect("engine");
        let st = Arc::new(RwLock::new(SmState::open(engine).expect("state")));
        let hub = WatchHub::new(st.clone(), 1, 1 << 20, Headers::new(1, 1));
        let publisher = Publisher::start(&hub);
        let put = |v: String| {
            let mut s = st.write().expect("lock");
            s.mvcc
                .put(&PutRequest { key: "k".into(), value: v.into(), ..Default::default() }, &|_| false)
                .expect("put");
            s.mvcc.commit(WriteBatch::new(), false).expect("commit");
            (s.mvcc.current_revision(), s.mvcc.take_events())
        };
        // No stream open: published in place.
        let (rev, events) = put("first".into());
        publisher.publish(rev, events).await;
        assert_eq!(hub.lock().notified, rev);
        assert_eq!(publisher.pending.load(Ordering::Acquire), 0);

        let (tx, mut rx) = mpsc::channel(64);
        let sid = hub.open_stream(tx.clone());
        hub.create(sid, WatchCreateRequest { key: "k".into(), ..Default::default() }, None, &tx).await;
        let created = rx.recv().await.expect("open").expect("ok").decode().expect("decodes");
        assert!(created.created);
        while hub.metrics.catching_up.load(Ordering::Relaxed) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut published = Vec::new();
        for i in 0..20 {
            let (rev, events) = put(i.to_string());
            publisher.publish(rev, events).await;
            published.push(rev);
        }
        publisher.drained().await;
        assert_eq!(hub.lock().notified, published[19], "the barrier came after every batch before it");
        let mut seen = Vec::new();
        while seen.len() < 20 {
            let out = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("in time").expect("open");
            for e in out.expect("ok").decode().expect("decodes").events {
                seen.push(e.kv.map_or(0, |kv| kv.mod_revision));
            }
        }
        assert_eq!(seen, published, "every batch, once, in order");
        hub.close_stream(sid);
        hub.stop().await;
    }
}
