//! etcd's auth: users, roles, permissions on key ranges, and who a request comes from.
//!
//! - [`state`]: [`state::AuthState`] (users, roles, on/off) and the pure permission checks,
//!   plus loading it from the meta table.
//! - [`apply`]: applying [`cairn_api::cairnpb::AuthRaftRequest`]s to the replicated state
//!   (every member applies the same ones in the same order, so every member holds the same
//!   users and roles, stored under `auth/` in the meta table so snapshots and backups carry
//!   them) and the apply-time check of client requests.
//! - [`gate`]: who a client request comes from (token, client certificate) and the
//!   handler-side checks.
//! - [`token`]: simple and JWT tokens (simple tokens live only in memory).
//!
//! Permissions are checked twice, as in etcd: by the handler before proposing (a
//! refused request never reaches the log) and by the apply step against the auth state
//! of that moment ([`state::AuthState::check_request`]), so a permission revoked while a
//! write was in flight still stops it. Reads are checked by the handler only.

pub mod apply;
pub mod gate;
pub mod state;
pub mod token;

/// The user and the role that may do everything.
pub const ROOT: &str = "root";

/// etcd's auth errors, code and message byte for byte (shared/etcd-errors.md).
pub mod err {
    use crate::error::Error;
    use tonic::Code;

    macro_rules! errors {
        ($($name:ident $code:ident $msg:literal),+ $(,)?) => {$(
            #[allow(missing_docs)]
            pub fn $name() -> Error { Error::etcd(Code::$code, $msg) }
        )+};
    }
    errors! {
        root_user_missing FailedPrecondition "etcdserver: root user does not exist",
        root_role_missing FailedPrecondition "etcdserver: root user does not have root role",
        user_exists FailedPrecondition "etcdserver: user name already exists",
        user_empty InvalidArgument "etcdserver: user name is empty",
        user_not_found FailedPrecondition "etcdserver: user name not found",
        role_exists FailedPrecondition "etcdserver: role name already exists",
        role_not_found FailedPrecondition "etcdserver: role name not found",
        role_empty InvalidArgument "etcdserver: role name is empty",
        auth_failed InvalidArgument "etcdserver: authentication failed, invalid user ID or password",
        permission_denied PermissionDenied "etcdserver: permission denied",
        role_not_granted FailedPrecondition "etcdserver: role is not granted to the user",
        permission_not_granted FailedPrecondition "etcdserver: permission is not granted to the role",
        permission_not_given InvalidArgument "etcdserver: permission not given",
        not_enabled FailedPrecondition "etcdserver: authentication is not enabled",
        invalid_token Unauthenticated "etcdserver: invalid auth token",
        invalid_management InvalidArgument "etcdserver: invalid auth management",
    }
}

/// What a request needs on a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// READ or READWRITE.
    Read,
    /// WRITE or READWRITE.
    Write,
}
