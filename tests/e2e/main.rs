//! End-to-end suites: real `cairn` processes on ephemeral loopback ports, driven by the
//! real `etcdctl` (etcd 3.4, Debian's etcd-client), HTTP clients and the generated gRPC
//! client. One binary, a module per topic.

mod alerts;
mod auth;
mod cluster;
mod console;
mod crash;
mod discovery;
mod etcd_flags;
mod etcd_snapshots;
mod etcdctl;
mod gateway;
mod harness;
mod keys;
mod membership;
mod packaging;
mod proxy;
mod tls;
