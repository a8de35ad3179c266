//! An append-only, segmented write-ahead log of indexed records — the Raft log's home.
//!
//! A durable append is one sequential write plus one `fdatasync` of a small file region,
//! instead of a B-tree commit that rewrites a dozen scattered pages; that is what makes a
//! single write fast.
//!
//! Files: `<dir>/<first index, 16 hex digits>.wal`. Each record is
//! `len: u32 | crc32: u32 | index: u64 | payload` (little endian; the CRC covers index and
//! payload). Indexes are contiguous.
//!
//! Segments are preallocated: created at full size and filled with zeros, so an append
//! overwrites blocks that already exist and its `fdatasync` has no file metadata to
//! commit (on ext4 a metadata commit also flushes other files' dirty data, which made
//! each sync several times slower). A background thread keeps one spare segment ready,
//! so rotating costs a rename. After the last record of a segment come zeros.
//!
//! On open, segments are read in order. A record that fails its checksum is either a torn
//! append (a crash mid-write: nothing from it on was acknowledged, since acknowledgement
//! waits for the fsync) or damage to acknowledged data. It is a torn append only in the
//! last segment, and only when no valid record follows it or the bad region holds a sector
//! that was never written (all zeros; etcd's rule, as a later page of one write can reach
//! the disk before an earlier one): then it is zeroed. Anything else is damage, and
//! opening fails with an error naming the file, the byte offset and the index, rather than
//! serving without the records after it. Truncation zeroes the cut records, so a later
//! recovery can never resurrect them.
//!
//! Appends are direct, synchronous writes (`O_DIRECT | O_DSYNC`) where the file system
//! takes them: each append rewrites the segment's last partial block (kept in memory) with
//! the new records after it, zero-padded to whole blocks — the same bytes the file holds
//! there, so a torn block still keeps every earlier record — and the write returns once it
//! is on disk. That skips the page cache and its writeback machinery: one `fdatasync` of a
//! buffered write cost 124-126 us and 49-50 us of CPU here, a direct synchronous write
//! 108-112 us and 36-38 us (docs/PERFORMANCE.md, "Direct WAL writes"). Where direct writes
//! are refused (tmpfs before Linux 6.6, some network file systems), appends are buffered
//! and synced by the caller, as before.
//!
//! The payloads of the latest records (up to [`RECENT_BYTES`]) stay in memory: Raft reads
//! each entry back right after appending it (to apply it, and to send it to followers),
//! and a direct write leaves nothing in the page cache.
//!
//! Durability: [`Wal::append`] is durable when it returns if it wrote directly; otherwise
//! [`Wal::sync_handles`] gives the files the caller must `fdatasync`. [`Wal::truncate`] and
//! [`Wal::purge`] are durable.

use crate::error::{Result, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const HEADER: usize = 16;
/// What a direct write is aligned to (offset, length and memory): a multiple of every
/// logical block size in use (512 and 4096 bytes).
const ALIGN: usize = 4096;
/// Payload bytes of the latest records kept in memory (at least the last record).
pub const RECENT_BYTES: usize = 8 << 20;

/// One aligned block of a direct write.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// Open `path` for direct, synchronous writes, if its file system allows that.
fn open_direct(path: &Path) -> Option<File> {
    use rustix::fs::OFlags;
    let flags = (OFlags::DIRECT | OFlags::DSYNC).bits() as i32;
    OpenOptions::new().write(true).custom_flags(flags).open(path).ok()
}
/// Default segment size. Smaller than etcd's 64 MiB: a purge frees whole segments, so the
/// log kept between snapshots is at most about one segment more than the entries it must
/// keep, and a fresh member preallocates 32 MiB (a segment and its spare), not 128.
pub const SEGMENT_BYTES: u64 = 16 << 20;

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("wal {what}: {e}"))
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    /// The same file opened for direct, synchronous writes (None: buffered appends).
    direct: Option<File>,
    /// The bytes of the block `len` falls in, before `len` (what a direct write rewrites;
    /// empty and unused in a buffered segment).
    tail: Vec<u8>,
    /// Bytes used by records (the rest is zero padding).
    len: u64,
    /// File size.
    capacity: u64,
}

impl Segment {
    fn new(file: File, path: &Path, direct: bool, len: u64, capacity: u64) -> Result<Segment> {
        let direct = if direct { open_direct(path) } else { None };
        // Only a direct write needs the partial block (a buffered segment stays buffered).
        let tail = if direct.is_some() { read_tail(&file, len)? } else { Vec::new() };
        Ok(Segment { file: Arc::new(file), direct, tail, len, capacity })
    }
}

/// The bytes of `file` from the start of the block `len` falls in up to `len`.
fn read_tail(file: &File, len: u64) -> Result<Vec<u8>> {
    let head = len % ALIGN as u64;
    let mut tail = vec![0u8; head as usize];
    file.read_exact_at(&mut tail, len - head).map_err(|e| io("read tail", e))?;
    Ok(tail)
}

/// Payloads of the latest records, oldest first, at most [`RECENT_BYTES`] of them (but
/// always the last one).
#[derive(Default)]
struct Recent {
    payloads: VecDeque<Arc<[u8]>>,
    bytes: usize,
}

impl Recent {
    fn len(&self) -> usize {
        self.payloads.len()
    }

    fn get(&self, i: usize) -> Option<&Arc<[u8]>> {
        self.payloads.get(i)
    }

    /// Add the next record's payload, forgetting the oldest beyond the bound.
    fn push(&mut self, payload: &[u8]) {
        self.bytes += payload.len();
        self.payloads.push_back(Arc::from(payload));
        while self.bytes > RECENT_BYTES && self.payloads.len() > 1 {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(p) = self.payloads.pop_front() {
            self.bytes -= p.len();
        }
    }

    /// Forget the newest `n` (truncated records).
    fn drop_newest(&mut self, n: usize) {
        for _ in 0..n.min(self.payloads.len()) {
            if let Some(p) = self.payloads.pop_back() {
                self.bytes -= p.len();
            }
        }
    }

    /// Keep at most the newest `n` (the rest were purged).
    fn keep_newest(&mut self, n: usize) {
        while self.payloads.len() > n {
            self.pop_oldest();
        }
    }
}

/// Where a record's payload is: in memory, or in a segment (`file`, offset, length).
pub enum Located {
    /// One of the latest records.
    Memory(Arc<[u8]>),
    /// In a segment file.
    File(Arc<File>, u64, u32),
}

const SPARE: &str = "spare.tmp";

/// Create `path` at `size` bytes of zeros, durably.
fn zero_filled(path: &Path, size: u64) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], off)?;
        off += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Overwrite `[from, to)` with zeros and sync.
fn zero_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    if to > from {
        file.write_all_at(&vec![0u8; (to - from) as usize], from)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Keeps one zero-filled spare segment ready in the background.
struct Preallocator {
    ready: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
}

impl Preallocator {
    fn start(dir: PathBuf, size: u64) -> Preallocator {
        let ready = Arc::new(AtomicBool::new(false));
        let (wake, rx) = mpsc::channel::<()>();
        let r = ready.clone();
        let spawned = std::thread::Builder::new().name("cairn-wal-prealloc".into()).spawn(move || {
            while rx.recv().is_ok() {
                match zero_filled(&dir.join(SPARE), size) {
                    Ok(_) => r.store(true, Ordering::Release),
                    Err(e) => tracing::warn!("preallocating a wal segment: {e}"),
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("no wal preallocation thread ({e}); segments will be made on demand");
        }
        let _ = wake.send(());
        Preallocator { ready, wake }
    }

    /// Claim the spare if it is ready (it is at `<dir>/spare.tmp`); after moving it away,
    /// call [`Preallocator::request`] for the next one.
    fn claim(&self) -> bool {
        self.ready.swap(false, Ordering::AcqRel)
    }

    fn request(&self) {
        let _ = self.wake.send(());
    }
}

/// The log.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Index of `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
    /// Segments by the first index they were created for.
    segments: BTreeMap<u64, Segment>,
    /// Segments written since the last `sync_handles`.
    dirty: Vec<u64>,
    prealloc: Option<Preallocator>,
    /// Whether segments are opened for direct writes (false once refused).
    direct: bool,
    /// The aligned buffer of direct writes, reused.
    blocks: Vec<Block>,
    /// Payloads of the latest records.
    recent: Recent,
}

fn name(first: u64) -> String {
    format!("{first:016x}.wal")
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn sync_dir(dir: &Path) -> Result<()> {
    crate::fsutil::sync_dir(dir).map_err(|e| io("sync dir", e))
}

impl Wal {
    /// Open (or create) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Wal> {
        crate::fsutil::create_private_dir(dir).map_err(|e| io("create dir", e))?;
        let _ = std::fs::remove_file(dir.join(SPARE));
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io("list", e))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                u64::from_str_radix(n.strip_suffix(".wal")?, 16).ok()
            })
            .collect();
        firsts.sort_unstable();
        let segment_bytes = segment_bytes.max(1);
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            first: 0,
            locs: VecDeque::new(),
            segments: BTreeMap::new(),
            dirty: Vec::new(),
            prealloc: None,
            direct: true,
            blocks: Vec::new(),
            recent: Recent::default(),
        };
        let count = firsts.len();
        for (i, seg) in firsts.into_iter().enumerate() {
            let last_segment = i + 1 == count;
            let path = dir.join(name(seg));
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io("open", e))?;
            let data = std::fs::read(&path).map_err(|e| io("read", e))?;
            let mut off = 0usize;
            while off + HEADER <= data.len() {
                let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
                let sum = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap_or_default());
                let index = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap_or_default());
                let end = off + HEADER + len;
                let expected = wal.next_index();
                let valid = end <= data.len()
                    && crc(index, &data[off + HEADER..end]) == sum
                    && expected.is_none_or(|e| e == index);
                if !valid {
                    break;
                }
                if wal.locs.is_empty() {
                    wal.first = index;
                }
                wal.locs.push_back(Loc { segment: seg, offset: off as u64, len: len as u32 });
                off = end;
            }
            if let Some(garbage) = data[off..].iter().rposition(|b| *b != 0) {
                let garbage_end = off + garbage + 1;
                let expected = wal.next_index();
                let damaged = |detail: String| {
                    StoreError::Corrupt(format!(
                        "wal file {} is damaged: the record at byte {off}{} fails its checksum{detail}. \
                         This is not a torn write from a crash, and starting would silently drop \
                         acknowledged writes; recover this member from a healthy member or a backup \
                         (docs/OPERATIONS.md#recovering-a-damaged-member)",
                        path.display(),
                        expected.map(|i| format!(" (index {i})")).unwrap_or_default(),
                    ))
                };
                if !last_segment {
                    return Err(damaged(" and later wal files follow it".into()));
                }
                match valid_record_after(&data[..garbage_end], off, expected) {
                    // A crash mid-append: what follows the last valid record was never
                    // acknowledged (its fsync had not returned); zero it.
                    None => {}
                    // Valid records after an invalid one: a torn append only if the bad
                    // region holds a sector that was never written (etcd's rule: a page
                    // of the same write may reach the disk before an earlier one).
                    Some((at, _)) if unwritten_sector(&data, off, at) => {}
                    Some((at, index)) => {
                        return Err(damaged(format!(" while a valid record (index {index}) follows at byte {at}")));
                    }
                }
                tracing::warn!(
                    segment = %path.display(),
                    from = off,
                    to = garbage_end,
                    "zeroing a torn append at the end of the wal (records never acknowledged)"
                );
                zero_range(&file, off as u64, garbage_end as u64).map_err(|e| io("zero torn tail", e))?;
            }
            let capacity = data.len() as u64;
            // Only the last segment takes appends.
            let segment = Segment::new(file, &path, last_segment, off as u64, capacity)?;
            if last_segment {
                wal.direct = segment.direct.is_some();
            }
            wal.segments.insert(seg, segment);
        }
        wal.prealloc = Some(Preallocator::start(dir.to_path_buf(), segment_bytes));
        Ok(wal)
    }

    /// The index the next append must carry (None when empty: any).
    fn next_index(&self) -> Option<u64> {
        self.last_index().map(|l| l + 1)
    }

    /// First index present.
    pub fn first_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then_some(self.first)
    }

    /// Last index present.
    pub fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    /// The segment to append `bytes` to, starting a new one (at index `next`) if the
    /// active one has no room.
    fn active(&mut self, next: u64, bytes: u64) -> Result<u64> {
        match self.segments.last_key_value() {
            Some((k, s)) if s.len + bytes <= s.capacity => Ok(*k),
            _ => {
                // The old active segment must be durable before records move on: it is
                // if every write to it was direct; it takes no more appends either way.
                if let Some(old) = self.segments.values_mut().next_back() {
                    if old.direct.take().is_none() {
                        old.file.sync_data().map_err(|e| io("sync", e))?;
                    }
                    old.tail = Vec::new();
                }
                let path = self.dir.join(name(next));
                let spare = bytes <= self.segment_bytes && self.prealloc.as_ref().is_some_and(|p| p.claim());
                let file = if spare {
                    std::fs::rename(self.dir.join(SPARE), &path).map_err(|e| io("rename spare", e))?;
                    if let Some(p) = &self.prealloc {
                        p.request();
                    }
                    OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io("open segment", e))?
                } else {
                    zero_filled(&path, self.segment_bytes.max(bytes)).map_err(|e| io("create segment", e))?
                };
                sync_dir(&self.dir)?;
                let capacity = file.metadata().map_err(|e| io("stat", e))?.len();
                let segment = Segment::new(file, &path, self.direct, 0, capacity)?;
                self.direct = segment.direct.is_some();
                self.segments.insert(next, segment);
                Ok(next)
            }
        }
    }

    /// Append records; indexes must continue the log. Durable on return if written
    /// directly; otherwise the segment is left for [`Wal::sync_handles`].
    pub fn append(&mut self, records: &[(u64, Vec<u8>)]) -> Result<()> {
        let Some((first_new, _)) = records.first() else { return Ok(()) };
        if let Some(next) = self.next_index() {
            if *first_new != next {
                return Err(StoreError::Engine(format!("wal append at {first_new}, expected {next}")));
            }
        }
        let bytes: usize = records.iter().map(|(_, p)| p.len() + HEADER).sum();
        let seg = self.active(*first_new, bytes as u64)?;
        let segment =
            self.segments.get_mut(&seg).ok_or_else(|| StoreError::Engine("active segment vanished".into()))?;
        let mut buf = Vec::with_capacity(bytes);
        let mut locs = Vec::with_capacity(records.len());
        for (i, (index, payload)) in records.iter().enumerate() {
            if *index != first_new + i as u64 {
                return Err(StoreError::Engine(format!("wal records not contiguous at {index}")));
            }
            let len = u32::try_from(payload.len()).map_err(|_| StoreError::Engine("wal record over 4 GiB".into()))?;
            locs.push(Loc { segment: seg, offset: segment.len + buf.len() as u64, len });
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc(*index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let written = match segment.direct.take() {
            Some(direct) => match write_direct(&direct, &mut self.blocks, segment, &buf) {
                Ok(()) => {
                    segment.direct = Some(direct);
                    true
                }
                // Refused (EINVAL: nothing was written): buffered from now on.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    tracing::warn!("direct wal writes refused ({e}); appending through the page cache");
                    self.direct = false;
                    false
                }
                Err(e) => {
                    segment.direct = Some(direct);
                    return Err(io("write", e));
                }
            },
            None => false,
        };
        if !written {
            // (`tail` is not kept: a segment never goes back to direct writes.)
            segment.file.write_all_at(&buf, segment.len).map_err(|e| io("write", e))?;
            if !self.dirty.contains(&seg) {
                self.dirty.push(seg);
            }
        }
        segment.len += buf.len() as u64;
        if self.locs.is_empty() {
            self.first = *first_new;
        }
        self.locs.extend(locs);
        for (_, payload) in records {
            self.recent.push(payload);
        }
        Ok(())
    }

    /// The files written since the last call; `fdatasync` them to make every append
    /// made before this call durable.
    pub fn sync_handles(&mut self) -> Vec<Arc<File>> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.iter().filter_map(|s| self.segments.get(s).map(|seg| seg.file.clone())).collect()
    }

    /// Where records `[from, to)` are, for reading without holding the log.
    pub fn locate(&self, from: u64, to: u64) -> Vec<(u64, Located)> {
        let Some(last) = self.last_index() else { return vec![] };
        let (from, to) = (from.max(self.first), to.min(last + 1));
        // Index of `recent[0]`.
        let recent_first = last + 1 - self.recent.len() as u64;
        (from..to)
            .filter_map(|i| {
                if i >= recent_first {
                    return Some((i, Located::Memory(self.recent.get((i - recent_first) as usize)?.clone())));
                }
                let loc = self.locs.get((i - self.first) as usize)?;
                let seg = self.segments.get(&loc.segment)?;
                Some((i, Located::File(seg.file.clone(), loc.offset, loc.len)))
            })
            .collect()
    }

    /// Whether appends to the active segment are direct writes.
    #[cfg(test)]
    fn writes_directly(&self) -> bool {
        self.segments.last_key_value().is_some_and(|(_, s)| s.direct.is_some())
    }

    /// Read records `[from, to)`.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        read_located(self.locate(from, to))
    }

    /// Remove every record with index `>= from`, durably.
    pub fn truncate(&mut self, from: u64) -> Result<()> {
        let Some(last) = self.last_index() else { return Ok(()) };
        if from > last {
            return Ok(());
        }
        let keep = from.saturating_sub(self.first) as usize;
        let cut = self.locs.get(keep).copied();
        self.recent.drop_newest(self.locs.len() - keep);
        self.locs.truncate(keep);
        if let Some(cut) = cut {
            let later: Vec<u64> = self.segments.range(cut.segment + 1..).map(|(k, _)| *k).collect();
            for k in later {
                self.segments.remove(&k);
                std::fs::remove_file(self.dir.join(name(k))).map_err(|e| io("remove segment", e))?;
            }
            if let Some(seg) = self.segments.get_mut(&cut.segment) {
                zero_range(&seg.file, cut.offset, seg.len).map_err(|e| io("truncate", e))?;
                seg.len = cut.offset;
                // It takes the appends now (it may have been opened as an older segment).
                if self.direct && seg.direct.is_none() {
                    seg.direct = open_direct(&self.dir.join(name(cut.segment)));
                }
                if seg.direct.is_some() {
                    seg.tail = read_tail(&seg.file, cut.offset)?;
                }
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Forget every record with index `<= upto` and delete segments holding only such
    /// records. The caller records `upto` durably first.
    pub fn purge(&mut self, upto: u64) -> Result<()> {
        while self.first_index().is_some_and(|f| f <= upto) {
            self.locs.pop_front();
            self.first += 1;
        }
        self.recent.keep_newest(self.locs.len());
        let keys: Vec<u64> = self.segments.keys().copied().collect();
        let doomed: Vec<u64> = if self.locs.is_empty() {
            // Nothing is left (a snapshot went past the end of the log): every segment holds
            // only purged records, and the next append must not land after them in a file,
            // or recovery would stop at the index jump and drop the new records.
            self.first = upto + 1;
            self.dirty.clear();
            keys
        } else {
            // A segment may go when the next one starts at or below upto + 1.
            keys.windows(2).filter(|pair| pair[1] <= upto + 1).map(|pair| pair[0]).collect()
        };
        let removed = !doomed.is_empty();
        for seg in doomed {
            self.segments.remove(&seg);
            std::fs::remove_file(self.dir.join(name(seg))).map_err(|e| io("remove segment", e))?;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// The first record that checks out at an offset after `from` in `data`: `(offset, index)`.
/// With `expected` known, only an index after it can follow a damaged record.
fn valid_record_after(data: &[u8], from: usize, expected: Option<u64>) -> Option<(usize, u64)> {
    let field = |at: usize| -> Option<[u8; 8]> { data.get(at..at + 8)?.try_into().ok() };
    (from + 1..data.len().saturating_sub(HEADER - 1)).find_map(|at| {
        let head = field(at)?;
        let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
        let sum = u32::from_le_bytes(head[4..].try_into().ok()?);
        let index = u64::from_le_bytes(field(at + 8)?);
        let end = at.checked_add(HEADER)?.checked_add(len)?;
        // A later record's index is at most one per header-sized step past `expected`.
        let plausible = match expected {
            Some(e) => index > e && index - e <= ((at - from) / HEADER + 1) as u64,
            None => index > 0,
        };
        (plausible && end <= data.len() && crc(index, &data[at + HEADER..end]) == sum).then_some((at, index))
    })
}

/// Disk sector size the torn-write rule works in.
const SECTOR: usize = 512;

/// Whether `[from, to)` of a segment shows a write that never reached the disk: the
/// record's header is all zeros, or a whole sector inside is (segments are zero-filled
/// before use, so unwritten sectors read as zeros).
fn unwritten_sector(data: &[u8], from: usize, to: usize) -> bool {
    if data.get(from..from + HEADER).is_some_and(|h| h.iter().all(|b| *b == 0)) {
        return true;
    }
    let first = from.div_ceil(SECTOR) * SECTOR;
    (first..to).step_by(SECTOR).any(|s| s + SECTOR <= to && data[s..s + SECTOR].iter().all(|b| *b == 0))
}

/// Write `buf` at `segment.len` with one direct, synchronous write: the segment's partial
/// last block, then `buf`, zero-padded to whole blocks (the file holds zeros past its
/// records). Updates `segment.tail`, not `segment.len`.
fn write_direct(direct: &File, blocks: &mut Vec<Block>, segment: &mut Segment, buf: &[u8]) -> std::io::Result<()> {
    let head = segment.tail.len();
    let end = head + buf.len();
    blocks.clear();
    blocks.resize(end.div_ceil(ALIGN), Block([0; ALIGN]));
    let bytes = blocks.as_mut_slice().as_mut_bytes();
    bytes[..head].copy_from_slice(&segment.tail);
    bytes[head..end].copy_from_slice(buf);
    direct.write_all_at(bytes, segment.len - head as u64)?;
    let last_block = end / ALIGN * ALIGN;
    segment.tail.clear();
    segment.tail.extend_from_slice(&bytes[last_block..end]);
    // A batch of several MiB does not keep its buffer.
    if blocks.len() > 256 {
        *blocks = Vec::new();
    }
    Ok(())
}

/// Read records located by [`Wal::locate`] (positional reads; no lock needed).
pub fn read_located(locs: Vec<(u64, Located)>) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::with_capacity(locs.len());
    for (index, located) in locs {
        let (file, offset, len) = match located {
            Located::Memory(payload) => {
                out.push((index, payload.to_vec()));
                continue;
            }
            Located::File(file, offset, len) => (file, offset, len),
        };
        let mut buf = vec![0u8; HEADER + len as usize];
        file.read_exact_at(&mut buf, offset).map_err(|e| io("read", e))?;
        let sum = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
        let payload = buf.split_off(HEADER);
        if crc(index, &payload) != sum {
            return Err(StoreError::Corrupt(format!("wal record {index} fails its checksum")));
        }
        out.push((index, payload));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..to).map(|i| (i, format!("record-{i}").into_bytes())).collect()
    }

    #[test]
    fn append_read_rotate_reopen() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), 4096).unwrap();
        assert_eq!(w.last_index(), None);
        for i in 0..100 {
            w.append(&recs(1 + i * 10, 11 + i * 10)).unwrap();
        }
        assert!(w.segments.len() > 1, "segments rotate");
        assert_eq!((w.first_index(), w.last_index()), (Some(1), Some(1000)));
        assert_eq!(w.read(500, 502).unwrap(), recs(500, 502));
        assert!(w.append(&recs(5, 6)).is_err(), "gaps and overlaps are refused");
        drop(w);
        let w = Wal::open(d.path(), 4096).unwrap();
        assert_eq!((w.first_index(), w.last_index()), (Some(1), Some(1000)));
        assert_eq!(w.read(1, 1001).unwrap(), recs(1, 1001));
    }

    #[test]
    fn truncate_and_purge() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), 2048).unwrap();
        for i in 0..30 {
            w.append(&recs(1 + i * 10, 11 + i * 10)).unwrap();
        }
        w.truncate(200).unwrap();
        assert_eq!(w.last_index(), Some(199));
        w.append(&recs(200, 210)).unwrap();
        let segs_before = w.segments.len();
        w.purge(150).unwrap();
        assert_eq!(w.first_index(), Some(151));
        assert!(w.segments.len() < segs_before, "purged segments are deleted");
        drop(w);
        let mut w = Wal::open(d.path(), 2048).unwrap();
        w.purge(150).unwrap();
        assert_eq!((w.first_index(), w.last_index()), (Some(151), Some(209)));
        assert_eq!(w.read(151, 210).unwrap(), recs(151, 210));
        // Purging everything leaves an empty log that accepts the next index.
        w.purge(209).unwrap();
        assert_eq!(w.last_index(), None);
        w.append(&recs(210, 211)).unwrap();
        assert_eq!(w.first_index(), Some(210));
    }

    /// Bytes used by records in the only segment of `dir`.
    fn w_len(dir: &Path) -> u64 {
        let w = Wal::open(dir, 1 << 20).unwrap();
        w.segments.values().map(|s| s.len).sum()
    }

    #[test]
    fn purging_past_the_end_then_appending_survives_a_restart() {
        // A follower installs a snapshot at 150 while its log ends at 5.
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), 1 << 20).unwrap();
        w.append(&recs(1, 6)).unwrap();
        w.purge(150).unwrap();
        w.append(&recs(151, 161)).unwrap();
        drop(w);
        let mut w = Wal::open(d.path(), 1 << 20).unwrap();
        w.purge(150).unwrap();
        assert_eq!((w.first_index(), w.last_index()), (Some(151), Some(160)));
        assert_eq!(w.read(151, 161).unwrap(), recs(151, 161));
    }

    #[test]
    fn truncated_records_never_come_back() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), 1 << 20).unwrap();
        w.append(&recs(1, 21)).unwrap();
        w.truncate(11).unwrap();
        // Shorter records at the same indexes leave the old bytes' place zeroed.
        w.append(&[(11, b"x".to_vec())]).unwrap();
        drop(w);
        let w = Wal::open(d.path(), 1 << 20).unwrap();
        assert_eq!(w.last_index(), Some(11));
        assert_eq!(w.read(11, 12).unwrap(), vec![(11, b"x".to_vec())]);
    }

    #[test]
    fn torn_tail_is_cut_and_corruption_detected() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), 1 << 20).unwrap();
        w.append(&recs(1, 11)).unwrap();
        drop(w);
        let seg = d.path().join(name(1));
        let used = w_len(d.path());
        // Half a record written by a crash after the last good one.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[9, 0, 0, 0, 1, 2], used).unwrap();
        let mut w = Wal::open(d.path(), 1 << 20).unwrap();
        assert_eq!(w.last_index(), Some(10));
        assert!(std::fs::read(&seg).unwrap()[used as usize..].iter().all(|b| *b == 0), "torn bytes zeroed");
        // Appends continue after the last good record.
        w.append(&recs(11, 12)).unwrap();
        drop(w);
        let w = Wal::open(d.path(), 1 << 20).unwrap();
        assert_eq!(w.last_index(), Some(11));
        drop(w);
        // A flipped byte inside a record with valid records after it: damage, not a torn
        // write; opening refuses, names the file and the offset, and changes nothing.
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[(used / 3) as usize] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let err = Wal::open(d.path(), 1 << 20).err().expect("a damaged wal must not open");
        let text = err.to_string();
        assert!(text.contains(&seg.display().to_string()) && text.contains("at byte"), "{text}");
        assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing repaired");
        // The same flip in the last record is indistinguishable from a torn append.
        bytes[(used / 3) as usize] ^= 0xff;
        let last_payload = (used + (HEADER + "record-11".len()) as u64) as usize - 1;
        bytes[last_payload] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        assert_eq!(Wal::open(d.path(), 1 << 20).unwrap().last_index(), Some(10));
    }

    /// Records of every size, so appends start and end anywhere within a block.
    fn sized(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        (from..to).map(|i| (i, vec![(i % 251) as u8; (i as usize * 37) % 5000])).collect()
    }

    #[test]
    fn appends_keep_every_record_across_blocks_truncation_and_reopen() {
        // Direct writes wherever the file system takes them, and buffered appends (what a
        // file system refusing direct writes gets), the same.
        appends_survive(false);
        appends_survive(true);
    }

    /// `w` with direct writes off, as after a refusal.
    fn buffered(mut w: Wal, on: bool) -> Wal {
        if on {
            w.direct = false;
            w.segments.values_mut().for_each(|s| s.direct = None);
        }
        w
    }

    fn appends_survive(force_buffered: bool) {
        let d = tempfile::tempdir().unwrap();
        let probe = d.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        let direct_ok = open_direct(&probe).is_some() && !force_buffered;
        std::fs::remove_file(&probe).unwrap();
        let open = || buffered(Wal::open(d.path(), 64 << 10).unwrap(), force_buffered);
        let mut w = open();
        for i in 1..300 {
            w.append(&sized(i, i + 1)).unwrap();
        }
        assert_eq!(w.writes_directly(), direct_ok);
        assert_eq!(w.dirty.is_empty(), direct_ok, "buffered appends leave segments to sync");
        assert!(w.segments.len() > 2, "segments rotate");
        w.truncate(250).unwrap();
        w.append(&sized(250, 260)).unwrap();
        // Reads of the latest records come from memory, older ones from the files.
        assert_eq!(w.read(1, 260).unwrap(), sized(1, 260));
        drop(w);
        let mut w = open();
        assert_eq!((w.first_index(), w.last_index()), (Some(1), Some(259)));
        assert_eq!(w.read(1, 260).unwrap(), sized(1, 260));
        // After the last record of every segment come zeros only.
        for (first, seg) in &w.segments {
            let bytes = std::fs::read(d.path().join(name(*first))).unwrap();
            assert!(bytes[seg.len as usize..].iter().all(|b| *b == 0), "zeros after the records of {first}");
        }
        // Appends go on where the reopened log ends, mid-block.
        w.append(&sized(260, 270)).unwrap();
        // Cut back into the first segment (opened as an older one): it takes the appends,
        // directly again where direct writes are on.
        w.truncate(5).unwrap();
        assert_eq!(w.segments.len(), 1);
        assert_eq!(w.writes_directly(), direct_ok);
        w.append(&sized(5, 40)).unwrap();
        drop(w);
        let w = open();
        assert_eq!(w.read(1, 40).unwrap(), sized(1, 40));
        assert_eq!(w.last_index(), Some(39));
    }

    #[test]
    fn the_latest_records_are_kept_in_memory_within_a_bound() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), 4 << 20).unwrap();
        let big =
            |from: u64, to: u64| -> Vec<(u64, Vec<u8>)> { (from..to).map(|i| (i, vec![i as u8; 300 << 10])).collect() };
        for i in 1..41 {
            w.append(&big(i, i + 1)).unwrap();
        }
        assert!(w.recent.bytes <= RECENT_BYTES && w.recent.len() < 40, "bounded: {} bytes", w.recent.bytes);
        assert_eq!(w.recent.bytes, w.recent.payloads.iter().map(|p| p.len()).sum::<usize>());
        let from_memory = w.locate(1, 41).iter().filter(|(_, l)| matches!(l, Located::Memory(_))).count();
        assert_eq!(from_memory, w.recent.len());
        assert_eq!(w.read(1, 41).unwrap(), big(1, 41));
        w.truncate(35).unwrap();
        w.purge(30).unwrap();
        assert_eq!(w.recent.len(), 4);
        assert_eq!(w.read(31, 35).unwrap(), big(31, 35));
        w.purge(40).unwrap();
        assert!(w.recent.payloads.is_empty() && w.recent.bytes == 0);
    }

    #[test]
    fn a_torn_multi_sector_append_is_repaired() {
        // One append of records spanning several sectors, where a middle sector never
        // reached the disk but later ones did (never acknowledged: no fsync returned).
        let d = tempfile::tempdir().unwrap();
        let mut w = Wal::open(d.path(), 1 << 20).unwrap();
        w.append(&recs(1, 3)).unwrap();
        let big: Vec<(u64, Vec<u8>)> = (3..8).map(|i| (i, vec![i as u8 + 1; 700])).collect();
        w.append(&big).unwrap();
        drop(w);
        let seg = d.path().join(name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[SECTOR..2 * SECTOR].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        let w = Wal::open(d.path(), 1 << 20).unwrap();
        let last = w.last_index().unwrap();
        assert!((2..5).contains(&last), "log ends before the unwritten sector, at {last}");
        assert_eq!(w.read(1, 3).unwrap(), recs(1, 3));
    }
}
