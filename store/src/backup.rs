//! Backup files: what `Maintenance.Snapshot` streams and `cairnctl snapshot save` writes,
//! `snapshot status` inspects and `snapshot restore` loads into a new data directory.
//!
//! Layout: the magic `CAIRNBK1`, the records of [`crate::snapshot::dump`] (the `Kv`,
//! `Meta` and `Lease` tables), a zero byte, zero padding up to a multiple of 512 bytes,
//! then the SHA-256 of everything before it — the shape etcd gives its snapshot stream
//! (`etcdctl snapshot save` checks that the size is a multiple of 512 plus 32). A file
//! whose checksum does not match is refused as a whole. Restoring keeps the key history, the
//! revisions, the leases and the users and roles, and drops what belonged to the old cluster (its membership,
//! applied Raft index, member attributes and alarms): the restored members form a new
//! cluster with a new id.

use crate::engine::{Engine, ReadView, Table, WriteBatch};
use crate::error::{Result, StoreError};
use crate::mvcc::{META_AUTH_PREFIX, META_COMPACT_REV, META_CURRENT_REV};
use crate::snapshot::{HashReader, HashWriter};
use crate::{ids, snapshot, Revision};
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read, Write};
use std::path::Path;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"CAIRNBK1";
const TRAILER: u64 = 32;
/// The records and padding take a multiple of this many bytes.
const SECTOR: u64 = 512;
/// Records written per batch while restoring.
const RESTORE_BATCH: usize = 10_000;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("backup i/o: {e}"))
}

/// What a backup file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// The HashKV of the backed-up store at its revision (what `etcdctl endpoint hashkv`
    /// printed for the member it was taken from at that revision).
    pub hash: u32,
    /// The store revision.
    pub revision: i64,
    /// The compacted revision.
    pub compact_revision: i64,
    /// Records in the file (key revisions, leases and metadata).
    pub total_keys: u64,
    /// File size in bytes.
    pub total_size: u64,
    /// The SHA-256 checksum stored at the end of the file (verified).
    pub sha256: [u8; 32],
}

/// Write a backup of what `view` sees to `out`; returns the bytes written.
pub fn write(view: &dyn ReadView, out: &mut dyn Write) -> Result<u64> {
    let mut w = HashWriter { out, sha: Sha256::new(), n: 0 };
    w.write_all(MAGIC).map_err(io)?;
    snapshot::dump(view, &mut w)?;
    let pad = (SECTOR - (w.n + 1) % SECTOR) % SECTOR;
    w.write_all(&[0u8]).map_err(io)?;
    w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
    let n = w.n;
    let digest = w.sha.finalize();
    out.write_all(&digest).map_err(io)?;
    Ok(n + TRAILER)
}

fn not_a_backup(path: &Path, why: &str) -> StoreError {
    StoreError::Corrupt(format!("{}: not a usable Cairn snapshot file: {why}", path.display()))
}

/// Read every record of the backup at `path`, verifying its checksum; `each` sees every
/// record before the checksum is known, so it must not commit anything. Damage anywhere is
/// reported as a checksum mismatch, also where it stops the parse.
fn scan(path: &Path, each: &mut dyn FnMut(Table, Vec<u8>, Vec<u8>) -> Result<()>) -> Result<BackupStatus> {
    let f = std::fs::File::open(path).map_err(|e| StoreError::Engine(format!("{}: {e}", path.display())))?;
    let total_size = f.metadata().map_err(io)?.len();
    if total_size < MAGIC.len() as u64 + TRAILER {
        return Err(not_a_backup(path, "too short"));
    }
    let mut r = HashReader { inner: BufReader::new(f).take(total_size - TRAILER), sha: Sha256::new() };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(not_a_backup(path, "wrong magic (an etcd bbolt snapshot? restore it with etcdutl)"));
    }
    let parsed = match parse_records(&mut r, each) {
        Ok(parsed) => Ok(parsed),
        Err(Damaged(why)) => Err(why),
        Err(Failed(e)) => return Err(e),
    };
    // Hash what a parse stopped by damage left unread, so the checksum speaks first.
    std::io::copy(&mut r, &mut std::io::sink()).map_err(io)?;
    let digest: [u8; 32] = r.sha.finalize().into();
    let mut stored = [0u8; 32];
    r.inner.into_inner().read_exact(&mut stored).map_err(io)?;
    if digest != stored {
        return Err(not_a_backup(path, "checksum mismatch (the file is damaged or incomplete)"));
    }
    let (revision, compact_revision, total_keys, kv_crc) = parsed.map_err(|why| not_a_backup(path, &why))?;
    // HashKV = CRC-32 of the compact revision followed by every kv record.
    let mut hash = crc32fast::Hasher::new();
    hash.update(&compact_revision.to_be_bytes());
    hash.combine(&kv_crc);
    Ok(BackupStatus {
        hash: hash.finalize(),
        revision: revision.max(compact_revision).max(1),
        compact_revision,
        total_keys,
        total_size,
        sha256: stored,
    })
}

/// Why the records could not be read: the file's content, or anything else.
enum ParseError {
    Damaged(String),
    Failed(StoreError),
}
use ParseError::{Damaged, Failed};

/// The records after the magic and the zero padding after them: (revision, compacted
/// revision, records, CRC of the kv records).
fn parse_records(
    r: &mut impl Read,
    each: &mut dyn FnMut(Table, Vec<u8>, Vec<u8>) -> Result<()>,
) -> std::result::Result<(i64, i64, u64, crc32fast::Hasher), ParseError> {
    let (mut revision, mut compact_revision, mut total_keys) = (0i64, 0i64, 0u64);
    let mut kv_crc = crc32fast::Hasher::new();
    let meta_int = |v: &[u8]| v.try_into().map(i64::from_be_bytes).map_err(|_| Damaged("bad revision".into()));
    loop {
        let rec = snapshot::read_record(r).map_err(|e| Damaged(e.to_string()))?;
        let Some((table, k, v)) = rec else { break };
        match table {
            Table::Kv => {
                kv_crc.update(&k);
                kv_crc.update(&v);
                if let Some(rev) = Revision::from_bytes(&k) {
                    revision = revision.max(rev.main);
                }
            }
            Table::Meta if k == META_CURRENT_REV => revision = revision.max(meta_int(&v)?),
            Table::Meta if k == META_COMPACT_REV => compact_revision = meta_int(&v)?,
            _ => {}
        }
        total_keys += 1;
        each(table, k, v).map_err(Failed)?;
    }
    // The end marker's padding: zeros up to the checksum.
    let mut pad = [0u8; 512];
    loop {
        let n = r.read(&mut pad).map_err(|e| Failed(io(e)))?;
        if n == 0 {
            break;
        }
        if pad[..n].iter().any(|b| *b != 0) {
            return Err(Damaged("data after the end of the records".into()));
        }
    }
    Ok((revision, compact_revision, total_keys, kv_crc))
}

/// Verify the backup at `path` and describe it.
pub fn status(path: &Path) -> Result<BackupStatus> {
    scan(path, &mut |_, _, _| Ok(()))
}

/// How to restore a backup.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The restored member's id.
    pub member_id: u64,
    /// The new cluster's id.
    pub cluster_id: u64,
    /// Added to the store revision, so revisions never go back for clients that saw
    /// later ones before the restore.
    pub bump_revision: i64,
    /// Mark the (bumped) revision compacted, so watchers from older revisions are told
    /// to resync instead of silently missing writes.
    pub mark_compacted: bool,
}

/// Verify the backup at `path`, then load it into the empty `engine` as the state of a
/// member of a new cluster (see the module doc).
pub fn restore(path: &Path, engine: &dyn Engine, opts: &RestoreOptions) -> Result<BackupStatus> {
    let status = status(path)?;
    let mut batch = WriteBatch::new();
    scan(path, &mut |table, k, v| {
        let keep =
            table != Table::Meta || k == META_COMPACT_REV || k == META_CURRENT_REV || k.starts_with(META_AUTH_PREFIX);
        if keep {
            batch.put(table, k, v);
        }
        if batch.len() >= RESTORE_BATCH {
            engine.write(std::mem::take(&mut batch), false)?;
        }
        Ok(())
    })?;
    let revision = status.revision + opts.bump_revision.max(0);
    batch.put(Table::Meta, META_CURRENT_REV, revision.to_be_bytes().to_vec());
    if opts.mark_compacted {
        batch.put(Table::Meta, META_COMPACT_REV, revision.to_be_bytes().to_vec());
    }
    ids::store_id(&mut batch, ids::KEY_CLUSTER_ID, opts.cluster_id);
    ids::store_id(&mut batch, ids::KEY_MEMBER_ID, opts.member_id);
    engine.write(batch, true)?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{open, EngineKind};
    use crate::Mvcc;
    use cairn_api::etcdserverpb::PutRequest;

    fn put(m: &mut Mvcc, k: &str, v: &str) {
        m.put(&PutRequest { key: k.into(), value: v.into(), ..Default::default() }, &|_| true).unwrap();
        m.commit(WriteBatch::new(), true).unwrap();
    }

    #[test]
    fn round_trip_bump_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let src = open(EngineKind::Redb, &dir.path().join("src")).unwrap();
        let mut m = Mvcc::open(src.clone()).unwrap();
        for i in 0..50 {
            put(&mut m, &format!("k{}", i % 7), &format!("v{i}"));
        }
        let file = dir.path().join("backup.db");
        let mut out = std::fs::File::create(&file).unwrap();
        let view = src.frozen_view().unwrap().unwrap();
        let written = write(view.as_ref(), &mut out).unwrap();
        drop(out);
        let st = status(&file).unwrap();
        assert_eq!(st.total_size, written);
        assert_eq!(written % 512, 32, "etcdctl's shape: sectors plus a SHA-256");
        assert_eq!(st.revision, m.current_revision());
        assert!(st.total_keys >= 50);

        let dst = open(EngineKind::Redb, &dir.path().join("dst")).unwrap();
        let opts = RestoreOptions { member_id: 7, cluster_id: 9, bump_revision: 1000, mark_compacted: true };
        restore(&file, dst.as_ref(), &opts).unwrap();
        let restored = Mvcc::open(dst.clone()).unwrap();
        assert_eq!(restored.current_revision(), m.current_revision() + 1000);
        assert_eq!(restored.compact_revision(), m.current_revision() + 1000);
        assert_eq!(restored.key_count(), 7);
        assert_eq!(ids::load_id(dst.as_ref(), ids::KEY_MEMBER_ID).unwrap(), Some(7));

        // One flipped bit anywhere (in a record's header, its key, the padding, the
        // checksum) is refused as a checksum mismatch, before anything is written.
        let good = std::fs::read(&file).unwrap();
        for at in (MAGIC.len()..good.len()).step_by(7) {
            let mut bytes = good.clone();
            bytes[at] ^= 1 << (at % 8);
            std::fs::write(&file, &bytes).unwrap();
            let err = status(&file).unwrap_err().to_string();
            assert!(err.contains("checksum mismatch"), "bit flipped at byte {at} of {}: {err}", good.len());
        }
        let empty = open(EngineKind::Redb, &dir.path().join("empty")).unwrap();
        assert!(restore(&file, empty.as_ref(), &opts).is_err());
        assert_eq!(empty.last(Table::Kv).unwrap(), None);
        // Not a backup at all.
        std::fs::write(&file, vec![0u8; 100]).unwrap();
        assert!(status(&file).unwrap_err().to_string().contains("wrong magic"));
    }
}
