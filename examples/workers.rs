//! Distributed mutex: workers (here tasks, in real life processes on different machines)
//! update a shared counter under a lock, each write fenced by the lock's ownership, so the
//! count comes out exact. `etcdctl lock /example/counter-lock` excludes them too.
//!
//! ```text
//! cargo run -p cairn-examples --example workers -- --workers 4 --rounds 25
//! ```

use cairn_recipes::Mutex;
use cairn_sdk::{Client, ConnectOptions, KeyValueExt, Session, Txn, TxnOp};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Cairn (or etcd) endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 25)]
    rounds: usize,
}

const COUNTER: &str = "/example/counter";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::connect(args.endpoints, ConnectOptions::default()).await?;
    client.put(COUNTER, "0", None).await?;
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let client = client.clone();
        let rounds = args.rounds;
        workers.push(tokio::spawn(async move {
            // One session per worker: a lock is held by a session.
            let session = Session::new(&client, 10).await?;
            let lock = Mutex::new(&session, "/example/counter-lock");
            for _ in 0..rounds {
                let guard = lock.lock().await?;
                let now = client.get(COUNTER, None).await?;
                let n: u64 = now.kvs.first().and_then(|kv| kv.value_str().parse().ok()).unwrap_or(0);
                let write =
                    Txn::new().when([guard.is_owner()]).and_then([TxnOp::put(COUNTER, (n + 1).to_string(), None)]);
                if !client.txn(write).await?.succeeded {
                    eprintln!("worker {w}: lost the lock before writing; skipped");
                }
                guard.unlock().await?;
            }
            session.close().await?;
            Ok::<_, cairn_recipes::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let total = client.get(COUNTER, None).await?;
    println!("counter = {} (expected {})", total.kvs[0].value_str(), args.workers * args.rounds);
    Ok(())
}
