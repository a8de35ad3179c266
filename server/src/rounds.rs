//! Calls shared by the callers that arrive together: one call serves every caller waiting
//! when it starts, and callers arriving while a call is under way wait for the next one, so
//! each caller's result comes from a call that started after it arrived. A follower's
//! linearizable reads share their read-index calls to the leader this way
//! (`Router::read_barrier`), as the leader shares its read-index rounds (`batch.rs`).
//!
//! The calls run in a task of their own, so a caller that gives up (its deadline, its
//! client gone) does not cut short the call the others wait for.

use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Shared calls of one kind (see the module notes).
pub struct SharedCalls<T> {
    /// `None`: no call under way. `Some(w)`: a call is under way and `w` wait for the next.
    next: Mutex<Option<Vec<oneshot::Sender<T>>>>,
}

impl<T> Default for SharedCalls<T> {
    fn default() -> Self {
        SharedCalls { next: Mutex::new(None) }
    }
}

impl<T: Clone + Send + 'static> SharedCalls<T> {
    /// The result of a `call` started after this one began, shared with the other callers
    /// waiting then; `None` if the task making the calls ended without one (the runtime is
    /// shutting down). `call` is used only if no call is under way: the task it starts
    /// makes calls until nobody waits.
    pub async fn join<F, Fut>(self: &Arc<Self>, call: F) -> Option<T>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            match next.as_mut() {
                Some(waiting) => {
                    waiting.push(tx);
                    None
                }
                None => {
                    *next = Some(Vec::new());
                    Some(tx)
                }
            }
        };
        if let Some(first) = first {
            tokio::spawn(self.clone().calls(vec![first], call));
        }
        rx.await.ok()
    }

    /// Call for `waiting`, then for whoever waits by then, until nobody does.
    async fn calls<F, Fut>(self: Arc<Self>, mut waiting: Vec<oneshot::Sender<T>>, call: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            let result = call().await;
            for w in waiting.drain(..) {
                let _ = w.send(result.clone());
            }
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            match next.take() {
                Some(w) if !w.is_empty() => {
                    waiting = w;
                    *next = Some(Vec::new());
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn callers_share_calls_and_each_gets_one_started_after_it_arrived() {
        let shared = Arc::new(SharedCalls::<u64>::default());
        let started = Arc::new(AtomicU64::new(0));
        let mut callers = Vec::new();
        for i in 0..200u64 {
            let (shared, started) = (shared.clone(), started.clone());
            callers.push(tokio::spawn(async move {
                // Arrive spread over about four calls' time.
                tokio::time::sleep(Duration::from_micros(i * 100)).await;
                let seen = started.load(Ordering::SeqCst);
                let s = started.clone();
                let got = shared
                    .join(move || {
                        let s = s.clone();
                        async move {
                            // The call's number, taken as it starts.
                            let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            n
                        }
                    })
                    .await;
                (seen, got)
            }));
        }
        for c in callers {
            let (seen, got) = c.await.expect("caller");
            let got = got.expect("an answer");
            assert!(got > seen, "a caller that arrived after call {seen} started got call {got}'s result");
        }
        let calls = started.load(Ordering::SeqCst);
        assert!((2..50).contains(&calls), "200 callers over ~20 ms of 5 ms calls made {calls} calls");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_stop_the_call_others_wait_for() {
        let shared = Arc::new(SharedCalls::<u64>::default());
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            7
        };
        let gives_up = tokio::time::timeout(Duration::from_millis(5), shared.join(slow));
        assert!(gives_up.await.is_err());
        // A call is still under way: this caller waits for the next one, which must come.
        let waits = tokio::time::timeout(Duration::from_secs(5), shared.join(slow)).await;
        assert_eq!(waits.expect("the next call ran"), Some(7));
    }
}
