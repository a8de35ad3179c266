//! cairn-chaos: fault injection against real `cairn` processes, with the recorded client
//! history checked for linearizability (Jepsen's method, in the repo and in CI).
//!
//! [`runner::run_chaos`] starts a cluster, runs concurrent clients doing reads, writes,
//! deletes and compare-and-sets on a few keys while a nemesis kills, pauses, partitions
//! and slows members ([`delay`]), recovers, and checks: every key's history is
//! linearizable ([`checker`]), every client saw revisions in order, the members converged
//! to the same HashKV, every member's watch stream (replayed, and live through the faults:
//! [`watch`]) is the same and complete, lock
//! fencing held, and no lease expired early or outlived its TTL ([`lease`]).

pub mod checker;
pub mod delay;
pub mod history;
pub mod lease;
pub mod runner;
pub mod watch;
