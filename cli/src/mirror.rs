//! `cairnctl make-mirror`: copy a prefix from the cluster of `--endpoints` to another
//! cluster and keep it in sync, as etcdctl's command does — any etcd v3 cluster on either
//! side, so a live prefix moves from etcd to Cairn or back while both serve.
//!
//! First every key under the prefix is read at one revision (in pages) and written to the
//! destination in transactions of up to 64 puts; then a watch from the next revision
//! replays each source revision as one destination transaction (puts and deletes), so the
//! destination never shows half of a source transaction. As etcdctl: values only (no
//! leases), the running total of keys and events mirrored printed every 30 seconds, and a
//! compaction that overtakes the watch ends the command with an error.

use crate::{get_paged, BadArgs, Cli, Creds};
use cairn_sdk::{prefix_end, GetOptions, Txn, TxnOp, WatchOptions};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Puts per destination transaction while copying the existing keys.
const BASE_BATCH: usize = 64;

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The destination cluster's endpoint(s), comma-separated.
    destination: String,
    /// Key prefix to mirror (empty: every key).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Prefix to give the keys at the destination (default: the same prefix).
    #[arg(long, conflicts_with = "no_dest_prefix")]
    dest_prefix: Option<String>,
    /// Mirror the keys to the root of the destination (strip the prefix).
    #[arg(long)]
    no_dest_prefix: bool,
    /// CA bundle (PEM) to verify the destination's certificate.
    #[arg(long)]
    dest_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for the destination.
    #[arg(long, requires = "dest_key")]
    dest_cert: Option<PathBuf>,
    /// Client private key (PEM) for the destination.
    #[arg(long, requires = "dest_cert")]
    dest_key: Option<PathBuf>,
    /// Accepted for etcdctl's sake: the destination uses TLS exactly when --dest-cacert is given.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    dest_insecure_transport: bool,
    /// Destination user, as `name:password` (or give --dest-password).
    #[arg(long)]
    dest_user: Option<String>,
    /// Password for --dest-user.
    #[arg(long)]
    dest_password: Option<String>,
}

pub async fn make_mirror(cli: &Cli, a: &MirrorArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> =
        a.destination.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
    if endpoints.is_empty() {
        return Err(BadArgs("make-mirror takes one destination argument".into()).into());
    }
    let dest_prefix = match (&a.dest_prefix, a.no_dest_prefix) {
        (Some(p), _) => p.clone(),
        (None, true) => String::new(),
        (None, false) => a.prefix.clone(),
    };
    let creds = Creds {
        cacert: a.dest_cacert.as_deref(),
        cert: a.dest_cert.as_deref(),
        key: a.dest_key.as_deref(),
        user: a.dest_user.as_deref(),
        password: a.dest_password.as_deref(),
        insecure: false,
    };
    let dest = cli.connect(&endpoints, &creds, "dest-").await?;
    let src = cli.client().await?;
    let prefix = a.prefix.as_bytes().to_vec();
    let rename = |key: &[u8]| -> Vec<u8> {
        let mut k = dest_prefix.as_bytes().to_vec();
        k.extend_from_slice(key.strip_prefix(prefix.as_slice()).unwrap_or(key));
        k
    };

    let total = Arc::new(AtomicU64::new(0));
    let ticker = {
        let total = total.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!("{}", total.load(Ordering::Relaxed));
            }
        })
    };
    let result = async {
        // 1. Every key as of one revision.
        // No prefix: the whole key space, from the smallest key (as etcd's mirror does).
        let first = if a.prefix.is_empty() { "\0" } else { a.prefix.as_str() };
        let end = prefix_end(&prefix);
        let base = get_paged(&src, first, GetOptions::new().with_range(end.clone()), end, cli.page_size.max(1)).await?;
        let rev = base.header.revision;
        for chunk in base.kvs.chunks(BASE_BATCH) {
            let ops = chunk.iter().map(|kv| TxnOp::put(rename(&kv.key), kv.value.clone(), None));
            dest.txn(Txn::new().and_then(ops)).await?;
            total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        eprintln!("make-mirror: copied {} keys as of revision {rev}; following changes", base.kvs.len());

        // 2. Every change after it, one destination transaction per source revision.
        let opts = WatchOptions::new().with_range(prefix_end(&prefix)).with_start_revision(rev + 1);
        let mut watch = src.watch(first.as_bytes().to_vec(), opts).await?;
        while let Some(resp) = watch.message().await {
            let resp = resp?;
            let mut ops = Vec::new();
            let mut at = 0;
            for ev in resp.events {
                let Some(kv) = ev.kv.as_ref() else { continue };
                if at != 0 && kv.mod_revision != at {
                    dest.txn(Txn::new().and_then(std::mem::take(&mut ops))).await?;
                }
                at = kv.mod_revision;
                ops.push(match ev.r#type() {
                    cairn_sdk::EventType::Put => TxnOp::put(rename(&kv.key), kv.value.clone(), None),
                    cairn_sdk::EventType::Delete => TxnOp::delete(rename(&kv.key), None),
                });
                total.fetch_add(1, Ordering::Relaxed);
            }
            if !ops.is_empty() {
                dest.txn(Txn::new().and_then(ops)).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    ticker.abort();
    result
}
