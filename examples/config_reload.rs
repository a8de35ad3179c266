//! Live configuration: a service loads its settings from a key, then applies every valid
//! change as it is published and refuses invalid ones, keeping the last good settings.
//!
//! ```text
//! cargo run -p cairn-examples --example config_reload &
//! etcdctl put /example/config '{"log_level":"debug","max_conns":200}'   # applied
//! etcdctl put /example/config '{"log_level":"chatty","max_conns":200}'  # refused, kept debug
//! ```

use cairn_recipes::{Config, ConfigUpdate};
use cairn_sdk::{Client, ConnectOptions};
use clap::Parser;
use serde::Deserialize;

#[derive(Parser)]
struct Args {
    /// Cairn (or etcd) endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The key holding the settings as JSON.
    #[arg(long, default_value = "/example/config")]
    key: String,
}

#[derive(Debug, Deserialize)]
struct Settings {
    log_level: String,
    max_conns: u32,
}

fn check(s: &Settings) -> Result<(), String> {
    if !["error", "warn", "info", "debug", "trace"].contains(&s.log_level.as_str()) {
        return Err(format!("unknown log level {:?}", s.log_level));
    }
    if s.max_conns == 0 {
        return Err("max_conns must be at least 1".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::connect(args.endpoints, ConnectOptions::default()).await?;
    if client.get(args.key.as_str(), None).await?.kvs.is_empty() {
        client.put(args.key.as_str(), r#"{"log_level":"info","max_conns":100}"#, None).await?;
    }
    let mut config = Config::<Settings>::key(args.key).validate(check).subscribe(&client).await?;
    println!("started with {:?}", config.current());
    loop {
        tokio::select! {
            update = config.next() => match update {
                Some(ConfigUpdate::Applied { value, revision }) => println!("applied {value:?} (revision {revision})"),
                Some(ConfigUpdate::Rejected { reason, revision }) => {
                    println!("refused revision {revision}: {reason}; keeping {:?}", config.current())
                }
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
