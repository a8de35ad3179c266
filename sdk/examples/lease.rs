//! A key that lives as long as this process: a session (a lease kept alive in the
//! background), and what happens when it ends.

use cairn_sdk::{Client, ConnectOptions, PutOptions, Session};

#[tokio::main]
async fn main() -> cairn_sdk::Result<()> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(','), ConnectOptions::default()).await?;
    let session = Session::new(&client, 5).await?;
    client.put("/example/lease/me", "alive", PutOptions::new().with_lease(session.lease_id())).await?;
    let ttl = client.lease_time_to_live(session.lease_id(), true).await?;
    println!("lease {:x}: {} s left, keys {:?}", session.lease_id(), ttl.ttl, ttl.keys.len());
    // Revokes the lease: its keys are deleted at once.
    session.close().await?;
    println!("after close: {} keys", client.get("/example/lease/me", None).await?.count);
    Ok(())
}
