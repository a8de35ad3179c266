//! Connect to a cluster and print who answered.
//!
//! `cargo run -p cairn-sdk --example connect` (endpoints from `CAIRN_ENDPOINTS`, comma-
//! separated; default 127.0.0.1:2379).

use cairn_sdk::{Client, ConnectOptions};
use std::time::Duration;

#[tokio::main]
async fn main() -> cairn_sdk::Result<()> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let options = ConnectOptions::new()
        .with_dial_timeout(Duration::from_secs(3))
        .with_request_timeout(Some(Duration::from_secs(10)));
    // TLS and auth: `.with_tls_files(ca, Some((cert, key)))?`, `.with_user("alice", "secret")`.
    let client = Client::connect(endpoints.split(','), options).await?;
    let status = client.status().await?;
    println!(
        "connected: member {:x}, version {}, leader {:x}",
        status.header.map_or(0, |h| h.member_id),
        status.version,
        status.leader
    );
    for m in client.member_list().await? {
        println!("member {:x} {} {:?}", m.id, m.name, m.client_ur_ls);
    }
    Ok(())
}
