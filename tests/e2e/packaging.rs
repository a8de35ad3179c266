//! Packaging: the systemd unit passes `systemd-analyze verify`, and `scripts/release`
//! makes a tarball whose binaries run and which carries the license, docs and deploy files.

use cairn_testing::cairn_binary;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_systemd_units_verify() {
    for name in ["cairn.service", "cairn-grpc-proxy.service"] {
        let unit = std::fs::read_to_string(repo().join("deploy/systemd").join(name)).expect("the unit");
        // systemd checks that ExecStart exists: point it at the binary under test.
        let unit = unit.replace("/usr/local/bin/cairn", &cairn_binary().display().to_string());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, unit).expect("write");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze (./scripts/test installs systemd)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(!err.contains(name), "warnings about {name}:\n{err}");
    }
}

#[test]
fn the_release_tarball_runs() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = cairn_binary().parent().expect("the binaries' directory").to_path_buf();
    let out = Command::new(repo().join("scripts/release"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .expect("scripts/release");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tarball = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let name = tarball.file_name().and_then(|n| n.to_str()).expect("name").trim_end_matches(".tar.gz").to_string();
    assert!(name.starts_with("cairn-") && name.contains("-linux-"), "{name}");
    let sum = std::fs::read_to_string(format!("{}.sha256", tarball.display())).expect("checksum file");
    assert!(sum.contains(&format!("{name}.tar.gz")), "{sum}");
    let unpacked = tempfile::tempdir().expect("tempdir");
    let st = Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(unpacked.path()).status().expect("tar");
    assert!(st.success());
    let root = unpacked.path().join(&name);
    for f in
        ["LICENSE", "README.md", "docs/INSTALL.md", "deploy/systemd/cairn.service", "deploy/prometheus/etcd-alerts.yml"]
    {
        assert!(root.join(f).exists(), "{f} is missing from the tarball");
    }
    let version = Command::new(root.join("cairn")).arg("--version").output().expect("cairn --version");
    let v = String::from_utf8_lossy(&version.stdout);
    assert!(v.starts_with("cairn ") && v.contains("etcd API"), "{v}");
    let ctl = Command::new(root.join("cairnctl")).arg("version").output().expect("cairnctl version");
    assert!(String::from_utf8_lossy(&ctl.stdout).contains("cairnctl version"));
}
