//! Durable, private directories: what every file of a member lives in.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// fsync a directory, so a file created, renamed or removed in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Create `dir` and any missing parents as 0700, each new entry made durable (its parent
/// fsynced); nothing happens if it exists.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // Made by someone else meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn nested_private_directories() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b/c");
        create_private_dir(&dir).expect("create");
        for d in [root.path().join("a"), root.path().join("a/b"), dir.clone()] {
            assert_eq!(std::fs::metadata(&d).expect("stat").permissions().mode() & 0o777, 0o700, "{}", d.display());
        }
        create_private_dir(&dir).expect("exists already");
    }
}
