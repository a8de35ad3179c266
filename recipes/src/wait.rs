//! Waiting on the cluster: for a key to be deleted, for the keys ahead of ours to go, for
//! an event under a prefix. Every wait reads first and then watches from just after that
//! read's revision, so nothing that happens in between is missed; a watch that ends early
//! (compaction, a member gone) is replaced by reading again.

use crate::error::{Error, Result};
use cairn_sdk::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, LeaseState, Session, SortOrder, SortTarget, Txn,
    TxnOp, WatchOptions, WatchResponse, WatchStream,
};
use tokio::sync::watch;

/// What a recipe keeps of a [`Session`]: its client, its lease, and a view of whether the
/// lease is still alive.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub client: Client,
    pub id: i64,
    state: Option<watch::Receiver<LeaseState>>,
}

impl Lease {
    pub fn of(session: &Session) -> Lease {
        Lease { client: session.client().clone(), id: session.lease_id(), state: session.subscribe() }
    }

    /// No lease: keys made with it live until deleted (queues, barriers).
    pub fn none(client: &Client) -> Lease {
        Lease { client: client.clone(), id: 0, state: None }
    }

    /// Resolves when the lease is lost (never, if the session was already closed: the
    /// calls using its lease then fail with "lease not found").
    pub async fn lost(&self) {
        match &self.state {
            Some(rx) => {
                let mut rx = rx.clone();
                if rx.wait_for(|s| *s == LeaseState::Lost).await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Run `fut` unless the lease is lost first.
    pub async fn guard<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = fut => r,
            _ = self.lost() => Err(Error::SessionLost),
        }
    }
}

/// Delete `key` if it is still the one created at `create_revision` (a later key of the
/// same name, e.g. the same session locking again, is left alone).
pub(crate) async fn delete_exact(client: &Client, key: &str, create_revision: i64) -> Result<()> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, create_revision)])
        .and_then([TxnOp::delete(key, None)]);
    client.txn(txn).await?;
    Ok(())
}

/// [`delete_exact`] in the background, if a runtime is still there (otherwise its lease,
/// if any, will expire it). Used by guards dropped without an explicit release.
pub(crate) fn delete_in_background(client: &Client, key: String, create_revision: i64) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let client = client.clone();
        rt.spawn(async move {
            if let Err(e) = delete_exact(&client, &key, create_revision).await {
                tracing::debug!(%e, key, "releasing a recipe key failed; its lease will expire it");
            }
        });
    }
}

/// The next watch delivery, turning "the stream ended" into an error the caller re-reads on.
pub(crate) async fn next(stream: &mut WatchStream) -> Result<WatchResponse> {
    match stream.message().await {
        Some(r) => Ok(r?),
        None => Err(cairn_sdk::Error::Unavailable("watch ended".into()).into()),
    }
}

/// Whether a watch error means "read again and watch anew" rather than "give up".
pub(crate) fn recoverable(e: &Error) -> bool {
    matches!(e, Error::Client(cairn_sdk::Error::Compacted { .. } | cairn_sdk::Error::Unavailable(_)))
}

/// Wait until `key`, as created at `create_revision`, is deleted. `seen_at` is the
/// revision of a read that saw it.
pub(crate) async fn wait_delete(client: &Client, key: &[u8], create_revision: i64, mut seen_at: i64) -> Result<()> {
    loop {
        let mut w = client.watch(key, WatchOptions::new().with_start_revision(seen_at + 1).with_no_put()).await?;
        loop {
            match next(&mut w).await {
                Ok(resp) => {
                    if resp.events.iter().any(|e| e.r#type() == EventType::Delete) {
                        return Ok(());
                    }
                }
                Err(e) if recoverable(&e) => break,
                Err(e) => return Err(e),
            }
        }
        // The watch ended early: is the key still the one we wait for?
        let now = client.get(key, None).await?;
        match now.kvs.first() {
            Some(kv) if kv.create_revision == create_revision => seen_at = now.header.revision,
            _ => return Ok(()),
        }
    }
}

/// Wait until no key under `prefix` created at or before `max_create_revision` is left:
/// each waiter watches only its immediate predecessor, so a release wakes one waiter.
pub(crate) async fn wait_deletes(client: &Client, prefix: &str, max_create_revision: i64) -> Result<()> {
    loop {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_create_revision_range(0, max_create_revision);
        let resp = client.get(prefix, opts).await?;
        let Some(kv) = resp.kvs.first() else { return Ok(()) };
        wait_delete(client, &kv.key, kv.create_revision, resp.header.revision).await?;
    }
}

/// Wait for the first event of `kind` on `key` (or under it, with `prefix`) after
/// revision `after`; `None` if the history since then was compacted (read again).
pub(crate) async fn wait_event(
    client: &Client,
    key: &str,
    prefix: bool,
    after: i64,
    kind: EventType,
) -> Result<Option<KeyValue>> {
    let mut opts = WatchOptions::new().with_start_revision(after + 1);
    if prefix {
        opts = opts.with_prefix();
    }
    let mut w = client.watch(key, opts).await?;
    loop {
        match next(&mut w).await {
            Ok(resp) => {
                if let Some(ev) = resp.events.into_iter().find(|e| e.r#type() == kind) {
                    return Ok(Some(ev.kv.unwrap_or_default()));
                }
            }
            Err(e) if recoverable(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// A key name unique enough for `prefix`: etcd's recipes use the time in nanoseconds and
/// retry on the (rare) collision with a create-if-absent transaction.
pub(crate) fn unique_key(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}/{nanos}")
}
