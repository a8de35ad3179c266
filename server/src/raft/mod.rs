//! Raft: openraft's type configuration, the log store, the state machine adaptor and
//! the peer network. Owns consensus and durability; knows nothing of gRPC clients.
//!
//! - [`log_store`]: the Raft log and vote in the storage engine, with group commit.
//! - [`state_machine`]: applies committed entries to the MVCC store ([`crate::apply`]),
//!   builds and installs snapshots.
//! - [`force`]: `--force-new-cluster`, a one-member membership appended before Raft starts.
//! - [`network`]: openraft's RPCs to other members over tonic (client side); the
//!   peer-port service that receives them is [`crate::peer`].

// openraft's traits return its own `StorageError` (over 200 bytes); our helpers return
// the same type so that `?` needs no boxing and unboxing around every call.
#![allow(clippy::result_large_err)]

pub mod force;
pub mod log_store;
pub mod network;
pub mod state_machine;
#[cfg(test)]
mod storage_suite;

use cairn_api::cairnpb::{RaftRequest, RaftResponse};
use prost::Message;
use serde::{Deserialize, Serialize};

/// A member as Raft knows it: its name and peer URLs (client URLs are published
/// separately through the log, see `MemberAttributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member name (`--name`).
    pub name: String,
    /// Peer URLs (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// A command in the Raft log: a protobuf [`RaftRequest`], serialized as its bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request(pub RaftRequest);

/// The result of applying a [`Request`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response(pub RaftResponse);

macro_rules! serde_as_proto {
    ($t:ident, $inner:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0.encode_to_vec())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Proto;
                impl<'de> serde::de::Visitor<'de> for Proto {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("protobuf bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<$t, E> {
                        <$inner>::decode(b).map($t).map_err(E::custom)
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<$t, A::Error> {
                        let mut b = Vec::new();
                        while let Some(x) = seq.next_element::<u8>()? {
                            b.push(x);
                        }
                        self.visit_bytes(&b)
                    }
                }
                // As bytes, not a sequence of u8: one copy instead of a visit per byte.
                d.deserialize_bytes(Proto)
            }
        }
    };
}
serde_as_proto!(Request, RaftRequest);
serde_as_proto!(Response, RaftResponse);

openraft::declare_raft_types!(
    /// Cairn's openraft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// Shorthands for openraft types over [`TypeConfig`].
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A stored membership.
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
/// A storage error.
pub type StorageError = openraft::StorageError<u64>;

/// Serialize an openraft value for disk or the wire.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard only fails on writer errors, and a Vec never fails.
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Deserialize an openraft value written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

/// Wrap an I/O-ish failure as openraft's storage error.
pub fn storage_err(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}
