//! Accepted connections of the client and peer ports: Nagle off, TLS (rustls) finished
//! within a deadline, and etcd's client ping policy (`--grpc-keepalive-min-time`) enforced on
//! the HTTP/2 frames after TLS. Knows nothing of what is served on them.
//!
//! The ping policy follows grpc-go's server: a PING from the client sooner than the minimum
//! time after its previous one, with no HEADERS or DATA frame in between in either direction,
//! is a strike; the third strike closes the connection ("too many pings"). Frames the server
//! sends count as grpc-go counts them: a Go client sends BDP pings while it receives a large
//! response, and those must not cost it the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpIncoming};

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
/// Strikes a client may collect; one more closes the connection.
const MAX_STRIKES: u32 = 2;

/// Where the frame scanner is.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Matching the client preface (bytes matched so far).
    Preface(usize),
    /// Reading a frame header.
    Header([u8; FRAME_HEADER], usize),
    /// Skipping a frame's payload (bytes left).
    Payload(usize),
    /// Not HTTP/2 (the JSON gateway over HTTP/1.1): nothing to watch.
    Off,
}

/// Finds the frame boundaries in one direction of an HTTP/2 connection.
#[derive(Debug)]
struct Frames {
    scan: Scan,
}

impl Frames {
    /// Scan `bytes`, calling `frame(type, flags)` at each frame header.
    fn feed(&mut self, mut bytes: &[u8], frame: &mut dyn FnMut(u8, u8) -> io::Result<()>) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Off => return Ok(()),
                Scan::Preface(matched) => {
                    let n = (PREFACE.len() - *matched).min(bytes.len());
                    if bytes[..n] != PREFACE[*matched..*matched + n] {
                        self.scan = Scan::Off;
                        return Ok(());
                    }
                    *matched += n;
                    bytes = &bytes[n..];
                    if *matched == PREFACE.len() {
                        self.scan = Scan::Header([0; FRAME_HEADER], 0);
                    }
                }
                Scan::Header(head, have) => {
                    let n = (FRAME_HEADER - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == FRAME_HEADER {
                        let head = *head;
                        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                        frame(head[3], head[4])?;
                        self.scan = if len == 0 { Scan::Header([0; FRAME_HEADER], 0) } else { Scan::Payload(len) };
                    }
                }
                Scan::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.scan = Scan::Header([0; FRAME_HEADER], 0);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The client ping policy of one connection.
#[derive(Debug)]
struct PingPolicy {
    min_time: Duration,
    /// What the client sends (from its preface on).
    incoming: Frames,
    /// What the server sends (frames from the first byte).
    outgoing: Frames,
    last_ping: Option<Instant>,
    /// A HEADERS or DATA frame went either way since the last ping.
    active: bool,
    strikes: u32,
}

impl PingPolicy {
    fn new(min_time: Duration) -> Self {
        PingPolicy {
            min_time,
            incoming: Frames { scan: Scan::Preface(0) },
            outgoing: Frames { scan: Scan::Header([0; FRAME_HEADER], 0) },
            last_ping: None,
            active: false,
            strikes: 0,
        }
    }

    /// Look at bytes the client sent; an error when it pinged too often.
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Self { incoming, min_time, last_ping, active, strikes, .. } = self;
        incoming.feed(bytes, &mut |kind, flags| {
            match kind {
                DATA | HEADERS => {
                    *active = true;
                    *strikes = 0;
                }
                PING if flags & ACK == 0 => {
                    let now = Instant::now();
                    if last_ping.is_some_and(|last| now.duration_since(last) < *min_time) && !*active {
                        *strikes += 1;
                        if *strikes > MAX_STRIKES {
                            tracing::warn!(
                                min_time = ?min_time,
                                "closing a connection whose client pings too often (--grpc-keepalive-min-time)"
                            );
                            return Err(io::Error::other("too_many_pings"));
                        }
                    }
                    *last_ping = Some(now);
                    *active = false;
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// Look at bytes the server sent (a response's HEADERS or DATA excuses the next ping).
    fn sent(&mut self, bytes: &[u8]) {
        if matches!(self.incoming.scan, Scan::Off) {
            return;
        }
        let Self { outgoing, active, strikes, .. } = self;
        let _ = outgoing.feed(bytes, &mut |kind, _| {
            if kind == DATA || kind == HEADERS {
                *active = true;
                *strikes = 0;
            }
            Ok(())
        });
    }
}

/// An accepted connection (plain TCP or TLS over it) under the ping policy, its first
/// header block checked for an `:authority` h2 would refuse ([`crate::authority`]).
pub struct Accepted<IO> {
    io: IO,
    policy: PingPolicy,
    /// Until the connection proves it needs no mending (its first header block).
    mend: Option<Box<crate::authority::Mend>>,
    /// Mended bytes not yet read by the server.
    mended: Vec<u8>,
}

impl<IO> Accepted<IO> {
    fn new(io: IO, min_time: Duration) -> Self {
        Accepted { io, policy: PingPolicy::new(min_time), mend: Some(Box::default()), mended: Vec::new() }
    }
}

impl<IO: Connected> Connected for Accepted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Accepted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.mended.is_empty() {
                let n = this.mended.len().min(buf.remaining());
                buf.put_slice(&this.mended[..n]);
                this.mended.drain(..n);
                return Poll::Ready(this.policy.feed(&buf.filled()[buf.filled().len() - n..]));
            }
            let Some(mend) = this.mend.as_mut() else {
                // The usual path: the server reads the connection directly.
                let before = buf.filled().len();
                return match Pin::new(&mut this.io).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => Poll::Ready(this.policy.feed(&buf.filled()[before..])),
                    other => other,
                };
            };
            let mut raw = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    mend.feed(rb.filled(), &mut this.mended)?;
                    if mend.done() {
                        this.mend = None;
                    }
                }
                other => return other,
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Accepted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.policy.sent(&buf[..n]);
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for b in bufs {
                let part = n.min(b.len());
                this.policy.sent(&b[..part]);
                n -= part;
                if n == 0 {
                    break;
                }
            }
        }
        written
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn tcp(listener: TcpListener) -> TcpIncoming {
    // Nagle off: small gRPC frames must not wait for a delayed ACK (40 ms a request on Linux).
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Plain connections accepted on `listener`.
pub fn plain(listener: TcpListener, min_time: Duration) -> impl Stream<Item = io::Result<Accepted<TcpStream>>> {
    tcp(listener).map(move |c| c.map(|io| Accepted::new(io, min_time)))
}

/// TLS connections accepted on `listener`: each handshake runs on its own (a client that
/// stalls it holds up nobody) and is dropped after [`HANDSHAKE_TIMEOUT`].
pub fn tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    min_time: Duration,
) -> ReceiverStream<io::Result<Accepted<tokio_rustls::server::TlsStream<TcpStream>>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut incoming = tcp(listener);
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                c = incoming.next() => c,
            };
            let stream = match next {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::debug!("accept: {e}");
                    continue;
                }
                None => return,
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(Accepted::new(io, min_time))).await;
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_client_pinging_too_often_is_cut_off_on_the_third_strike() {
        let mut p = PingPolicy::new(Duration::from_secs(5));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
                                              // Fed one byte at a time: frames are found however the reads cut them.
        for b in &bytes {
            p.feed(std::slice::from_ref(b)).expect("preface and settings");
        }
        let ping = frame(PING, 0, &[7; 8]);
        p.feed(&ping).expect("first ping");
        p.feed(&frame(PING, ACK, &[7; 8])).expect("acks are not pings");
        p.feed(&ping).expect("strike 1");
        // A request in between: no strike, and the count starts again.
        p.feed(&frame(HEADERS, 0x4, &[0; 20])).expect("headers");
        p.feed(&ping).expect("after a request");
        p.feed(&ping).expect("strike 1");
        p.feed(&ping).expect("strike 2");
        assert!(p.feed(&ping).is_err(), "strike 3 closes the connection");
    }

    #[test]
    fn pings_while_the_server_sends_a_response_are_no_strikes() {
        // A Go client sends a BDP ping for each burst of a large response it receives.
        let mut p = PingPolicy::new(Duration::from_secs(5));
        p.feed(PREFACE).expect("preface");
        p.feed(&frame(HEADERS, 0x4, &[0; 20])).expect("request");
        let ping = frame(PING, 0, &[1; 8]);
        p.sent(&frame(0x4, 0, &[])); // SETTINGS: not a response
        for _ in 0..20 {
            // The server's DATA frame, written in two pieces (its header split too).
            let data = frame(DATA, 0, &[9; 100]);
            p.sent(&data[..5]);
            p.sent(&data[5..]);
            p.feed(&ping).expect("a ping after response data");
            p.sent(&frame(PING, ACK, &[1; 8])); // its ack excuses nothing
        }
        // Once the response is over, pinging too often is struck again.
        p.feed(&ping).expect("strike 1");
        p.feed(&ping).expect("strike 2");
        assert!(p.feed(&ping).is_err(), "strike 3");
    }

    #[test]
    fn http1_and_slow_pingers_pass() {
        let mut p = PingPolicy::new(Duration::from_secs(5));
        p.feed(b"POST /v3/kv/range HTTP/1.1\r\n\r\n").expect("http/1.1");
        for _ in 0..10 {
            p.feed(&frame(PING, 0, &[0; 8])).expect("not watched on HTTP/1.1");
        }
        let mut p = PingPolicy::new(Duration::ZERO);
        p.feed(PREFACE).expect("preface");
        for _ in 0..10 {
            p.feed(&frame(PING, 0, &[0; 8])).expect("a zero minimum allows every ping");
        }
    }
}
