//! The SDK in one page: connect, put and get, a compare-and-set transaction, a watch, and a
//! key that lives as long as its session.
//!
//! ```text
//! cargo run --release --bin cairn                       # a Cairn (or etcd) server
//! cargo run -p cairn-examples --example quickstart      # or --endpoints=host:port,...
//! ```

use cairn_sdk::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Session, Txn, TxnOp, WatchOptions,
};
use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Cairn (or etcd) endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Where the example's keys go.
    #[arg(long, default_value = "/quickstart/")]
    prefix: String,
}

#[tokio::main]
async fn main() -> cairn_sdk::Result<()> {
    let args = Args::parse();
    let client = Client::connect(args.endpoints, ConnectOptions::default()).await?;
    let key = |k: &str| format!("{}{k}", args.prefix);

    // Keys and values: a put answers with the revision it made.
    let put = client.put(key("greeting"), "hello", None).await?;
    println!("put {} at revision {}", key("greeting"), put.header.revision);
    let got = client.get(key("greeting"), None).await?;
    let value = got.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).unwrap_or_default();
    println!("get {} = {value}", key("greeting"));

    // Compare-and-set: change the value only if nobody changed it since we read it.
    let seen = got.kvs.first().map_or(0, |kv| kv.mod_revision);
    let cas = Txn::new().when([Compare::mod_revision(key("greeting"), CompareOp::Equal, seen)]).and_then([TxnOp::put(
        key("greeting"),
        "hello again",
        None,
    )]);
    println!("compare-and-set succeeded: {}", client.txn(cas).await?.succeeded);

    // A watch from the next revision on: it sees the change we make next.
    let from = client.get(key(""), GetOptions::new().with_prefix()).await?.header.revision + 1;
    let mut changes = client.watch(key(""), WatchOptions::new().with_prefix().with_start_revision(from)).await?;
    client.put(key("counter"), "1", None).await?;
    if let Some(resp) = tokio::time::timeout(Duration::from_secs(10), changes.message()).await.ok().flatten() {
        for ev in resp?.events {
            let kv = ev.kv.unwrap_or_default();
            println!("watch: {} = {}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
        }
    }

    // A key tied to a lease kept alive by a session: it goes when the session ends.
    let session = Session::new(&client, 10).await?;
    client.put(key("presence"), "here", PutOptions::new().with_lease(session.lease_id())).await?;
    println!("presence under lease {:x}", session.lease_id());
    session.close().await?;
    let left = client.get(key("presence"), GetOptions::new().with_count_only()).await?.count;
    println!("after the session: {left} presence key(s)");
    Ok(())
}
