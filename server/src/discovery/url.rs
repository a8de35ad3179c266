//! `--discovery`: etcd's discovery protocol (the one discovery.etcd.io and any etcd with
//! the v2 keys API serve), so a deployment that bootstraps its etcd members from a
//! discovery URL bootstraps Cairn members the same way.
//!
//! The URL names a directory, `<scheme>://<host>/<path>`, whose `_config/size` key holds
//! the cluster's size. Each new member:
//!
//! 1. reads the size and the directory (`discovery: size key not found`, `discovery:
//!    cluster is full` when `size` members registered before it);
//! 2. registers itself: creates `<path>/<member id in hex>` holding its
//!    `name=peer-url,...` (sorted, as etcd writes it). A registration already there with
//!    the same value is this member's own from an earlier start that stopped before its
//!    data directory was written, and is kept (etcd stops with `discovery: found duplicate
//!    id` then); another value is that error;
//! 3. watches the directory until `size` members registered, and takes the first `size`
//!    by creation index as the initial cluster.
//!
//! The member id is etcd's, computed with the discovery URL as the cluster token, so etcd
//! and Cairn members given the same flags register under the same ids. The discovery
//! server being unreachable is retried with backoff (1 s doubling to 64 s, jittered) for
//! as long as the member runs, as etcd retries; every other answer is final. This runs
//! only for a new data directory: a restarted member never asks again.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::collections::BTreeMap;
use std::time::Duration;

/// An answer of the v2 keys API: a node and the store's index.
#[derive(Debug, serde::Deserialize)]
struct Answer {
    node: Node,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Node {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    dir: bool,
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(rename = "createdIndex", default)]
    created_index: u64,
    #[serde(rename = "modifiedIndex", default)]
    modified_index: u64,
}

impl Node {
    /// The last path element: a member's id, or `_config`.
    fn base(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or_default()
    }
}

/// A v2 keys API error body.
#[derive(Debug, serde::Deserialize)]
struct ApiError {
    #[serde(rename = "errorCode")]
    code: u64,
    #[serde(default)]
    message: String,
}

/// v2 error codes the protocol tells apart.
const KEY_NOT_FOUND: u64 = 100;
const NODE_EXIST: u64 = 105;
const EVENT_INDEX_CLEARED: u64 = 401;

/// What a request can end in.
#[derive(Debug)]
enum Failure {
    /// The discovery server did not answer (connect, read, 5xx): try again later.
    Unreachable(String),
    /// An answer of the keys API.
    Api(ApiError),
    /// Anything else: final.
    Fatal(anyhow::Error),
}

/// The discovery directory at a URL, and a client for it.
pub struct Directory {
    http: ureq::Agent,
    /// `scheme://host[:port]`.
    origin: String,
    /// The directory's path, `/...` without a trailing slash.
    path: String,
}

/// A request of the v2 keys API: method, key under the directory, query, form body.
struct Call<'a> {
    put: bool,
    key: &'a str,
    query: &'a [(&'a str, &'a str)],
    form: Option<(&'a str, &'a str)>,
}

impl<'a> Call<'a> {
    fn get(key: &'a str) -> Call<'a> {
        Call { put: false, key, query: &[], form: None }
    }
}

impl Directory {
    /// The directory `url` names, reached through `proxy` (`--discovery-proxy`) if given.
    pub fn new(url: &str, proxy: Option<&str>) -> anyhow::Result<Directory> {
        let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| anyhow::anyhow!("--discovery {url}: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            anyhow::bail!("--discovery {url}: not an http:// or https:// URL");
        };
        if !matches!(scheme, "http" | "https") {
            anyhow::bail!("--discovery {url}: not an http:// or https:// URL");
        }
        let path = uri.path().trim_end_matches('/').to_string();
        if path.is_empty() {
            anyhow::bail!("--discovery {url}: the URL names no directory (a token path is needed)");
        }
        let proxy = match proxy.filter(|p| !p.is_empty()) {
            // etcd takes a bare host:port as http://host:port.
            Some(p) => {
                let p = if p.starts_with("http") { p.to_string() } else { format!("http://{p}") };
                Some(ureq::Proxy::new(&p).map_err(|e| anyhow::anyhow!("--discovery-proxy {p}: {e}"))?)
            }
            None => None,
        };
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() && scheme == "https" {
            tracing::warn!(errors = ?found.errors, "no system root certificates: the https:// discovery URL will fail");
        }
        let roots: Vec<ureq::tls::Certificate<'static>> =
            found.certs.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let http = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .proxy(proxy)
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(Directory { http, origin: format!("{scheme}://{authority}"), path })
    }

    fn url(&self, key: &str) -> String {
        if key.is_empty() {
            format!("{}{}", self.origin, self.path)
        } else {
            format!("{}{}/{key}", self.origin, self.path)
        }
    }

    /// One request (on a blocking thread: a watch is a long poll); the answer's node and
    /// the `X-Etcd-Index` header.
    async fn call(&self, c: &Call<'_>) -> Result<(Node, u64), Failure> {
        let (http, url, put) = (self.http.clone(), self.url(c.key), c.put);
        let query: Vec<(String, String)> = c.query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let form = c.form.map(|(k, v)| (k.to_string(), v.to_string()));
        let sent = tokio::task::spawn_blocking(move || {
            let mut resp = if put {
                let req = http.put(&url).query_pairs(query.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                req.send_form(form.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            } else {
                http.get(&url).query_pairs(query.iter().map(|(k, v)| (k.as_str(), v.as_str()))).call()
            }?;
            let index = resp
                .headers()
                .get("x-etcd-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let body = resp.body_mut().read_to_vec()?;
            Ok::<_, ureq::Error>((resp.status().as_u16(), index, body))
        })
        .await;
        let (status, index, body) = match sent {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Failure::Unreachable(e.to_string())),
            Err(e) => return Err(Failure::Fatal(anyhow::anyhow!("discovery: {e}"))),
        };
        if status >= 500 {
            return Err(Failure::Unreachable(format!("HTTP {status}")));
        }
        if (200..300).contains(&status) {
            let answer: Answer = serde_json::from_slice(&body)
                .map_err(|_| Failure::Fatal(anyhow::anyhow!("discovery: bad discovery endpoint")))?;
            return Ok((answer.node, index));
        }
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => Err(Failure::Api(e)),
            Err(_) => Err(Failure::Fatal(anyhow::anyhow!("discovery: bad discovery endpoint (HTTP {status})"))),
        }
    }

    /// `call`, again after a backoff while the server is unreachable.
    async fn retrying(&self, what: &str, c: Call<'_>) -> Result<(Node, u64), Failure> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(64))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self.call(&c).await {
                Err(Failure::Unreachable(e)) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(64));
                    tracing::warn!(url = %self.url(""), error = %e, ?wait, "discovery service: {what} failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// The size and the registered members, sorted by creation, and the index to watch
    /// from.
    async fn check(&self) -> anyhow::Result<(usize, Vec<Node>, u64)> {
        let size = match self.retrying("reading the size", Call::get("_config/size")).await {
            Ok((node, _)) => node
                .value
                .as_deref()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow::anyhow!("discovery: size key is bad"))?,
            Err(Failure::Api(e)) if e.code == KEY_NOT_FOUND => anyhow::bail!("discovery: size key not found"),
            Err(f) => return Err(fatal(f)),
        };
        let (dir, index) = self.retrying("reading the members", Call::get("")).await.map_err(fatal)?;
        let mut members: Vec<Node> = dir.nodes.into_iter().filter(|n| !n.dir && n.base() != "_config").collect();
        members.sort_by_key(|n| n.created_index);
        Ok((size, members, index))
    }

    /// Register member `id` with `value` (its `name=url,...`).
    async fn register(&self, id: &str, value: &str) -> anyhow::Result<()> {
        let create = Call { put: true, key: id, query: &[("prevExist", "false")], form: Some(("value", value)) };
        match self.retrying("registering", create).await {
            Ok(_) => Ok(()),
            Err(Failure::Api(e)) if e.code == NODE_EXIST => {
                let (node, _) = self.retrying("reading the registration", Call::get(id)).await.map_err(fatal)?;
                if node.value.as_deref() == Some(value) {
                    tracing::info!(id, "discovery: this member registered before (an earlier start); keeping it");
                    Ok(())
                } else {
                    anyhow::bail!("discovery: found duplicate id")
                }
            }
            Err(f) => Err(fatal(f)),
        }
    }

    /// The next member registered after `index` (a long poll), and its index.
    async fn next_after(&self, index: u64) -> Result<Node, Failure> {
        let wait_index = (index + 1).to_string();
        let query = [("wait", "true"), ("recursive", "true"), ("waitIndex", wait_index.as_str())];
        let watch = Call { put: false, key: "", query: &query, form: None };
        self.retrying("waiting for members", watch).await.map(|(node, _)| node)
    }
}

fn fatal(f: Failure) -> anyhow::Error {
    match f {
        Failure::Fatal(e) => e,
        Failure::Api(e) => anyhow::anyhow!("discovery: {} (error code {})", e.message, e.code),
        Failure::Unreachable(e) => anyhow::anyhow!("discovery: {e}"),
    }
}

/// `name=url` pairs of a member with `urls`, sorted and joined as etcd writes them.
fn registration(name: &str, urls: &[String]) -> String {
    let mut pairs: Vec<String> = urls.iter().map(|u| format!("{name}={u}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// The first `size` registrations as an initial cluster (name -> sorted peer URLs).
fn cluster_of(members: &[Node], size: usize) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in members.iter().take(size) {
        for pair in m.value.as_deref().unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
            let (name, url) =
                pair.split_once('=').ok_or_else(|| anyhow::anyhow!("discovery: invalid URL in {pair:?}"))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("discovery: invalid URL in {pair:?}");
            }
            cluster.entry(name.to_string()).or_default().push(url.to_string());
        }
    }
    if cluster.len() != size {
        anyhow::bail!("discovery: found duplicate name");
    }
    let mut urls: Vec<&String> = cluster.values().flatten().collect();
    urls.sort();
    if urls.windows(2).any(|w| w[0] == w[1]) {
        anyhow::bail!("discovery: the discovered cluster has a duplicate URL");
    }
    for u in cluster.values_mut() {
        u.sort();
    }
    Ok(cluster)
}

/// `discovery: cluster is full`: `size` members registered before this one. `cluster` is
/// theirs (name -> peer URLs), what `--discovery-fallback=proxy` serves in front of.
#[derive(Debug)]
pub struct ClusterFull {
    pub cluster: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Display for ClusterFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("discovery: cluster is full")
    }
}

impl std::error::Error for ClusterFull {}

impl ClusterFull {
    fn of(members: &[Node], size: usize) -> anyhow::Error {
        let mut sorted = members.to_vec();
        sorted.sort_by_key(|n| n.created_index);
        match cluster_of(&sorted, size) {
            Ok(cluster) => ClusterFull { cluster }.into(),
            Err(e) => e,
        }
    }
}

/// Whether `id` is not among the first `size` registrations while `size` are in.
fn full_without(members: &[Node], size: usize, id: &str) -> bool {
    members.len() >= size && !members.iter().take(size).any(|m| m.base() == id)
}

/// Register member `id` (named `name`, advertising `urls`) under the discovery URL and
/// wait for the cluster: name -> sorted peer URLs of its `size` members.
pub async fn join(
    dir: &Directory,
    id: u64,
    name: &str,
    urls: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let id = format!("{id:x}");
    let value = registration(name, urls);
    let (size, members, _) = dir.check().await?;
    if full_without(&members, size, &id) {
        return Err(ClusterFull::of(&members, size));
    }
    dir.register(&id, &value).await?;
    let (size, mut members, mut index) = dir.check().await?;
    if full_without(&members, size, &id) {
        return Err(ClusterFull::of(&members, size));
    }
    tracing::info!(url = %dir.url(""), found = members.len(), size, "discovery: registered; waiting for the others");
    while members.len() < size {
        match dir.next_after(index).await {
            Ok(node) => {
                index = node.modified_index.max(index + 1);
                let new = !node.dir
                    && node.value.is_some()
                    && node.base() != "_config"
                    && !node.key.contains("/_config/")
                    && !members.iter().any(|m| m.key == node.key);
                if new {
                    tracing::info!(peer = node.base(), "discovery: found a peer");
                    members.push(node);
                }
            }
            // Too many changes since `index` for the server's history: read it all again.
            Err(Failure::Api(e)) if e.code == EVENT_INDEX_CLEARED => {
                (_, members, index) = dir.check().await?;
            }
            Err(f) => return Err(fatal(f)),
        }
    }
    members.sort_by_key(|n| n.created_index);
    let cluster = cluster_of(&members, size)?;
    tracing::info!(?cluster, "initial cluster from the discovery service");
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, value: &str, created: u64) -> Node {
        Node {
            key: key.into(),
            value: Some(value.into()),
            dir: false,
            nodes: vec![],
            created_index: created,
            modified_index: created,
        }
    }

    #[test]
    fn registrations_are_written_and_read_as_etcd_does() {
        let urls = vec!["http://b:2380".to_string(), "http://a:2380".to_string()];
        assert_eq!(registration("m1", &urls), "m1=http://a:2380,m1=http://b:2380");
        let members = [node("/d/1", "m1=http://a:2380,m1=http://b:2380", 5), node("/d/2", "m2=http://c:2380", 6)];
        let c = cluster_of(&members, 2).unwrap();
        assert_eq!(c["m1"], ["http://a:2380", "http://b:2380"]);
        assert_eq!(c["m2"], ["http://c:2380"]);
        // Only the first `size` count.
        assert_eq!(cluster_of(&members, 1).unwrap().len(), 1);
        let dup = [node("/d/1", "m1=http://a:2380", 5), node("/d/2", "m1=http://c:2380", 6)];
        assert_eq!(cluster_of(&dup, 2).unwrap_err().to_string(), "discovery: found duplicate name");
        let same_url = [node("/d/1", "m1=http://a:2380", 5), node("/d/2", "m2=http://a:2380", 6)];
        assert!(cluster_of(&same_url, 2).unwrap_err().to_string().contains("duplicate URL"));
        let bad = [node("/d/1", "garbage", 5)];
        assert!(cluster_of(&bad, 1).unwrap_err().to_string().contains("invalid URL"));
    }

    #[test]
    fn a_member_after_the_first_size_finds_the_cluster_full() {
        let members = [node("/d/a", "x=http://a:1", 1), node("/d/b", "y=http://b:1", 2)];
        assert!(full_without(&members, 2, "c"));
        assert!(!full_without(&members, 2, "b"));
        assert!(!full_without(&members, 3, "c"));
    }

    #[test]
    fn urls_without_a_directory_or_of_another_scheme_are_refused() {
        assert!(Directory::new("http://127.0.0.1:1", None).is_err());
        assert!(Directory::new("ftp://127.0.0.1:1/x", None).is_err());
        let d = Directory::new("http://127.0.0.1:1/v2/keys/token/", None).unwrap();
        assert_eq!(d.url("_config/size"), "http://127.0.0.1:1/v2/keys/token/_config/size");
    }
}
