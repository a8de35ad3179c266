//! The replicated part of auth ([`AuthState`]) and its pure checks: which user may do
//! what on which key range, with etcd's range rules and errors.

use super::{err, token, Need, ROOT};
use crate::error::Result;
use cairn_api::authpb::{permission, Role};
use cairn_api::cairnpb::{auth_raft_request, raft_request, AuthRaftRequest, AuthUser};
use cairn_api::etcdserverpb::{request_op, Compare, RequestOp, TxnRequest};
use cairn_store::{Engine, StoreError, Table};
use prost::Message;
use std::collections::BTreeMap;

// The store defines the keys (a backup carries them to and from etcd's auth buckets).
pub(super) use cairn_store::mvcc::{
    META_AUTH_ENABLED as KEY_ENABLED, META_AUTH_REVISION as KEY_REVISION, META_AUTH_ROLE_PREFIX as ROLE_PREFIX,
    META_AUTH_USER_PREFIX as USER_PREFIX,
};

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
    shared: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
    /// Turn auth on or off (the flag and its lock-free copy).
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        self.shared.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether auth is on, readable without the state's lock.
    pub fn enabled_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.shared.clone()
    }

    /// Whether `user` holds the root role.
    pub fn has_root_role(&self, user: &AuthUser) -> bool {
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

/// Load the auth state from the meta table (at start and after a snapshot install).
pub fn load(engine: &dyn Engine, into: &mut AuthState) -> std::result::Result<(), StoreError> {
    into.set_enabled(engine.get(Table::Meta, KEY_ENABLED)?.is_some_and(|v| v.first() == Some(&1)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::authpb::Permission;

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

    #[test]
    fn a_disabled_store_permits_everything() {
        let mut st = state(&[]);
        st.enabled = false;
        assert!(st.check("", b"k", b"", Need::Write).is_ok());
        assert!(st.check_admin("").is_ok());
    }
}
