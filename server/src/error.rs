//! The server's error type and its single mapping onto gRPC statuses, carrying etcd's
//! exact codes and messages (clients match on them; see shared/etcd-errors.md).

use cairn_api::cairnpb::{peer_refusal, PeerRefusal};
use cairn_store::StoreError;
use prost::Message;
use tonic::{Code, Status};

/// etcd's error messages, byte for byte.
pub mod msg {
    pub const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";
    pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
    pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
    pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
    pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
    pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
    pub const NO_LEADER: &str = "etcdserver: no leader";
    pub const NOT_LEADER: &str = "etcdserver: not leader";
    pub const STOPPED: &str = "etcdserver: server stopped";
    /// A lock waiter's key vanished (its lease expired) before it got the lock.
    pub const SESSION_EXPIRED: &str = "mutex: session is expired";
    /// Proclaim/Resign by a caller that does not lead (any more).
    pub const ELECTION_NOT_LEADER: &str = "election: not leader";
    /// Leader asked of an election nobody leads.
    pub const ELECTION_NO_LEADER: &str = "election: no leader";
    /// Proclaim/Resign without the leader key.
    pub const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
    pub const TIMEOUT: &str = "etcdserver: request timed out";
    /// The cancel reason of a watch its caller may not (or no longer) read: etcd sends the
    /// gRPC error's text.
    pub const WATCH_DENIED: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
    pub const TIMEOUT_CONN_LOST: &str = "etcdserver: request timed out, possibly due to connection lost";
    pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
    pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
    pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
    pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
    pub const MEMBER_EXISTS: &str = "etcdserver: member ID already exist";
    pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
    pub const NOT_ENOUGH_STARTED: &str = "etcdserver: re-configuration failed due to not enough started members";
    pub const BAD_MEMBER_URLS: &str = "etcdserver: given member URLs are invalid";
    pub const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
    pub const LEARNER_NOT_READY: &str = "etcdserver: can only promote a learner member which is in sync with leader";
    pub const TOO_MANY_LEARNERS: &str = "etcdserver: too many learner members in cluster";
    pub const BAD_TRANSFEREE: &str = "etcdserver: bad leader transferee";
    pub const LEADER_TRANSFER_TIMEOUT: &str = "etcdserver: request timed out, leader transfer took too long";
    pub const CORRUPT: &str = "etcdserver: corrupt cluster";
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A request field is invalid (empty key, too many ops, ...).
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// An error from the MVCC store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A failure carried back from a deterministic apply or from another member.
    #[error("{message}")]
    Remote {
        /// gRPC code.
        code: i32,
        /// etcd message.
        message: String,
    },
    /// Only the leader does this, and this member does not lead (any more), or
    /// leadership is moving: ask the leader. Typed on the peer port too
    /// ([`is_not_leader`]), so no caller decides by message text.
    #[error("{}", msg::NOT_LEADER)]
    NotLeader,
    /// No leader is known (an election is in progress).
    #[error("{}", msg::NO_LEADER)]
    NoLeader,
    /// The request did not complete in time.
    #[error("{}", msg::TIMEOUT)]
    Timeout,
    /// The leader was lost while a forwarded request was in flight: outcome unknown.
    #[error("{}", msg::TIMEOUT_CONN_LOST)]
    ConnectionLost,
    /// The server is shutting down or Raft stopped.
    #[error("{}", msg::STOPPED)]
    Stopped,
    /// Internal failure (storage); the member cannot serve.
    #[error("etcdserver: {0}")]
    Internal(String),
}

/// Result alias for the server.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with etcd's `code` and `message`.
    pub fn etcd(code: Code, message: &str) -> Error {
        Error::Remote { code: code as i32, message: message.into() }
    }

    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Store(e) => match e {
                StoreError::Compacted | StoreError::FutureRev => Code::OutOfRange,
                StoreError::KeyNotFound => Code::InvalidArgument,
                StoreError::LeaseNotFound => Code::NotFound,
                StoreError::Engine(_) | StoreError::Corrupt(_) => Code::Internal,
            },
            Error::Remote { code, .. } => Code::from_i32(*code),
            Error::NotLeader => Code::FailedPrecondition,
            Error::NoLeader | Error::Timeout | Error::ConnectionLost | Error::Stopped => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The message etcd sends for this error.
    pub fn message(&self) -> String {
        match self {
            Error::Store(e) => match e {
                StoreError::Compacted => msg::COMPACTED.into(),
                StoreError::FutureRev => msg::FUTURE_REV.into(),
                StoreError::KeyNotFound => msg::KEY_NOT_FOUND.into(),
                StoreError::LeaseNotFound => msg::LEASE_NOT_FOUND.into(),
                other => format!("etcdserver: {other}"),
            },
            other => other.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::NotLeader => {
                let refusal = PeerRefusal { reason: peer_refusal::Reason::NotLeader as i32 };
                Status::with_details(e.code(), e.message(), refusal.encode_to_vec().into())
            }
            e => Status::new(e.code(), e.message()),
        }
    }
}

/// Whether a peer call was refused because the member called does not lead (the typed
/// [`PeerRefusal`] in the status details, see [`Error::NotLeader`]).
pub fn is_not_leader(s: &Status) -> bool {
    PeerRefusal::decode(s.details()).is_ok_and(|r| r.reason == peer_refusal::Reason::NotLeader as i32)
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::Remote { code: s.code() as i32, message: s.message().to_string() }
    }
}
