//! Leader election: etcd's `concurrency.Election`, key for key.
//!
//! Each candidate creates `<name>/<lease id in hex>` on its session lease; the candidate
//! whose key was created first leads, and its key's value is the leader's proclamation.
//! Every other candidate waits only for the key created just before its own, so a leader's
//! exit wakes exactly one successor. `etcdctl elect`, Go's `concurrency.NewElection` and
//! the server's Election service on the same name see the same leader.

use crate::error::{Error, Result};
use crate::wait::{next, recoverable, wait_deletes, wait_event, Lease};
use cairn_sdk::{
    Client, Compare, CompareOp, EventType, GetOptions, Header, KeyValue, PutOptions, Session, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

/// The election `name`: campaign in it with a session, or watch who leads.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// use cairn_recipes::Election;
/// use cairn_sdk::Session;
/// let session = Session::new(&client, 5).await?;
/// let election = Election::new(&client, "/scheduler/leader");
/// let leadership = election.campaign(&session, "replica-1").await?; // waits until elected
/// tokio::select! {
///     _ = leadership.lost() => { /* the lease expired: stop acting as leader */ }
///     _ = async { /* lead */ } => leadership.resign().await?,
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    prefix: String,
}

/// Being the leader: the key that holds leadership and its create revision.
#[derive(Debug)]
pub struct Leadership {
    lease: Lease,
    key: String,
    revision: i64,
    header: Header,
}

impl Election {
    /// The election `name` (its candidates' keys live under `<name>/`).
    pub fn new(client: &Client, name: impl AsRef<str>) -> Election {
        Election { client: client.clone(), prefix: format!("{}/", name.as_ref()) }
    }

    /// Become a candidate with `value` and wait until elected. Fails with
    /// [`Error::SessionLost`] if the session's lease is lost first; if the future is
    /// dropped while waiting, the candidacy is withdrawn.
    pub async fn campaign(&self, session: &Session, value: impl Into<Vec<u8>>) -> Result<Leadership> {
        let lease = Lease::of(session);
        let value = value.into();
        let key = format!("{}{:x}", self.prefix, lease.id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value.clone(), PutOptions::new().with_lease(lease.id))])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = lease.guard(async { Ok(self.client.txn(txn).await?) }).await?;
        let mut leadership =
            Leadership { lease: lease.clone(), key, revision: resp.header.revision, header: resp.header };
        let mut stale_value = false;
        if !resp.succeeded {
            // Campaigning again with the same session: keep our place, update the value.
            let existing = resp.responses.into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs.into_iter().next(),
                _ => None,
            });
            let Some(kv) = existing else { return Err(Error::SessionLost) };
            leadership.revision = kv.create_revision;
            stale_value = kv.value != value;
        }
        // Until elected, dropping `pending` withdraws the candidacy.
        let mut pending = Withdraw(Some((self.client.clone(), leadership.key.clone(), leadership.revision)));
        if stale_value {
            leadership.proclaim(value).await?;
        }
        lease.guard(wait_deletes(&self.client, &self.prefix, leadership.revision - 1)).await?;
        // Still a candidate? (The lease may have expired while we waited.)
        let mine = self.client.get(leadership.key.as_str(), None).await?;
        match mine.kvs.first() {
            Some(kv) if kv.create_revision == leadership.revision => {
                pending.0 = None;
                leadership.header = mine.header;
                Ok(leadership)
            }
            _ => Err(Error::SessionLost),
        }
    }

    /// The current leader's key-value pair (its value is the proclamation).
    pub async fn leader(&self) -> Result<KeyValue> {
        first_created(&self.client, &self.prefix).await?.0.ok_or(Error::NoLeader)
    }

    /// A stream of leaders: the current one (once there is one), then every change of
    /// leader or of its proclamation, as etcd's `Observe`.
    pub fn observe(&self) -> Observe {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(observe(self.client.clone(), self.prefix.clone(), tx));
        Observe { rx, task }
    }
}

/// Deletes a candidate's key (as created at a revision) if the campaign does not finish.
struct Withdraw(Option<(Client, String, i64)>);

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some((client, key, revision)) = self.0.take() {
            crate::wait::delete_in_background(&client, key, revision);
        }
    }
}

impl Leadership {
    /// The key holding leadership (`<name>/<lease id in hex>`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key's create revision (etcd's `Rev()`): grows with every new leader.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The session lease's ID.
    pub fn lease_id(&self) -> i64 {
        self.lease.id
    }

    /// The header of the answer that confirmed leadership.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// A comparison that holds only while this is still the leader: guard writes with it.
    pub fn is_leader(&self) -> Compare {
        Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.revision)
    }

    /// Resolves if the session's lease is lost, which ends the leadership.
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// Announce a new value without an election. Fails with [`Error::NotLeader`] if
    /// leadership was lost.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        let txn = Txn::new().when([self.is_leader()]).and_then([TxnOp::put(
            self.key.as_str(),
            value,
            PutOptions::new().with_lease(self.lease.id),
        )]);
        if self.lease.client.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Give up leadership (the next candidate is elected).
    pub async fn resign(self) -> Result<()> {
        let txn = Txn::new().when([self.is_leader()]).and_then([TxnOp::delete(self.key.as_str(), None)]);
        self.lease.client.txn(txn).await?;
        Ok(())
    }
}

/// The stream of [`Election::observe`]. Dropping it stops observing.
#[derive(Debug)]
pub struct Observe {
    rx: mpsc::Receiver<Result<KeyValue>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observe {
    /// The next leader (or new proclamation); `None` after an error has been delivered.
    pub async fn next(&mut self) -> Option<Result<KeyValue>> {
        self.rx.recv().await
    }
}

impl tokio_stream::Stream for Observe {
    type Item = Result<KeyValue>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first-created key under `prefix` and the revision of the read.
pub(crate) async fn first_created(client: &Client, prefix: &str) -> Result<(Option<KeyValue>, i64)> {
    let opts = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
    let resp = client.get(prefix, opts).await?;
    Ok((resp.kvs.into_iter().next(), resp.header.revision))
}

async fn observe(client: Client, prefix: String, tx: mpsc::Sender<Result<KeyValue>>) {
    if let Err(e) = observe_loop(&client, &prefix, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn observe_loop(client: &Client, prefix: &str, tx: &mpsc::Sender<Result<KeyValue>>) -> Result<()> {
    // The last leader sent: (key, mod revision), so a re-read after a broken watch does not
    // repeat it.
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        let (leader, rev) = first_created(client, prefix).await?;
        let Some(kv) = leader else {
            // Nobody leads: wait for a candidate, then read again (the first put under the
            // prefix is not necessarily the first-created key).
            wait_event(client, prefix, true, rev, EventType::Put).await?;
            continue;
        };
        let (key, create) = (kv.key.clone(), kv.create_revision);
        if last.as_ref() != Some(&(kv.key.clone(), kv.mod_revision)) {
            last = Some((kv.key.clone(), kv.mod_revision));
            if tx.send(Ok(kv)).await.is_err() {
                return Ok(());
            }
        }
        // Follow this leader's proclamations until its key goes.
        let mut w = client.watch(key.as_slice(), WatchOptions::new().with_start_revision(rev + 1)).await?;
        'leader: loop {
            match next(&mut w).await {
                Ok(resp) => {
                    for ev in resp.events {
                        let kv = ev.kv.clone().unwrap_or_default();
                        if ev.r#type() == EventType::Delete || kv.create_revision != create {
                            break 'leader;
                        }
                        last = Some((kv.key.clone(), kv.mod_revision));
                        if tx.send(Ok(kv)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(e) if recoverable(&e) => break 'leader,
                Err(e) => return Err(e),
            }
        }
    }
}
