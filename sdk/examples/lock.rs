//! A distributed lock: two tasks take turns under the server's Lock service.

use cairn_sdk::{Client, ConnectOptions, Session};
use std::time::Duration;

#[tokio::main]
async fn main() -> cairn_sdk::Result<()> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(','), ConnectOptions::default()).await?;
    let mut tasks = Vec::new();
    for name in ["first", "second"] {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            // The lock is released if this process dies: it is held under the session's lease.
            let session = Session::new(&client, 10).await?;
            let key = client.lock("/example/lock", session.lease_id()).await?;
            println!("{name} holds the lock");
            tokio::time::sleep(Duration::from_millis(200)).await;
            println!("{name} releases it");
            client.unlock(key).await?;
            session.close().await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| cairn_sdk::Error::Unavailable(e.to_string()))??;
    }
    Ok(())
}
