//! The `cairn` binary: flags -> Config -> member::start, until SIGINT/SIGTERM.

use anyhow::Context;
use cairn_server::config::{Config, Flags};
use clap::{CommandFactory, FromArgMatches};

/// mimalloc rather than glibc's malloc: less CPU per request under many clients
/// (docs/PERFORMANCE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Every file and directory the member creates is private to its user: the data
    // directory holds values, auth tokens and password hashes.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|a| a == "grpc-proxy") {
        if let Err(e) = cairn_server::proxy::main(argv.collect()).await {
            eprintln!("cairn: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let prepared = match cairn_server::etcd_flags::prepare(std::env::args_os().collect(), &vars) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cairn: {e}");
            std::process::exit(2);
        }
    };
    let mut command = Flags::command();
    if prepared.from_file {
        // As etcd: with --config-file, the environment is not read.
        command = command.mut_args(|a| a.env(None));
    }
    let flags = match command.try_get_matches_from(&prepared.args).and_then(|m| Flags::from_arg_matches(&m)) {
        Ok(f) => f,
        Err(e) => e.exit(),
    };
    if flags.proxy != "off" {
        // etcd's proxy mode: no member, a proxy in front of the cluster.
        if let Err(e) = cairn_server::logging::init(&flags.log_level, false, &[cairn_server::logging::Output::Stderr]) {
            eprintln!("cairn: {e}");
            std::process::exit(2);
        }
        if let Some(w) = prepared.warning {
            tracing::warn!("{w}");
        }
        run_proxy(flags).await;
    }
    let fallback = (flags.discovery.is_some() && flags.discovery_fallback == "proxy").then(|| flags.clone());
    let config = match Config::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = cairn_server::logging::init(&config.log_level, config.log_json, &config.log_outputs) {
        eprintln!("cairn: {e}");
        std::process::exit(2);
    }
    if let Some(w) = prepared.warning {
        tracing::warn!("{w}");
    }

    let handle = match cairn_server::start(config).await {
        Ok(h) => h,
        Err(e) => match (e.downcast_ref::<cairn_server::ClusterFull>(), fallback) {
            // As etcd under --discovery-fallback=proxy: a proxy in front of the cluster found.
            (Some(full), Some(mut flags)) => {
                tracing::warn!("{e}: falling back to the proxy mode (--discovery-fallback=proxy)");
                let initial: Vec<String> = full
                    .cluster
                    .iter()
                    .flat_map(|(name, urls)| urls.iter().map(move |u| format!("{name}={u}")))
                    .collect();
                flags.initial_cluster = Some(initial.join(","));
                (flags.discovery, flags.proxy) = (None, "on".into());
                run_proxy(flags).await
            }
            _ => return Err(e).context("starting cairn"),
        },
    };
    let stop = handle.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let failed = handle.failed_flag();
    handle.run_until_stopped().await;
    // Exit now rather than by dropping the runtime, which would wait for any blocking task
    // the bounded stop gave up on.
    std::process::exit(if failed.load(std::sync::atomic::Ordering::SeqCst) { 1 } else { 0 });
}

/// Serve etcd's proxy mode until SIGINT/SIGTERM, then exit.
async fn run_proxy(flags: Flags) -> ! {
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    if let Err(e) = cairn_server::proxy::mode::run(flags, stop).await {
        eprintln!("cairn: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0)
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
