//! A portable dump of the replicated tables (`Kv`, `Meta` and `Lease`), used for Raft snapshots:
//! a sequence of `(table id: u8, key len: u32, key, value len: u32, value)` records.

use crate::engine::{Engine, ReadView, Table, WriteBatch};
use crate::error::{Result, StoreError};
use std::io::{Read, Write};

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

/// Replace the snapshot tables with the records read from `input`, plus `extra`, in
/// one atomic, durable batch.
pub fn load(engine: &dyn Engine, input: &mut dyn Read, extra: WriteBatch) -> Result<u64> {
    let mut batch = WriteBatch::new();
    for t in SNAPSHOT_TABLES {
        batch.delete_range(t, Vec::new(), None);
    }
    let mut n = 0u64;
    while let Some((table, k, v)) = read_record(input)? {
        batch.put(table, k, v);
        n += 1;
    }
    batch.extend(extra);
    engine.write(batch, true)?;
    Ok(n)
}
