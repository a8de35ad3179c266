//! A worker of a `WorkQueue`: takes one job and prints it; with `--ack` acknowledges it
//! and exits, without it keeps the job claimed until killed (to show the job coming back
//! once the worker's session expires).
//!
//! `CAIRN_ENDPOINTS=127.0.0.1:2379 cargo run -p cairn-recipes --example work_queue_worker -- /jobs [--ack]`

use cairn_recipes::WorkQueue;
use cairn_sdk::{Client, ConnectOptions, Session};

#[tokio::main]
async fn main() -> cairn_recipes::Result<()> {
    let mut args = std::env::args().skip(1);
    let queue = args.next().unwrap_or_else(|| "/jobs".into());
    let ack = args.next().is_some_and(|a| a == "--ack");
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let ttl = std::env::var("WORKER_TTL").ok().and_then(|t| t.parse().ok()).unwrap_or(10);
    let client = Client::connect(endpoints.split(','), ConnectOptions::default()).await?;
    let session = Session::new(&client, ttl).await?;
    let job = WorkQueue::new(&client, queue).take(&session).await?;
    println!("took {}", String::from_utf8_lossy(job.payload()));
    if ack {
        job.ack().await?;
        println!("acked");
        return Ok(());
    }
    std::future::pending::<()>().await;
    Ok(())
}
