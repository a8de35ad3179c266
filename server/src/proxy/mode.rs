//! `cairn --proxy=on|readonly`: etcd's proxy mode, for deployments that start etcd that
//! way (a proxy on every machine, given the cluster's `--initial-cluster`). No member runs:
//! the process asks the cluster's members, over their peer URLs, for their client URLs and
//! serves etcd's v3 API on `--listen-client-urls` in front of them with this module's
//! parent, the gRPC proxy (gRPC, the JSON gateway, the keys API, `/health`, `/metrics`).
//! `readonly` refuses whatever would change something ([`super::read_only`]).
//!
//! etcd's v2 proxy re-reads the membership every `--proxy-refresh-interval`; this one reads
//! it once at start (restart it after the cluster's client URLs change).

use crate::config::Flags;
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::MembersRequest;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Serve as `flags` say (`--proxy` is `on` or `readonly`) until `stop`.
pub async fn run(flags: Flags, stop: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        flags.discovery.is_none() && flags.discovery_srv.is_none(),
        "--proxy={}: name the cluster with --initial-cluster (the proxy mode does not read a discovery service)",
        flags.proxy
    );
    // As a member: without --initial-cluster, this name at --initial-advertise-peer-urls.
    let initial = flags
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}={}", flags.name, flags.initial_advertise_peer_urls));
    let peers = peer_urls(&initial)?;
    let dial = Duration::from_millis(flags.proxy_dial_timeout.max(1));
    let peer_tls = peer_tls(&flags)?;
    let endpoints = loop {
        match client_urls(&peers, dial, peer_tls.as_ref()).await {
            Ok(urls) => break urls,
            Err(e) => tracing::warn!("proxy: no member told its client URLs yet ({e}); asking again in 1 s"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let read_only = flags.proxy == "readonly";
    tracing::info!(
        mode = %flags.proxy,
        endpoints = %endpoints.join(","),
        "proxy mode: no member here; serving etcd's v3 API in front of the cluster"
    );
    let upstream_https = endpoints.iter().any(|e| e.starts_with("https://"));
    let mut serving = tokio::task::JoinSet::new();
    for listen in flags.listen_client_urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let https = listen.starts_with("https://");
        let proxy = super::Flags {
            endpoints: endpoints.join(","),
            listen_addr: listen.to_string(),
            metrics_addr: None,
            // etcd's request limit plus room for the gRPC framing, as a member takes.
            max_recv_bytes: flags.max_request_bytes + 512 * 1024,
            max_send_bytes: usize::MAX,
            dial_timeout: dial,
            log_level: flags.log_level.clone(),
            namespace: String::new(),
            cacert: flags.trusted_ca_file.clone().filter(|_| upstream_https),
            cert: flags.cert_file.clone().filter(|_| upstream_https && flags.key_file.is_some()),
            key: flags.key_file.clone().filter(|_| upstream_https && flags.cert_file.is_some()),
            cert_file: flags.cert_file.clone().filter(|_| https),
            key_file: flags.key_file.clone().filter(|_| https),
            trusted_ca_file: flags.trusted_ca_file.clone().filter(|_| https && flags.client_cert_auth),
            read_only,
        };
        serving.spawn(super::serve(proxy, stop.clone()));
    }
    anyhow::ensure!(!serving.is_empty(), "--listen-client-urls: no URL given");
    while let Some(done) = serving.join_next().await {
        done??;
    }
    Ok(())
}

/// Every peer URL of `--initial-cluster` (`name=url,name=url,...`).
fn peer_urls(initial: &str) -> anyhow::Result<Vec<String>> {
    let mut urls = Vec::new();
    for part in initial.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((_, url)) = part.split_once('=') else { anyhow::bail!("--initial-cluster: {part:?} is not name=url") };
        urls.push(url.to_string());
    }
    anyhow::ensure!(!urls.is_empty(), "--initial-cluster: no member given");
    Ok(urls)
}

/// TLS towards https:// peer URLs: the peer CA and certificate flags, as a member uses them.
fn peer_tls(flags: &Flags) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = flags.peer_trusted_ca_file.as_deref() else { return Ok(None) };
    let identity = flags.peer_cert_file.as_deref().zip(flags.peer_key_file.as_deref());
    let identity = identity.map(|(c, k)| (("peer-cert-file", c), ("peer-key-file", k)));
    super::client_tls(Some(("peer-trusted-ca-file", ca)), identity).map(Some)
}

/// The client URLs of every member, as the first peer that answers lists them.
async fn client_urls(peers: &[String], dial: Duration, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Vec<String>> {
    let mut why = String::new();
    for url in peers {
        let mut ep = Endpoint::from_shared(url.clone()).map_err(|e| anyhow::anyhow!("peer URL {url}: {e}"))?;
        if url.starts_with("https://") {
            let Some(tls) = tls else {
                anyhow::bail!("peer URL {url}: an https:// member needs --peer-trusted-ca-file")
            };
            ep = ep.tls_config(tls.clone())?;
        }
        let ask = async {
            let channel = ep.connect_timeout(dial).connect().await?;
            let mut req = tonic::Request::new(MembersRequest {});
            req.set_timeout(dial * 3);
            anyhow::Ok(PeerClient::new(channel).members(req).await?.into_inner())
        };
        match tokio::time::timeout(dial * 4, ask).await {
            Ok(Ok(r)) => {
                let mut urls: Vec<String> = r.members.into_iter().flat_map(|m| m.client_urls).collect();
                urls.sort();
                urls.dedup();
                if !urls.is_empty() {
                    return Ok(urls);
                }
                why = format!("{url}: no member has published its client URLs yet");
            }
            Ok(Err(e)) => why = format!("{url}: {e}"),
            Err(_) => why = format!("{url}: no answer in {:?}", dial * 4),
        }
    }
    anyhow::bail!(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_come_from_the_initial_cluster() {
        let urls = peer_urls("a=http://127.0.0.1:2380, b=http://127.0.0.2:2380,a=http://127.0.0.3:2380").expect("ok");
        assert_eq!(urls, ["http://127.0.0.1:2380", "http://127.0.0.2:2380", "http://127.0.0.3:2380"]);
        assert!(peer_urls("nameless").is_err());
        assert!(peer_urls("").is_err());
    }
}
