//! etcd's Auth service: enable/disable, Authenticate -> token, users and roles.
//!
//! Changes go through Raft ([`crate::auth::apply`]); reads are served from this
//! member's copy after a read barrier. Passwords are bcrypt-hashed here, on the member
//! that received them, so only hashes reach the log.

use super::Ctx;
use crate::auth::gate::Identity;
use crate::auth::token::{SimpleTokens, TokenKind};
use crate::auth::{err, ROOT};
use crate::error::{Error, Result};
use cairn_api::authpb::{permission, Permission};
use cairn_api::cairnpb::{auth_raft_request, raft_request, AuthRaftRequest, RaftRequest, SimpleToken};
use cairn_api::etcdserverpb::auth_server::Auth;
use cairn_api::etcdserverpb::*;
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// The window over which failed logins are counted in the log.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The Auth service of one member.
pub struct AuthService {
    ctx: Ctx,
    /// When recent logins failed (for the rate in the log).
    failures: Mutex<VecDeque<Instant>>,
    /// A hash to check passwords of unknown users against, so a login takes as long
    /// whether or not the user exists.
    dummy_hash: OnceLock<String>,
}

type Reply<T> = std::result::Result<Response<T>, Status>;

impl AuthService {
    /// The Auth service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { ctx: ctx.clone(), failures: Mutex::new(VecDeque::new()), dummy_hash: OnceLock::new() }
    }

    /// Propose `change` in the name of `req`'s caller; the response header.
    async fn change<T>(&self, req: &Request<T>, change: auth_raft_request::Request) -> Result<ResponseHeader> {
        let who = self.ctx.gate.identify(req).await?;
        self.change_as(&who, change).await
    }

    async fn change_as(&self, who: &Identity, change: auth_raft_request::Request) -> Result<ResponseHeader> {
        let req = raft_request::Request::Auth(AuthRaftRequest { request: Some(change) });
        let resp = self.ctx.writer.propose(self.ctx.gate.client_request(who, req)?).await?;
        Ok(self.ctx.replica.header(resp.revision))
    }

    /// Identify the caller and wait until this member has applied everything committed.
    async fn reader<T>(&self, req: &Request<T>) -> Result<(Identity, ResponseHeader)> {
        let who = self.ctx.gate.identify(req).await?;
        self.ctx.router.read_barrier().await?;
        Ok((who, self.ctx.replica.current_header()))
    }

    /// A bcrypt hash of `password` at `--bcrypt-cost`, computed off the async threads.
    async fn hash(&self, password: String) -> Result<String> {
        let cost = self.ctx.limits.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
    }

    /// The hash to store for a new password: etcd 3.5 clients may send it hashed already.
    async fn password_hash(&self, password: &str, hashed: &str) -> Result<String> {
        if !hashed.is_empty() {
            if hashed.parse::<bcrypt::HashParts>().is_err() {
                return Err(Error::etcd(
                    tonic::Code::InvalidArgument,
                    "etcdserver: hashedPassword is not a bcrypt hash",
                ));
            }
            return Ok(hashed.to_string());
        }
        self.hash(password.to_string()).await
    }

    /// Whether `password` is the user's (constant-time compare inside bcrypt).
    async fn password_ok(&self, name: &str, password: &str) -> Result<bool> {
        let stored = self.ctx.replica.with_state(|st| {
            st.auth
                .users
                .get(name)
                .filter(|u| !u.no_password && !u.password_hash.is_empty())
                .map(|u| u.password_hash.clone())
        });
        let (hash, known) = match stored {
            Some(h) => (h, true),
            None => {
                let cost = self.ctx.limits.bcrypt_cost;
                let dummy = self.dummy_hash.get_or_init(|| bcrypt::hash("no such user", cost).unwrap_or_default());
                (dummy.clone(), false)
            }
        };
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(ok && known)
    }

    fn log_failure(&self, name: &str) {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        while f.front().is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW) {
            f.pop_front();
        }
        f.push_back(now);
        tracing::warn!(user = name, failures_last_minute = f.len(), "authentication failed");
    }

    async fn authenticate_inner(&self, r: AuthenticateRequest) -> Result<String> {
        if !self.ctx.replica.with_state(|st| st.auth.enabled) {
            return Err(err::not_enabled());
        }
        // A user added a moment ago through another member can log in here.
        self.ctx.router.read_barrier().await?;
        if !self.password_ok(&r.name, &r.password).await? {
            self.log_failure(&r.name);
            return Err(err::auth_failed());
        }
        match &self.ctx.gate.tokens() {
            TokenKind::Jwt(jwt) => {
                let revision = self.ctx.replica.with_state(|st| st.auth.revision);
                jwt.sign(&r.name, revision).map_err(Error::Internal)
            }
            TokenKind::Simple => {
                let token = SimpleTokens::generate();
                let t = SimpleToken { user: r.name.clone(), token: token.clone() };
                let change = auth_raft_request::Request::Authenticate(t);
                let req = raft_request::Request::Auth(AuthRaftRequest { request: Some(change) });
                self.ctx.writer.propose(RaftRequest::internal(req)).await?;
                Ok(token)
            }
        }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Reply<AuthEnableResponse> {
        let header = self.change(&req, auth_raft_request::Request::Enable(AuthEnableRequest {})).await?;
        tracing::info!("auth enabled");
        Ok(Response::new(AuthEnableResponse { header: Some(header) }))
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Reply<AuthDisableResponse> {
        let header = self.change(&req, auth_raft_request::Request::Disable(AuthDisableRequest {})).await?;
        tracing::info!("auth disabled");
        Ok(Response::new(AuthDisableResponse { header: Some(header) }))
    }

    async fn auth_status(&self, req: Request<AuthStatusRequest>) -> Reply<AuthStatusResponse> {
        let (_, header) = self.reader(&req).await?;
        let (enabled, auth_revision) = self.ctx.replica.with_state(|st| (st.auth.enabled, st.auth.revision));
        Ok(Response::new(AuthStatusResponse { header: Some(header), enabled, auth_revision }))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Reply<AuthenticateResponse> {
        let token = self.authenticate_inner(req.into_inner()).await?;
        Ok(Response::new(AuthenticateResponse { header: Some(self.ctx.replica.current_header()), token }))
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Reply<AuthUserAddResponse> {
        let who = self.ctx.gate.identify(&req).await?;
        // Refused before the (slow) hashing.
        self.ctx.gate.check_admin(&who)?;
        let mut r = req.into_inner();
        if r.name.is_empty() {
            return Err(err::user_empty().into());
        }
        let no_password = r.options.is_some_and(|o| o.no_password);
        r.hashed_password =
            if no_password { String::new() } else { self.password_hash(&r.password, &r.hashed_password).await? };
        r.password.clear();
        let header = self.change_as(&who, auth_raft_request::Request::UserAdd(r)).await?;
        Ok(Response::new(AuthUserAddResponse { header: Some(header) }))
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Reply<AuthUserGetResponse> {
        let (who, header) = self.reader(&req).await?;
        let name = &req.get_ref().name;
        let roles = self.ctx.replica.with_state(|st| {
            if who.user != *name {
                st.auth.check_admin(&who.user)?;
            }
            st.auth.users.get(name).map(|u| u.roles.clone()).ok_or_else(err::user_not_found)
        })?;
        Ok(Response::new(AuthUserGetResponse { header: Some(header), roles }))
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Reply<AuthUserListResponse> {
        let (who, header) = self.reader(&req).await?;
        let users = self.ctx.replica.with_state(|st| {
            st.auth.check_admin(&who.user)?;
            Ok::<_, Error>(st.auth.users.keys().cloned().collect())
        })?;
        Ok(Response::new(AuthUserListResponse { header: Some(header), users }))
    }

    async fn user_delete(&self, req: Request<AuthUserDeleteRequest>) -> Reply<AuthUserDeleteResponse> {
        let r = req.get_ref().clone();
        let header = self.change(&req, auth_raft_request::Request::UserDelete(r)).await?;
        Ok(Response::new(AuthUserDeleteResponse { header: Some(header) }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Reply<AuthUserChangePasswordResponse> {
        let who = self.ctx.gate.identify(&req).await?;
        let mut r = req.into_inner();
        if who.user != r.name {
            self.ctx.gate.check_admin(&who)?;
        }
        r.hashed_password = self.password_hash(&r.password, &r.hashed_password).await?;
        r.password.clear();
        let header = self.change_as(&who, auth_raft_request::Request::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header: Some(header) }))
    }

    async fn user_grant_role(&self, req: Request<AuthUserGrantRoleRequest>) -> Reply<AuthUserGrantRoleResponse> {
        let r = req.get_ref().clone();
        let header = self.change(&req, auth_raft_request::Request::UserGrantRole(r)).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header: Some(header) }))
    }

    async fn user_revoke_role(&self, req: Request<AuthUserRevokeRoleRequest>) -> Reply<AuthUserRevokeRoleResponse> {
        let r = req.get_ref().clone();
        let header = self.change(&req, auth_raft_request::Request::UserRevokeRole(r)).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header: Some(header) }))
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Reply<AuthRoleAddResponse> {
        let r = req.get_ref().clone();
        let header = self.change(&req, auth_raft_request::Request::RoleAdd(r)).await?;
        Ok(Response::new(AuthRoleAddResponse { header: Some(header) }))
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Reply<AuthRoleGetResponse> {
        let (who, header) = self.reader(&req).await?;
        let role = &req.get_ref().role;
        let perm = self.ctx.replica.with_state(|st| {
            st.auth.may_read_role(&who.user, role)?;
            match st.auth.roles.get(role) {
                Some(r) => Ok(r.key_permission.clone()),
                // The root role may be granted without being added: it holds every key.
                None if role == ROOT => Ok(vec![Permission {
                    perm_type: permission::Type::Readwrite as i32,
                    key: vec![],
                    range_end: vec![0],
                }]),
                None => Err(err::role_not_found()),
            }
        })?;
        Ok(Response::new(AuthRoleGetResponse { header: Some(header), perm }))
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Reply<AuthRoleListResponse> {
        let (who, header) = self.reader(&req).await?;
        let roles = self.ctx.replica.with_state(|st| {
            st.auth.check_admin(&who.user)?;
            Ok::<_, Error>(st.auth.roles.keys().cloned().collect())
        })?;
        Ok(Response::new(AuthRoleListResponse { header: Some(header), roles }))
    }

    async fn role_delete(&self, req: Request<AuthRoleDeleteRequest>) -> Reply<AuthRoleDeleteResponse> {
        let r = req.get_ref().clone();
        let header = self.change(&req, auth_raft_request::Request::RoleDelete(r)).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header: Some(header) }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Reply<AuthRoleGrantPermissionResponse> {
        let r = req.get_ref().clone();
        let header = self.change(&req, auth_raft_request::Request::RoleGrantPermission(r)).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header: Some(header) }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Reply<AuthRoleRevokePermissionResponse> {
        let r = req.get_ref().clone();
        let header = self.change(&req, auth_raft_request::Request::RoleRevokePermission(r)).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header: Some(header) }))
    }
}
