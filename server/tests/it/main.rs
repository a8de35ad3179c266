//! cairn-server integration tests: real `cairn` processes on ephemeral loopback ports,
//! driven by the real `etcdctl` (etcd 3.4, Debian's etcd-client) and by the generated
//! gRPC client. One binary, a module per topic.

mod auth;
mod bad_input;
mod cluster;
mod crash;
mod data_dir;
mod etcdctl;
mod gateway;
mod harness;
mod lease;
mod lock_election;
mod maintenance;
mod membership;
mod tls;
mod watch;
