//! `auth`, `user` and `role`: etcdctl's auth management commands, printed as etcdctl
//! prints them.

use crate::output::{self, Format};
use crate::{BadArgs, Cli};
use cairn_sdk::{prefix_end, Error, Header, PermissionType};
use clap::{ArgAction, Args, Subcommand};

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Turn auth on (needs a root user; gives it the root role if it lacks it).
    Enable,
    /// Turn auth off.
    Disable,
    /// Whether auth is on, and the auth revision.
    Status,
}

/// Where a new password comes from.
#[derive(Args)]
pub struct PasswordArgs {
    /// The password (instead of `name:password`).
    #[arg(long)]
    new_user_password: Option<String>,
    /// `false`: read the password from the first line of stdin.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    interactive: bool,
}

impl PasswordArgs {
    fn password(&self, given: Option<&str>) -> anyhow::Result<String> {
        if let Some(p) = given.or(self.new_user_password.as_deref()) {
            return Ok(p.to_string());
        }
        if self.interactive {
            return Err(BadArgs(
                "no password: give name:password, --new-user-password, or --interactive=false with it on stdin".into(),
            )
            .into());
        }
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user: `name:password`, or `name` with --new-user-password, --no-password
    /// (certificate auth only) or --interactive=false.
    Add {
        /// The user's name, optionally with `:password`.
        #[arg(id = "new_user", value_name = "NAME[:PASSWORD]")]
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// A user without a password, who logs in with a client certificate only.
        #[arg(long)]
        no_password: bool,
    },
    /// Delete a user.
    Delete {
        /// The user's name.
        name: String,
    },
    /// A user's roles.
    Get {
        /// The user's name.
        name: String,
    },
    /// Every user.
    List,
    /// Change a user's password.
    Passwd {
        /// The user's name.
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Grant a role to a user.
    GrantRole {
        /// The user's name.
        #[arg(id = "user_name", value_name = "USER")]
        user: String,
        /// The role's name.
        role: String,
    },
    /// Take a role from a user.
    RevokeRole {
        /// The user's name.
        #[arg(id = "user_name", value_name = "USER")]
        user: String,
        /// The role's name.
        role: String,
    },
}

/// The keys a permission covers.
#[derive(Args)]
pub struct KeyRange {
    /// The key (or the range start, or the prefix).
    key: String,
    /// End of the range (exclusive).
    range_end: Option<String>,
    /// Every key with this prefix.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    prefix: bool,
    /// Every key from this one on.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    from_key: bool,
}

impl KeyRange {
    fn bounds(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let key = self.key.as_bytes().to_vec();
        let end = match (&self.range_end, self.prefix, self.from_key) {
            (Some(_), true, _) | (Some(_), _, true) | (None, true, true) => {
                return Err(BadArgs("give one of: a range end, --prefix, --from-key".into()).into())
            }
            (Some(e), false, false) => e.as_bytes().to_vec(),
            (None, true, false) => prefix_end(&key),
            (None, false, true) => vec![0],
            (None, false, false) => vec![],
        };
        Ok((key, end))
    }
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Add a role.
    Add {
        /// The role's name.
        name: String,
    },
    /// Delete a role.
    Delete {
        /// The role's name.
        name: String,
    },
    /// A role's permissions.
    Get {
        /// The role's name.
        name: String,
    },
    /// Every role.
    List,
    /// Let a role read, write or readwrite a key, range or prefix.
    GrantPermission {
        /// The role's name.
        role: String,
        /// read, write or readwrite.
        perm: String,
        #[command(flatten)]
        range: KeyRange,
    },
    /// Take a permission from a role (the exact key or range it was granted on).
    RevokePermission {
        /// The role's name.
        role: String,
        #[command(flatten)]
        range: KeyRange,
    },
}

pub async fn auth(cli: &Cli, cmd: &AuthCmd) -> anyhow::Result<()> {
    let c = cli.client().await?;
    match cmd {
        AuthCmd::Enable => {
            match c.auth_enable().await {
                Ok(_) => {}
                Err(Error::Auth(m)) if m == "etcdserver: root user does not have root role" => {
                    // As etcdctl: give root the root role, then try again.
                    match c.role_add("root").await {
                        Ok(_) => {}
                        Err(Error::Auth(m)) if m == "etcdserver: role name already exists" => {}
                        Err(e) => return Err(e.into()),
                    }
                    c.user_grant_role("root", "root").await?;
                    c.auth_enable().await?;
                }
                Err(e) => return Err(e.into()),
            }
            println!("Authentication Enabled");
        }
        AuthCmd::Disable => {
            c.auth_disable().await?;
            println!("Authentication Disabled");
        }
        AuthCmd::Status => {
            let (enabled, revision) = c.auth_status().await?;
            println!("Authentication Status: {enabled}\nAuthRevision: {revision}");
        }
    }
    Ok(())
}

pub async fn user(cli: &Cli, cmd: &UserCmd) -> anyhow::Result<()> {
    let c = cli.client().await?;
    let done = |h: Header, simple: String| output::print_done(cli.write_out, &h, || println!("{simple}"));
    match cmd {
        UserCmd::Add { user, password, no_password } => {
            let (name, given) = match user.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (user.as_str(), None),
            };
            let h = if *no_password {
                c.user_add(name, None).await?
            } else {
                c.user_add(name, Some(&password.password(given)?)).await?
            };
            done(h, format!("User {name} created"));
        }
        UserCmd::Delete { name } => {
            done(c.user_delete(name).await?, format!("User {name} deleted"));
        }
        UserCmd::Get { name } => {
            let roles = c.user_get(name).await?;
            println!("User: {name}");
            println!("Roles:{}", roles.iter().map(|r| format!(" {r}")).collect::<String>());
        }
        UserCmd::List => c.user_list().await?.iter().for_each(|u| println!("{u}")),
        UserCmd::Passwd { name, password } => {
            done(c.user_change_password(name, &password.password(None)?).await?, "Password updated".into());
        }
        UserCmd::GrantRole { user, role } => {
            done(c.user_grant_role(user, role).await?, format!("Role {role} is granted to user {user}"));
        }
        UserCmd::RevokeRole { user, role } => {
            done(c.user_revoke_role(user, role).await?, format!("Role {role} is revoked from user {user}"));
        }
    }
    Ok(())
}

/// A permission's keys as etcdctl prints them.
fn print_range(key: &[u8], end: &[u8]) {
    let (k, e) = (String::from_utf8_lossy(key), String::from_utf8_lossy(end));
    if end.is_empty() {
        println!("\t{k}");
        return;
    }
    let mut line = if end == [0] { format!("\t[{k}, <open ended>") } else { format!("\t[{k}, {e})") };
    if prefix_end(key) == end {
        line.push_str(&format!(" (prefix {k})"));
    }
    println!("{line}");
}

pub async fn role(cli: &Cli, cmd: &RoleCmd) -> anyhow::Result<()> {
    let c = cli.client().await?;
    let w = cli.write_out;
    let done = |h: Header, simple: String| output::print_done(w, &h, || println!("{simple}"));
    match cmd {
        RoleCmd::Add { name } => done(c.role_add(name).await?, format!("Role {name} created")),
        RoleCmd::Delete { name } => done(c.role_delete(name).await?, format!("Role {name} deleted")),
        RoleCmd::Get { name } => {
            let (h, perms) = c.role_get_with_header(name).await?;
            if w == Format::Json {
                println!("{}", output::list_json(&h, "perm", perms.iter().map(output::permission_json).collect()));
                return Ok(());
            }
            if w == Format::Fields {
                output::fields_header(&h);
                for p in &perms {
                    let kind = PermissionType::try_from(p.perm_type).map_or("UNKNOWN", |t| t.as_str_name());
                    // etcdctl's Println puts two spaces after this colon.
                    println!("\"PermType\" :  {kind}");
                    output::field("Key", output::go_quote(&p.key));
                    output::field("RangeEnd", output::go_quote(&p.range_end));
                }
                return Ok(());
            }
            println!("Role {name}");
            for (title, wanted) in [("KV Read:", PermissionType::Read), ("KV Write:", PermissionType::Write)] {
                println!("{title}");
                for p in perms
                    .iter()
                    .filter(|p| p.perm_type == wanted as i32 || p.perm_type == PermissionType::Readwrite as i32)
                {
                    print_range(&p.key, &p.range_end);
                }
            }
        }
        RoleCmd::List => {
            let (h, roles) = c.role_list_with_header().await?;
            match w {
                Format::Json => {
                    println!("{}", output::list_json(&h, "roles", roles.iter().map(|r| serde_json::json!(r)).collect()))
                }
                Format::Fields => {
                    output::fields_header(&h);
                    let quoted: String = roles.iter().map(|r| format!(" {}", output::go_quote(r.as_bytes()))).collect();
                    println!("\"Roles\" :{quoted}");
                }
                _ => roles.iter().for_each(|r| println!("{r}")),
            }
        }
        RoleCmd::GrantPermission { role, perm, range } => {
            let perm = match perm.to_ascii_lowercase().as_str() {
                "read" => PermissionType::Read,
                "write" => PermissionType::Write,
                "readwrite" => PermissionType::Readwrite,
                other => {
                    return Err(BadArgs(format!("invalid permission type {other:?} (read, write or readwrite)")).into())
                }
            };
            let (key, end) = range.bounds()?;
            done(c.role_grant_permission(role, perm, key, end).await?, format!("Role {role} updated"));
        }
        RoleCmd::RevokePermission { role, range } => {
            let (key, end) = range.bounds()?;
            let h = c.role_revoke_permission(role, key.clone(), end.clone()).await?;
            let (k, e) = (String::from_utf8_lossy(&key), String::from_utf8_lossy(&end));
            if end.is_empty() {
                done(h, format!("Permission of key {k} is revoked from role {role}"));
            } else {
                done(h, format!("Permission of range [{k}, {e}) is revoked from role {role}"));
            }
        }
    }
    Ok(())
}
