//! bbolt's file format — etcd's backend database — written and read without bbolt.
//!
//! [`Writer`] builds a compact database from buckets whose entries arrive in key order:
//! leaves are written as they fill, branch levels once a bucket ends, then the root
//! bucket, an empty freelist (page 2) and the two meta pages (pages 0 and 1). Every page
//! below the high-water mark is reachable, so `bbolt check` (which `etcdutl snapshot
//! status` runs) finds nothing to report. [`Reader`] walks the buckets of any bbolt file
//! (branch and leaf pages, overflow pages, inline buckets) with bounds checks on every
//! offset: a damaged file is an error, never a panic or a silent partial read.
//!
//! Layout facts (bbolt's `internal/common`): little-endian integers; a page starts with
//! `id u64, flags u16, count u16, overflow u32`; a leaf element is `flags u32, pos u32,
//! ksize u32, vsize u32` and a branch element `pos u32, ksize u32, pgid u64`, `pos`
//! counted from the element itself; a bucket value is `root u64, sequence u64`, followed
//! by an inline page when `root` is 0; the meta is `magic, version, page size, flags,
//! root bucket, freelist, high-water mark, txid` and an FNV-1a 64 checksum of those.

use crate::error::{Result, StoreError};
use std::collections::HashSet;
use std::hash::Hasher;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The page size of the databases [`Writer`] makes (etcd's on x86-64 and arm64 Linux).
pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// A leaf element whose value is a bucket.
const BUCKET_LEAF: u32 = 0x01;
/// Bytes of the meta covered by its checksum.
const META_SUMMED: usize = 56;
/// Deeper than any real tree (a 4 KiB-page tree of depth 16 holds more than 2^64 keys).
const MAX_DEPTH: usize = 16;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("bbolt file: {e}"))
}

fn damaged(why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("not a valid bbolt database: {why}"))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn page_header(id: u64, flags: u16, count: u16, overflow: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8..10].copy_from_slice(&flags.to_le_bytes());
    h[10..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&overflow.to_le_bytes());
    h
}

fn meta_checksum(meta: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(&meta[..META_SUMMED]);
    h.finish()
}

/// A bucket's value in its parent: its root page and sequence (always 0 here).
fn bucket_value(root: u64) -> Vec<u8> {
    let mut v = root.to_le_bytes().to_vec();
    v.extend_from_slice(&0u64.to_le_bytes());
    v
}

/// Builds a bbolt database into `out`; see the module doc.
pub struct Writer<W: Write + Seek> {
    out: W,
    /// The next free page id.
    next: u64,
    /// Finished buckets: (name, root page).
    buckets: Vec<(Vec<u8>, u64)>,
}

/// One bucket's B+tree under construction: entries must come in strictly ascending key order.
struct Tree {
    flags: u32,
    leaf: Vec<(Vec<u8>, Vec<u8>)>,
    leaf_bytes: usize,
    /// (first key, page) of every leaf written so far.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl<W: Write + Seek> Writer<W> {
    /// Start a database at the beginning of `out`.
    pub fn new(mut out: W) -> Result<Self> {
        // Pages 0 and 1 (meta) and 2 (freelist) are written by `finish`.
        out.seek(SeekFrom::Start(3 * PAGE_SIZE as u64)).map_err(io)?;
        Ok(Writer { out, next: 3, buckets: Vec::new() })
    }

    /// Write a bucket named `name` with the entries `fill` gives to `put`, which must come
    /// in strictly ascending key order.
    pub fn bucket(&mut self, name: &[u8], fill: impl FnOnce(&mut EntryFn<'_>) -> Result<()>) -> Result<()> {
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(StoreError::Engine(format!(
                "bbolt writer: bucket {:?} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        let mut tree = Tree::new(0);
        fill(&mut |k, v| self.push(&mut tree, k, v))?;
        let root = self.finish_tree(tree)?;
        self.buckets.push((name.to_vec(), root));
        Ok(())
    }

    fn push(&mut self, t: &mut Tree, k: &[u8], v: &[u8]) -> Result<()> {
        if k.is_empty() || t.last.as_deref().is_some_and(|last| last >= k) {
            return Err(StoreError::Engine("bbolt writer: keys must be non-empty and strictly ascending".into()));
        }
        let size = ELEMENT + k.len() + v.len();
        if !t.leaf.is_empty() && HEADER + t.leaf_bytes + size > PAGE_SIZE {
            self.flush_leaf(t)?;
        }
        t.leaf.push((k.to_vec(), v.to_vec()));
        t.leaf_bytes += size;
        t.last = Some(k.to_vec());
        Ok(())
    }

    fn flush_leaf(&mut self, t: &mut Tree) -> Result<()> {
        let entries = std::mem::take(&mut t.leaf);
        t.leaf_bytes = 0;
        let first = entries.first().map(|(k, _)| k.clone()).unwrap_or_default();
        let id =
            self.write_page(LEAF_PAGE, t.flags, entries.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()), 0)))?;
        t.leaves.push((first, id));
        Ok(())
    }

    /// Write the last leaf and the branch levels above the leaves; returns the root page.
    fn finish_tree(&mut self, mut t: Tree) -> Result<u64> {
        if !t.leaf.is_empty() || t.leaves.is_empty() {
            self.flush_leaf(&mut t)?;
        }
        let mut level = t.leaves;
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut page: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut bytes = HEADER;
            for (k, id) in level {
                let size = ELEMENT + k.len();
                if !page.is_empty() && bytes + size > PAGE_SIZE {
                    up.push(self.branch(&std::mem::take(&mut page))?);
                    bytes = HEADER;
                }
                bytes += size;
                page.push((k, id));
            }
            up.push(self.branch(&page)?);
            level = up;
        }
        level.first().map(|(_, id)| *id).ok_or_else(|| StoreError::Engine("bbolt writer: empty tree".into()))
    }

    fn branch(&mut self, children: &[(Vec<u8>, u64)]) -> Result<(Vec<u8>, u64)> {
        let first = children.first().map(|(k, _)| k.clone()).unwrap_or_default();
        let id = self.write_page(BRANCH_PAGE, 0, children.iter().map(|(k, id)| (k.as_slice(), None, *id)))?;
        Ok((first, id))
    }

    /// Write one page (with its overflow pages): leaf entries carry a value, branch entries
    /// a child page. Returns its id.
    fn write_page<'a>(
        &mut self,
        flags: u16,
        element_flags: u32,
        entries: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>, u64)> + Clone,
    ) -> Result<u64> {
        let count = entries.clone().count();
        let count16 = u16::try_from(count).map_err(|_| StoreError::Engine("bbolt writer: page too full".into()))?;
        let mut elements = Vec::with_capacity(count * ELEMENT);
        let mut data = Vec::new();
        for (i, (k, v, child)) in entries.enumerate() {
            // `pos` counts from this element to its key.
            let pos = (count - i) * ELEMENT + data.len();
            let pos = u32::try_from(pos).map_err(|_| StoreError::Engine("bbolt writer: entry too large".into()))?;
            let ksize = u32::try_from(k.len()).map_err(|_| StoreError::Engine("bbolt writer: key too large".into()))?;
            match v {
                Some(v) => {
                    let vsize = u32::try_from(v.len())
                        .map_err(|_| StoreError::Engine("bbolt writer: value too large".into()))?;
                    elements.extend_from_slice(&element_flags.to_le_bytes());
                    elements.extend_from_slice(&pos.to_le_bytes());
                    elements.extend_from_slice(&ksize.to_le_bytes());
                    elements.extend_from_slice(&vsize.to_le_bytes());
                    data.extend_from_slice(k);
                    data.extend_from_slice(v);
                }
                None => {
                    elements.extend_from_slice(&pos.to_le_bytes());
                    elements.extend_from_slice(&ksize.to_le_bytes());
                    elements.extend_from_slice(&child.to_le_bytes());
                    data.extend_from_slice(k);
                }
            }
        }
        let used = HEADER + elements.len() + data.len();
        let pages = used.div_ceil(PAGE_SIZE).max(1);
        let overflow =
            u32::try_from(pages - 1).map_err(|_| StoreError::Engine("bbolt writer: entry too large".into()))?;
        let id = self.next;
        self.out.write_all(&page_header(id, flags, count16, overflow)).map_err(io)?;
        self.out.write_all(&elements).map_err(io)?;
        self.out.write_all(&data).map_err(io)?;
        self.out.write_all(&vec![0u8; pages * PAGE_SIZE - used]).map_err(io)?;
        self.next += pages as u64;
        Ok(id)
    }

    /// Write the root bucket, the freelist and the meta pages; returns `out`, positioned at
    /// the end of the database, and the database's size in bytes.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut tree = Tree::new(BUCKET_LEAF);
        for (name, root) in &buckets {
            self.push(&mut tree, name, &bucket_value(*root))?;
        }
        let root = self.finish_tree(tree)?;
        let end = self.next * PAGE_SIZE as u64;
        self.out.seek(SeekFrom::Start(0)).map_err(io)?;
        for txid in 0..2u64 {
            let mut page = vec![0u8; PAGE_SIZE];
            page[..HEADER].copy_from_slice(&page_header(txid, META_PAGE, 0, 0));
            let m = &mut page[HEADER..];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            // flags (12..16) stay 0.
            m[16..24].copy_from_slice(&root.to_le_bytes());
            // root bucket sequence (24..32) stays 0.
            m[32..40].copy_from_slice(&2u64.to_le_bytes());
            m[40..48].copy_from_slice(&self.next.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = meta_checksum(m);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            self.out.write_all(&page).map_err(io)?;
        }
        let mut freelist = vec![0u8; PAGE_SIZE];
        freelist[..HEADER].copy_from_slice(&page_header(2, FREELIST_PAGE, 0, 0));
        self.out.write_all(&freelist).map_err(io)?;
        self.out.seek(SeekFrom::Start(end)).map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok((self.out, end))
    }
}

impl Tree {
    fn new(flags: u32) -> Self {
        Tree { flags, leaf: Vec::new(), leaf_bytes: 0, leaves: Vec::new(), last: None }
    }
}

/// Sees a bucket's entries: (key, value).
pub type EntryFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;
/// Sees a page's leaf elements: (element flags, key, value).
type ElementFn<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<()> + 'a;

/// A bucket found by [`Reader::buckets`]: where its tree starts.
#[derive(Debug, Clone)]
pub enum BucketRoot {
    /// A tree of its own pages.
    Page(u64),
    /// An inline bucket: its one leaf page is stored in its parent's value.
    Inline(Vec<u8>),
}

/// Reads a bbolt database file; see the module doc.
pub struct Reader {
    file: std::fs::File,
    page_size: usize,
    /// Pages in use (the meta's high-water mark).
    high_water: u64,
    root: u64,
}

impl Reader {
    /// Open the database at `path` (trailing bytes past the high-water mark, such as etcd's
    /// SHA-256 trailer, are ignored) using its newest valid meta page.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| StoreError::Engine(format!("{}: {e}", path.display())))?;
        let len = file.metadata().map_err(io)?.len();
        let meta_at = |offset: u64| -> Option<(u32, u64, u64, u64)> {
            let mut page = vec![0u8; HEADER + 64];
            file.read_exact_at(&mut page, offset).ok()?;
            let m = &page[HEADER..];
            let valid = u16_at(&page, 8)? == META_PAGE
                && u32_at(m, 0)? == MAGIC
                && u32_at(m, 4)? == VERSION
                && u64_at(m, 56)? == meta_checksum(m);
            // (page size, root, high-water mark, txid)
            valid.then_some((u32_at(m, 8)?, u64_at(m, 16)?, u64_at(m, 40)?, u64_at(m, 48)?))
        };
        let first = meta_at(0);
        // bbolt finds the second meta one page size in; if the first is damaged, try the
        // page sizes bbolt is used with.
        let second = match first {
            Some((ps, ..)) => meta_at(u64::from(ps)).filter(|m| m.0 == ps),
            None => [4096u32, 8192, 16384, 65536].iter().find_map(|ps| meta_at(u64::from(*ps)).filter(|m| m.0 == *ps)),
        };
        let best = match (first, second) {
            (Some(a), Some(b)) => Some(if b.3 > a.3 { b } else { a }),
            (a, b) => a.or(b),
        };
        let Some((page_size, root, high_water, _)) = best else {
            return Err(damaged("no valid meta page (wrong magic, version or checksum)"));
        };
        let page_size = page_size as usize;
        if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(damaged(format!("page size {page_size}")));
        }
        if high_water.checked_mul(page_size as u64).is_none_or(|need| need > len) {
            return Err(damaged(format!("{len} bytes hold fewer than the {high_water} pages the meta names")));
        }
        if root < 2 || root >= high_water {
            return Err(damaged(format!("root page {root} outside 2..{high_water}")));
        }
        Ok(Reader { file, page_size, high_water, root })
    }

    /// The database's size as bbolt reports it (`tx.Size()`): pages in use times page size.
    pub fn size(&self) -> u64 {
        self.high_water * self.page_size as u64
    }

    /// Read page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.high_water {
            return Err(damaged(format!("page {id} outside 2..{}", self.high_water)));
        }
        let mut page = vec![0u8; self.page_size];
        self.file.read_exact_at(&mut page, id * self.page_size as u64).map_err(io)?;
        let (own, overflow) = (u64_at(&page, 0).unwrap_or(u64::MAX), u32_at(&page, 12).unwrap_or(0));
        if own != id {
            return Err(damaged(format!("page {id} says it is page {own}")));
        }
        if overflow > 0 {
            let last = id + u64::from(overflow);
            if last >= self.high_water {
                return Err(damaged(format!("page {id} overflows past the last page")));
            }
            page.resize(self.page_size * (1 + overflow as usize), 0);
            self.file.read_exact_at(&mut page[self.page_size..], (id + 1) * self.page_size as u64).map_err(io)?;
        }
        Ok(page)
    }

    /// The top-level buckets, in key order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRoot)>> {
        let mut out = Vec::new();
        self.walk(&BucketRoot::Page(self.root), &mut |flags, k, v| {
            if flags & BUCKET_LEAF == 0 {
                return Err(damaged(format!("a plain value {:?} at the top level", String::from_utf8_lossy(k))));
            }
            let root = u64_at(v, 0).ok_or_else(|| damaged("short bucket value"))?;
            let b = if root == 0 { BucketRoot::Inline(v[16.min(v.len())..].to_vec()) } else { BucketRoot::Page(root) };
            out.push((k.to_vec(), b));
            Ok(())
        })?;
        Ok(out)
    }

    /// The top-level bucket named `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRoot>> {
        Ok(self.buckets()?.into_iter().find(|(n, _)| n == name).map(|(_, b)| b))
    }

    /// Visit the key/value pairs of a bucket in key order (nested buckets are skipped; etcd
    /// has none). Keys out of order, pages out of range, pages referenced twice and
    /// elements outside their page are reported as damage.
    pub fn for_each(&self, bucket: &BucketRoot, f: &mut EntryFn<'_>) -> Result<()> {
        self.walk(bucket, &mut |flags, k, v| if flags & BUCKET_LEAF == 0 { f(k, v) } else { Ok(()) })
    }

    fn walk(&self, bucket: &BucketRoot, f: &mut ElementFn<'_>) -> Result<()> {
        let mut seen = HashSet::new();
        let mut last: Option<Vec<u8>> = None;
        let mut ordered = |flags: u32, k: &[u8], v: &[u8]| {
            if last.as_deref().is_some_and(|l| l >= k) {
                return Err(damaged("keys out of order"));
            }
            last = Some(k.to_vec());
            f(flags, k, v)
        };
        match bucket {
            BucketRoot::Inline(page) => self.visit(page, 0, &mut seen, &mut ordered),
            BucketRoot::Page(id) => {
                seen.insert(*id);
                let page = self.page(*id)?;
                self.visit(&page, 0, &mut seen, &mut ordered)
            }
        }
    }

    fn visit(&self, page: &[u8], depth: usize, seen: &mut HashSet<u64>, f: &mut ElementFn<'_>) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(damaged("tree too deep"));
        }
        let short = || damaged("page too short for its elements");
        let (flags, count) = (u16_at(page, 8).ok_or_else(short)?, u16_at(page, 10).ok_or_else(short)?);
        for i in 0..count as usize {
            let at = HEADER + i * ELEMENT;
            let slice = |pos: u32, len: u32| {
                let start = at.checked_add(pos as usize)?;
                page.get(start..start.checked_add(len as usize)?)
            };
            match flags {
                LEAF_PAGE => {
                    let (eflags, pos, ksize, vsize) = (
                        u32_at(page, at).ok_or_else(short)?,
                        u32_at(page, at + 4).ok_or_else(short)?,
                        u32_at(page, at + 8).ok_or_else(short)?,
                        u32_at(page, at + 12).ok_or_else(short)?,
                    );
                    let k = slice(pos, ksize).ok_or_else(short)?;
                    let v = slice(pos.checked_add(ksize).ok_or_else(short)?, vsize).ok_or_else(short)?;
                    f(eflags, k, v)?;
                }
                BRANCH_PAGE => {
                    let (pos, ksize, child) = (
                        u32_at(page, at).ok_or_else(short)?,
                        u32_at(page, at + 4).ok_or_else(short)?,
                        u64_at(page, at + 8).ok_or_else(short)?,
                    );
                    slice(pos, ksize).ok_or_else(short)?;
                    if !seen.insert(child) {
                        return Err(damaged(format!("page {child} referenced twice")));
                    }
                    let child_page = self.page(child)?;
                    self.visit(&child_page, depth + 1, seen, f)?;
                }
                other => return Err(damaged(format!("page of type {other:#x} inside a bucket"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        format!("key-{i:08}").into_bytes()
    }

    fn build(path: &std::path::Path, n: u32, big: usize) -> u64 {
        let file = std::fs::File::create(path).unwrap();
        let mut w = Writer::new(std::io::BufWriter::new(file)).unwrap();
        w.bucket(b"many", |put| {
            for i in 0..n {
                let v = if i.is_multiple_of(97) { vec![i as u8; big] } else { i.to_be_bytes().to_vec() };
                put(&key(i), &v)?;
            }
            Ok(())
        })
        .unwrap();
        w.bucket(b"empty", |_| Ok(())).unwrap();
        w.bucket(b"a", |put| put(b"only", b"one")).unwrap();
        let (_, size) = w.finish().unwrap();
        size
    }

    #[test]
    fn writes_what_it_reads_back_across_levels_and_overflow_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let size = build(&path, 60_000, 10_000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert_eq!(size % PAGE_SIZE as u64, 0);
        let r = Reader::open(&path).unwrap();
        assert_eq!(r.size(), size);
        let names: Vec<_> = r.buckets().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![b"a".to_vec(), b"empty".to_vec(), b"many".to_vec()]);
        let mut n = 0u32;
        r.for_each(&r.bucket(b"many").unwrap().unwrap(), &mut |k, v| {
            assert_eq!(k, key(n));
            assert_eq!(v.len(), if n.is_multiple_of(97) { 10_000 } else { 4 });
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 60_000);
        let mut empty = 0;
        r.for_each(&r.bucket(b"empty").unwrap().unwrap(), &mut |_, _| {
            empty += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(empty, 0);
        assert!(r.bucket(b"missing").unwrap().is_none());
    }

    #[test]
    fn refuses_unordered_keys_and_twice_written_buckets() {
        let mut w = Writer::new(std::io::Cursor::new(Vec::new())).unwrap();
        let err = w.bucket(b"b", |put| {
            put(b"2", b"")?;
            put(b"1", b"")
        });
        assert!(err.is_err());
        w.bucket(b"c", |_| Ok(())).unwrap();
        assert!(w.bucket(b"c", |_| Ok(())).is_err());
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        build(&path, 3_000, 5_000);
        let good = std::fs::read(&path).unwrap();
        let read_all = |p: &std::path::Path| -> Result<usize> {
            let r = Reader::open(p)?;
            let mut n = 0;
            for (_, b) in r.buckets()? {
                r.for_each(&b, &mut |_, _| {
                    n += 1;
                    Ok(())
                })?;
            }
            Ok(n)
        };
        assert_eq!(read_all(&path).unwrap(), 3_001);
        // Flip bits in page headers, elements and metas: each read either fails or (where
        // a flip lands in key or value bytes, which bbolt does not checksum) still visits
        // a full set of entries — it never panics or loops.
        for at in (0..good.len()).step_by((good.len() / 400).max(1)) {
            let mut bytes = good.clone();
            bytes[at] ^= 0x5a;
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(n) = read_all(&path) {
                assert!(n <= 3_001, "flip at {at}: {n} entries");
            }
        }
        // Both metas damaged: refused by name.
        let mut bytes = good.clone();
        bytes[HEADER] ^= 1;
        bytes[PAGE_SIZE + HEADER] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Reader::open(&path).err().unwrap().to_string().contains("no valid meta page"));
        std::fs::write(&path, &good[..PAGE_SIZE * 3]).unwrap();
        assert!(Reader::open(&path).is_err(), "cut short");
    }
}
