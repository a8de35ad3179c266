//! cairn-server: a Cairn member — etcd's v3 API over Raft-replicated MVCC.
//!
//! Layers, each importing only those below it (docs/ARCHITECTURE.md draws the graph):
//!
//! 1. foundations: [`error`], [`config`] (with [`etcd_flags`], [`logging`]), [`tls`], [`conn`] (with
//!    [`authority`]), [`data_dir`],
//!    [`discovery`] (the initial cluster from DNS SRV), [`version`], [`rounds`] (calls
//!    shared by the callers that arrive together);
//! 2. replicated state: [`state`], [`auth`] (state, apply), [`lease`] (the lessor),
//!    [`watch`] (the hub), [`apply`];
//! 3. consensus: [`raft`] (log store, state machine, network), [`batch`];
//! 4. [`replica`] (this member's Raft + state), [`router`] (the one way to the leader),
//!    [`metrics`], [`write`] (admission of writes);
//! 5. services: [`lease::leader`], [`membership`], [`auth::gate`], [`upkeep`];
//! 6. ports: [`grpc`] (handlers), [`gateway`] (JSON and observability), [`serve`],
//!    [`peer`];
//! 7. [`member`]: the wiring, the only module that knows every layer.
//!
//! Beside the member: [`proxy`] (`cairn grpc-proxy`), which uses only the foundations.
//!
//! A write: [`grpc`] handler -> [`write::Writer::propose`] -> [`router::Router::propose`]
//! -> leader's [`replica::Replica::propose_local`] -> [`batch`] -> Raft log -> commit ->
//! [`apply`] (via [`raft::state_machine`]) -> MVCC store. A linearizable read waits for
//! [`router::Router::read_barrier`], then reads the local store.

pub(crate) mod apply;
pub(crate) mod auth;
pub(crate) mod authority;
pub(crate) mod batch;
pub mod config;
pub(crate) mod conn;
pub(crate) mod data_dir;
pub(crate) mod discovery;
pub(crate) mod error;
pub mod etcd_flags;
pub(crate) mod failover;
pub mod fuzz;
pub(crate) mod gateway;
pub(crate) mod grpc;
pub(crate) mod lease;
pub mod logging;
pub mod member;
pub(crate) mod membership;
pub(crate) mod metrics;
pub(crate) mod peer;
pub mod proxy;
pub(crate) mod raft;
pub(crate) mod replica;
pub(crate) mod rounds;
pub(crate) mod router;
pub(crate) mod serve;
pub(crate) mod state;
pub(crate) mod tls;
pub(crate) mod upkeep;
pub(crate) mod version;
pub(crate) mod watch;
pub(crate) mod write;

pub use config::Config;
pub use discovery::url::ClusterFull;
pub use member::{start, MemberHandle};
