//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz`) and of the test that
//! replays their corpus and every crash found so far on each test run. Each takes arbitrary
//! bytes and must neither panic nor hang; errors are the expected outcome.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cairn-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// WAL recovery: `data` as the only segment of a log, opened (and read back if it opens).
pub fn wal_open(data: &[u8]) {
    let Ok(dir) = Scratch::new() else { return };
    if std::fs::write(dir.0.join("0000000000000001.wal"), data).is_err() {
        return;
    }
    if let Ok(w) = crate::wal::Wal::open(&dir.0, 4096) {
        if let (Some(first), Some(last)) = (w.first_index(), w.last_index()) {
            let _ = w.read(first, last + 1);
        }
    }
}

/// Raft snapshot files: `data` read and verified as one.
pub fn snapshot_read(data: &[u8]) {
    let _ = crate::snapshot::read(&mut &data[..], crate::WriteBatch::new());
}

/// Backup files: `data` checked as one (`snapshot status`).
pub fn backup_scan(data: &[u8]) {
    let Ok(dir) = Scratch::new() else { return };
    let path = dir.0.join("backup.db");
    if std::fs::write(&path, data).is_ok() {
        let _ = crate::backup::status(&path);
    }
}

/// bbolt databases (etcd's backend): `data` opened, every bucket walked and imported.
pub fn bbolt_read(data: &[u8]) {
    let Ok(dir) = Scratch::new() else { return };
    let path = dir.0.join("db");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(r) = crate::bbolt::Reader::open(&path) {
            let _ = crate::etcd_db::status(&r);
            let _ = crate::etcd_db::import(&r, &mut |_, _, _| Ok(()));
        }
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Run `run` on every input under `fuzz/corpus/<target>` and `fuzz/regressions/<target>`
/// of this repository; returns how many there were.
pub fn replay(target: &str, run: Target) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                run(&data);
                n += 1;
            }
        }
    }
    n
}
