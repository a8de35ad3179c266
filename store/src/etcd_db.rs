//! etcd's backend database, as Cairn writes and reads it: the format of `Maintenance.Snapshot`
//! and of the files `etcdctl snapshot save` writes, so etcd's tools read Cairn's backups and
//! Cairn restores etcd's.
//!
//! | etcd bucket | key / value | Cairn |
//! |---|---|---|
//! | `key` | revision (`main` BE, `_`, `sub` BE, `t` on a tombstone) / `mvccpb.KeyValue` | `Kv` table (16-byte revision / kind byte + `KeyValue`) |
//! | `meta` | `consistent_index`, `term` (u64 BE) | the member's applied Raft index and term (export only) |
//! | `meta` | `finishedCompactRev`, `scheduledCompactRev` (a revision key) | `compact_rev` |
//! | `lease` | lease id (i64 BE) / `leasepb.Lease` | `Lease` table (`LeaseRecord` has the same fields and numbers) |
//! | `auth` | `authEnabled` (1 byte), `authRevision` (u64 BE) | `auth/enabled`, `auth/revision` |
//! | `authUsers` | name / `authpb.User` (bcrypt hash in `password`) | `auth/user/<name>` (`AuthUser`) |
//! | `authRoles` | name / `authpb.Role` | `auth/role/<name>` |
//! | `alarm`, `cluster`, `members`, `members_removed` | written empty; ignored on import | membership, alarms: the old cluster's |
//!
//! The Raft position (`consistent_index`, `term`) is written as the exporting member's
//! applied index and term and ignored on import: a restore starts a new cluster (and
//! `etcdutl snapshot restore` sets both anew). The store's revision is the newest revision in
//! `key` or the compacted revision, as etcd computes it.

use crate::bbolt::{EntryFn, Reader, Writer};
use crate::engine::{ReadView, Table};
use crate::error::{Result, StoreError};
use crate::mvcc::{
    KIND_DELETE, KIND_PUT, META_AUTH_ENABLED, META_AUTH_REVISION, META_AUTH_ROLE_PREFIX, META_AUTH_USER_PREFIX,
    META_COMPACT_REV,
};
use crate::Revision;
use cairn_api::authpb::{Role, User, UserAddOptions};
use cairn_api::cairnpb::{AuthUser, LeaseRecord};
use cairn_api::mvccpb::KeyValue;
use prost::Message;
use std::io::{Seek, Write};

const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
const EMPTY_BUCKETS: [&[u8]; 4] = [b"alarm", b"cluster", b"members", b"members_removed"];
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TERM: &[u8] = b"term";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";

/// etcd's 17-byte revision key (18 with the tombstone mark).
fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&rev.main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Parse etcd's revision key: (revision, tombstone).
fn parse_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((Revision::new(main, sub), tombstone))
}

/// Visit the meta-table entries under `prefix` with the prefix cut off.
fn scan_prefix(view: &dyn ReadView, prefix: &[u8], f: &mut EntryFn<'_>) -> Result<()> {
    let end = cairn_api::prefix_end(prefix);
    view.scan(Table::Meta, prefix, Some(&end), &mut |k, v| {
        f(&k[prefix.len()..], v)?;
        Ok(true)
    })
}

/// Write what `view` sees as an etcd backend database into `out` (from its start), with
/// `position` (applied Raft index and term) as etcd's consistent index and term; returns
/// `out` positioned at the end of the database and the database's size.
pub fn export<W: Write + Seek>(view: &dyn ReadView, out: W, position: Option<(u64, u64)>) -> Result<(W, u64)> {
    let mut w = Writer::new(out)?;
    w.bucket(KEY, |put| {
        view.scan(Table::Kv, &[], None, &mut |k, v| {
            let rev = Revision::from_bytes(k).ok_or_else(|| StoreError::Corrupt("kv revision key".into()))?;
            let (kind, body) = v.split_first().ok_or_else(|| StoreError::Corrupt("empty kv".into()))?;
            put(&revision_key(rev, *kind == KIND_DELETE), body)?;
            Ok(true)
        })
    })?;
    let compact = match view.get_one(Table::Meta, META_COMPACT_REV)? {
        Some(v) => i64::from_be_bytes(v.try_into().map_err(|_| StoreError::Corrupt("compact revision".into()))?),
        None => 0,
    };
    w.bucket(META, |put| {
        // In key order: consistent_index, finishedCompactRev, scheduledCompactRev, term.
        if let Some((index, _)) = position {
            put(CONSISTENT_INDEX, &index.to_be_bytes())?;
        }
        if compact > 0 {
            let at = revision_key(Revision::new(compact, 0), false);
            put(FINISHED_COMPACT, &at)?;
            put(SCHEDULED_COMPACT, &at)?;
        }
        if let Some((_, term)) = position {
            put(TERM, &term.to_be_bytes())?;
        }
        Ok(())
    })?;
    w.bucket(LEASE, |put| {
        view.scan(Table::Lease, &[], None, &mut |k, v| {
            put(k, v)?;
            Ok(true)
        })
    })?;
    let enabled = view.get_one(Table::Meta, META_AUTH_ENABLED)?.is_some_and(|v| v.first() == Some(&1));
    let auth_revision = view.get_one(Table::Meta, META_AUTH_REVISION)?;
    w.bucket(AUTH, |put| {
        put(AUTH_ENABLED, &[u8::from(enabled)])?;
        match auth_revision {
            Some(r) => put(AUTH_REVISION, &r),
            None => Ok(()),
        }
    })?;
    w.bucket(AUTH_USERS, |put| {
        scan_prefix(view, META_AUTH_USER_PREFIX, &mut |name, v| {
            let u = AuthUser::decode(v)?;
            let user = User {
                name: u.name.into_bytes(),
                password: u.password_hash.into_bytes(),
                roles: u.roles,
                options: Some(UserAddOptions { no_password: u.no_password }),
            };
            put(name, &user.encode_to_vec())
        })
    })?;
    w.bucket(AUTH_ROLES, |put| scan_prefix(view, META_AUTH_ROLE_PREFIX, &mut |name, v| put(name, v)))?;
    for name in EMPTY_BUCKETS {
        w.bucket(name, |_| Ok(()))?;
    }
    w.finish()
}

/// What `etcdutl snapshot status` reports for a database, computed the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbStatus {
    /// CRC-32C over every bucket's name and every key and value in it, in order.
    pub hash: u32,
    /// The main revision of the last key in `key` (0 when empty).
    pub revision: i64,
    /// Entries in all buckets.
    pub total_keys: u64,
    /// Pages in use times the page size.
    pub total_size: u64,
}

/// Walk every bucket of the database as `etcdutl snapshot status` does.
pub fn status(r: &Reader) -> Result<DbStatus> {
    let (mut hash, mut revision, mut total_keys) = (0u32, 0i64, 0u64);
    for (name, bucket) in r.buckets()? {
        hash = crc32c::crc32c_append(hash, &name);
        let is_key = name == KEY;
        r.for_each(&bucket, &mut |k, v| {
            hash = crc32c::crc32c_append(hash, k);
            hash = crc32c::crc32c_append(hash, v);
            if is_key {
                let (rev, _) = parse_revision_key(k).ok_or_else(|| damaged("a key that is not a revision"))?;
                revision = rev.main;
            }
            total_keys += 1;
            Ok(())
        })?;
    }
    Ok(DbStatus { hash, revision, total_keys, total_size: r.size() })
}

fn damaged(why: &str) -> StoreError {
    StoreError::Corrupt(format!("etcd database: {why}"))
}

/// The store revision and compacted revision an import found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// The newest revision in `key`, or the compacted revision if later (etcd's rule).
    pub revision: i64,
    /// The compacted revision (`finishedCompactRev`).
    pub compact_revision: i64,
}

/// Turn an etcd database into Cairn's table records (see the module doc), handing each
/// to `each` in table order; the current revision is left to the caller.
pub fn import(r: &Reader, each: &mut dyn FnMut(Table, Vec<u8>, Vec<u8>) -> Result<()>) -> Result<Imported> {
    let mut revision = 0i64;
    if let Some(b) = r.bucket(KEY)? {
        r.for_each(&b, &mut |k, v| {
            let (rev, tombstone) = parse_revision_key(k).ok_or_else(|| damaged("a key that is not a revision"))?;
            let record = if tombstone {
                // etcd keeps only the key in a tombstone; Cairn's carries its revision too.
                let kv = KeyValue::decode(v)?;
                let tomb = KeyValue { key: kv.key, mod_revision: rev.main, ..Default::default() };
                [&[KIND_DELETE][..], &tomb.encode_to_vec()].concat()
            } else {
                KeyValue::decode(v)?;
                [&[KIND_PUT][..], v].concat()
            };
            revision = revision.max(rev.main);
            each(Table::Kv, rev.to_bytes().to_vec(), record)
        })?;
    }
    let mut compact_revision = 0i64;
    if let Some(b) = r.bucket(META)? {
        r.for_each(&b, &mut |k, v| {
            if k == FINISHED_COMPACT {
                let (rev, _) = parse_revision_key(v).ok_or_else(|| damaged("finishedCompactRev"))?;
                compact_revision = rev.main;
            }
            Ok(())
        })?;
    }
    if compact_revision > 0 {
        each(Table::Meta, META_COMPACT_REV.to_vec(), compact_revision.to_be_bytes().to_vec())?;
    }
    if let Some(b) = r.bucket(LEASE)? {
        r.for_each(&b, &mut |k, v| {
            let lease = LeaseRecord::decode(v)?;
            if k.len() != 8 || i64::from_be_bytes(k.try_into().unwrap_or_default()) != lease.id {
                return Err(damaged("a lease stored under another id"));
            }
            each(Table::Lease, k.to_vec(), v.to_vec())
        })?;
    }
    if let Some(b) = r.bucket(AUTH)? {
        r.for_each(&b, &mut |k, v| match k {
            AUTH_ENABLED => each(Table::Meta, META_AUTH_ENABLED.to_vec(), vec![u8::from(v == [1])]),
            AUTH_REVISION if v.len() == 8 => each(Table::Meta, META_AUTH_REVISION.to_vec(), v.to_vec()),
            AUTH_REVISION => Err(damaged("authRevision")),
            _ => Ok(()),
        })?;
    }
    if let Some(b) = r.bucket(AUTH_USERS)? {
        r.for_each(&b, &mut |k, v| {
            let u = User::decode(v)?;
            let name = String::from_utf8(u.name).map_err(|_| damaged("a user name that is not UTF-8"))?;
            let mut roles = u.roles;
            roles.sort();
            roles.dedup();
            let user = AuthUser {
                name,
                password_hash: String::from_utf8(u.password)
                    .map_err(|_| damaged("a password hash that is not text"))?,
                roles,
                no_password: u.options.is_some_and(|o| o.no_password),
            };
            each(Table::Meta, [META_AUTH_USER_PREFIX, k].concat(), user.encode_to_vec())
        })?;
    }
    if let Some(b) = r.bucket(AUTH_ROLES)? {
        r.for_each(&b, &mut |k, v| {
            Role::decode(v)?;
            each(Table::Meta, [META_AUTH_ROLE_PREFIX, k].concat(), v.to_vec())
        })?;
    }
    Ok(Imported { revision: revision.max(compact_revision), compact_revision })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_sort_as_revisions() {
        let a = revision_key(Revision::new(5, 1), false);
        let b = revision_key(Revision::new(5, 2), true);
        let c = revision_key(Revision::new(6, 0), false);
        assert!(a < b && b < c);
        assert_eq!(parse_revision_key(&b), Some((Revision::new(5, 2), true)));
        assert_eq!(parse_revision_key(&a), Some((Revision::new(5, 1), false)));
        assert_eq!(parse_revision_key(b"short"), None);
        let mut bad = a.clone();
        bad[8] = b'-';
        assert_eq!(parse_revision_key(&bad), None);
    }
}
