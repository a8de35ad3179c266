//! A transaction: compare-and-swap a counter, retrying on conflict.

use cairn_sdk::{Client, Compare, CompareOp, ConnectOptions, KeyValueExt, Txn, TxnOp};

#[tokio::main]
async fn main() -> cairn_sdk::Result<()> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(','), ConnectOptions::default()).await?;
    let key = "/example/txn/counter";
    for _ in 0..3 {
        loop {
            // Read the current value and its revision, then write only if nobody changed it.
            let current = client.get(key, None).await?;
            let (value, rev) =
                current.kvs.first().map_or((0, 0), |kv| (kv.value_str().parse().unwrap_or(0), kv.mod_revision));
            let txn = Txn::new().when([Compare::mod_revision(key, CompareOp::Equal, rev)]).and_then([TxnOp::put(
                key,
                (value + 1).to_string(),
                None,
            )]);
            if client.txn(txn).await?.succeeded {
                println!("counter: {}", value + 1);
                break;
            }
        }
    }
    client.delete(key, None).await?;
    Ok(())
}
