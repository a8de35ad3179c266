//! Member and cluster ids, derived as etcd derives them, and where a member keeps them.
//!
//! A member of a bootstrapped cluster gets the id of its sorted peer URLs and the cluster
//! token, so every member computes every other's id from `--initial-cluster` alone; a
//! member added at runtime also mixes in the time of the `member add`, so a machine that
//! is removed and added back is a new member. The cluster id is a hash of the initial
//! member ids. Both are stored in the `RaftState` table on first start.

use sha2::{Digest, Sha256};

/// `RaftState` key of the cluster id (8 bytes, big endian).
pub const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
/// `RaftState` key of this member's id (8 bytes, big endian).
pub const KEY_MEMBER_ID: &[u8] = b"member_id";

fn first_u64(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The id of a member with `peer_urls` in the cluster of `token`; `salt` is 0 for the
/// members of `--initial-cluster` and the time (ns since the epoch) for an added member.
pub fn member_id(peer_urls: &[String], token: &str, salt: u64) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha256::new();
    h.update(urls.join("").as_bytes());
    h.update(token.as_bytes());
    if salt != 0 {
        h.update(salt.to_be_bytes());
    }
    first_u64(&h.finalize())
}

/// The id of a cluster bootstrapped with the members `ids`.
pub fn cluster_id(ids: impl Iterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = ids.collect();
    ids.sort();
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

/// Read an id stored under `key` by [`store_id`].
pub fn load_id(engine: &dyn crate::Engine, key: &[u8]) -> crate::Result<Option<u64>> {
    Ok(match engine.get(crate::Table::RaftState, key)? {
        Some(b) => Some(u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| crate::StoreError::Corrupt(format!("{:?}", String::from_utf8_lossy(key))))?,
        )),
        None => None,
    })
}

/// Queue `id` under `key` in `batch`.
pub fn store_id(batch: &mut crate::WriteBatch, key: &[u8], id: u64) {
    batch.put(crate::Table::RaftState, key, id.to_be_bytes().to_vec());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_ignore_url_order_and_differ_by_token_and_salt() {
        let a = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let b = vec!["http://b:2".to_string(), "http://a:1".to_string()];
        assert_eq!(member_id(&a, "t", 0), member_id(&b, "t", 0));
        assert_ne!(member_id(&a, "t", 0), member_id(&a, "u", 0));
        assert_ne!(member_id(&a, "t", 0), member_id(&a, "t", 1));
        assert_eq!(cluster_id([1, 2, 3].into_iter()), cluster_id([3, 1, 2].into_iter()));
    }
}
