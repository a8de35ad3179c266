//! cairn-server integration tests: members started in this process (to look at their
//! internals) and real `cairn` processes on loopback ports, driven by the real `etcdctl`
//! (etcd 3.4, Debian's etcd-client) and by the generated gRPC client. One binary, a
//! module per topic. End-to-end suites (etcdctl, clusters, crashes, membership, TLS, the
//! gateway, auth) are in the workspace's top-level `tests/` crate.

mod bad_input;
mod data_dir;
mod harness;
mod lease;
mod lock_election;
mod maintenance;
mod watch;
