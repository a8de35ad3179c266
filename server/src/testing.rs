//! Starting a member in-process on ephemeral loopback ports: for this workspace's tests
//! (server, bench, and later the SDK's) and for embedding Cairn in other programs' tests.

use crate::{Config, Node, NodeHandle};
use std::path::Path;
use std::time::Duration;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Start a single member with its data in `dir`, client and peer ports on 127.0.0.1,
/// plus `extra` flags; returns once it leads itself (or after 10 s, with an error).
pub async fn start_loopback(dir: &Path, extra: &[&str]) -> anyhow::Result<NodeHandle> {
    let (c, p) = (free_port()?, free_port()?);
    let mut args: Vec<String> = vec!["cairn".into(), "--data-dir".into(), dir.display().to_string()];
    for (flag, url) in [
        ("--listen-client-urls", format!("http://127.0.0.1:{c}")),
        ("--advertise-client-urls", format!("http://127.0.0.1:{c}")),
        ("--listen-peer-urls", format!("http://127.0.0.1:{p}")),
        ("--initial-advertise-peer-urls", format!("http://127.0.0.1:{p}")),
    ] {
        args.push(flag.into());
        args.push(url);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::parse_from(args).map_err(anyhow::Error::msg)?;
    let h = Node::start(config).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.node.leader().is_none() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no leader elected in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(h)
}
