//! Backup files: what `Maintenance.Snapshot` streams and `cairnctl snapshot save` writes,
//! `snapshot status` inspects and `snapshot restore` loads into a new data directory.
//!
//! The format is etcd's: an etcd backend database (bbolt; the layout is in
//! [`crate::etcd_db`]) followed by the SHA-256 of it — byte for byte what etcd streams, so
//! `etcdctl snapshot save`, `etcdutl snapshot status/restore` and every etcd backup tool
//! read Cairn's backups, and Cairn restores etcd's. `status` and `restore` also read a bare
//! etcd database (a member's `member/snap/db`, no checksum: restore wants
//! `skip_hash_check`, as etcdutl) and Cairn's earlier format ([`BackupFormat::CairnV1`]:
//! the magic `CAIRNBK1`, the records of [`crate::snapshot::dump`], zero padding to 512
//! bytes, a SHA-256). A file whose checksum does not match is refused as a whole, before
//! anything is written. Restoring keeps the key history, the revisions, the leases and the
//! users and roles, and drops what belonged to the old cluster (its membership, Raft
//! position, member attributes and alarms): the restored members form a new cluster.

use crate::bbolt::Reader;
use crate::engine::{Engine, ReadView, Table, WriteBatch};
use crate::error::{Result, StoreError};
use crate::mvcc::{META_AUTH_PREFIX, META_COMPACT_REV, META_CURRENT_REV};
use crate::snapshot::HashReader;
use crate::{etcd_db, ids, snapshot, Revision};
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The first bytes of a backup in Cairn's earlier format.
pub const MAGIC: &[u8; 8] = b"CAIRNBK1";
const TRAILER: u64 = 32;
/// Cairn's earlier format pads its records to a multiple of this many bytes, and etcd's
/// tools recognise a database with a checksum by this size rule (pages are multiples of it).
const SECTOR: u64 = 512;
/// Records written per batch while restoring.
const RESTORE_BATCH: usize = 10_000;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("backup i/o: {e}"))
}

/// Which kind of file a backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFormat {
    /// An etcd backend database (what Cairn and etcd write today).
    Etcd,
    /// Cairn's format before it wrote etcd's (`CAIRNBK1`).
    CairnV1,
}

/// What a backup file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// The file's format.
    pub format: BackupFormat,
    /// For etcd's format, the hash `etcdutl snapshot status` prints (CRC-32C over every
    /// bucket); for `CairnV1`, the HashKV of the store at its revision.
    pub hash: u32,
    /// The store revision (etcd's format: the newest revision in the `key` bucket, as etcdutl).
    pub revision: i64,
    /// Entries in the file (etcd's format: in every bucket, as etcdutl counts them).
    pub total_keys: u64,
    /// Bytes: the database's pages in use (etcd's format, as etcdutl) or the file size.
    pub total_size: u64,
    /// The SHA-256 stored at the end of the file (verified); `None` for a bare database.
    pub sha256: Option<[u8; 32]>,
}

/// Write a backup of what `view` sees to `file` (from its start, in etcd's format: the
/// database, then its SHA-256), with `position` (the applied Raft index and term) as etcd's
/// consistent index and term; returns the bytes written.
pub fn write(view: &dyn ReadView, file: &mut std::fs::File, position: Option<(u64, u64)>) -> Result<u64> {
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let (out, size) = etcd_db::export(view, std::io::BufWriter::new(&mut *file), position)?;
    out.into_inner().map_err(|e| io(e.into_error()))?;
    // The pages were not written in order (the metas come last): hash them as they lie.
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let digest = sha256_of(&mut *file, size)?;
    file.seek(SeekFrom::Start(size)).map_err(io)?;
    file.write_all(&digest).map_err(io)?;
    file.set_len(size + TRAILER).map_err(io)?;
    Ok(size + TRAILER)
}

fn sha256_of(r: &mut dyn Read, len: u64) -> Result<[u8; 32]> {
    let mut sha = Sha256::new();
    let mut r = r.take(len);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.finalize().into())
}

fn not_a_backup(path: &Path, why: &str) -> StoreError {
    StoreError::Corrupt(format!("{}: not a usable snapshot file: {why}", path.display()))
}

/// The format of the file at `path`, by its first bytes.
fn format_of(path: &Path) -> Result<BackupFormat> {
    let mut f = std::fs::File::open(path).map_err(|e| StoreError::Engine(format!("{}: {e}", path.display())))?;
    let mut magic = [0u8; 8];
    Ok(match f.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => BackupFormat::CairnV1,
        _ => BackupFormat::Etcd,
    })
}

/// Check the SHA-256 after an etcd database, if the size says there is one (etcd's rule:
/// pages are multiples of 512 bytes, so 32 more bytes are the checksum).
fn verify_trailer(path: &Path) -> Result<Option<[u8; 32]>> {
    let mut f = std::fs::File::open(path).map_err(|e| StoreError::Engine(format!("{}: {e}", path.display())))?;
    let len = f.metadata().map_err(io)?.len();
    match len % SECTOR {
        0 => return Ok(None),
        32 => {}
        _ => {
            return Err(not_a_backup(
                path,
                "its size is neither whole pages nor whole pages and a checksum (cut short?)",
            ))
        }
    }
    let digest = sha256_of(&mut f, len - TRAILER)?;
    let mut stored = [0u8; 32];
    f.read_exact(&mut stored).map_err(io)?;
    if digest != stored {
        return Err(not_a_backup(path, "checksum mismatch (the file is damaged or incomplete)"));
    }
    Ok(Some(stored))
}

fn etcd_status(path: &Path) -> Result<BackupStatus> {
    let sha256 = verify_trailer(path)?;
    let reader = Reader::open(path).map_err(|e| not_a_backup(path, &e.to_string()))?;
    let st = etcd_db::status(&reader).map_err(|e| not_a_backup(path, &e.to_string()))?;
    Ok(BackupStatus {
        format: BackupFormat::Etcd,
        hash: st.hash,
        revision: st.revision,
        total_keys: st.total_keys,
        total_size: st.total_size,
        sha256,
    })
}

/// Read every record of a `CairnV1` backup at `path`, verifying its checksum; `each` sees
/// every record before the checksum is known, so it must not commit anything. Damage
/// anywhere is reported as a checksum mismatch, also where it stops the parse. Returns the
/// status and the compacted revision.
fn scan_v1(path: &Path, each: &mut dyn FnMut(Table, Vec<u8>, Vec<u8>) -> Result<()>) -> Result<(BackupStatus, i64)> {
    let f = std::fs::File::open(path).map_err(|e| StoreError::Engine(format!("{}: {e}", path.display())))?;
    let total_size = f.metadata().map_err(io)?.len();
    if total_size < MAGIC.len() as u64 + TRAILER {
        return Err(not_a_backup(path, "too short"));
    }
    let mut r = HashReader { inner: BufReader::new(f).take(total_size - TRAILER), sha: Sha256::new() };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(not_a_backup(path, "wrong magic"));
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
    let status = BackupStatus {
        format: BackupFormat::CairnV1,
        hash: hash.finalize(),
        revision: revision.max(compact_revision).max(1),
        total_keys,
        total_size,
        sha256: Some(stored),
    };
    Ok((status, compact_revision))
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
    match format_of(path)? {
        BackupFormat::Etcd => etcd_status(path),
        BackupFormat::CairnV1 => Ok(scan_v1(path, &mut |_, _, _| Ok(()))?.0),
    }
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
    /// Accept an etcd database without a checksum (copied from a member's data dir).
    pub skip_hash_check: bool,
}

/// Verify the backup at `path`, then load it into the empty `engine` as the state of a
/// member of a new cluster (see the module doc); returns the restored store revision.
pub fn restore(path: &Path, engine: &dyn Engine, opts: &RestoreOptions) -> Result<i64> {
    let status = status(path)?;
    let mut batch = WriteBatch::new();
    let mut put = |table: Table, k: Vec<u8>, v: Vec<u8>| {
        batch.put(table, k, v);
        if batch.len() >= RESTORE_BATCH {
            engine.write(std::mem::take(&mut batch), false)?;
        }
        Ok(())
    };
    let revision = match status.format {
        BackupFormat::Etcd => {
            if status.sha256.is_none() && !opts.skip_hash_check {
                // etcdutl's words, for the same case.
                return Err(not_a_backup(path, "snapshot missing hash but --skip-hash-check=false"));
            }
            let reader = Reader::open(path)?;
            etcd_db::import(&reader, &mut put)?.revision
        }
        BackupFormat::CairnV1 => {
            scan_v1(path, &mut |table, k, v| {
                let keep = table != Table::Meta
                    || k == META_COMPACT_REV
                    || k == META_CURRENT_REV
                    || k.starts_with(META_AUTH_PREFIX);
                if keep {
                    put(table, k, v)?;
                }
                Ok(())
            })?
            .0
            .revision
        }
    };
    let revision = revision.max(1) + opts.bump_revision.max(0);
    batch.put(Table::Meta, META_CURRENT_REV, revision.to_be_bytes().to_vec());
    if opts.mark_compacted {
        batch.put(Table::Meta, META_COMPACT_REV, revision.to_be_bytes().to_vec());
    }
    ids::store_id(&mut batch, ids::KEY_CLUSTER_ID, opts.cluster_id);
    ids::store_id(&mut batch, ids::KEY_MEMBER_ID, opts.member_id);
    engine.write(batch, true)?;
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{open, EngineKind};
    use crate::Mvcc;
    use cairn_api::cairnpb::{AuthUser, LeaseRecord};
    use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest};
    use prost::Message;
    use std::sync::Arc;

    fn put(m: &mut Mvcc, k: &str, v: &str, lease: i64) {
        m.put(&PutRequest { key: k.into(), value: v.into(), lease, ..Default::default() }, &|_| true).unwrap();
        m.commit(WriteBatch::new(), true).unwrap();
    }

    /// A store with history, tombstones, a compaction, a lease and a user.
    fn source(dir: &Path) -> (Arc<dyn Engine>, Mvcc) {
        let src = open(EngineKind::Redb, &dir.join("src")).unwrap();
        let mut m = Mvcc::open(src.clone()).unwrap();
        for i in 0..50 {
            put(&mut m, &format!("k{}", i % 7), &format!("v{i}"), 0);
        }
        m.delete_range(&DeleteRangeRequest { key: b"k3".to_vec(), ..Default::default() }).unwrap();
        m.commit(WriteBatch::new(), true).unwrap();
        m.compact(20).unwrap();
        m.commit(WriteBatch::new(), true).unwrap();
        put(&mut m, "leased", "x", 0x1234);
        m.delete_range(&DeleteRangeRequest { key: b"k5".to_vec(), ..Default::default() }).unwrap();
        let mut extra = WriteBatch::new();
        extra.put(
            Table::Lease,
            0x1234i64.to_be_bytes().to_vec(),
            LeaseRecord { id: 0x1234, ttl: 60, remaining_ttl: 0 }.encode_to_vec(),
        );
        let user = AuthUser {
            name: "ann".into(),
            password_hash: "$2a$10$abc".into(),
            roles: vec!["r".into()],
            no_password: false,
        };
        extra.put(Table::Meta, [crate::mvcc::META_AUTH_USER_PREFIX, b"ann"].concat(), user.encode_to_vec());
        extra.put(Table::Meta, crate::mvcc::META_AUTH_ENABLED, vec![1]);
        extra.put(Table::Meta, crate::mvcc::META_AUTH_REVISION, 9u64.to_be_bytes().to_vec());
        extra.put(Table::Meta, b"applied".to_vec(), b"the old cluster's".to_vec());
        m.commit(extra, true).unwrap();
        (src, m)
    }

    fn table(e: &dyn Engine, t: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        e.scan(t, &[], None, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn etcd_format_round_trip_bump_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (src, m) = source(dir.path());
        let file = dir.path().join("backup.db");
        let mut out = std::fs::File::create_new(&file).unwrap();
        let view = src.frozen_view().unwrap().unwrap();
        let written = write(view.as_ref(), &mut out, Some((42, 7))).unwrap();
        drop(out);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), written);
        // etcd's Raft position in `meta`, as etcd writes it (big-endian u64s).
        let r = Reader::open(&file).unwrap();
        let mut meta = Vec::new();
        r.for_each(&r.bucket(b"meta").unwrap().unwrap(), &mut |k, v| {
            meta.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert!(meta.contains(&(b"consistent_index".to_vec(), 42u64.to_be_bytes().to_vec())), "{meta:?}");
        assert!(meta.contains(&(b"term".to_vec(), 7u64.to_be_bytes().to_vec())), "{meta:?}");
        assert_eq!(written % 4096, 32, "etcd's shape: pages plus a SHA-256");
        let st = status(&file).unwrap();
        assert_eq!(st.format, BackupFormat::Etcd);
        assert_eq!(st.total_size, written - 32, "the database's pages, as etcdutl counts");
        assert_eq!(st.revision, m.current_revision());
        assert!(st.sha256.is_some());

        let dst = open(EngineKind::Redb, &dir.path().join("dst")).unwrap();
        let opts = RestoreOptions { member_id: 7, cluster_id: 9, ..Default::default() };
        assert_eq!(restore(&file, dst.as_ref(), &opts).unwrap(), m.current_revision());
        // The same records: history, tombstones, leases; auth kept, the old cluster's meta not.
        for t in [Table::Kv, Table::Lease] {
            assert_eq!(table(dst.as_ref(), t), table(src.as_ref(), t), "{t:?}");
        }
        let restored = Mvcc::open(dst.clone()).unwrap();
        assert_eq!(restored.compact_revision(), 20);
        assert_eq!(restored.key_count(), m.key_count());
        assert_eq!(dst.get(Table::Meta, crate::mvcc::META_AUTH_ENABLED).unwrap(), Some(vec![1]));
        let ann = dst.get(Table::Meta, &[crate::mvcc::META_AUTH_USER_PREFIX, b"ann"].concat()).unwrap().unwrap();
        assert_eq!(AuthUser::decode(ann.as_slice()).unwrap().password_hash, "$2a$10$abc");
        assert_eq!(dst.get(Table::Meta, b"applied").unwrap(), None);
        assert_eq!(ids::load_id(dst.as_ref(), ids::KEY_MEMBER_ID).unwrap(), Some(7));

        let bumped = open(EngineKind::Redb, &dir.path().join("bumped")).unwrap();
        let opts = RestoreOptions { bump_revision: 1000, mark_compacted: true, ..opts };
        restore(&file, bumped.as_ref(), &opts).unwrap();
        let b = Mvcc::open(bumped).unwrap();
        assert_eq!(
            (b.current_revision(), b.compact_revision()),
            (m.current_revision() + 1000, m.current_revision() + 1000)
        );

        // A bare database (no checksum) needs skip_hash_check, as with etcdutl.
        let good = std::fs::read(&file).unwrap();
        let bare = dir.path().join("bare.db");
        std::fs::write(&bare, &good[..good.len() - 32]).unwrap();
        assert_eq!(status(&bare).unwrap().sha256, None);
        let e = open(EngineKind::Redb, &dir.path().join("bare")).unwrap();
        let err = restore(&bare, e.as_ref(), &opts).unwrap_err().to_string();
        assert!(err.contains("--skip-hash-check"), "{err}");
        restore(&bare, e.as_ref(), &RestoreOptions { skip_hash_check: true, ..opts.clone() }).unwrap();

        // One flipped bit anywhere is refused as a checksum mismatch, before anything is
        // written; a cut-short file is refused by its size.
        for at in (0..good.len()).step_by(good.len() / 50) {
            let mut bytes = good.clone();
            bytes[at] ^= 1 << (at % 8);
            std::fs::write(&file, &bytes).unwrap();
            let err = status(&file).unwrap_err().to_string();
            assert!(err.contains("checksum mismatch"), "bit flipped at byte {at} of {}: {err}", good.len());
        }
        let empty = open(EngineKind::Redb, &dir.path().join("empty")).unwrap();
        assert!(restore(&file, empty.as_ref(), &opts).is_err());
        assert_eq!(empty.last(Table::Kv).unwrap(), None);
        std::fs::write(&file, &good[..good.len() - 100]).unwrap();
        assert!(status(&file).unwrap_err().to_string().contains("cut short"));
        std::fs::write(&file, vec![0u8; 8192]).unwrap();
        assert!(status(&file).unwrap_err().to_string().contains("no valid meta page"));
    }

    /// Cairn's earlier format, as it was written.
    fn write_v1(view: &dyn ReadView, out: &mut dyn Write) -> u64 {
        let mut w = crate::snapshot::HashWriter::new(out);
        w.write_all(MAGIC).unwrap();
        snapshot::dump(view, &mut w).unwrap();
        let pad = (SECTOR - (w.n + 1) % SECTOR) % SECTOR;
        w.write_all(&[0u8]).unwrap();
        w.write_all(&vec![0u8; pad as usize]).unwrap();
        let n = w.n;
        let digest = w.sha.finalize();
        w.out.write_all(&digest).unwrap();
        n + TRAILER
    }

    #[test]
    fn earlier_cairn_backups_still_restore() {
        let dir = tempfile::tempdir().unwrap();
        let (src, m) = source(dir.path());
        let file = dir.path().join("v1.db");
        let view = src.frozen_view().unwrap().unwrap();
        let written = write_v1(view.as_ref(), &mut std::fs::File::create(&file).unwrap());
        let st = status(&file).unwrap();
        assert_eq!((st.format, st.total_size, st.revision), (BackupFormat::CairnV1, written, m.current_revision()));
        let dst = open(EngineKind::Redb, &dir.path().join("dst")).unwrap();
        restore(&file, dst.as_ref(), &RestoreOptions::default()).unwrap();
        assert_eq!(table(dst.as_ref(), Table::Kv), table(src.as_ref(), Table::Kv));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert!(status(&file).unwrap_err().to_string().contains("checksum mismatch"));
    }
}
