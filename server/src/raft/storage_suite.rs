//! openraft's own storage test suite (`openraft::testing::Suite`), run on Cairn's log
//! store and state machine: the contract openraft relies on (log state, vote, purge and
//! truncate, applied state, membership from log and state machine, snapshot transfer).

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::TypeConfig;
use crate::lease::Lessor;
use crate::state::Headers;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;
use std::time::Duration;

struct Fresh;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Fresh {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let io = |e: &dyn std::fmt::Display| {
            super::storage_err(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e.to_string())
        };
        let dir = tempfile::tempdir().map_err(|e| io(&e))?;
        let engine =
            cairn_store::engine::open(cairn_store::EngineKind::Redb, &dir.path().join("member")).map_err(|e| io(&e))?;
        let fsync =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("fsync", "test")).map_err(|e| io(&e))?;
        let log = LogStore::open_with_segments(engine.clone(), &dir.path().join("wal"), fsync, 1 << 20)
            .map_err(|e| io(&e))?;
        let lessor = Arc::new(Lessor::new(Duration::from_secs(1)));
        let sm = StateMachine::open(engine, dir.path().join("snap"), 1 << 20, lessor, Headers::new(1, 1))
            .map_err(|e| io(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Fresh).expect("the log store and state machine pass openraft's storage suite");
}
