//! cairn-store integration tests: one binary, a module per topic.

mod conformance;
mod model;
mod txn;

use cairn_store::{engine, EngineKind, Mvcc};
use std::sync::Arc;

/// A fresh engine of `kind` in its own temporary directory.
pub fn fresh(kind: EngineKind) -> (tempfile::TempDir, Arc<dyn cairn_store::Engine>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine::open(kind, dir.path()).expect("open engine");
    (dir, e)
}

/// A fresh store on an engine of `kind`.
pub fn fresh_mvcc(kind: EngineKind) -> (tempfile::TempDir, Mvcc) {
    let (dir, e) = fresh(kind);
    (dir, Mvcc::open(e).expect("open mvcc"))
}
