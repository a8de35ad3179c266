//! [`LeaderSelector`]: Curator's `LeaderSelector` with auto-requeue — campaign, lead
//! while elected, and when leadership ends (the work returned, or the session was lost in
//! a partition) campaign again, until stopped. Built on [`crate::Election`] (etcd's layout,
//! so `etcdctl elect -l` shows who leads).

use crate::election::Election;
use crate::error::Error;
use cairn_sdk::{Client, Compare, CompareOp, Session};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// A background task that keeps campaigning in an election and runs `lead` each time it
/// is elected. Stop it with [`LeaderSelector::stop`] (dropping it stops it too).
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) {
/// use cairn_recipes::LeaderSelector;
/// let selector = LeaderSelector::start(&client, "/scheduler/leader", "node-1", 10, |term| async move {
///     // Lead: this future is dropped the moment leadership is lost, and the selector
///     // campaigns again. Guard writes with `term.is_leader()` (a fencing compare).
///     println!("leading as {} (revision {})", term.key(), term.revision());
/// });
/// // ...
/// selector.stop().await;
/// # }
/// ```
#[derive(Debug)]
pub struct LeaderSelector {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
    terms: watch::Receiver<u64>,
}

impl LeaderSelector {
    /// Campaign in the election `name` with `value`, each time with a new session of
    /// `ttl` seconds, and run `lead(term)` whenever elected. When `lead` returns,
    /// leadership is resigned and the campaign starts again; when the session is lost
    /// (a partition longer than the TTL), the `lead` future is dropped at once.
    pub fn start<F, Fut>(client: &Client, name: impl AsRef<str>, value: impl Into<Vec<u8>>, ttl: i64, lead: F) -> Self
    where
        F: FnMut(Term) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(false);
        let (terms_tx, terms) = watch::channel(0u64);
        let election = Election::new(client, name);
        let task = tokio::spawn(run(client.clone(), election, value.into(), ttl, lead, stop_rx, leading_tx, terms_tx));
        LeaderSelector { task, stop, leading, terms }
    }

    /// Whether this selector leads now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// A view of whether it leads, to wait on (`changed()`).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// How many times it has been elected.
    pub fn terms(&self) -> u64 {
        *self.terms.borrow()
    }

    /// Stop campaigning: a running `lead` is dropped, leadership resigned, the session closed.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

/// One term of leadership, handed to the `lead` function.
#[derive(Debug, Clone)]
pub struct Term {
    key: String,
    revision: i64,
}

impl Term {
    /// The key holding leadership.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its create revision: grows with every term, a fencing token for outside systems.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// A comparison that holds only while this term lasts: guard writes with it.
    pub fn is_leader(&self) -> Compare {
        Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.revision)
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<F, Fut>(
    client: Client,
    election: Election,
    value: Vec<u8>,
    ttl: i64,
    mut lead: F,
    mut stop: watch::Receiver<bool>,
    leading: watch::Sender<bool>,
    terms: watch::Sender<u64>,
) where
    F: FnMut(Term) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut delays = client.options().retry().delays();
    while !*stop.borrow() {
        let round = async {
            let session = Session::new(&client, ttl).await?;
            let leadership = election.campaign(&session, value.clone()).await?;
            leading.send_replace(true);
            terms.send_modify(|t| *t += 1);
            let term = Term { key: leadership.key().to_string(), revision: leadership.revision() };
            tokio::select! {
                _ = lead(term) => {}
                _ = leadership.lost() => {}
            }
            leading.send_replace(false);
            let _ = leadership.resign().await;
            let _ = session.close().await;
            Ok::<(), Error>(())
        };
        let ended = tokio::select! {
            r = round => r,
            _ = stop.wait_for(|s| *s) => Ok(()),
        };
        leading.send_replace(false);
        match ended {
            Ok(()) => delays = client.options().retry().delays(),
            Err(e) => {
                tracing::debug!(%e, "leader selector: campaign failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }
        }
    }
}

impl Drop for LeaderSelector {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
