//! Versions this member reports.

/// The etcd API version Cairn speaks, reported by Status, `/version` and the
/// `etcd_server_version` metric (clients gate features on it).
pub const ETCD_API: &str = "3.5.0";

/// The commit Cairn was built from, when the build was told (`CAIRN_GIT_COMMIT` in the
/// environment of `cargo build`, as `scripts/release` and the Dockerfile do).
pub const GIT_COMMIT: Option<&str> = option_env!("CAIRN_GIT_COMMIT");

/// What `cairn --version` prints after the program name: Cairn's version, the commit and
/// the etcd API it speaks.
pub fn describe() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!("{} (git {}, etcd API {ETCD_API})", env!("CARGO_PKG_VERSION"), GIT_COMMIT.unwrap_or("unknown"))
    })
}
