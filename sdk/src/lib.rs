//! cairn-sdk: an async Rust client for Cairn — and for etcd, which speaks the same v3 API.
//!
//! ```no_run
//! use cairn_sdk::{Client, ConnectOptions, GetOptions, PutOptions, Session, WatchOptions};
//!
//! # async fn demo() -> cairn_sdk::Result<()> {
//! let client = Client::connect(["127.0.0.1:2379"], ConnectOptions::default()).await?;
//!
//! // Keys and values.
//! client.put("/app/config/level", "info", None).await?;
//! let all = client.get("/app/config/", GetOptions::new().with_prefix()).await?;
//! println!("{} keys at revision {}", all.count, all.header.revision);
//!
//! // A watch that resumes on another member if this one dies, without gaps.
//! let mut changes = client.watch("/app/config/", WatchOptions::new().with_prefix()).await?;
//!
//! // A lease kept alive while the session lives; the key goes when it ends.
//! let session = Session::new(&client, 10).await?;
//! client.put("/app/members/me", "10.0.0.7", PutOptions::new().with_lease(session.lease_id())).await?;
//!
//! while let Some(resp) = changes.message().await {
//!     println!("{} events at revision {}", resp?.events.len(), all.header.revision);
//! }
//! # Ok(()) }
//! ```
//!
//! Layout: [`client`] (endpoints, failover, retries), [`kv`] (get/put/delete/txn/compact),
//! [`watch`], [`lease`] (leases, keep-alive, [`Session`]), [`cluster`] (members and
//! maintenance), [`auth`] (users, roles, permissions), [`coord`] (the server's Lock and
//! Election services), [`error`] (one [`Error`] enum mapping etcd's errors);
//! [`Client::with_namespace`] gives a client whose key space is one prefix.

#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod cluster;
pub mod coord;
pub mod error;
mod insecure;
pub mod kv;
pub mod lease;
mod namespace;
pub mod retry;
pub mod watch;

pub use auth::{Permission, PermissionType};
pub use client::{Client, ConnectOptions};
pub use retry::RetryPolicy;

pub use cluster::{AlarmMember, AlarmType, Member};
pub use coord::{LeaderKey, Observe};
pub use error::{Code, Error, Result};
pub use kv::{
    prefix_end, Compare, CompareOp, DeleteOptions, DeleteResponse, GetOptions, GetResponse, Header, KeyValueExt,
    PutOptions, PutResponse, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
pub use lease::{KeepAlive, LeaseGrantResponse, LeaseState, LeaseTimeToLiveResponse, Session};
pub use watch::{EventType, WatchOptions, WatchResponse, WatchStream};

/// etcd's protobuf messages, for the fields this crate does not wrap.
pub use cairn_api as proto;
/// One watch event: its type, the pair after it, and (if asked for) the pair before.
pub use cairn_api::mvccpb::Event;
/// A key-value pair as stored: key, value, create/mod revision, version, lease.
pub use cairn_api::mvccpb::KeyValue;
