//! Where a new member learns its initial cluster when it is not given `--initial-cluster`:
//! DNS SRV records ([`srv`], `--discovery-srv`) or etcd's discovery protocol over a keys
//! directory ([`url`], `--discovery`). Both run only when the data directory is new.

pub mod srv;
pub mod url;
