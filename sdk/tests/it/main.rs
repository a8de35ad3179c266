//! cairn-sdk integration tests. Every scenario runs twice — against a real `cairn` and
//! against real etcd 3.4 (Debian's `etcd-server`) — and must pass on both: that is how we
//! know the SDK and the server agree with etcd.

mod auth;
mod cluster;
mod coord;
mod examples;
mod failover;
mod harness;
mod kv;
mod lease;
mod namespace;
mod policy;
mod watch;
