//! What the clients did: one [`Op`] per request, with when it was invoked and when (if
//! ever) it completed, and what came back.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Monotonic nanoseconds since `start` (the run's start): how histories record time.
pub fn elapsed_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// What an operation asked for, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// Read the key (a linearizable Range).
    Read,
    /// Put a value (values are unique across a run).
    Write(u64),
    /// Compare-and-set in one Txn: if the value is `expect` (`None`: absent), put `new`.
    Cas { expect: Option<u64>, new: u64 },
    /// Delete the key.
    Delete,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Completed: a read's value, a CAS's success, nothing for writes and deletes.
    Ok(Option<u64>),
    /// Compare-and-set completed; whether it swapped.
    Swapped(bool),
    /// Definitely not applied (refused before it could be: no leader, connection
    /// refused, ...).
    Fail,
    /// Unknown: timed out or the connection broke mid-way. May have applied, at any
    /// time after the invocation; never retried by the recorder.
    Info,
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Which client (one operation at a time per client).
    pub client: usize,
    /// The key.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// What came back.
    pub outcome: Outcome,
    /// Monotonic nanoseconds since the run started, at invocation.
    pub invoked: u64,
    /// At completion (`u64::MAX` for [`Outcome::Info`]).
    pub completed: u64,
}

impl Op {
    /// Whether the operation may have changed the register.
    pub fn may_write(&self) -> bool {
        !matches!(self.call, Call::Read) && self.outcome != Outcome::Fail
    }
}
