//! The in-memory key index: for every key, the revisions at which it changed, grouped
//! into generations (a generation runs from a create to the delete that ends it).
//! This is etcd's `keyIndex` model; values live on disk, keyed by revision.

use crate::revision::Revision;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::ops::Bound;

/// One life of a key: created at `revs[0]`, modified at each later revision; when the
/// generation is closed its last revision is the delete (tombstone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// Version of the key at the last revision of this generation.
    ver: i64,
    /// The revision that created this generation (kept even when compaction drops it
    /// from `revs`).
    created: Revision,
    /// Most keys are written once between deletes: one revision stays inline.
    revs: SmallVec<[Revision; 1]>,
}

/// The history of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyIndex {
    /// Generations, oldest first; the last one is open (possibly empty). Inline for the
    /// usual single generation, so a key costs no allocation beyond its bytes (a million
    /// keys went from ~390 to ~150 bytes each).
    generations: SmallVec<[Generation; 1]>,
}

/// What the index knows about a key at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    /// Revision of the change visible at the read revision.
    pub modified: Revision,
    /// Revision that created the key's current generation.
    pub created: Revision,
    /// Version at the read revision.
    pub version: i64,
}

impl KeyIndex {
    /// Record a put at `rev`.
    pub fn put(&mut self, rev: Revision) {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("just ensured non-empty");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Record a delete at `rev`: closes the open generation. Returns false (and does
    /// nothing) if the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if !self.is_live() {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// Undo every put and delete recorded at main revision `main` or later (a write
    /// transaction that failed). Returns true if nothing of the key remains.
    pub fn undo(&mut self, main: i64) -> bool {
        loop {
            let n = self.generations.len();
            // A delete left an empty open generation after the one it closed.
            if n >= 2
                && self.generations[n - 1].revs.is_empty()
                && self.generations[n - 2].revs.last().is_some_and(|r| r.main >= main)
            {
                self.generations.pop();
            }
            let Some(g) = self.generations.last_mut() else { break };
            match g.revs.last() {
                Some(r) if r.main >= main => {
                    g.revs.pop();
                    g.ver -= 1;
                    if g.revs.is_empty() {
                        g.created = Revision::default();
                    }
                }
                _ => break,
            }
        }
        self.is_empty()
    }

    /// Whether the key currently exists.
    pub fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.revs.is_empty())
    }

    /// True if no revision at all is recorded.
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.revs.is_empty())
    }

    /// The key as seen at revision `at` (None if it did not exist then).
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(tail)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && tail.main <= at {
                // This generation was already closed by a delete at or before `at`.
                return None;
            }
            if first.main <= at {
                let n = g.revs.iter().rposition(|r| r.main <= at)?;
                let version = g.ver - (g.revs.len() - n - 1) as i64;
                return Some(KeyAt { modified: g.revs[n], created: g.created, version });
            }
        }
        None
    }

    /// Drop history older than `at`, keeping for this key the latest revision at or
    /// below `at` unless it is a delete. Revisions no longer referenced are pushed to
    /// `removed`. Returns true if nothing of the key remains.
    pub fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) -> bool {
        // Skip whole generations closed at or before `at`.
        let mut gen_idx = 0;
        while gen_idx + 1 < self.generations.len() {
            let g = &self.generations[gen_idx];
            match g.revs.last() {
                Some(tomb) if tomb.main > at => break,
                _ => {
                    removed.extend_from_slice(&g.revs);
                    gen_idx += 1;
                }
            }
        }
        self.generations.drain(..gen_idx);
        let is_last = self.generations.len() == 1;
        let g = &mut self.generations[0];
        // Keep the newest revision <= at, drop everything before it.
        if let Some(keep) = g.revs.iter().rposition(|r| r.main <= at) {
            removed.extend(g.revs.drain(..keep));
            // A lone tombstone in a closed generation is gone too.
            if g.revs.len() == 1 && !is_last {
                removed.push(g.revs[0]);
                self.generations.remove(0);
            }
        }
        self.is_empty()
    }
}

/// Key -> history, ordered by key.
#[derive(Debug, Default, Clone)]
pub struct TreeIndex {
    tree: BTreeMap<Box<[u8]>, KeyIndex>,
}

/// Range of keys in etcd's form: `end` empty = the single key; `end == [0]` = every key
/// `>= key`; otherwise `[key, end)`.
pub fn key_range<'a>(key: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(end))
    }
}

/// Whether the etcd-form range is empty by construction (`end <= key`).
pub fn range_is_empty(key: &[u8], end: &[u8]) -> bool {
    !end.is_empty() && end != [0] && end <= key
}

impl TreeIndex {
    /// Record a put of `key` at `rev`.
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        if let Some(ki) = self.tree.get_mut(key) {
            ki.put(rev);
        } else {
            let mut ki = KeyIndex::default();
            ki.put(rev);
            self.tree.insert(key.into(), ki);
        }
    }

    /// Record a delete of `key` at `rev`.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.tree.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    /// Undo the changes of `key` at main revision `main` or later (see [`KeyIndex::undo`]).
    pub fn undo(&mut self, key: &[u8], main: i64) {
        if self.tree.get_mut(key).is_some_and(|ki| ki.undo(main)) {
            self.tree.remove(key);
        }
    }

    /// One key at revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.tree.get(key).and_then(|ki| ki.get(at))
    }

    /// Visit keys of an etcd-form range that exist at revision `at`, in key order.
    /// The visitor returns false to stop.
    pub fn range(&self, key: &[u8], end: &[u8], at: i64, mut f: impl FnMut(&[u8], KeyAt) -> bool) {
        if range_is_empty(key, end) {
            return;
        }
        for (k, ki) in self.tree.range::<[u8], _>(key_range(key, end)) {
            if let Some(at) = ki.get(at) {
                if !f(k, at) {
                    return;
                }
            }
        }
    }

    /// Compact every key at `at`; returns the revisions no longer needed on disk.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut removed = Vec::new();
        self.tree.retain(|_, ki| !ki.compact(at, &mut removed));
        removed
    }

    /// Number of keys with any history.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when no key has history.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: i64) -> Revision {
        Revision::new(m, 0)
    }

    #[test]
    fn versions_and_generations() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        assert_eq!(ki.get(1), None);
        assert_eq!(ki.get(3), Some(KeyAt { modified: r(2), created: r(2), version: 1 }));
        assert_eq!(ki.get(5), Some(KeyAt { modified: r(4), created: r(2), version: 2 }));
        assert_eq!(ki.get(6), None);
        assert_eq!(ki.get(7), None);
        assert_eq!(ki.get(9), Some(KeyAt { modified: r(8), created: r(8), version: 1 }));
        assert!(!KeyIndex::default().tombstone(r(1)));
    }

    #[test]
    fn undo_restores_the_history_before_a_revision() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(3));
        let before = ki.clone();
        ki.put(r(5));
        assert!(!ki.undo(5));
        assert_eq!(ki, before);
        ki.tombstone(r(5));
        assert!(!ki.undo(5));
        assert_eq!(ki, before);
        // Deleted before, recreated and deleted again in the undone revision.
        ki.tombstone(r(4));
        let before = ki.clone();
        ki.put(Revision::new(6, 0));
        ki.tombstone(Revision::new(6, 1));
        assert!(!ki.undo(6));
        assert_eq!(ki, before);
        assert_eq!(ki.get(6), None);
        // A key created by the undone revision leaves nothing.
        let mut new = KeyIndex::default();
        new.put(r(7));
        assert!(new.undo(7));
    }

    #[test]
    fn compaction_keeps_visible_revision() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        ki.tombstone(r(6));
        ki.put(r(8));
        let mut removed = vec![];
        assert!(!ki.compact(5, &mut removed));
        assert_eq!(removed, vec![r(2)]);
        assert_eq!(ki.get(5).map(|k| k.modified), Some(r(4)));
        removed.clear();
        assert!(!ki.compact(7, &mut removed));
        assert_eq!(removed, vec![r(4), r(6)]);
        assert_eq!(ki.get(9).map(|k| k.version), Some(1));
        // The creating revision survives compaction of the revision itself.
        let mut live = KeyIndex::default();
        live.put(r(2));
        live.put(r(3));
        removed.clear();
        live.compact(3, &mut removed);
        assert_eq!(live.get(3), Some(KeyAt { modified: r(3), created: r(2), version: 2 }));
        // A deleted key compacted past its tombstone disappears entirely.
        let mut gone = KeyIndex::default();
        gone.put(r(1));
        gone.tombstone(r(2));
        removed.clear();
        assert!(gone.compact(3, &mut removed));
        assert_eq!(removed, vec![r(1), r(2)]);
    }
}
