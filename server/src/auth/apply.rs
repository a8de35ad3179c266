//! Applying auth changes to the replicated state, and the apply-time check of a client's
//! request against the auth state of that moment.

use super::state::{KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};
use super::{err, ROOT};
use crate::error::Result;
use crate::state::SmState;
use cairn_api::authpb::{Permission, Role};
use cairn_api::cairnpb::{auth_raft_request, raft_request, AuthRaftRequest, AuthUser, Caller};
use prost::Message;

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
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
    st.auth.set_enabled(on);
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::authpb::permission;
    use cairn_api::cairnpb::RaftRequest;

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
        let mut st = SmState::open(engine).unwrap();
        let st = &mut st;
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
}
