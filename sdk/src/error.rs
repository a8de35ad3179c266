//! One error type for every call: etcd's errors (matched on the exact message etcd sends,
//! as every etcd client does) become variants you can `match` on.

/// The result of an SDK call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A gRPC status code: the class of error the server answered with (the SDK's own type, so
/// the API does not tie users to a gRPC library's version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Code {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl From<tonic::Code> for Code {
    fn from(c: tonic::Code) -> Code {
        match c {
            tonic::Code::Ok => Code::Ok,
            tonic::Code::Cancelled => Code::Cancelled,
            tonic::Code::Unknown => Code::Unknown,
            tonic::Code::InvalidArgument => Code::InvalidArgument,
            tonic::Code::DeadlineExceeded => Code::DeadlineExceeded,
            tonic::Code::NotFound => Code::NotFound,
            tonic::Code::AlreadyExists => Code::AlreadyExists,
            tonic::Code::PermissionDenied => Code::PermissionDenied,
            tonic::Code::ResourceExhausted => Code::ResourceExhausted,
            tonic::Code::FailedPrecondition => Code::FailedPrecondition,
            tonic::Code::Aborted => Code::Aborted,
            tonic::Code::OutOfRange => Code::OutOfRange,
            tonic::Code::Unimplemented => Code::Unimplemented,
            tonic::Code::Internal => Code::Internal,
            tonic::Code::Unavailable => Code::Unavailable,
            tonic::Code::DataLoss => Code::DataLoss,
            tonic::Code::Unauthenticated => Code::Unauthenticated,
        }
    }
}

/// What went wrong. Server errors keep etcd's message in their `Display`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The requested revision was compacted away. `compact_revision` is the oldest revision
    /// still available when the server said so (a watch tells; a range does not: 0).
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The compacted revision, when known (0 otherwise).
        compact_revision: i64,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist (never granted, revoked or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested ID exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The lease TTL is larger than the server allows.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// An empty key was given.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A value was given together with `ignore_value`.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A lease was given together with `ignore_lease`.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// The transaction has more operations than the server allows.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// The transaction writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The request is larger than the server's request size limit.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The server is overloaded.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// The store is over its space quota; only reads and deletes are allowed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The cluster has no leader right now (an election is in progress or quorum is lost).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Leadership changed while the request was in flight; it may or may not have applied.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The server timed out the request; a write may or may not have applied.
    #[error("{0}")]
    ServerTimeout(String),
    /// No member with that ID.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member with that ID exists already.
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    /// Another member has one of those peer URLs.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Only a learner can be promoted, and only once it has caught up.
    #[error("{0}")]
    MemberNotPromotable(String),
    /// The caller lacks permission for the keys or the operation.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Wrong user name or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The auth token expired or is not valid.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Authentication is on and no credentials were given.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// An auth-management error (user/role exists or is missing, auth not enabled, ...).
    #[error("{0}")]
    Auth(String),
    /// The member detected data corruption.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// The server canceled a watch for a reason other than compaction.
    #[error("watch canceled: {0}")]
    WatchCanceled(String),
    /// No endpoint could be reached, or the connection broke (a write may or may not
    /// have applied if it broke mid-request).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The client-side request timeout elapsed; a write may or may not have applied.
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The server does not implement this call.
    #[error("not implemented by the server: {0}")]
    Unimplemented(String),
    /// The SDK refused the arguments before sending anything.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Any other error the server returned.
    #[error("{message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

impl Error {
    /// The gRPC code this error carries (or would carry) on the wire.
    pub fn code(&self) -> Code {
        use Error::*;
        match self {
            Compacted { .. } | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists | MemberExists | PeerUrlExists | MemberNotPromotable(_) | Auth(_) => Code::FailedPrecondition,
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey | RequestTooLarge
            | AuthFailed | UserEmpty | InvalidArgument(_) => Code::InvalidArgument,
            TooManyRequests | NoSpace => Code::ResourceExhausted,
            NoLeader | LeaderChanged | ServerTimeout(_) | Unavailable(_) => Code::Unavailable,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            Corrupt => Code::DataLoss,
            WatchCanceled(_) => Code::Cancelled,
            Timeout(_) => Code::DeadlineExceeded,
            Unimplemented(_) => Code::Unimplemented,
            Server { code, .. } => *code,
        }
    }

    /// Whether sending the same request again (to this member or another) may succeed:
    /// the cluster had no leader or changed it, the member timed out, was unreachable or
    /// overloaded. The SDK already retries reads on these within the request timeout; a
    /// write that failed so may or may not have been applied — send it again only if it is
    /// idempotent (or guarded by a transaction), or if [`Error::was_not_applied`] says so.
    pub fn is_retryable(&self) -> bool {
        self.is_transient()
    }

    /// Whether the request certainly did not take effect, so any request (a write too)
    /// may be sent again: the connection could not be made, or the cluster had no leader.
    pub fn was_not_applied(&self) -> bool {
        self.is_safe_to_retry()
    }

    /// Whether the request certainly did not take effect and may be sent again to another
    /// member: the connection could not be made, or the cluster had no leader.
    pub(crate) fn is_safe_to_retry(&self) -> bool {
        match self {
            Error::NoLeader => true,
            Error::Unavailable(m) => is_connect_failure(m),
            _ => false,
        }
    }

    /// Whether an idempotent request (a read) should be retried, on another member if the
    /// connection broke.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::NoLeader
                | Error::LeaderChanged
                | Error::ServerTimeout(_)
                | Error::Unavailable(_)
                | Error::TooManyRequests
        )
    }
}

fn is_connect_failure(message: &str) -> bool {
    message.contains("error trying to connect")
        || message.contains("tcp connect error")
        || message.contains("no endpoint")
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let message = s.message();
        match message {
            "etcdserver: mvcc: required revision has been compacted" => Error::Compacted { compact_revision: 0 },
            "etcdserver: mvcc: required revision is a future revision" => Error::FutureRevision,
            "etcdserver: requested lease not found" => Error::LeaseNotFound,
            "etcdserver: lease already exists" => Error::LeaseExists,
            "etcdserver: too large lease TTL" => Error::LeaseTtlTooLarge,
            "etcdserver: key is not provided" => Error::EmptyKey,
            "etcdserver: key not found" => Error::KeyNotFound,
            "etcdserver: value is provided" => Error::ValueProvided,
            "etcdserver: lease is provided" => Error::LeaseProvided,
            "etcdserver: too many operations in txn request" => Error::TooManyOps,
            "etcdserver: duplicate key given in txn request" => Error::DuplicateKey,
            "etcdserver: request is too large" => Error::RequestTooLarge,
            "etcdserver: too many requests" => Error::TooManyRequests,
            "etcdserver: mvcc: database space exceeded" => Error::NoSpace,
            "etcdserver: no leader" => Error::NoLeader,
            "etcdserver: leader changed" => Error::LeaderChanged,
            "etcdserver: member not found" => Error::MemberNotFound,
            "etcdserver: member ID already exist" => Error::MemberExists,
            "etcdserver: Peer URLs already exists" => Error::PeerUrlExists,
            "etcdserver: permission denied" => Error::PermissionDenied,
            "etcdserver: authentication failed, invalid user ID or password" => Error::AuthFailed,
            "etcdserver: invalid auth token" => Error::InvalidAuthToken,
            "etcdserver: user name is empty" => Error::UserEmpty,
            "etcdserver: corrupt cluster" => Error::Corrupt,
            m if m.starts_with("etcdserver: request timed out") => Error::ServerTimeout(m.to_string()),
            m if m.starts_with("etcdserver: can only promote") => Error::MemberNotPromotable(m.to_string()),
            m if m.starts_with("etcdserver: user name")
                || m.starts_with("etcdserver: role ")
                || m.starts_with("etcdserver: root user")
                || m.starts_with("etcdserver: authentication is not enabled")
                || m.starts_with("etcdserver: permission is not granted")
                || m.starts_with("etcdserver: invalid auth management") =>
            {
                Error::Auth(m.to_string())
            }
            _ => match Code::from(s.code()) {
                Code::Unavailable => Error::Unavailable(message.to_string()),
                // tonic's word for a connection that broke under a call (the member died or
                // went away): the call may or may not have reached it.
                Code::Unknown if message == "transport error" => Error::Unavailable(message.to_string()),
                Code::Cancelled if message == "operation was canceled" => Error::Unavailable(message.to_string()),
                Code::Unimplemented => Error::Unimplemented(message.to_string()),
                Code::DeadlineExceeded => Error::ServerTimeout(message.to_string()),
                code => Error::Server { code, message: message.to_string() },
            },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let part = s.to_string();
            if !msg.contains(&part) {
                msg.push_str(": ");
                msg.push_str(&part);
            }
            src = s.source();
        }
        Error::Unavailable(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_messages_map_to_variants_and_keep_their_code() {
        let cases = [
            (
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
                Error::Compacted { compact_revision: 0 },
            ),
            (tonic::Code::NotFound, "etcdserver: requested lease not found", Error::LeaseNotFound),
            (tonic::Code::Unavailable, "etcdserver: no leader", Error::NoLeader),
            (tonic::Code::PermissionDenied, "etcdserver: permission denied", Error::PermissionDenied),
            (tonic::Code::InvalidArgument, "etcdserver: key is not provided", Error::EmptyKey),
        ];
        for (code, msg, want) in cases {
            let got = Error::from(tonic::Status::new(code, msg));
            assert_eq!(got, want);
            assert_eq!(got.code(), Code::from(code), "{msg}");
        }
        let other = Error::from(tonic::Status::new(tonic::Code::Internal, "boom"));
        assert_eq!(other, Error::Server { code: Code::Internal, message: "boom".into() });
        assert!(Error::from(tonic::Status::unavailable("error trying to connect: refused")).is_safe_to_retry());
        assert!(!Error::from(tonic::Status::unavailable("etcdserver: leader changed")).is_safe_to_retry());
        // A connection that broke under the call: a read retries elsewhere, a write may
        // have applied.
        for broke in [tonic::Status::unknown("transport error"), tonic::Status::cancelled("operation was canceled")] {
            let broke = Error::from(broke);
            assert!(broke.is_retryable() && !broke.was_not_applied(), "{broke:?}");
        }
    }
}
