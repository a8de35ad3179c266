//! Delay between members: a user-space TCP relay in front of every member's peer port.
//!
//! Each member listens for peers on its own address (`127.a.b.10+i`) and advertises a
//! front address (`127.a.b.40+i`) where a [`Front`] accepts the other members' connections
//! and relays them to the real port, dialing from the connecting member's own address — so
//! the firewall rules of partitions and packet loss (`-s member -d member`) still match the
//! relayed leg. While [`Delays`] names a member, every byte to or from it waits the set time
//! in the relay (in order: a delay line per direction), which is what a slow or distant
//! network does to Raft. `tc netem` would do the same in the kernel, but on `lo` it slows
//! every process on the machine, and many kernels (containers) lack the qdiscs.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Which member's peer traffic is delayed now, and by how much (one way).
#[derive(Clone, Default)]
pub struct Delays(Arc<RwLock<Option<(IpAddr, Duration)>>>);

impl Delays {
    /// Delay everything to and from the member at `host` by `by`, one way.
    pub fn set(&self, host: IpAddr, by: Duration) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some((host, by));
    }

    /// No delay.
    pub fn clear(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The delay now for traffic between `a` and `b`.
    fn between(&self, a: IpAddr, b: IpAddr) -> Duration {
        match *self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Some((h, by)) if h == a || h == b => by,
            _ => Duration::ZERO,
        }
    }
}

/// A relay in front of one member's peer port; stops when dropped.
pub struct Front {
    task: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Listen on `listen` and relay every connection to `target` (the member's real peer
    /// address), delayed as `delays` says.
    pub async fn start(listen: SocketAddr, target: SocketAddr, delays: Delays) -> std::io::Result<Front> {
        let listener = TcpListener::bind(listen).await?;
        let task = tokio::spawn(async move {
            while let Ok((inbound, from)) = listener.accept().await {
                let delays = delays.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = dial(from.ip(), target).await {
                        relay(inbound, outbound, from.ip(), target.ip(), delays).await;
                    }
                });
            }
        });
        Ok(Front { task })
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connect to `target` from the address `source` (any port).
async fn dial(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Relay both ways until either side closes.
async fn relay(inbound: TcpStream, outbound: TcpStream, a: IpAddr, b: IpAddr, delays: Delays) {
    let _ = inbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let up = pipe(ir, ow, a, b, delays.clone());
    let down = pipe(or, iw, a, b, delays);
    // When one direction ends, the other is dropped with it: the connection is over.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copy `r` to `w`, each chunk held until its due time (read time plus the delay then).
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    a: IpAddr,
    b: IpAddr,
    delays: Delays,
) {
    // Bounded: a stalled writer stops the reader, as a full TCP window would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + delays.between(a, b);
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut pending = VecDeque::new();
        while let Some(chunk) = rx.recv().await {
            pending.push_back(chunk);
            while let Some((due, data)) = pending.pop_front() {
                tokio::time::sleep_until(due).await;
                if w.write_all(&data).await.is_err() {
                    return;
                }
                // Take what queued meanwhile without waiting.
                while let Ok(c) = rx.try_recv() {
                    pending.push_back(c);
                }
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send `msg` through the echo and back; how long it took.
    async fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Duration {
        let t = Instant::now();
        c.write_all(msg).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).await.expect("read");
        assert_eq!(got, msg);
        t.elapsed()
    }

    #[tokio::test]
    async fn relays_in_order_and_delays_only_the_named_member() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = server.local_addr().expect("addr");
        let echo = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            loop {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.expect("write");
            }
        });
        let delays = Delays::default();
        let port = cairn_testing::free_port().expect("a free port");
        let front_addr = SocketAddr::new([127, 0, 0, 1].into(), port);
        let _front = Front::start(front_addr, target, delays.clone()).await.expect("front");
        let mut c = TcpStream::connect(front_addr).await.expect("connect");
        round_trip(&mut c, b"plain").await;
        // A different member is delayed (by more than any scheduling hiccup): this
        // connection is not.
        delays.set("127.9.9.9".parse().expect("ip"), Duration::from_secs(2));
        assert!(round_trip(&mut c, b"other").await < Duration::from_secs(2));
        // This member (127.0.0.1) is: both directions wait, and bytes keep their order.
        delays.set("127.0.0.1".parse().expect("ip"), Duration::from_millis(150));
        assert!(round_trip(&mut c, b"slow, both ways").await >= Duration::from_millis(300));
        delays.clear();
        round_trip(&mut c, b"and back to plain").await;
        drop(c);
        echo.await.expect("echo");
    }
}
