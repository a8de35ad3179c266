//! cairn-store: etcd's MVCC key-value model over a pluggable storage engine.
//!
//! Layers, bottom up:
//! - [`engine`]: the storage-engine trait (ordered tables, atomic batches, explicit
//!   durability) and its redb and sled implementations;
//! - [`revision`] and [`key_index`]: revisions and the in-memory per-key history;
//! - [`mvcc`]: Range, Put, DeleteRange, Txn and Compact with etcd's semantics;
//! - [`snapshot`]: a portable dump/load of the replicated tables (Raft snapshots);
//! - [`backup`]: checksummed backup files (`snapshot save/status/restore`);
//! - [`ids`]: etcd-style member and cluster ids.
//!
//! This crate is synchronous and knows nothing of Raft, tokio or gRPC.

pub mod backup;
pub mod bbolt;
pub mod engine;
pub mod error;
pub mod etcd_db;
pub mod fsutil;
pub mod fuzz;
pub mod ids;
pub mod key_index;
pub mod mvcc;
pub mod revision;
pub mod snapshot;
pub mod wal;

pub use engine::{Engine, EngineKind, Table, WriteBatch};
pub use error::{Result, StoreError};
pub use mvcc::Mvcc;
pub use revision::Revision;
