//! What the server's own integration tests share: the workspace's fixtures, and a member
//! started in this process.

pub use cairn_testing::{b64, etcdctl, etcdctl_ok, json, Cluster};
use std::path::Path;

/// Start `cairn` in this process on free loopback ports (for tests that look at the
/// member's internals, such as watcher counts).
pub async fn in_process(dir: &Path, extra: &[&str]) -> cairn_server::MemberHandle {
    cairn_testing::member::start_loopback(dir, extra).await.expect("in-process member starts")
}
