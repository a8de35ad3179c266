//! openraft's network: each RPC to another member is one unary call on its peer port,
//! carrying the postcard-encoded openraft message, the cluster id and the target's
//! member id (the receiver rejects messages meant for another cluster or member).
//! Connections are made lazily; an unreachable peer is reported as `Unreachable` so
//! openraft backs off.

use super::{decode, encode, Member, TypeConfig};
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::RaftPayload;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// The most entry bytes sent in one AppendEntries (at least one entry is always sent).
const MAX_APPEND_BYTES: usize = 1 << 20;

/// When each member last answered a Raft RPC (how the leader tells started members).
pub type Contacts = Arc<Mutex<HashMap<u64, Instant>>>;

/// Makes a [`PeerConnection`] per target member.
#[derive(Clone)]
pub struct Network {
    /// This cluster's id, stamped on every message.
    pub cluster_id: u64,
    /// Last successful exchange with each member.
    pub contacts: Contacts,
    /// Peer traffic series.
    pub metrics: PeerMetrics,
    /// This member's id, stamped on every message as its sender.
    pub id: u64,
    /// The connections to the other members (shared with the Router).
    pub channels: Arc<PeerChannels>,
}

/// One connection per member, shared by Raft and by this member's calls to its peers
/// (the Router's forwarded writes and read-index questions). openraft 0.9 asks for a new
/// network client for every read-index round and every election (one per voter); a new
/// TCP connection each time cost a connect, a bind and an HTTP/2 handshake per
/// linearizable read round — thousands of sockets in TIME_WAIT, and with them `bind()`
/// port searches that took most of a busy leader's CPU. HTTP/2 multiplexes replication,
/// heartbeats, votes, snapshot chunks and app RPCs on the one connection; a lazy channel
/// reconnects after its member restarts.
pub struct PeerChannels {
    dial: PeerDial,
    /// Each member's peer URLs and the connection to them.
    open: Mutex<HashMap<u64, (Vec<String>, Channel)>>,
}

impl PeerChannels {
    /// No connection yet; members are dialled as `dial` says when first needed.
    pub fn new(dial: PeerDial) -> PeerChannels {
        PeerChannels { dial, open: Mutex::new(HashMap::new()) }
    }

    /// The connection to member `id` at `member`'s peer URLs (made on first use).
    pub fn get(&self, id: u64, member: &Member) -> Option<Channel> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((urls, c)) = open.get(&id) {
            // A member whose peer URLs changed (MemberUpdate) gets a new connection.
            if *urls == member.peer_urls {
                return Some(c.clone());
            }
        }
        let c = peer_channel(member, &self.dial)?;
        open.insert(id, (member.peer_urls.clone(), c.clone()));
        Some(c)
    }

    /// A peer-port client of member `id` over its connection.
    pub fn client(&self, id: u64, member: &Member) -> Option<PeerClient<Channel>> {
        Some(PeerClient::new(self.get(id, member)?).max_decoding_message_size(64 << 20))
    }
}

/// The peer traffic series etcd's alert rules read (`etcdMembersDown`,
/// `etcdMemberCommunicationSlow`), labelled with the other member's id in hex as etcd does.
#[derive(Clone)]
pub struct PeerMetrics {
    /// `etcd_network_peer_sent_failures_total{To}`: RPCs to a member that failed.
    pub sent_failures: prometheus::IntCounterVec,
    /// `etcd_network_peer_round_trip_time_seconds{To}`: heartbeat round trips (appends
    /// without entries, so the figure is the network and the peer's scheduling, not disk).
    pub round_trip: prometheus::HistogramVec,
    /// `etcd_network_peer_received_failures_total{From}`: Raft messages from a member that
    /// this one could not take (another cluster, another target, undecodable).
    pub received_failures: prometheus::IntCounterVec,
}

impl PeerMetrics {
    /// The series, not registered yet (a member's metrics register them).
    pub fn new() -> prometheus::Result<Self> {
        use prometheus::{exponential_buckets, HistogramOpts, Opts};
        Ok(PeerMetrics {
            sent_failures: prometheus::IntCounterVec::new(
                Opts::new("etcd_network_peer_sent_failures_total", "The total number of send failures from peers."),
                &["To"],
            )?,
            round_trip: prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "etcd_network_peer_round_trip_time_seconds",
                    "Round-Trip-Time histogram between peers",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 16)?),
                &["To"],
            )?,
            received_failures: prometheus::IntCounterVec::new(
                Opts::new(
                    "etcd_network_peer_received_failures_total",
                    "The total number of receive failures from peers.",
                ),
                &["From"],
            )?,
        })
    }
}

/// A lazily connected client to one member's peer port.
pub struct PeerConnection {
    cluster_id: u64,
    from: u64,
    contacts: Contacts,
    target: u64,
    client: Option<PeerClient<Channel>>,
    sent_failures: prometheus::IntCounter,
    round_trip: prometheus::Histogram,
}

/// How this member dials the others.
#[derive(Debug, Clone, Default)]
pub struct PeerDial {
    /// TLS for https:// peer URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The source address of outgoing peer connections: the member's own peer listen
    /// address when that is a loopback one, so members sharing a machine on 127.0.0.x
    /// addresses can be told apart by their packets (a test can then partition them with
    /// per-address firewall rules).
    pub source: Option<std::net::IpAddr>,
}

impl PeerDial {
    /// From the member's flags.
    pub fn of(config: &crate::Config) -> anyhow::Result<PeerDial> {
        let tls = if crate::tls::peer_tls_needed(config) {
            Some(config.peer_tls.client("peer-").map_err(|e| anyhow::anyhow!(e))?)
        } else {
            None
        };
        let source = config
            .listen_peer_urls
            .first()
            .and_then(|u| u.parse::<tonic::codegen::http::Uri>().ok())
            .and_then(|u| u.host()?.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
            .filter(|ip| ip.is_loopback());
        Ok(PeerDial { tls, source })
    }
}

/// Open a lazy channel to the first usable peer URL (over TLS with `tls` for https://).
pub fn peer_channel(member: &Member, dial: &PeerDial) -> Option<Channel> {
    member.peer_urls.iter().find_map(|u| {
        if !crate::tls::is_https(u) {
            let e = Endpoint::from_shared(u.clone()).ok()?.local_address(dial.source);
            return Some(e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true).connect_lazy());
        }
        // TLS of our own making (rustls with the member's verifier and a client certificate
        // read again when it changes), so tonic sees a plain connection to an http:// URI.
        let tls = dial.tls.clone()?;
        let plain = format!("http://{}", u.strip_prefix("https://")?);
        let e = Endpoint::from_shared(plain).ok()?;
        Some(e.connect_with_connector_lazy(tls_connector(tls, dial.source)))
    })
}

/// How long a peer connection may take to open (TCP; the TLS handshake has as long again).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Connects to the URI's host and port from `source` (if set), with Nagle off, and runs
/// the TLS handshake with `tls`.
fn tls_connector(
    tls: Arc<rustls::ClientConfig>,
    source: Option<std::net::IpAddr>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |uri: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        async move {
            let bad =
                |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("peer URL {uri}: {why}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_string();
            let port = uri.port_u16().unwrap_or(443);
            let addr = tokio::net::lookup_host((host.as_str(), port)).await?.next().ok_or_else(|| bad("no address"))?;
            let socket =
                if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {uri}"));
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await.map_err(|_| timed_out())??;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|_| bad("not a host name"))?;
            let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake).await.map_err(|_| timed_out())??;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &Member) -> Self::Network {
        let to = format!("{target:x}");
        PeerConnection {
            cluster_id: self.cluster_id,
            from: self.id,
            contacts: self.contacts.clone(),
            target,
            client: self.channels.client(target, node),
            sent_failures: self.metrics.sent_failures.with_label_values(&[&to]),
            round_trip: self.metrics.round_trip.with_label_values(&[&to]),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<u64, Member, RaftError<u64, E>>>;

impl PeerConnection {
    /// One Raft RPC to the target, counting a failure and, for a `heartbeat`, the round trip.
    async fn call<Req, Resp, E>(
        &mut self,
        method: &'static str,
        heartbeat: bool,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let started = Instant::now();
        let r = self.exchange(method, req, option).await;
        match &r {
            Ok(_) if heartbeat => self.round_trip.observe(started.elapsed().as_secs_f64()),
            Ok(_) | Err(RPCError::RemoteError(_)) => {}
            Err(_) => self.sent_failures.inc(),
        }
        r
    }

    async fn exchange<Req, Resp, E>(
        &mut self,
        method: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "member has no usable peer URL",
            ))));
        };
        let mut request = tonic::Request::new(RaftPayload {
            cluster_id: self.cluster_id,
            target: self.target,
            data: encode(req),
            from: self.from,
        });
        request.set_timeout(option.hard_ttl());
        let fut = match method {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let payload = match fut {
            Ok(r) => {
                self.contacts.lock().unwrap_or_else(|p| p.into_inner()).insert(self.target, Instant::now());
                r.into_inner()
            }
            Err(s) if s.code() == tonic::Code::Unavailable => return Err(RPCError::Unreachable(Unreachable::new(&s))),
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let res: Result<Resp, RaftError<u64, E>> =
            decode(&payload.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        // openraft gives an append one heartbeat interval: send at most about
        // MAX_APPEND_BYTES (etcd's MaxSizePerMsg) and report how far that got, so a member
        // catching up over large values never times out forever.
        let mut size = 0;
        let keep = rpc
            .entries
            .iter()
            .position(|e| {
                size += match &e.payload {
                    openraft::EntryPayload::Normal(r) => prost::Message::encoded_len(&r.0),
                    _ => 64,
                };
                size > MAX_APPEND_BYTES
            })
            .map_or(rpc.entries.len(), |i| i.max(1));
        if keep == rpc.entries.len() {
            let heartbeat = rpc.entries.is_empty();
            return self.call("append", heartbeat, &rpc, &option).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        match self.call("append", false, &rpc, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call("snapshot", false, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call("vote", false, &rpc, &option).await
    }
}
