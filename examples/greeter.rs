//! Service discovery and load balancing with tonic: greeter instances register themselves,
//! a client spreads calls across the live ones, and an instance that dies drops out of
//! rotation within its registration TTL.
//!
//! ```text
//! cargo run --release --bin cairn                                       # a Cairn (or etcd) server
//! cargo run -p cairn-examples --example greeter -- serve --id a &
//! cargo run -p cairn-examples --example greeter -- serve --id b &
//! cargo run -p cairn-examples --example greeter -- call --count 10       # answered by a and b
//! ```

use cairn_recipes::{Discovery, Registry};
use cairn_sdk::{Client, ConnectOptions};
use clap::{Parser, Subcommand};
use std::time::Duration;

mod pb {
    tonic::include_proto!("greeter");
}
use pb::greeter_client::GreeterClient;
use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

const SERVICE: &str = "/services/greeter";

#[derive(Parser)]
struct Args {
    /// Cairn (or etcd) endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve greetings and register this instance.
    Serve {
        /// This instance's id.
        #[arg(long)]
        id: String,
        /// Where to listen (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Registration TTL in seconds: how long a dead instance can stay listed.
        #[arg(long, default_value_t = 5)]
        ttl: i64,
    },
    /// Call the service through a balanced channel over its live instances.
    Call {
        /// How many calls (0: forever).
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// Pause between calls, in milliseconds.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
}

struct Hello {
    id: String,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: tonic::Request<HelloRequest>) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let message = format!("hello, {}", req.into_inner().name);
        Ok(tonic::Response::new(HelloReply { message, instance: self.id.clone() }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::connect(args.endpoints, ConnectOptions::default()).await?;
    match args.command {
        Command::Serve { id, listen, ttl } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            let addr = listener.local_addr()?;
            let registration = Registry::new(&client)
                .with_ttl(ttl)
                .register(SERVICE, &id, addr.to_string(), serde_json::json!({ "version": 1 }))
                .await?;
            println!("serving {id} on {addr}");
            tonic::transport::Server::builder()
                .add_service(GreeterServer::new(Hello { id }))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            registration.deregister().await?;
        }
        Command::Call { count, interval_ms } => {
            let discovery = Discovery::start(&client, SERVICE).await?;
            let mut view = discovery.subscribe();
            view.wait_for(|instances| !instances.is_empty()).await?;
            let mut greeter = GreeterClient::new(discovery.channel());
            let mut n = 0;
            while count == 0 || n < count {
                n += 1;
                let req = HelloRequest { name: format!("call {n}") };
                match tokio::time::timeout(Duration::from_secs(2), greeter.say_hello(req)).await {
                    Ok(Ok(r)) => println!("{}: {}", r.get_ref().instance, r.get_ref().message),
                    Ok(Err(status)) => println!("error: {}", status.message()),
                    Err(_) => println!("error: timed out"),
                }
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
        }
    }
    Ok(())
}
