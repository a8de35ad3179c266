//! The data directory's guard: created private (0700), refused when others may read it.
//!
//! The directory holds the write-ahead log and the store, and with them every auth token
//! issued, every password hash and every value. etcd only warns about a readable data
//! directory; Cairn refuses to start on one unless the operator says it is meant
//! (`--allow-shared-data-dir`). Owns nothing else: files inside are created 0600 by the
//! process umask the binary sets and by the WAL and snapshot writers themselves.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Permission bits that let anyone but the owner in.
const OTHERS: u32 = 0o077;

/// Create `dir` (and missing parents) as 0700, durably, or check the existing one.
pub fn prepare(dir: &Path, allow_shared: bool) -> anyhow::Result<()> {
    if !dir.exists() {
        // Durable before anything is written in it.
        return cairn_store::fsutil::create_private_dir(dir)
            .map_err(|e| anyhow::anyhow!("creating the data directory {}: {e}", dir.display()));
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & OTHERS == 0 {
        return Ok(());
    }
    if allow_shared {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{mode:04o}"),
            "the data directory is open to other users (--allow-shared-data-dir)"
        );
        return Ok(());
    }
    anyhow::bail!(
        "the data directory {} has permissions {mode:04o}: other users could read the write-ahead log, \
         which holds every value, auth token and password hash. Run `chmod 700 {}`, or start with \
         --allow-shared-data-dir if this is intended",
        dir.display(),
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_directories_are_private_and_open_ones_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a").join("member.cairn");
        prepare(&dir, false).expect("create");
        assert_eq!(std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777, 0o700);
        prepare(&dir, false).expect("an existing private directory is fine");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = prepare(&dir, false).expect_err("readable by others").to_string();
        assert!(err.contains("0755") && err.contains("chmod 700"), "{err}");
        prepare(&dir, true).expect("allowed when told");
    }
}
