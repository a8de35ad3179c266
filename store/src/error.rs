//! The store's error type. The server maps each variant onto etcd's gRPC code and message.

/// Errors from the MVCC store and its storage engines.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The requested revision has been compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is beyond the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A put names a lease that does not exist.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// The storage engine failed (I/O, corruption, full disk).
    #[error("storage engine: {0}")]
    Engine(String),
    /// Bytes read back from disk could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// Result alias for the store.
pub type Result<T> = std::result::Result<T, StoreError>;

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
