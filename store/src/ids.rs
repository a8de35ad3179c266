//! Member and cluster ids, derived as etcd derives them (the same ids for the same flags),
//! and where a member keeps them.
//!
//! A member of a bootstrapped cluster gets the id of its sorted peer URLs and the cluster
//! token (the first 8 bytes of their SHA-1), so every member computes every other's id
//! from `--initial-cluster` alone; a member added at runtime also mixes in the time of the
//! `member add` (Unix seconds, in decimal), so a machine that is removed and added back is
//! a new member. The cluster id is the SHA-1 of the sorted initial member ids. Both are
//! stored in the `RaftState` table on first start (data directories of Cairn versions that
//! used SHA-256 keep theirs).

use sha1::{Digest, Sha1};

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
/// members of `--initial-cluster` and the time (seconds since the epoch) for an added member.
pub fn member_id(peer_urls: &[String], token: &str, salt: u64) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.join("").as_bytes());
    h.update(token.as_bytes());
    if salt != 0 {
        h.update(salt.to_string().as_bytes());
    }
    first_u64(&h.finalize())
}

/// The id of a cluster bootstrapped with the members `ids`.
pub fn cluster_id(ids: impl Iterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = ids.collect();
    ids.sort();
    let mut h = Sha1::new();
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

    #[test]
    fn the_ids_real_etcd_gives() {
        // etcd 3.5.1 started with --initial-cluster-token etcd-cluster and these peer URLs
        // (via --discovery-srv) logged these member ids and this cluster id.
        let ids: Vec<u64> = ["http://m1.cairn.test:2380", "http://m2.cairn.test:12380", "http://m3.cairn.test:22380"]
            .iter()
            .map(|u| member_id(&[u.to_string()], "etcd-cluster", 0))
            .collect();
        assert_eq!(ids, [0x001a_c4d2_483e_be4e, 0xe1b3_e5fa_7180_aaae, 0xe56b_9a5a_9efc_2d89]);
        assert_eq!(cluster_id(ids.into_iter()), 0xe419_78f6_3b3b_4db8);
    }
}
