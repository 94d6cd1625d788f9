//! A TCP proxy for one link between two local nodes, which the runner can
//! cut and heal: how the local backend partitions a participant from the
//! coordinator, or a coordinator replica from everyone, without root
//! (everything shares one loopback interface).
//!
//! The local backend puts one [`LinkProxy`] on each link between two
//! servers and each direction of connection: coordinator replica C dials
//! participant N through one, participant N dials replica C through
//! another, and replica A dials replica B (Raft) through a third.
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
//!
//! A proxy also stands in for its upstream's listening socket: while the
//! upstream process is down (killed, stopped, being wiped), the backend
//! tells the proxy ([`LinkProxy::refuse`]), which stops listening, so a
//! sender's connection is refused as it would be at a dead process's port,
//! not accepted and then dropped (to a sender that is a request that may
//! have arrived, an unknown outcome, where a refusal says surely not sent
//! and lets it move on to another replica at once). Once the restarted
//! upstream listens again, [`LinkProxy::accept`] listens on the same port.
//! An upstream that died by itself is noticed too: the first connection
//! the upstream refuses makes the proxy stop listening until a probe of
//! the upstream (every 50 ms) connects again.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// How long a proxy waits to connect to the far end.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a proxy whose upstream refused connections looks whether it
/// listens again.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// How long [`LinkProxy::refuse`] and [`LinkProxy::accept`] wait for the
/// listener to close or to be bound again.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// A cuttable proxy from a local listening address to `upstream`.
pub struct LinkProxy {
    addr: SocketAddr,
    upstream: String,
    cut: watch::Sender<bool>,
    /// Whether the upstream is down (the proxy then refuses connections).
    down: watch::Sender<bool>,
    /// Whether the proxy listens right now.
    listening: watch::Receiver<bool>,
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
        let (down, down_rx) = watch::channel(false);
        let (listening_tx, listening) = watch::channel(true);
        let task = tokio::spawn(accept_loop(
            listener,
            upstream.clone(),
            cut_rx,
            down_rx,
            listening_tx,
        ));
        Ok(LinkProxy {
            addr,
            upstream,
            cut,
            down,
            listening,
            task,
        })
    }

    /// The upstream is down: stop listening, so connections are refused.
    /// Returns once the listener is closed.
    pub async fn refuse(&self) -> anyhow::Result<()> {
        self.down.send_replace(true);
        self.wait_listening(false).await
    }

    /// The upstream listens again: listen on the same port again. Returns
    /// once the proxy listens.
    pub async fn accept(&self) -> anyhow::Result<()> {
        self.down.send_replace(false);
        self.wait_listening(true).await
    }

    async fn wait_listening(&self, want: bool) -> anyhow::Result<()> {
        let mut rx = self.listening.clone();
        match tokio::time::timeout(LISTEN_TIMEOUT, rx.wait_for(|l| *l == want)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => anyhow::bail!("the proxy at {} for {} is gone", self.addr, self.upstream),
            Err(_) => anyhow::bail!(
                "the proxy at {} for {} did not {} within {LISTEN_TIMEOUT:?}",
                self.addr,
                self.upstream,
                if want {
                    "listen again (port taken?)"
                } else {
                    "stop listening"
                }
            ),
        }
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

/// Accepts and serves connections; closes the listener while the upstream
/// is down (as the backend says, or as a refused connection shows) and
/// binds the same address again when it is back.
async fn accept_loop(
    first: TcpListener,
    upstream: String,
    cut: watch::Receiver<bool>,
    mut down: watch::Receiver<bool>,
    listening: watch::Sender<bool>,
) {
    let Ok(addr) = first.local_addr() else {
        return;
    };
    let mut listener = Some(first);
    let mut conns = JoinSet::new();
    let (refused_tx, mut refused) = mpsc::unbounded_channel::<()>();
    // The upstream refused a connection and has not been seen listening since.
    let mut refusing = false;
    loop {
        let told_down = *down.borrow_and_update();
        if told_down {
            // The backend knows better; when it says up, the upstream listens.
            refusing = false;
        }
        let want_down = told_down || refusing;
        if want_down && listener.is_some() {
            listener = None;
            listening.send_replace(false);
        } else if !want_down && listener.is_none() {
            // Tokio listeners set SO_REUSEADDR, so the port binds again
            // even with connections of the old listener still around.
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    listening.send_replace(true);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        let probe = async {
            if !refusing || told_down {
                return std::future::pending().await;
            }
            tokio::time::sleep(PROBE_EVERY).await;
            matches!(
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&upstream)).await,
                Ok(Ok(_))
            )
        };
        tokio::select! {
            accepted = accept => {
                // An accept error (out of descriptors, say) is transient:
                // the sender sees a refused or dropped connection and retries.
                if let Ok((client, _)) = accepted {
                    conns.spawn(serve(client, upstream.clone(), cut.clone(), refused_tx.clone()));
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            changed = down.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(()) = refused.recv() => refusing = !told_down,
            back = probe => {
                if back {
                    refusing = false;
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
async fn serve(
    mut client: TcpStream,
    upstream: String,
    mut cut: watch::Receiver<bool>,
    refused: mpsc::UnboundedSender<()>,
) {
    let cut_now = *cut.borrow_and_update();
    if !cut_now {
        let connected = tokio::select! {
            biased;
            _ = wait_for(&mut cut, true) => None,
            c = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&upstream)) => match c {
                Ok(Ok(server)) => Some(server),
                Ok(Err(e)) => {
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        // Nothing listens there: the proxy stops listening too.
                        let _ = refused.send(());
                    }
                    None
                }
                Err(_) => None,
            },
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

    #[tokio::test]
    async fn refuses_connections_while_the_upstream_is_down() {
        let (upstream, echo) = echo_server().await;
        let p = LinkProxy::start(upstream).await.expect("proxy");
        let mut a = TcpStream::connect(p.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut a, b"one").await.expect("echo"), b"one");

        p.refuse().await.expect("stops listening");
        let refused = TcpStream::connect(p.addr()).await;
        assert!(
            matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{refused:?}"
        );
        // Idempotent, and the same port comes back.
        p.refuse().await.expect("still refusing");
        p.accept().await.expect("listens again");
        p.accept().await.expect("still listening");
        let mut b = TcpStream::connect(p.addr()).await.expect("connect again");
        assert_eq!(roundtrip(&mut b, b"two").await.expect("echo"), b"two");

        drop(p);
        echo.abort();
    }

    #[tokio::test]
    async fn an_upstream_that_died_by_itself_is_refused_until_it_listens_again() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = l.local_addr().expect("addr");
        drop(l); // nothing listens there now
        let p = LinkProxy::start(upstream.to_string()).await.expect("proxy");
        // The first connection is accepted, then closed: the upstream refused it.
        let mut a = TcpStream::connect(p.addr()).await.expect("accepted");
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), a.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        // From then on the proxy refuses, as the upstream's port does.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match TcpStream::connect(p.addr()).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                other => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "still accepting: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        // The upstream comes back on its port: so does the proxy.
        let back = TcpListener::bind(upstream)
            .await
            .expect("rebind the upstream");
        let echo = tokio::spawn(async move {
            while let Ok((mut s, _)) = back.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut c = loop {
            let last = match TcpStream::connect(p.addr()).await {
                Ok(mut c) => match roundtrip(&mut c, b"hi").await {
                    Ok(_) => break c,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(std::time::Instant::now() < deadline, "not back: {last}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(roundtrip(&mut c, b"again").await.expect("echo"), b"again");
        drop(p);
        echo.abort();
    }
}
