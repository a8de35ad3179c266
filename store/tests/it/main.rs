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

/// Every input under `fuzz/corpus/<target>` and `fuzz/regressions/<target>` of the store's
/// fuzz targets, replayed (the fuzzer itself runs from `scripts/fuzz`).
#[test]
fn the_fuzz_corpus_and_past_crashes_replay_cleanly() {
    use cairn_store::fuzz;
    let targets: [(&str, fuzz::Target); 4] = [
        ("wal_open", fuzz::wal_open),
        ("snapshot_read", fuzz::snapshot_read),
        ("backup_scan", fuzz::backup_scan),
        ("bbolt_read", fuzz::bbolt_read),
    ];
    for (name, run) in targets {
        let n = fuzz::replay(name, run);
        assert!(n >= 5, "fuzz/corpus/{name} holds {n} inputs: run scripts/fuzz to make it");
    }
}
