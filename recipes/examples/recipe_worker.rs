//! One process of a multi-process recipe run (the recipes' tests start several and kill
//! some): `recipe_worker <recipe> <args>`, endpoints from `CAIRN_ENDPOINTS`, session TTL
//! from `WORKER_TTL` (seconds, default 10). Prints one line per step, with the wall clock
//! in nanoseconds where timing matters.
//!
//! - `semaphore NAME PERMITS HOLD_MS`: acquire, print `in <ns>`, hold, print `out <ns>`, release
//! - `counter KEY N`: increment N times, print the last value
//! - `transfer PREFIX ACCOUNTS N`: N STM transfers of 1 between accounts `PREFIX<i>`
//! - `selector NAME ID`: lead (print `leading <revision>`) until killed

use cairn_recipes::{stm, Counter, Isolation, LeaderSelector, Semaphore};
use cairn_sdk::{Client, ConnectOptions, Session};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn arg(args: &[String], i: usize) -> String {
    args.get(i).cloned().unwrap_or_default()
}

#[tokio::main]
async fn main() -> cairn_recipes::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let ttl = std::env::var("WORKER_TTL").ok().and_then(|t| t.parse().ok()).unwrap_or(10);
    let client = Client::connect(endpoints.split(','), ConnectOptions::default()).await?;
    match arg(&args, 0).as_str() {
        "semaphore" => {
            let session = Session::new(&client, ttl).await?;
            let permits = arg(&args, 2).parse().unwrap_or(1);
            let permit = Semaphore::new(&session, arg(&args, 1), permits).acquire().await?;
            println!("in {}", now());
            tokio::time::sleep(Duration::from_millis(arg(&args, 3).parse().unwrap_or(100))).await;
            println!("out {}", now());
            permit.release().await?;
        }
        "counter" => {
            let counter = Counter::new(&client, arg(&args, 1));
            let mut last = 0;
            for _ in 0..arg(&args, 2).parse().unwrap_or(1) {
                last = counter.increment().await?;
            }
            println!("{last}");
        }
        "transfer" => {
            let (prefix, accounts): (String, usize) = (arg(&args, 1), arg(&args, 2).parse().unwrap_or(2));
            for n in 0..arg(&args, 3).parse::<usize>().unwrap_or(1) {
                let (from, to) = (format!("{prefix}{}", n % accounts), format!("{prefix}{}", (n + 1) % accounts));
                stm(&client, Isolation::SerializableSnapshot, |tx| {
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        let f: i64 = tx.get_string(&from).await?.and_then(|v| v.parse().ok()).unwrap_or(0);
                        let t: i64 = tx.get_string(&to).await?.and_then(|v| v.parse().ok()).unwrap_or(0);
                        tx.put(&from, (f - 1).to_string());
                        tx.put(&to, (t + 1).to_string());
                        Ok(())
                    }
                })
                .await?;
            }
            println!("done");
        }
        "selector" => {
            let id = arg(&args, 2);
            let _selector = LeaderSelector::start(&client, arg(&args, 1), id, ttl, |term| async move {
                println!("leading {}", term.revision());
                std::future::pending::<()>().await
            });
            std::future::pending::<()>().await
        }
        other => eprintln!("unknown recipe {other:?}"),
    }
    Ok(())
}
