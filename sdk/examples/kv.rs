//! Put, get (one key, a prefix, an old revision) and delete.

use cairn_sdk::{Client, ConnectOptions, DeleteOptions, GetOptions, KeyValueExt, PutOptions};

#[tokio::main]
async fn main() -> cairn_sdk::Result<()> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(','), ConnectOptions::default()).await?;

    let first = client.put("/example/kv/greeting", "hello", None).await?;
    let second = client.put("/example/kv/greeting", "hello again", PutOptions::new().with_prev_kv()).await?;
    println!("replaced {:?}", second.prev_kv.map(|kv| kv.value_str().into_owned()));
    client.put("/example/kv/other", "x", None).await?;

    let now = client.get("/example/kv/greeting", None).await?;
    println!("now: {}", now.kvs[0].value_str());
    let then = client.get("/example/kv/greeting", GetOptions::new().with_revision(first.header.revision)).await?;
    println!("at revision {}: {}", first.header.revision, then.kvs[0].value_str());
    let all = client.get("/example/kv/", GetOptions::new().with_prefix().with_keys_only()).await?;
    println!("keys: {:?}", all.kvs.iter().map(|kv| kv.key_str().into_owned()).collect::<Vec<_>>());

    let gone = client.delete("/example/kv/", DeleteOptions::new().with_prefix()).await?;
    println!("deleted {}", gone.deleted);
    Ok(())
}
