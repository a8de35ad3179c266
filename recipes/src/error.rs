//! The recipes' error type: the SDK's errors plus what a recipe itself can refuse.

/// The result of a recipe call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call to the cluster failed.
    #[error(transparent)]
    Client(#[from] cairn_sdk::Error),
    /// The session's lease was lost (expired or revoked): whatever it held is gone.
    #[error("session expired: its lease was lost")]
    SessionLost,
    /// `try_lock` found the mutex held by another session (etcd's `ErrLocked`).
    #[error("mutex: Locked by another session")]
    Locked,
    /// The caller is not (or no longer) the leader (etcd's `ErrElectionNotLeader`).
    #[error("election: not leader")]
    NotLeader,
    /// Nobody has been elected (etcd's `ErrElectionNoLeader`).
    #[error("election: no leader")]
    NoLeader,
    /// More participants entered a double barrier than its count (etcd's `ErrTooManyClients`).
    #[error("too many clients")]
    TooManyClients,
    /// A stored value could not be read as the expected type, or failed validation.
    #[error("invalid value at {key}: {reason}")]
    Invalid {
        /// The key (or prefix) holding it.
        key: String,
        /// Why it was refused.
        reason: String,
    },
}
