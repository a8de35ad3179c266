//! Watch a prefix: the events of a few writes, then a progress notification.

use cairn_sdk::{Client, ConnectOptions, KeyValueExt, WatchOptions};

#[tokio::main]
async fn main() -> cairn_sdk::Result<()> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(','), ConnectOptions::default()).await?;
    // Resumes on another member, without gaps, if this one fails.
    let mut watch = client.watch("/example/watch/", WatchOptions::new().with_prefix().with_prev_kv()).await?;
    client.put("/example/watch/a", "1", None).await?;
    client.put("/example/watch/a", "2", None).await?;
    client.delete("/example/watch/a", None).await?;
    let mut seen = 0;
    while seen < 3 {
        let Some(resp) = watch.message().await else { break };
        for ev in resp?.events {
            let kv = ev.kv.clone().unwrap_or_default();
            println!("{:?} {} = {:?}", ev.r#type(), kv.key_str(), kv.value_str());
            seen += 1;
        }
    }
    watch.request_progress();
    if let Some(resp) = watch.message().await {
        println!("current to revision {}", resp?.header.revision);
    }
    Ok(())
}
