//! Managing auth: turning it on and off, users, roles and their permissions on key ranges
//! (etcdctl's `auth`, `user` and `role` commands). Only `root` may call most of these once
//! auth is on; log in with [`crate::ConnectOptions::with_user`]. Changes return the
//! [`Header`] of the member that made them.

use crate::client::{AuthChannel, Client};
use crate::error::Result;
use crate::Header;
use cairn_api::authpb;
use cairn_api::etcdserverpb as pb;
use cairn_api::etcdserverpb::auth_client::AuthClient;

pub use authpb::permission::Type as PermissionType;
pub use authpb::Permission;

fn auth(ch: AuthChannel) -> AuthClient<AuthChannel> {
    AuthClient::new(ch)
}

/// One Auth RPC through the client's retry policy (`idempotent`: safe to repeat).
macro_rules! call {
    ($client:expr, $idempotent:expr, $method:ident, $req:expr) => {{
        let req = $req;
        $client
            .unary($idempotent, |ch| {
                let req = req.clone();
                async move { auth(ch).$method(req).await }
            })
            .await
    }};
}

impl Client {
    /// Turn auth on (needs a `root` user with the `root` role).
    pub async fn auth_enable(&self) -> Result<Header> {
        call!(self, false, auth_enable, pb::AuthEnableRequest {}).map(|r| Header::from(r.header))
    }

    /// Turn auth off (root only).
    pub async fn auth_disable(&self) -> Result<Header> {
        call!(self, false, auth_disable, pb::AuthDisableRequest {}).map(|r| Header::from(r.header))
    }

    /// Whether auth is on, and the auth revision (bumped by every auth change).
    pub async fn auth_status(&self) -> Result<(bool, u64)> {
        let r = call!(self, true, auth_status, pb::AuthStatusRequest {})?;
        Ok((r.enabled, r.auth_revision))
    }

    /// Add a user with a password (`None`: no password — it can only be a client
    /// certificate's common name).
    pub async fn user_add(&self, name: &str, password: Option<&str>) -> Result<Header> {
        let req = pb::AuthUserAddRequest {
            name: name.into(),
            password: password.unwrap_or_default().into(),
            options: Some(authpb::UserAddOptions { no_password: password.is_none() }),
            hashed_password: String::new(),
        };
        call!(self, false, user_add, req).map(|r| Header::from(r.header))
    }

    /// Delete a user.
    pub async fn user_delete(&self, name: &str) -> Result<Header> {
        call!(self, false, user_delete, pb::AuthUserDeleteRequest { name: name.into() }).map(|r| Header::from(r.header))
    }

    /// Change a user's password.
    pub async fn user_change_password(&self, name: &str, password: &str) -> Result<Header> {
        let req = pb::AuthUserChangePasswordRequest {
            name: name.into(),
            password: password.into(),
            hashed_password: String::new(),
        };
        call!(self, false, user_change_password, req).map(|r| Header::from(r.header))
    }

    /// A user's roles.
    pub async fn user_get(&self, name: &str) -> Result<Vec<String>> {
        Ok(call!(self, true, user_get, pb::AuthUserGetRequest { name: name.into() })?.roles)
    }

    /// Every user's name.
    pub async fn user_list(&self) -> Result<Vec<String>> {
        Ok(call!(self, true, user_list, pb::AuthUserListRequest {})?.users)
    }

    /// Grant `role` to `user`.
    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<Header> {
        let req = pb::AuthUserGrantRoleRequest { user: user.into(), role: role.into() };
        call!(self, false, user_grant_role, req).map(|r| Header::from(r.header))
    }

    /// Take `role` from `user`.
    pub async fn user_revoke_role(&self, user: &str, role: &str) -> Result<Header> {
        let req = pb::AuthUserRevokeRoleRequest { name: user.into(), role: role.into() };
        call!(self, false, user_revoke_role, req).map(|r| Header::from(r.header))
    }

    /// Add a role (with no permissions).
    pub async fn role_add(&self, name: &str) -> Result<Header> {
        call!(self, false, role_add, pb::AuthRoleAddRequest { name: name.into() }).map(|r| Header::from(r.header))
    }

    /// Delete a role (and take it from every user).
    pub async fn role_delete(&self, name: &str) -> Result<Header> {
        call!(self, false, role_delete, pb::AuthRoleDeleteRequest { role: name.into() }).map(|r| Header::from(r.header))
    }

    /// A role's permissions.
    pub async fn role_get(&self, name: &str) -> Result<Vec<Permission>> {
        Ok(self.role_get_with_header(name).await?.1)
    }

    /// A role's permissions, with the header of the member that answered.
    pub async fn role_get_with_header(&self, name: &str) -> Result<(Header, Vec<Permission>)> {
        let r = call!(self, true, role_get, pb::AuthRoleGetRequest { role: name.into() })?;
        Ok((r.header.into(), r.perm))
    }

    /// Every role's name.
    pub async fn role_list(&self) -> Result<Vec<String>> {
        Ok(self.role_list_with_header().await?.1)
    }

    /// Every role's name, with the header of the member that answered.
    pub async fn role_list_with_header(&self) -> Result<(Header, Vec<String>)> {
        let r = call!(self, true, role_list, pb::AuthRoleListRequest {})?;
        Ok((r.header.into(), r.roles))
    }

    /// Let `role` do `perm` on `[key, range_end)` (`range_end` empty: the key alone;
    /// `\0`: every key from `key` on; [`crate::prefix_end`] of `key`: the prefix).
    pub async fn role_grant_permission(
        &self,
        role: &str,
        perm: PermissionType,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Result<Header> {
        let perm = Permission { perm_type: perm as i32, key: key.into(), range_end: range_end.into() };
        let req = pb::AuthRoleGrantPermissionRequest { name: role.into(), perm: Some(perm) };
        call!(self, false, role_grant_permission, req).map(|r| Header::from(r.header))
    }

    /// Take the permission on exactly `[key, range_end)` from `role`.
    pub async fn role_revoke_permission(
        &self,
        role: &str,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Result<Header> {
        let req =
            pb::AuthRoleRevokePermissionRequest { role: role.into(), key: key.into(), range_end: range_end.into() };
        call!(self, false, role_revoke_permission, req).map(|r| Header::from(r.header))
    }
}
