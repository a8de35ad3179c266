//! etcd's auth: users, roles, permissions on key ranges, and who a request comes from.
//!
//! [`AuthState`] is part of the state machine: every member applies the same
//! [`AuthRaftRequest`]s in the same order ([`apply`]), so every member holds the same
//! users and roles (stored in the meta table under `auth/`, so snapshots and backups
//! carry them). Simple tokens live only in memory ([`token::SimpleTokens`]).
//!
//! Permissions are checked twice, as in etcd: by the handler before proposing (a
//! refused request never reaches the log) and by the apply step against the auth state
//! of that moment ([`AuthState::check_request`]), so a permission revoked while a
//! write was in flight still stops it. Reads are checked by the handler only.

pub mod token;

use crate::error::Result;
use crate::node::Node;
use crate::raft::state_machine::SmState;
use cairn_api::authpb::{permission, Permission, Role};
use cairn_api::cairnpb::{auth_raft_request, raft_request, AuthRaftRequest, AuthUser, Caller, RaftRequest};
use cairn_api::etcdserverpb::{request_op, Compare, RequestOp, TxnRequest};
use cairn_store::{Engine, StoreError, Table};
use prost::Message;
use std::collections::BTreeMap;

/// The user and the role that may do everything.
pub const ROOT: &str = "root";

// Every key starts with `cairn_store::mvcc::META_AUTH_PREFIX` (a backup restore keeps them).
const KEY_ENABLED: &[u8] = b"auth/enabled";
const KEY_REVISION: &[u8] = b"auth/revision";
const USER_PREFIX: &[u8] = b"auth/user/";
const ROLE_PREFIX: &[u8] = b"auth/role/";

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

/// Users, roles and whether auth is on: the replicated part of auth.
#[derive(Debug, Default)]
pub struct AuthState {
    /// Whether requests are checked.
    pub enabled: bool,
    /// Bumped by every change (etcd's auth revision).
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, AuthUser>,
    /// Roles by name; permissions sorted by key.
    pub roles: BTreeMap<String, Role>,
    /// This member's simple tokens (not replicated state: registered by applying
    /// [`auth_raft_request::Request::Authenticate`], dropped when unused for the TTL).
    pub tokens: token::SimpleTokens,
    /// `enabled`, readable without the state machine's lock (every request looks).
    pub on: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The end of a range as etcd reads it: a single key (`range_end` empty), everything
/// from the key on (`\0`), or up to `range_end` (exclusive). `None` is "no end".
fn range_end_of(key: &[u8], range_end: &[u8]) -> Option<Vec<u8>> {
    match range_end {
        [] => {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        }
        [0] => None,
        e => Some(e.to_vec()),
    }
}

/// Whether the union of `granted` ranges covers `[start, end)`.
fn covered(mut granted: Vec<(Vec<u8>, Option<Vec<u8>>)>, start: &[u8], end: Option<Vec<u8>>) -> bool {
    granted.sort();
    let mut at = start.to_vec();
    let done = |at: &[u8]| end.as_deref().is_some_and(|e| e <= at);
    for (s, e) in granted {
        if done(&at) {
            return true;
        }
        if s > at {
            return false;
        }
        match e {
            None => return true,
            Some(e) if e > at => at = e,
            Some(_) => {}
        }
    }
    done(&at)
}

impl AuthState {
    fn has_root_role(&self, user: &AuthUser) -> bool {
        user.roles.iter().any(|r| r == ROOT)
    }

    /// Whether `user` is root (holds the root role). Errors as etcd's admin check.
    pub fn check_admin(&self, user: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(err::user_empty());
        }
        match self.users.get(user) {
            None => Err(err::user_not_found()),
            Some(u) if self.has_root_role(u) => Ok(()),
            Some(_) => Err(err::permission_denied()),
        }
    }

    /// Whether `user` may `need` on `[key, range_end)` (etcd's range rules).
    pub fn check(&self, user: &str, key: &[u8], range_end: &[u8], need: Need) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(err::user_empty());
        }
        let Some(u) = self.users.get(user) else { return Err(err::permission_denied()) };
        if self.has_root_role(u) {
            return Ok(());
        }
        let wanted = |t: i32| {
            t == permission::Type::Readwrite as i32
                || t == match need {
                    Need::Read => permission::Type::Read as i32,
                    Need::Write => permission::Type::Write as i32,
                }
        };
        let granted: Vec<_> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.key_permission)
            .filter(|p| wanted(p.perm_type))
            .map(|p| (p.key.clone(), range_end_of(&p.key, &p.range_end)))
            .collect();
        if covered(granted, key, range_end_of(key, range_end)) {
            Ok(())
        } else {
            Err(err::permission_denied())
        }
    }

    /// Check every key a txn touches: compares and ranges need READ, puts and deletes
    /// WRITE (and READ with `prev_kv`), in both branches and nested txns.
    pub fn check_txn(&self, user: &str, t: &TxnRequest, lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>) -> Result<()> {
        for Compare { key, range_end, .. } in &t.compare {
            self.check(user, key, range_end, Need::Read)?;
        }
        for RequestOp { request } in t.success.iter().chain(&t.failure) {
            match request {
                Some(request_op::Request::RequestRange(r)) => self.check(user, &r.key, &r.range_end, Need::Read)?,
                Some(request_op::Request::RequestPut(p)) => {
                    self.check_put(user, &p.key, p.prev_kv, p.lease, lease_keys)?
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    self.check(user, &d.key, &d.range_end, Need::Write)?;
                    if d.prev_kv {
                        self.check(user, &d.key, &d.range_end, Need::Read)?;
                    }
                }
                Some(request_op::Request::RequestTxn(inner)) => self.check_txn(user, inner, lease_keys)?,
                None => {}
            }
        }
        Ok(())
    }

    /// A put needs WRITE on its key (READ too with `prev_kv`), and attaching it to a
    /// lease needs WRITE on every key the lease holds (etcd's lease-put check).
    fn check_put(
        &self,
        user: &str,
        key: &[u8],
        prev_kv: bool,
        lease: i64,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<()> {
        self.check(user, key, &[], Need::Write)?;
        if prev_kv {
            self.check(user, key, &[], Need::Read)?;
        }
        if lease != 0 {
            self.check_lease_keys(user, lease, Need::Write, lease_keys)?;
        }
        Ok(())
    }

    /// `need` on every key attached to `lease`.
    pub fn check_lease_keys(
        &self,
        user: &str,
        lease: i64,
        need: Need,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        for k in lease_keys(lease) {
            self.check(user, &k, &[], need)?;
        }
        Ok(())
    }

    /// Whether `user` may have `req` applied. Requests without an owner in the keys
    /// (lease grants) are open to every authenticated caller; compaction, alarms and
    /// auth changes are root's (a user may change its own password).
    pub fn check_request(
        &self,
        user: &str,
        req: &raft_request::Request,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<()> {
        use raft_request::Request as Q;
        if !self.enabled {
            return Ok(());
        }
        match req {
            Q::Put(p) => self.check_put(user, &p.key, p.prev_kv, p.lease, lease_keys),
            Q::DeleteRange(d) => {
                self.check(user, &d.key, &d.range_end, Need::Write)?;
                if d.prev_kv {
                    self.check(user, &d.key, &d.range_end, Need::Read)?;
                }
                Ok(())
            }
            Q::Txn(t) => self.check_txn(user, t, lease_keys),
            Q::LeaseGrant(_) => self.check_authenticated(user),
            Q::LeaseRevoke(r) => {
                self.check_authenticated(user)?;
                self.check_lease_keys(user, r.id, Need::Write, lease_keys)
            }
            Q::Auth(a) => self.check_auth_change(user, a),
            Q::Compaction(_) | Q::Alarm(_) | Q::LeaseCheckpoint(_) | Q::Publish(_) | Q::Batch(_) => {
                self.check_admin(user)
            }
        }
    }

    /// A user name that exists (for requests that need only an identity).
    pub fn check_authenticated(&self, user: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(err::user_empty());
        }
        if !self.users.contains_key(user) {
            return Err(err::permission_denied());
        }
        Ok(())
    }

    fn check_auth_change(&self, user: &str, a: &AuthRaftRequest) -> Result<()> {
        use auth_raft_request::Request as A;
        match &a.request {
            // Proposed by the member itself after checking the password.
            Some(A::Authenticate(_)) | None => Ok(()),
            Some(A::UserChangePassword(c)) if c.name == user && !user.is_empty() => Ok(()),
            Some(_) => self.check_admin(user),
        }
    }

    /// The roles `user` may read with RoleGet: root reads every role, others their own.
    pub fn may_read_role(&self, user: &str, role: &str) -> Result<()> {
        if self.check_admin(user).is_ok() {
            return Ok(());
        }
        match self.users.get(user) {
            Some(u) if u.roles.iter().any(|r| r == role) => Ok(()),
            _ => self.check_admin(user),
        }
    }
}

/// The caller recorded with a client's request.
pub fn caller(user: &str) -> Option<Caller> {
    Some(Caller { user: user.to_string() })
}

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

/// Load the auth state from the meta table (at start and after a snapshot install).
pub fn load(engine: &dyn Engine, into: &mut AuthState) -> std::result::Result<(), StoreError> {
    into.enabled = engine.get(Table::Meta, KEY_ENABLED)?.is_some_and(|v| v.first() == Some(&1));
    into.on.store(into.enabled, std::sync::atomic::Ordering::SeqCst);
    into.revision = match engine.get(Table::Meta, KEY_REVISION)? {
        Some(v) => {
            u64::from_be_bytes(v.as_slice().try_into().map_err(|_| StoreError::Corrupt("auth revision".into()))?)
        }
        None => 0,
    };
    let end = cairn_api::prefix_end(USER_PREFIX);
    let mut users = BTreeMap::new();
    engine.scan(Table::Meta, USER_PREFIX, Some(&end), &mut |_, v| {
        let u = AuthUser::decode(v)?;
        users.insert(u.name.clone(), u);
        Ok(true)
    })?;
    let end = cairn_api::prefix_end(ROLE_PREFIX);
    let mut roles = BTreeMap::new();
    engine.scan(Table::Meta, ROLE_PREFIX, Some(&end), &mut |_, v| {
        let r = Role::decode(v)?;
        roles.insert(String::from_utf8_lossy(&r.name).into_owned(), r);
        Ok(true)
    })?;
    into.users = users;
    into.roles = roles;
    into.tokens.retain_users(|u| into.users.contains_key(u));
    Ok(())
}

fn put_user(st: &mut SmState, u: AuthUser) {
    st.stage_meta(user_key(&u.name), Some(u.encode_to_vec()));
    st.auth.users.insert(u.name.clone(), u);
}

fn put_role(st: &mut SmState, name: &str, r: Role) {
    st.stage_meta(role_key(name), Some(r.encode_to_vec()));
    st.auth.roles.insert(name.to_string(), r);
}

fn bump(st: &mut SmState) {
    st.auth.revision += 1;
    let rev = st.auth.revision.to_be_bytes().to_vec();
    st.stage_meta(KEY_REVISION.to_vec(), Some(rev));
}

fn user_of(st: &SmState, name: &str) -> Result<AuthUser> {
    st.auth.users.get(name).cloned().ok_or_else(err::user_not_found)
}

fn set_enabled(st: &mut SmState, on: bool) {
    st.auth.enabled = on;
    st.auth.on.store(on, std::sync::atomic::Ordering::SeqCst);
    st.stage_meta(KEY_ENABLED.to_vec(), Some(vec![on as u8]));
    if !on {
        st.auth.tokens.clear();
    }
    bump(st);
}

/// Apply one auth change. Deterministic: the same state and request give the same
/// result on every member. Permissions were checked by the caller of this function.
pub fn apply(st: &mut SmState, req: &AuthRaftRequest) -> Result<()> {
    use auth_raft_request::Request as A;
    match &req.request {
        None => Ok(()),
        Some(A::Enable(_)) => {
            if st.auth.enabled {
                return Ok(());
            }
            let root = st.auth.users.get(ROOT).ok_or_else(err::root_user_missing)?;
            if !st.auth.has_root_role(root) {
                return Err(err::root_role_missing());
            }
            set_enabled(st, true);
            Ok(())
        }
        Some(A::Disable(_)) => {
            if st.auth.enabled {
                set_enabled(st, false);
            }
            Ok(())
        }
        Some(A::UserAdd(r)) => {
            if r.name.is_empty() {
                return Err(err::user_empty());
            }
            if st.auth.users.contains_key(&r.name) {
                return Err(err::user_exists());
            }
            let no_password = r.options.is_some_and(|o| o.no_password);
            let password_hash = if no_password { String::new() } else { r.hashed_password.clone() };
            put_user(st, AuthUser { name: r.name.clone(), password_hash, roles: vec![], no_password });
            bump(st);
            Ok(())
        }
        Some(A::UserDelete(r)) => {
            if st.auth.enabled && r.name == ROOT {
                return Err(err::invalid_management());
            }
            user_of(st, &r.name)?;
            st.auth.users.remove(&r.name);
            st.stage_meta(user_key(&r.name), None);
            st.auth.tokens.remove_user(&r.name);
            bump(st);
            Ok(())
        }
        Some(A::UserChangePassword(r)) => {
            let mut u = user_of(st, &r.name)?;
            u.password_hash = r.hashed_password.clone();
            u.no_password = false;
            put_user(st, u);
            st.auth.tokens.remove_user(&r.name);
            bump(st);
            Ok(())
        }
        Some(A::UserGrantRole(r)) => {
            let mut u = user_of(st, &r.user)?;
            if r.role != ROOT && !st.auth.roles.contains_key(&r.role) {
                return Err(err::role_not_found());
            }
            if let Err(at) = u.roles.binary_search(&r.role) {
                u.roles.insert(at, r.role.clone());
                put_user(st, u);
                bump(st);
            }
            Ok(())
        }
        Some(A::UserRevokeRole(r)) => {
            if st.auth.enabled && r.name == ROOT && r.role == ROOT {
                return Err(err::invalid_management());
            }
            let mut u = user_of(st, &r.name)?;
            let at = u.roles.binary_search(&r.role).map_err(|_| err::role_not_granted())?;
            u.roles.remove(at);
            put_user(st, u);
            bump(st);
            Ok(())
        }
        Some(A::RoleAdd(r)) => {
            if r.name.is_empty() {
                return Err(err::role_empty());
            }
            if st.auth.roles.contains_key(&r.name) {
                return Err(err::role_exists());
            }
            put_role(st, &r.name, Role { name: r.name.clone().into_bytes(), key_permission: vec![] });
            bump(st);
            Ok(())
        }
        Some(A::RoleDelete(r)) => {
            if st.auth.enabled && r.role == ROOT {
                return Err(err::invalid_management());
            }
            if st.auth.roles.remove(&r.role).is_none() {
                return Err(err::role_not_found());
            }
            st.stage_meta(role_key(&r.role), None);
            let holders: Vec<AuthUser> =
                st.auth.users.values().filter(|u| u.roles.contains(&r.role)).cloned().collect();
            for mut u in holders {
                u.roles.retain(|x| *x != r.role);
                put_user(st, u);
            }
            bump(st);
            Ok(())
        }
        Some(A::RoleGrantPermission(r)) => {
            let mut role = st.auth.roles.get(&r.name).cloned().ok_or_else(err::role_not_found)?;
            let p: &Permission = r.perm.as_ref().ok_or_else(err::permission_not_given)?;
            let same = |x: &Permission| x.key == p.key && x.range_end == p.range_end;
            match role.key_permission.iter_mut().find(|x| same(x)) {
                Some(existing) => existing.perm_type = p.perm_type,
                None => {
                    let at = role.key_permission.partition_point(|x| (&x.key, &x.range_end) < (&p.key, &p.range_end));
                    role.key_permission.insert(at, p.clone());
                }
            }
            put_role(st, &r.name, role);
            bump(st);
            Ok(())
        }
        Some(A::RoleRevokePermission(r)) => {
            let mut role = st.auth.roles.get(&r.role).cloned().ok_or_else(err::role_not_found)?;
            let at = role
                .key_permission
                .iter()
                .position(|x| x.key == r.key && x.range_end == r.range_end)
                .ok_or_else(err::permission_not_granted)?;
            role.key_permission.remove(at);
            put_role(st, &r.role, role);
            bump(st);
            Ok(())
        }
        Some(A::Authenticate(t)) => {
            if !st.auth.enabled || !st.auth.users.contains_key(&t.user) {
                return Err(err::auth_failed());
            }
            st.auth.tokens.insert(t.token.clone(), t.user.clone());
            Ok(())
        }
    }
}

/// The apply-time check of a client's request (see the module docs). `None` callers
/// are the member's own requests and always pass.
pub fn check_at_apply(st: &SmState, caller: Option<&Caller>, req: &raft_request::Request) -> Result<()> {
    let (Some(c), true) = (caller, st.auth.enabled) else { return Ok(()) };
    let mvcc = &st.mvcc;
    st.auth.check_request(&c.user, req, &|id| mvcc.lease_keys(id))
}

/// Who a client request comes from (resolved once per request; empty user: no
/// credentials). Requests made inside the member for a client (Lock, Election) carry
/// it as a request extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub user: String,
    /// Auth was off when the request arrived: the handler checks nothing (a write is
    /// still checked when it applies, should auth have been turned on meanwhile).
    pub open: bool,
}

/// What a request brings to prove who it is: a token (gRPC metadata `token`, or
/// `authorization` as the gateway passes it) and the client certificate of a TLS
/// connection.
#[derive(Default, Clone)]
pub struct Credentials {
    token: Option<String>,
    certs: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    known: Option<Identity>,
}

impl Credentials {
    /// The credentials of `req`.
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let token = ["token", "authorization"]
            .iter()
            .find_map(|k| req.metadata().get(*k))
            .and_then(|v| v.to_str().ok())
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_string());
        Credentials { token, certs: req.peer_certs(), known: req.extensions().get::<Identity>().cloned() }
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

impl Node {
    /// Who `req` comes from. With auth off everyone is anonymous and nothing is checked;
    /// with auth on: the user of its token (an unknown or expired token is refused with
    /// `invalid auth token`), else with `--client-cert-auth` the common name of its
    /// verified client certificate, else nobody (`user name is empty` on any check).
    pub async fn identify<T>(&self, req: &tonic::Request<T>) -> Result<Identity> {
        self.identify_by(Credentials::of(req)).await
    }

    /// [`Node::identify`] for credentials taken from a request earlier.
    pub async fn identify_by(&self, c: Credentials) -> Result<Identity> {
        if let Some(known) = c.known {
            return Ok(known);
        }
        if !self.auth_on.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Identity { user: String::new(), open: true });
        }
        if let Some(token) = c.token {
            let user = match &self.tokens {
                token::TokenKind::Jwt(jwt) => jwt.user(&token),
                token::TokenKind::Simple => match self.read(|st| st.auth.tokens.user(&token)) {
                    Some(u) => Some(u),
                    // Issued by another member a moment ago: wait until this one has
                    // applied everything committed, then look again.
                    None => {
                        self.read_barrier().await?;
                        self.read(|st| st.auth.tokens.user(&token))
                    }
                },
            };
            return user.map(|user| Identity { user, open: false }).ok_or_else(err::invalid_token);
        }
        if self.config.client_tls.client_cert_auth {
            if let Some(user) = c.certs.as_ref().and_then(|certs| certs.first()).and_then(|der| common_name(der)) {
                return Ok(Identity { user, open: false });
            }
        }
        Ok(Identity::default())
    }

    /// Check that `who` may read `[key, range_end)`.
    pub fn check_read(&self, who: &Identity, key: &[u8], range_end: &[u8]) -> Result<()> {
        if who.open {
            return Ok(());
        }
        self.read(|st| st.auth.check(&who.user, key, range_end, Need::Read))
    }

    /// Identify `req` and check that it comes from root (maintenance and membership
    /// operations).
    pub async fn require_admin<T>(&self, req: &tonic::Request<T>) -> Result<()> {
        let who = self.identify(req).await?;
        self.check_admin(&who)
    }

    /// Check that `who` is root.
    pub fn check_admin(&self, who: &Identity) -> Result<()> {
        if who.open {
            return Ok(());
        }
        self.read(|st| st.auth.check_admin(&who.user))
    }

    /// Check that `who` may have `req` applied, and make it a proposal in their name
    /// (the apply step checks again).
    pub fn client_request(&self, who: &Identity, req: raft_request::Request) -> Result<RaftRequest> {
        if !who.open {
            self.read(|st| {
                let mvcc = &st.mvcc;
                st.auth.check_request(&who.user, &req, &|id| mvcc.lease_keys(id))
            })?;
        }
        Ok(RaftRequest::by(&who.user, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(perms: &[(&[u8], &[u8], permission::Type)]) -> AuthState {
        let mut st = AuthState { enabled: true, ..Default::default() };
        let key_permission = perms
            .iter()
            .map(|(k, e, t)| Permission { perm_type: *t as i32, key: k.to_vec(), range_end: e.to_vec() })
            .collect();
        st.roles.insert("app".into(), Role { name: b"app".to_vec(), key_permission });
        st.users
            .insert("alice".into(), AuthUser { name: "alice".into(), roles: vec!["app".into()], ..Default::default() });
        st.users
            .insert("root".into(), AuthUser { name: "root".into(), roles: vec!["root".into()], ..Default::default() });
        st
    }

    #[test]
    fn ranges_are_covered_by_the_union_of_grants() {
        use permission::Type::*;
        let st =
            state(&[(b"/app/", b"/app0", Readwrite), (b"/b", b"/d", Read), (b"/d", b"/f", Read), (b"/x", b"", Write)]);
        let ok = |k: &[u8], e: &[u8], n| st.check("alice", k, e, n).is_ok();
        assert!(ok(b"/app/x", b"", Need::Write));
        assert!(ok(b"/app/", b"/app0", Need::Read));
        assert!(!ok(b"/app/", b"/app1", Need::Read), "past the grant");
        assert!(!ok(b"/other", b"", Need::Read));
        assert!(ok(b"/c", b"/e", Need::Read), "two adjacent grants");
        assert!(!ok(b"/c", b"/g", Need::Read));
        assert!(!ok(b"/c", b"", Need::Write), "read-only grant");
        assert!(ok(b"/x", b"", Need::Write));
        assert!(!ok(b"/x", b"", Need::Read), "write-only grant");
        assert!(!ok(b"/x", b"/y", Need::Write), "a single key does not cover a range");
        assert!(!ok(b"/app/", b"\0", Need::Read), "open-ended request");
        assert!(st.check("root", b"", b"\0", Need::Write).is_ok());
        assert_eq!(st.check("", b"/app/x", b"", Need::Read), Err(err::user_empty()));
        assert_eq!(st.check("nobody", b"/app/x", b"", Need::Read), Err(err::permission_denied()));
    }

    #[test]
    fn open_ended_grants_cover_everything_after_their_key() {
        let st = state(&[(b"m", b"\0", permission::Type::Read)]);
        assert!(st.check("alice", b"m", b"\0", Need::Read).is_ok());
        assert!(st.check("alice", b"zzz", b"", Need::Read).is_ok());
        assert!(st.check("alice", b"a", b"\0", Need::Read).is_err());
        let st = state(&[(b"", b"\0", permission::Type::Readwrite)]);
        assert!(st.check("alice", b"", b"\0", Need::Write).is_ok());
    }

    /// Apply `req` as `user` (None: the member itself) through the real apply step.
    fn apply_as(st: &mut SmState, user: Option<&str>, req: raft_request::Request) -> Option<String> {
        let r = match user {
            Some(u) => RaftRequest::by(u, req),
            None => RaftRequest::internal(req),
        };
        match crate::apply::apply(st, &r).expect("storage").response {
            Some(cairn_api::cairnpb::raft_response::Response::Error(e)) => Some(e.message),
            _ => None,
        }
    }

    fn change(c: auth_raft_request::Request) -> raft_request::Request {
        raft_request::Request::Auth(AuthRaftRequest { request: Some(c) })
    }

    #[test]
    fn the_apply_step_checks_permissions_of_its_moment() {
        use auth_raft_request::Request as A;
        use cairn_api::etcdserverpb::*;
        let dir = tempfile::tempdir().unwrap();
        let engine = cairn_store::engine::open(cairn_store::EngineKind::Redb, dir.path()).unwrap();
        let lessor = std::sync::Arc::new(crate::lease::Lessor::new(std::time::Duration::from_secs(1)));
        let sm =
            crate::raft::state_machine::StateMachine::open(engine, dir.path().join("snap"), 1 << 20, lessor).unwrap();
        let mut st = sm.state.write().unwrap();
        let st = &mut *st;
        let user =
            |name: &str| AuthUserAddRequest { name: name.into(), hashed_password: "h".into(), ..Default::default() };
        assert_eq!(
            apply_as(st, Some(""), change(A::Enable(AuthEnableRequest {}))).as_deref(),
            Some("etcdserver: root user does not exist")
        );
        for c in [
            A::UserAdd(user("root")),
            A::UserAdd(user("alice")),
            A::RoleAdd(AuthRoleAddRequest { name: "app".into() }),
            A::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "app".into(),
                perm: Some(Permission {
                    perm_type: permission::Type::Readwrite as i32,
                    key: b"/app/".to_vec(),
                    range_end: b"/app0".to_vec(),
                }),
            }),
            A::UserGrantRole(AuthUserGrantRoleRequest { user: "alice".into(), role: "app".into() }),
        ] {
            assert_eq!(apply_as(st, Some(""), change(c)), None);
        }
        assert_eq!(
            apply_as(st, Some(""), change(A::Enable(AuthEnableRequest {}))).as_deref(),
            Some("etcdserver: root user does not have root role")
        );
        let grant_root = A::UserGrantRole(AuthUserGrantRoleRequest { user: "root".into(), role: ROOT.into() });
        assert_eq!(apply_as(st, Some(""), change(grant_root)), None);
        assert_eq!(apply_as(st, Some(""), change(A::Enable(AuthEnableRequest {}))), None);
        let rev = st.auth.revision;

        let put = |k: &str| {
            raft_request::Request::Put(PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() })
        };
        assert_eq!(apply_as(st, Some("alice"), put("/app/x")), None);
        assert_eq!(apply_as(st, Some("alice"), put("/other")).as_deref(), Some("etcdserver: permission denied"));
        assert_eq!(apply_as(st, Some(""), put("/app/x")).as_deref(), Some("etcdserver: user name is empty"));
        assert_eq!(apply_as(st, None, put("/other")), None, "the member's own requests pass");
        // Revoked while "in flight": the next apply refuses it.
        let revoke = A::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "app".into(),
            key: b"/app/".to_vec(),
            range_end: b"/app0".to_vec(),
        });
        assert_eq!(
            apply_as(st, Some("alice"), change(revoke.clone())).as_deref(),
            Some("etcdserver: permission denied")
        );
        assert_eq!(apply_as(st, Some("root"), change(revoke.clone())), None);
        assert_eq!(
            apply_as(st, Some("root"), change(revoke)).as_deref(),
            Some("etcdserver: permission is not granted to the role")
        );
        assert_eq!(apply_as(st, Some("alice"), put("/app/x")).as_deref(), Some("etcdserver: permission denied"));
        assert!(st.auth.revision > rev, "every change bumps the auth revision");
        // Root cannot lose root while auth is on; unknown names get etcd's errors.
        let revoke_root = A::UserRevokeRole(AuthUserRevokeRoleRequest { name: ROOT.into(), role: ROOT.into() });
        assert_eq!(
            apply_as(st, Some("root"), change(revoke_root)).as_deref(),
            Some("etcdserver: invalid auth management")
        );
        let del_root = A::UserDelete(AuthUserDeleteRequest { name: ROOT.into() });
        assert_eq!(
            apply_as(st, Some("root"), change(del_root)).as_deref(),
            Some("etcdserver: invalid auth management")
        );
        let grant = A::UserGrantRole(AuthUserGrantRoleRequest { user: "alice".into(), role: "nope".into() });
        assert_eq!(apply_as(st, Some("root"), change(grant)).as_deref(), Some("etcdserver: role name not found"));
        assert_eq!(
            apply_as(st, Some("root"), change(A::UserAdd(user("alice")))).as_deref(),
            Some("etcdserver: user name already exists")
        );
        // Deleting a role takes it from its holders.
        assert_eq!(
            apply_as(st, Some("root"), change(A::RoleDelete(AuthRoleDeleteRequest { role: "app".into() }))),
            None
        );
        assert!(st.auth.users["alice"].roles.is_empty());
        // Tokens: registered by apply, dropped with their user.
        let t = A::Authenticate(cairn_api::cairnpb::SimpleToken { user: "alice".into(), token: "t1".into() });
        assert_eq!(apply_as(st, None, change(t)), None);
        assert_eq!(st.auth.tokens.user("t1").as_deref(), Some("alice"));
        assert_eq!(
            apply_as(st, Some("root"), change(A::UserDelete(AuthUserDeleteRequest { name: "alice".into() }))),
            None
        );
        assert_eq!(st.auth.tokens.user("t1"), None);
    }

    #[test]
    fn a_disabled_store_permits_everything() {
        let mut st = state(&[]);
        st.enabled = false;
        assert!(st.check("", b"k", b"", Need::Write).is_ok());
        assert!(st.check_admin("").is_ok());
    }
}
