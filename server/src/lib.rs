//! cairn-server: a Cairn member — etcd's v3 API over Raft-replicated MVCC.
//!
//! Data flows one way: client request -> [`grpc`] -> (writes) [`node::Node::propose`]
//! -> Raft log ([`raft::log_store`]) -> commit -> [`apply`] (via
//! [`raft::state_machine`]) -> MVCC store. Reads go [`grpc`] -> read index
//! ([`node::Node::read_barrier`], linearizable) or straight to the store (serializable).
//! Nothing below `apply` knows about gRPC.

pub mod apply;
pub mod auth;
pub mod batch;
pub mod config;
pub mod conn;
pub mod data_dir;
pub mod error;
pub mod fuzz;
pub mod gateway;
pub mod grpc;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod testing;
pub mod tls;
pub mod upkeep;
pub mod watch;

pub use config::Config;
pub use node::{Node, NodeHandle};
