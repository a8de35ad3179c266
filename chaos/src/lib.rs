//! cairn-chaos: fault injection against real `cairn` processes, with the recorded client
//! history checked for linearizability (Jepsen's method, in the repo and in CI).
//!
//! [`runner::run_chaos`] starts a cluster, runs concurrent clients doing reads, writes,
//! deletes and compare-and-sets on a few keys while a nemesis kills and pauses members,
//! recovers, and checks: every key's history is linearizable ([`checker`]), every client
//! saw revisions in order, and the members converged to the same HashKV.

pub mod checker;
pub mod history;
pub mod runner;
