//! The data directory: private to the member's user, refused when others may read it, and
//! cleared of snapshot files an earlier run left behind.

use super::harness::Cluster;
use cairn_api::etcdserverpb::PutRequest;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        }
        out.push(p);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_and_an_open_one_is_refused() {
    let mut c = Cluster::start(1, &[]).await;
    c.kv(0).await.put(PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).await.expect("put");
    let dir = c.members[0].data_dir.clone();
    assert_eq!(mode(&dir), 0o700, "a new data directory is private");
    let all = files(&dir);
    assert!(all.iter().any(|p| p.extension().is_some_and(|x| x == "wal")), "{all:?}");
    for p in &all {
        assert_eq!(mode(p) & 0o077, 0, "{} is open to other users ({:04o})", p.display(), mode(p));
    }

    // Snapshot files of an earlier run are removed at startup.
    c.members[0].kill();
    let snap = dir.join("snap");
    for stale in ["3-1-500.snap", "3-1-900.snap.tmp", "incoming.snap.tmp"] {
        std::fs::write(snap.join(stale), b"left over").expect("write stale snapshot");
    }
    c.members[0].start();
    c.wait_ready(0).await;
    // (The member may have built a snapshot of its own since.)
    let left: Vec<_> = std::fs::read_dir(&snap).expect("snap dir").flatten().map(|e| e.file_name()).collect();
    assert!(
        ["3-1-500.snap", "3-1-900.snap.tmp", "incoming.snap.tmp"].iter().all(|s| !left.iter().any(|l| l == *s)),
        "stale snapshot files survived a restart: {left:?}"
    );

    // A data directory others can read: refused, with the fix in the message.
    c.members[0].kill();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    c.members[0].start();
    assert!(c.members[0].wait_exit(Duration::from_secs(20)).await, "started on a data directory others can read");
    let log = c.members[0].log();
    assert!(log.contains("0755") && log.contains("chmod 700"), "{log}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    c.members[0].start();
    c.wait_ready(0).await;
}
