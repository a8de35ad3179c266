//! Leader election: run several replicas; exactly one dispatches tasks, and when it dies
//! another takes over within the session TTL.
//!
//! ```text
//! cargo run -p cairn-examples --example scheduler -- --id r1 &
//! cargo run -p cairn-examples --example scheduler -- --id r2 &
//! kill %1        # r2 takes over within --ttl seconds
//! etcdctl elect -l /scheduler     # etcd's own tool sees the same leader
//! ```

use cairn_recipes::Election;
use cairn_sdk::{Client, ConnectOptions, Session, Txn, TxnOp};
use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Cairn (or etcd) endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// This replica's name.
    #[arg(long)]
    id: String,
    /// Session TTL in seconds: how long a dead leader can block a successor.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::connect(args.endpoints, ConnectOptions::default()).await?;
    let election = Election::new(&client, "/scheduler");
    loop {
        let session = Session::new(&client, args.ttl).await?;
        println!("{} campaigning", args.id);
        let leadership = election.campaign(&session, args.id.as_str()).await?;
        println!("{} is the leader", args.id);
        let dispatching = async {
            for task in 1.. {
                // Only while still leader: a deposed leader's late write is refused.
                let txn = Txn::new().when([leadership.is_leader()]).and_then([TxnOp::put(
                    "/scheduler-tasks/last",
                    format!("{task} by {}", args.id),
                    None,
                )]);
                if !client.txn(txn).await?.succeeded {
                    return Ok::<_, cairn_sdk::Error>(());
                }
                println!("{} dispatched task {task}", args.id);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
        };
        tokio::select! {
            _ = leadership.lost() => println!("{} lost its session; campaigning again", args.id),
            r = dispatching => { r?; println!("{} is no longer leader", args.id) }
            _ = tokio::signal::ctrl_c() => {
                leadership.resign().await?;
                return Ok(());
            }
        }
    }
}
