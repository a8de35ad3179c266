//! A portable dump of the replicated tables (`Kv`, `Meta` and `Lease`), used for Raft snapshots:
//! a sequence of `(table id: u8, key len: u32, key, value len: u32, value)` records.
//!
//! A Raft snapshot file ([`write`]) ends the records with a zero byte, the record
//! count (u64, big endian) and the SHA-256 of everything before it; [`load`]
//! refuses a file that is cut short, damaged or has anything after its checksum, before
//! writing anything. Backup files ([`crate::backup`]) frame the same records their own way.

use crate::engine::{Engine, ReadView, Table, WriteBatch};
use crate::error::{Result, StoreError};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// A writer that hashes what it passes on and counts it.
pub(crate) struct HashWriter<'a> {
    pub out: &'a mut dyn Write,
    pub sha: Sha256,
    pub n: u64,
}

impl<'a> HashWriter<'a> {
    pub fn new(out: &'a mut dyn Write) -> Self {
        HashWriter { out, sha: Sha256::new(), n: 0 }
    }
}

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A reader that hashes what it reads.
pub(crate) struct HashReader<R> {
    pub inner: R,
    pub sha: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// The tables a snapshot carries: the state machine's, not Raft's own.
pub const SNAPSHOT_TABLES: [Table; 3] = [Table::Kv, Table::Meta, Table::Lease];

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("snapshot i/o: {e}"))
}

/// Write every record of the snapshot tables seen by `view` to `out`; returns the number
/// of records.
pub fn dump(view: &dyn ReadView, out: &mut dyn Write) -> Result<u64> {
    let mut n = 0u64;
    for t in SNAPSHOT_TABLES {
        view.scan(t, &[], None, &mut |k, v| {
            out.write_all(&[t.id()]).map_err(io)?;
            out.write_all(&(k.len() as u32).to_be_bytes()).map_err(io)?;
            out.write_all(k).map_err(io)?;
            out.write_all(&(v.len() as u32).to_be_bytes()).map_err(io)?;
            out.write_all(v).map_err(io)?;
            n += 1;
            Ok(true)
        })?;
    }
    Ok(n)
}

fn read_chunk(input: &mut dyn Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    // Read through `take` so a corrupt length cannot make us allocate gigabytes up front.
    let mut buf = Vec::with_capacity(len.min(1 << 20));
    input.take(len as u64).read_to_end(&mut buf).map_err(io)?;
    if buf.len() != len {
        return Err(StoreError::Corrupt("snapshot record cut short".into()));
    }
    Ok(buf)
}

/// One record: its table, key and value.
pub type Record = (Table, Vec<u8>, Vec<u8>);

/// Read the next record written by [`dump`]: `None` at the end of the input or at a zero
/// byte (which no table id is: backup files end their records with one).
pub fn read_record(input: &mut dyn Read) -> Result<Option<Record>> {
    let mut id = [0u8; 1];
    if input.read(&mut id).map_err(io)? == 0 || id[0] == 0 {
        return Ok(None);
    }
    let table = SNAPSHOT_TABLES
        .into_iter()
        .find(|t| t.id() == id[0])
        .ok_or_else(|| StoreError::Corrupt(format!("snapshot table id {}", id[0])))?;
    let k = read_chunk(input)?;
    let v = read_chunk(input)?;
    Ok(Some((table, k, v)))
}

/// Write a Raft snapshot file of what `view` sees: the records, a zero byte, the record
/// count and the SHA-256 of all of it. Returns the number of records.
pub fn write(view: &dyn ReadView, out: &mut dyn Write) -> Result<u64> {
    let mut w = HashWriter::new(out);
    let n = dump(view, &mut w)?;
    w.write_all(&[0u8]).map_err(io)?;
    w.write_all(&n.to_be_bytes()).map_err(io)?;
    let digest = w.sha.finalize();
    out.write_all(&digest).map_err(io)?;
    Ok(n)
}

/// Replace the snapshot tables with the records of a file written by [`write`], plus
/// `extra`, in one atomic, durable batch, once its checksum and record count check out.
pub fn load(engine: &dyn Engine, input: &mut dyn Read, extra: WriteBatch) -> Result<u64> {
    let (batch, n) = read(input, extra)?;
    engine.write(batch, true)?;
    Ok(n)
}

/// Read and verify a file written by [`write`]: the batch that replaces the snapshot
/// tables with its records (plus `extra`), and the number of records.
pub fn read(input: &mut dyn Read, extra: WriteBatch) -> Result<(WriteBatch, u64)> {
    let damaged = |why: &str| StoreError::Corrupt(format!("raft snapshot refused: {why}"));
    let mut r = HashReader { inner: input, sha: Sha256::new() };
    let mut batch = WriteBatch::new();
    for t in SNAPSHOT_TABLES {
        batch.delete_range(t, Vec::new(), None);
    }
    let mut n = 0u64;
    loop {
        match read_record(&mut r) {
            Ok(Some((table, k, v))) => batch.put(table, k, v),
            Ok(None) => break,
            Err(_) => return Err(damaged("cut short or damaged")),
        }
        n += 1;
    }
    let mut count = [0u8; 8];
    r.read_exact(&mut count).map_err(|_| damaged("cut short before its record count"))?;
    let digest = r.sha.finalize();
    let mut stored = [0u8; 32];
    r.inner.read_exact(&mut stored).map_err(|_| damaged("cut short before its checksum"))?;
    if digest[..] != stored[..] {
        return Err(damaged("checksum mismatch"));
    }
    if u64::from_be_bytes(count) != n {
        return Err(damaged("record count mismatch"));
    }
    if r.inner.read(&mut [0u8; 1]).map_err(io)? != 0 {
        return Err(damaged("bytes after the checksum"));
    }
    batch.extend(extra);
    Ok((batch, n))
}
