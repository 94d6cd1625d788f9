//! A TCP proxy for one link between two local nodes, which the runner can
//! cut and heal: how the local backend partitions a participant from the
//! coordinator without root (everything shares one loopback interface).
//!
//! The local backend puts one [`LinkProxy`] on each coordinator-participant
//! link and each direction of connection: the coordinator dials participant
//! N through one, participant N dials the coordinator through another.
//! Participants still listen on, and advertise, their own addresses, so
//! clients, health probes and catch-up between participants bypass every
//! proxy.
//!
//! A cut proxy is a blackhole, like a partition and unlike a refused
//! connection: it keeps accepting connections but forwards nothing, and
//! connections already open freeze (nothing more is read from or written
//! to either side), so a sender times out as it would on a real network.
//! On heal every connection that was frozen, or accepted while cut, is
//! closed, and the senders reconnect through the healed proxy. Dropping
//! the proxy stops its listener and closes every connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How long a proxy waits to connect to the far end.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A cuttable proxy from a local listening address to `upstream`.
pub struct LinkProxy {
    addr: SocketAddr,
    upstream: String,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection
    /// to `upstream` (which need not be up yet: a connection it refuses is
    /// closed, as a direct one would be refused).
    pub async fn start(upstream: String) -> anyhow::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind a proxy port on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("cannot read the proxy's port")?;
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, upstream.clone(), cut_rx));
        Ok(LinkProxy {
            addr,
            upstream,
            cut,
            task,
        })
    }

    /// Where to connect instead of the upstream.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Where connections go.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// Cuts the link: open connections freeze, new ones go nowhere.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Heals the link: frozen connections are closed, new ones are forwarded.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it drops
        // them, and with them every socket.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, cut: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // An accept error (out of descriptors, say) is transient:
                // the sender sees a refused or dropped connection and retries.
                if let Ok((client, _)) = accepted {
                    conns.spawn(serve(client, upstream.clone(), cut.clone()));
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Waits until the link's state is `want` (at once if it already is).
/// `false` when the proxy is gone.
async fn wait_for(cut: &mut watch::Receiver<bool>, want: bool) -> bool {
    cut.wait_for(|c| *c == want).await.is_ok()
}

/// One proxied connection: forwarded while the link is up, frozen when it
/// is cut, closed when it heals.
async fn serve(mut client: TcpStream, upstream: String, mut cut: watch::Receiver<bool>) {
    let cut_now = *cut.borrow_and_update();
    if !cut_now {
        let connected = tokio::select! {
            biased;
            _ = wait_for(&mut cut, true) => None,
            c = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&upstream)) => c.ok().and_then(Result::ok),
        };
        if let Some(mut server) = connected {
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                // The cut is looked at first, so nothing more is forwarded
                // once it is in effect.
                biased;
                _ = wait_for(&mut cut, true) => {}
                // Either side closed or failed: close the other, as a direct
                // connection would.
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            }
            // Cut: hold both sockets open, read and write nothing.
            wait_for(&mut cut, false).await;
            drop(server);
            return;
        }
        if !*cut.borrow() {
            // The upstream refused or did not answer: refuse too.
            return;
        }
    }
    // Accepted while cut (or cut while connecting): a blackhole until healed.
    wait_for(&mut cut, false).await;
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that echoes every byte back.
    async fn echo_server() -> (String, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, task)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn forwards_blackholes_when_cut_and_closes_frozen_connections_on_heal() {
        let (upstream, echo) = echo_server().await;
        let p = LinkProxy::start(upstream.clone()).await.expect("proxy");
        assert_eq!(p.upstream(), upstream);
        let mut a = TcpStream::connect(p.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut a, b"ping").await.expect("echo"), b"ping");

        p.cut();
        assert!(p.is_cut());
        // The open connection freezes: what is sent gets no answer.
        let frozen = tokio::time::timeout(Duration::from_millis(300), roundtrip(&mut a, b"x"));
        assert!(frozen.await.is_err(), "a cut link answered");
        // A new connection is accepted but goes nowhere.
        let mut b = TcpStream::connect(p.addr())
            .await
            .expect("accepted while cut");
        let dead = tokio::time::timeout(Duration::from_millis(300), roundtrip(&mut b, b"y"));
        assert!(dead.await.is_err(), "a connection made while cut answered");

        p.heal();
        // Both are closed by the heal: a read ends (EOF or reset), promptly.
        for s in [&mut a, &mut b] {
            let mut buf = [0u8; 8];
            let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "frozen connection not closed on heal: {r:?}"
            );
        }
        // And new connections are forwarded again.
        let mut c = TcpStream::connect(p.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut c, b"pong").await.expect("echo"), b"pong");

        drop(p);
        echo.abort();
    }
}
