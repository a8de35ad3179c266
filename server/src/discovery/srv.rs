//! `--discovery-srv`: the initial cluster from DNS SRV records, built as etcd builds it.
//!
//! `_etcd-server-ssl._tcp.<domain>` names https:// members and `_etcd-server._tcp.<domain>`
//! http:// ones (`-<name>` after `etcd-server[-ssl]` with `--discovery-srv-name`). Each
//! record's target and port resolve to an address; the record whose address is one of this
//! member's `--initial-advertise-peer-urls` is this member (named `--name`), the others get
//! the names `0`, `1`, ... in record order. A member's URL is the record's
//! `scheme://target:port`, so every member computes the same member ids from the same records.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The SRV service for `scheme` with the optional `--discovery-srv-name` suffix.
fn service(scheme: &str, name: &str) -> String {
    let base = if scheme == "https" { "etcd-server-ssl" } else { "etcd-server" };
    if name.is_empty() {
        base.to_string()
    } else {
        format!("{base}-{name}")
    }
}

/// The first address `host:port` resolves to (the system resolver, /etc/hosts included).
async fn first_addr(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("resolving {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("resolving {host}:{port}: no address"))
}

/// `host` and `port` of a URL (IPv6 brackets removed).
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().ok_or_else(|| anyhow::anyhow!("{url}: no port"))?;
    Ok((host, port))
}

/// The initial cluster (name -> sorted peer URLs) for member `name` advertising `mine`,
/// from the SRV records of `domain`.
pub async fn cluster(
    domain: &str,
    service_name: &str,
    name: &str,
    mine: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let resolver = hickory_resolver::Resolver::builder_tokio()
        .map_err(|e| anyhow::anyhow!("--discovery-srv: reading the resolver configuration: {e}"))?
        .build()
        .map_err(|e| anyhow::anyhow!("--discovery-srv: {e}"))?;
    let mut own = BTreeMap::new();
    for url in mine {
        let (host, port) = host_port(url)?;
        own.insert(first_addr(&host, port).await?, url.clone());
    }
    let mut cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut next_name, mut errors) = (0usize, Vec::new());
    for scheme in ["https", "http"] {
        let query = format!("_{}._tcp.{}.", service(scheme, service_name), domain.trim_end_matches('.'));
        let records = match resolver.srv_lookup(query.as_str()).await {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("{query}: {e}"));
                continue;
            }
        };
        let srvs = records.answers().iter().filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv),
            _ => None,
        });
        for srv in srvs {
            let target = srv.target.to_utf8();
            let target = target.trim_end_matches('.');
            let addr = match first_addr(target, srv.port).await {
                Ok(a) => a,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let url = format!("{scheme}://{target}:{}", srv.port);
            let member = match own.get(&addr) {
                Some(adv) if !adv.starts_with(&format!("{scheme}://")) => {
                    anyhow::bail!(
                        "--discovery-srv: {url} from DNS is this member, whose peer URL is {adv}: the schemes differ"
                    )
                }
                Some(_) => name.to_string(),
                None => {
                    next_name += 1;
                    (next_name - 1).to_string()
                }
            };
            cluster.entry(member).or_default().push(url);
        }
    }
    for urls in cluster.values_mut() {
        urls.sort();
    }
    if cluster.is_empty() {
        anyhow::bail!("--discovery-srv: no members found for {domain}: {}", errors.join("; "));
    }
    if !cluster.contains_key(name) {
        anyhow::bail!(
            "--discovery-srv: cannot find local member {name:?} ({}) in the SRV records of {domain}",
            mine.join(",")
        );
    }
    tracing::info!(?cluster, domain, "initial cluster from DNS SRV records");
    Ok(cluster)
}
