//! The `cairn` binary: flags -> Config -> member::start, until SIGINT/SIGTERM.

use anyhow::Context;
use cairn_server::config::{Config, Flags};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Every file and directory the member creates is private to its user: the data
    // directory holds values, auth tokens and password hashes.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let flags = Flags::parse();
    let config = match Config::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},openraft=warn", config.log_level)));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_json {
        logs.json().init();
    } else {
        logs.init();
    }

    let handle = cairn_server::start(config).await.context("starting cairn")?;
    let stop = handle.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let failed = handle.failed_flag();
    handle.run_until_stopped().await;
    if failed.load(std::sync::atomic::Ordering::SeqCst) {
        std::process::exit(1);
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
