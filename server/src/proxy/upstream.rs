//! The proxy's side towards the cluster: one balanced channel over every member for
//! unary calls (a member that is down is skipped once its connection fails), and channels
//! to single members, in order, for the long-lived watch streams (a broken stream moves to
//! the next member). Calls carry the caller's credentials (`token`/`authorization`
//! metadata) and its `hasleader` requirement, nothing else.

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::RangeRequest;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The metadata passed on from a client's request to the cluster.
const PASSED: [&str; 3] = ["token", "authorization", "hasleader"];

/// The cluster, as the proxy reaches it.
pub struct Upstream {
    endpoints: Vec<String>,
    balanced: Channel,
    members: Vec<Channel>,
}

impl Upstream {
    /// Channels to `list` (comma-separated `host:port` or URLs; with `tls`, `host:port` is
    /// https://); they connect lazily.
    pub fn new(list: &str, dial_timeout: Duration, tls: Option<ClientTlsConfig>) -> anyhow::Result<Upstream> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| if e.contains("://") { e.to_string() } else { format!("{scheme}://{e}") })
            .collect();
        anyhow::ensure!(!endpoints.is_empty(), "--endpoints: no endpoint given");
        let mut configured = Vec::new();
        for e in &endpoints {
            let mut ep = Endpoint::from_shared(e.clone()).map_err(|err| anyhow::anyhow!("--endpoints {e}: {err}"))?;
            if e.starts_with("https://") {
                let Some(tls) = &tls else {
                    anyhow::bail!(
                        "--endpoints {e}: an https:// member needs --cacert (and --cert/--key if it asks for one)"
                    )
                };
                ep = ep.tls_config(tls.clone()).map_err(|err| anyhow::anyhow!("--endpoints {e}: {err}"))?;
            }
            let ep = ep
                .connect_timeout(dial_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            configured.push(ep);
        }
        let members = configured.iter().map(Endpoint::connect_lazy).collect();
        let balanced = Channel::balance_list(configured.into_iter());
        Ok(Upstream { endpoints, balanced, members })
    }

    /// The members' URLs, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The channel for unary calls and short streams.
    pub fn channel(&self) -> Channel {
        self.balanced.clone()
    }

    /// The channel to member `i` (modulo their number), for a long-lived stream.
    pub fn member(&self, i: usize) -> Channel {
        self.members[i % self.members.len()].clone()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Healthy when some member answers a serializable read.
    pub async fn health(&self) -> Result<(), String> {
        let req = RangeRequest { key: b"health".to_vec(), serializable: true, count_only: true, ..Default::default() };
        let mut c = KvClient::new(self.channel());
        match tokio::time::timeout(Duration::from_secs(3), c.range(req)).await {
            Ok(Ok(_)) => Ok(()),
            // A refusal (auth, permission) still proves a member answered.
            Ok(Err(s)) if s.code() != tonic::Code::Unavailable && s.code() != tonic::Code::Unknown => Ok(()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err("no member answered within 3 s".into()),
        }
    }
}

/// The caller's credentials in `meta` (its token), as a key for what is shared per caller.
pub fn caller(meta: &tonic::metadata::MetadataMap) -> Option<Vec<u8>> {
    ["token", "authorization"].iter().find_map(|k| meta.get(*k)).map(|v| v.as_bytes().to_vec())
}

/// `msg` as a request to the cluster, with the credentials (and leader requirement) of
/// the client's request metadata `from`.
pub fn pass<T>(from: &tonic::metadata::MetadataMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for k in PASSED {
        if let Some(v) = from.get(k) {
            req.metadata_mut().insert(k, v.clone());
        }
    }
    req
}
