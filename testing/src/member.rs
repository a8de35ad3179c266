//! A member started in this process (for tests that look at its internals, such as
//! watcher or task counts), on free loopback ports it binds itself.

use cairn_server::{Config, MemberHandle};
use std::path::Path;
use std::time::Duration;

/// Start a single member with its data in `dir`, client and peer ports on 127.0.0.1
/// (port 0: the member binds free ports and advertises them), plus `extra` flags;
/// returns once it leads itself (or after 10 s, with an error).
pub async fn start_loopback(dir: &Path, extra: &[&str]) -> anyhow::Result<MemberHandle> {
    // A member refuses a data directory other users can read (a fresh tempdir may be 0755).
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut args: Vec<String> = vec!["cairn".into(), "--data-dir".into(), dir.display().to_string()];
    for (flag, url) in [
        ("--listen-client-urls", "http://127.0.0.1:0"),
        ("--advertise-client-urls", "http://127.0.0.1:0"),
        ("--listen-peer-urls", "http://127.0.0.1:0"),
        ("--initial-advertise-peer-urls", "http://127.0.0.1:0"),
    ] {
        args.push(flag.into());
        args.push(url.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::parse_from(args).map_err(anyhow::Error::msg)?;
    let h = cairn_server::start(config).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.leader().is_none() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no leader elected in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(h)
}
