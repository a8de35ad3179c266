//! Watches: events, filters, history replay, compaction.

use super::harness::Target;
use cairn_sdk::{Error, EventType, KeyValueExt, WatchOptions, WatchResponse, WatchStream};
use std::time::Duration;

crate::on_both!(1: events, replay_and_filters, compacted_start, progress_on_request);

async fn next(w: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a watch response within 10 s")
        .expect("the stream is open")
        .expect("no watch error")
}

async fn events(t: Target) {
    let c = t.client().await;
    let mut w = c.watch("w/", WatchOptions::new().with_prefix().with_prev_kv()).await.unwrap();
    let r1 = c.put("w/a", "1", None).await.unwrap().header.revision;
    c.put("w/a", "2", None).await.unwrap();
    c.put("other", "x", None).await.unwrap();
    c.delete("w/a", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        for ev in next(&mut w).await.events {
            let kv = ev.kv.clone().unwrap_or_default();
            let prev = ev.prev_kv.as_ref().map(|p| p.value_str().into_owned());
            seen.push((ev.r#type(), kv.key_str().into_owned(), kv.value_str().into_owned(), kv.mod_revision, prev));
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, "w/a".into(), "1".into(), r1, None),
            (EventType::Put, "w/a".into(), "2".into(), r1 + 1, Some("1".into())),
            (EventType::Delete, "w/a".into(), "".into(), r1 + 3, Some("2".into())),
        ]
    );
}

async fn replay_and_filters(t: Target) {
    let c = t.client().await;
    let start = c.put("r", "1", None).await.unwrap().header.revision;
    c.delete("r", None).await.unwrap();
    c.put("r", "2", None).await.unwrap();
    let mut all = c.watch("r", WatchOptions::new().with_start_revision(start)).await.unwrap();
    let mut types = Vec::new();
    while types.len() < 3 {
        types.extend(next(&mut all).await.events.iter().map(|e| e.r#type()));
    }
    assert_eq!(types, [EventType::Put, EventType::Delete, EventType::Put]);

    let mut puts_only = c.watch("r", WatchOptions::new().with_start_revision(start).with_no_delete()).await.unwrap();
    let mut values = Vec::new();
    while values.len() < 2 {
        values.extend(
            next(&mut puts_only).await.events.iter().map(|e| e.kv.clone().unwrap_or_default().value_str().into_owned()),
        );
    }
    assert_eq!(values, ["1", "2"]);
}

async fn compacted_start(t: Target) {
    let c = t.client().await;
    let first = c.put("cw", "1", None).await.unwrap().header.revision;
    let last = c.put("cw", "2", None).await.unwrap().header.revision;
    c.compact(last, true).await.unwrap();
    let mut w = c.watch("cw", WatchOptions::new().with_start_revision(first)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), w.message()).await.expect("an answer within 10 s");
    assert_eq!(got, Some(Err(Error::Compacted { compact_revision: last })));
    assert_eq!(w.message().await, None, "the stream ends after the error");
}

/// `request_progress`: a quiet watch answers with the revision it is current to.
async fn progress_on_request(t: Target) {
    let c = t.client().await;
    let mut w = c.watch("quiet", None).await.unwrap();
    let rev = c.put("elsewhere", "x", None).await.unwrap().header.revision;
    w.request_progress();
    let r =
        tokio::time::timeout(std::time::Duration::from_secs(5), w.message()).await.expect("answered").unwrap().unwrap();
    assert!(r.is_progress_notify(), "{r:?}");
    assert!(r.header.revision >= rev, "{} < {rev}", r.header.revision);
    // Events still arrive after it.
    c.put("quiet", "now", None).await.unwrap();
    let r =
        tokio::time::timeout(std::time::Duration::from_secs(5), w.message()).await.expect("event").unwrap().unwrap();
    assert_eq!(r.events.len(), 1);
}
