//! cairn-api: etcd's v3 API as Rust types and tonic stubs.
//!
//! The `.proto` files under `proto/etcd` carry etcd's package, service, method,
//! message and field names and numbers — the wire contract that `etcdctl` and
//! every etcd client library speak. `proto/cairn` holds Cairn's own peer and
//! Raft-log messages. Both server and client stubs are generated.

#![allow(clippy::all, missing_docs)]

/// The end of the range that holds every key starting with `prefix` (etcd's rule: the
/// prefix with its last byte below 0xff incremented; `\0`, meaning "to the end", if none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `mvccpb`: keys, values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// `authpb`: users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// `etcdserverpb`: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// `v3lockpb`: the Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// `v3electionpb`: the Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// `cairnpb`: Cairn's Raft-log commands and peer service (not etcd's contract).
pub mod cairnpb {
    tonic::include_proto!("cairnpb");

    impl RaftRequest {
        /// A request the member makes on its own (no client, so no permission check).
        pub fn internal(request: raft_request::Request) -> RaftRequest {
            RaftRequest { request: Some(request), caller: None }
        }

        /// A client's request, made by `user` (empty: no credentials).
        pub fn by(user: &str, request: raft_request::Request) -> RaftRequest {
            RaftRequest { request: Some(request), caller: Some(Caller { user: user.to_string() }) }
        }
    }
}
