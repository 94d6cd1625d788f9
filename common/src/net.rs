//! TCP plumbing shared by every process: framing, the serve loop,
//! reconnecting client links, and a set of links to a replicated service
//! that follows its leader ([`LeaderLinks`]).
//!
//! Frames are length-delimited bincode, capped at [`MAX_FRAME`]: a huge length
//! prefix, a truncated frame or garbage bytes fail decoding, which ends that
//! one connection with a warning and leaves every other connection alone.
//! Connections are capped too (a semaphore, as in mini-redis), so a client
//! that connects and stalls can hold at most one slot, and only for a while:
//! a connection must deliver its first request within
//! [`FIRST_REQUEST_TIMEOUT`], and a frame that has started must finish
//! within [`FRAME_TIMEOUT`]. A connection may have at most
//! [`MAX_IN_FLIGHT_PER_CONNECTION`] requests in flight.
//!
//! Every connection is TCP or TLS over TCP ([`Dial`] on the calling side,
//! a server config passed to [`serve`]); everything above the byte stream
//! is one code path. A TLS server refuses a connection whose handshake
//! fails (or that speaks plain TCP: it answers those with a TLS alert, so
//! a plain client can say what to fix) with one warning line, at most a
//! few per second ([`RefusalLog`]). A caller sees a refused handshake as
//! [`LinkError::Tls`]: nothing was sent.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Sink, Stream, TryStreamExt};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use serde::{Serialize, de::DeserializeOwned};
use std::task::{Context, Poll};
use tarpc::client::{self, Channel, RpcError};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tarpc::{ClientMessage, RequestName, Response, serde_transport};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, warn};

use crate::tls::{Caller, TlsProblem};

/// Largest frame accepted on any port: a full batch plus headroom.
pub const MAX_FRAME: usize = 16 << 20;

/// Most concurrent connections a server accepts.
pub const MAX_CONNECTIONS: usize = 512;

pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// How a link reaches its server: plain TCP, or TLS checking that the
/// server's certificate names `name` (a node's name, or the host dialed).
#[derive(Clone, Default)]
pub enum Dial {
    /// Plain TCP.
    #[default]
    Plain,
    /// TLS with this config, expecting this name.
    Tls {
        /// The client config (trusted CA, this side's certificate).
        config: Arc<ClientConfig>,
        /// The name the server's certificate must carry.
        name: ServerName<'static>,
    },
}

impl Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Plain => write!(f, "plain"),
            Dial::Tls { name, .. } => write!(f, "tls({})", name.to_str()),
        }
    }
}

impl Dial {
    /// TLS to the server named `name`.
    pub fn tls(config: Arc<ClientConfig>, name: &str) -> Result<Dial, String> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("{name:?} cannot be a TLS server name: {e}"))?;
        Ok(Dial::Tls { config, name })
    }

    /// TLS to `addr` (HOST:PORT), checking the server's certificate
    /// against HOST, as clients do.
    pub fn tls_to(config: Arc<ClientConfig>, addr: &str) -> Result<Dial, String> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        Dial::tls(config, host.trim_start_matches('[').trim_end_matches(']'))
    }

    fn name(&self) -> String {
        match self {
            Dial::Plain => String::new(),
            Dial::Tls { name, .. } => name.to_str().into_owned(),
        }
    }
}

/// Opens a plain tarpc channel to `addr`, failing after `timeout`.
pub async fn connect<Req, Resp>(addr: &str, timeout: Duration) -> io::Result<Channel<Req, Resp>>
where
    Req: Serialize + RequestName + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    Ok(connect_watched(addr, timeout, &Dial::Plain).await?.0)
}

/// A TLS handshake that failed after the TCP connection was made.
#[derive(Debug)]
struct HandshakeFailed(TlsProblem);

impl std::fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for HandshakeFailed {}

/// What a plain client reads when the server speaks TLS.
#[derive(Debug)]
struct TlsRequired;

impl std::fmt::Display for TlsRequired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server answered in TLS")
    }
}

impl std::error::Error for TlsRequired {}

/// A plain client's stream that fails with [`TlsRequired`] when the
/// server's first byte starts a TLS record (an alert or a handshake):
/// a quintet frame starts with its length, whose first byte is 0 or 1.
struct ExpectPlain<S> {
    inner: S,
    checked: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for ExpectPlain<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !self.checked
            && let Poll::Ready(Ok(())) = polled
            && let Some(&first) = buf.filled().get(before)
        {
            self.checked = true;
            if first == 0x15 || first == 0x16 {
                return Poll::Ready(Err(io::Error::other(TlsRequired)));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ExpectPlain<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One connection's byte stream, plain or TLS, either side.
pub enum Conn {
    /// Plain TCP as a client: watches for a TLS answer.
    PlainClient(ExpectPlainTcp),
    /// Plain TCP as a server.
    Plain(TcpStream),
    /// TLS over TCP (either side).
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

/// A client's plain TCP stream (see [`Conn::PlainClient`]).
pub struct ExpectPlainTcp(ExpectPlain<TcpStream>);

macro_rules! each_conn {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut *$self {
            Conn::PlainClient(ExpectPlainTcp($s)) => $e,
            Conn::Plain($s) => $e,
            Conn::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_conn!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_conn!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_conn!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_conn!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Connects to `addr` as `dial` says; a failed TLS handshake comes back as
/// an error holding [`HandshakeFailed`].
async fn open(addr: &str, timeout: Duration, dial: &Dial) -> io::Result<Conn> {
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out after {timeout:?}"),
        )
    };
    let started = tokio::time::Instant::now();
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(s) => s?,
        Err(_) => return Err(timed_out()),
    };
    stream.set_nodelay(true)?;
    let (config, name) = match dial {
        Dial::Plain => {
            return Ok(Conn::PlainClient(ExpectPlainTcp(ExpectPlain {
                inner: stream,
                checked: false,
            })));
        }
        Dial::Tls { config, name } => (config.clone(), name.clone()),
    };
    let shown = dial.name();
    let left = timeout.saturating_sub(started.elapsed());
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    match tokio::time::timeout(left.max(Duration::from_millis(100)), handshake).await {
        Ok(Ok(tls)) => Ok(Conn::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)))),
        Ok(Err(e)) => {
            let problem = TlsProblem::from_io(&e, &shown).unwrap_or(match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe => TlsProblem::ServerHasNoTls,
                _ => TlsProblem::Other(e.to_string()),
            });
            Err(io::Error::other(HandshakeFailed(problem)))
        }
        Err(_) => Err(io::Error::other(HandshakeFailed(TlsProblem::Other(
            format!("no TLS handshake within {timeout:?}: the server may not have TLS turned on"),
        )))),
    }
}

/// How a connection's dispatch task ended: `None` while it runs, then the
/// TLS refusal it ended with, if any.
type Ended = tokio::sync::watch::Receiver<Option<Option<TlsProblem>>>;

/// Like [`connect`], plus a flag that turns true once the connection's
/// dispatch task has ended (the connection is dead), and how it ended.
async fn connect_watched<Req, Resp>(
    addr: &str,
    timeout: Duration,
    dial: &Dial,
) -> io::Result<Watched<Req, Resp>>
where
    Req: Serialize + RequestName + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let stream = open(addr, timeout, dial).await?;
    let framed = tarpc::tokio_util::codec::Framed::new(stream, codec());
    let transport = serde_transport::new(framed, Bincode::default());
    let mut config = client::Config::default();
    config.max_in_flight_requests = 10_000;
    config.pending_request_buffer = 10_000;
    let client::NewClient { client, dispatch } = client::new(config, transport);
    let dead = Arc::new(AtomicBool::new(false));
    let flag = dead.clone();
    let peer = addr.to_string();
    let name = dial.name();
    let (ended_tx, ended) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let mut problem = None;
        if let Err(e) = dispatch.await {
            debug!(%peer, error = %e, "connection broken");
            problem = tls_refusal_in(&e, &name);
        }
        flag.store(true, Ordering::Release);
        ended_tx.send_replace(Some(problem));
    });
    Ok((client, dead, ended))
}

/// Binds `addr`, with an error that names the address and the likely cause.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => {
                "another process uses that port; stop it or pick another --listen"
            }
            io::ErrorKind::AddrNotAvailable => {
                "that address is not on this machine; check --listen"
            }
            io::ErrorKind::PermissionDenied => "not allowed to bind it; use a port above 1024",
            _ => "check --listen",
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}; {hint}")
    })
}

/// How long a new connection may take to deliver its first complete request
/// before it is dropped as stalled.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a frame may take to arrive once its first byte has: a peer
/// that stops inside a frame is dropped after this (16 MiB in 10 s is
/// 1.6 MB/s, far below any link the cluster runs on).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Most requests one connection may have in flight at a server; more are
/// refused at once (as throttled, never executed).
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// A server connection's byte stream that fails with `TimedOut` when a
/// frame started arriving more than `limit` ago and is still incomplete.
/// It follows the frame boundaries of the length-delimited codec (a 4-byte
/// big-endian length, then that many bytes) as bytes go by; between
/// frames the connection may idle as long as it likes.
pub struct FrameTimeout<S> {
    inner: S,
    limit: Duration,
    /// Bytes of the current frame's length prefix seen so far.
    header: [u8; 4],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// When the current frame's first byte arrived, as a timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FrameTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limit: Duration) -> Self {
        FrameTimeout {
            inner,
            limit,
            header: [0; 4],
            header_len: 0,
            remaining: 0,
            deadline: None,
        }
    }

    fn mid_frame(&self) -> bool {
        self.header_len > 0 || self.remaining > 0
    }

    /// Follows the frame boundaries through bytes just read.
    fn track(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if !self.mid_frame() && self.deadline.is_none() {
                self.deadline = Some(Box::pin(tokio::time::sleep(self.limit)));
            }
            if self.remaining > 0 {
                let n = bytes.len().min(self.remaining as usize);
                self.remaining -= n as u64;
                bytes = &bytes[n..];
            } else {
                self.header[self.header_len] = bytes[0];
                self.header_len += 1;
                bytes = &bytes[1..];
                if self.header_len == 4 {
                    self.header_len = 0;
                    self.remaining = u64::from(u32::from_be_bytes(self.header));
                }
            }
            if !self.mid_frame() {
                self.deadline = None;
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FrameTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = buf.filled()[before..].to_vec();
                this.track(&fresh);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "a request frame stalled: incomplete {:?} after its first byte",
                            this.limit
                        ),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FrameTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The server side of one connection: decoded requests in, responses out.
/// Decode failures and a stalled start are logged (with the peer) and end
/// the connection. Deadlines are cut to [`crate::frame::MAX_DEADLINE`].
pub type ServerTransport<Req, Resp> = futures::stream::InspectErr<
    FirstFrameDeadline<
        serde_transport::Transport<
            FrameTimeout<Conn>,
            ClientMessage<Req>,
            Response<Resp>,
            crate::frame::ServerFormat<Req, Resp>,
        >,
    >,
    Box<dyn Fn(&io::Error) + Send + Sync>,
>;

/// Fails a transport with `TimedOut` if its first item does not arrive in
/// time. Clients send a request right after connecting (links connect on
/// demand), so only a stalled or hostile peer trips it; once a request has
/// arrived the connection may idle as long as it likes.
pub struct FirstFrameDeadline<T> {
    inner: T,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> FirstFrameDeadline<T> {
    /// Wraps `inner`; the first item must arrive within `timeout`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        FirstFrameDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<T, I> Stream for FirstFrameDeadline<T>
where
    T: Stream<Item = io::Result<I>> + Unpin,
{
    type Item = io::Result<I>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = Pin::new(&mut this.inner).poll_next(cx);
        if item.is_ready() {
            this.deadline = None;
            return item;
        }
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no complete request within {FIRST_REQUEST_TIMEOUT:?} of connecting (stalled client)"
                ),
            ))));
        }
        Poll::Pending
    }
}

impl<T, I> Sink<I> for FirstFrameDeadline<T>
where
    T: Sink<I> + Unpin,
{
    type Error = T::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: I) -> Result<(), Self::Error> {
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Logs refused connections: one warning line each, at most
/// [`RefusalLog::PER_SECOND`] a second; the next line logged after a
/// burst says how many were left out.
pub struct RefusalLog {
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }
}

impl RefusalLog {
    /// Most lines a second.
    pub const PER_SECOND: u32 = 5;

    /// Logs one refusal of `peer`, unless over the rate.
    pub fn refused(&self, peer: std::net::SocketAddr, why: &str) {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = std::time::Instant::now();
        if now.duration_since(g.0) >= Duration::from_secs(1) {
            *g = (now, 0, g.2);
        }
        if g.1 >= Self::PER_SECOND {
            g.2 += 1;
            return;
        }
        g.1 += 1;
        let left_out = std::mem::take(&mut g.2);
        drop(g);
        if left_out > 0 {
            warn!(%peer, left_out, "refused a connection: {why} (and {left_out} more refusals not logged)");
        } else {
            warn!(%peer, "refused a connection: {why}");
        }
    }
}

/// The TLS alert a plain-TCP caller gets from a TLS port before it is
/// closed (fatal, protocol_version): what tells a quintet client to turn
/// TLS on.
const PLAIN_TCP_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];

/// Runs the server side of a TLS handshake, refusing plain TCP.
async fn accept_tls(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<(Conn, Caller), String> {
    use tokio::io::AsyncWriteExt as _;
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) => return Err("closed before a TLS handshake".into()),
        Ok(_) if first[0] != 0x16 => {
            use tokio::io::AsyncReadExt as _;
            let _ = stream.write_all(&PLAIN_TCP_ALERT).await;
            let _ = stream.shutdown().await;
            // Read what the client sent until it closes (briefly): closing
            // with unread bytes would reset the connection, and the client
            // might lose the alert before reading it.
            let mut sink = [0u8; 4096];
            let drain = async {
                let mut total = 0usize;
                while let Ok(n) = stream.read(&mut sink).await {
                    total += n;
                    if n == 0 || total > MAX_FRAME {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return Err(
                "plain TCP on a TLS port (the client has no TLS settings: --cacert)".into(),
            );
        }
        Ok(_) => {}
        Err(e) => return Err(format!("cannot read: {e}")),
    }
    match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
        Ok(tls) => {
            let caller = Caller::from_peer_certs(tls.get_ref().1.peer_certificates());
            Ok((
                Conn::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))),
                caller,
            ))
        }
        Err(e) => Err(crate::tls::describe_refusal(&e)),
    }
}

/// Accepts connections on `listener` until `shutdown` resolves and hands each
/// one, as a transport, to `handle` (which runs tarpc's `BaseChannel` on it)
/// with who the caller is. With `tls`, each connection first completes a
/// TLS handshake (within [`FIRST_REQUEST_TIMEOUT`]) or is refused with one
/// warning line. The handler is written where the service type is
/// concrete, so the compiler can see that its futures are `Send`; see
/// [`execute!`](crate::execute).
pub async fn serve<Req, Resp, F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    Req: DeserializeOwned + Send + Unpin + 'static,
    Resp: Serialize + Send + Unpin + 'static,
    F: Fn(ServerTransport<Req, Resp>, Caller) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handle = Arc::new(handle);
    let refusals = Arc::new(RefusalLog::default());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%peer, limit = MAX_CONNECTIONS, "connection limit reached; dropping new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let refusals = refusals.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (conn, caller) = match tls {
                None => (Conn::Plain(stream), Caller::Unverified),
                Some(config) => {
                    match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, accept_tls(stream, config))
                        .await
                    {
                        Ok(Ok(accepted)) => accepted,
                        Ok(Err(why)) => return refusals.refused(peer, &why),
                        Err(_) => {
                            return refusals.refused(
                                peer,
                                &format!("no TLS handshake within {FIRST_REQUEST_TIMEOUT:?}"),
                            );
                        }
                    }
                }
            };
            let framed = tarpc::tokio_util::codec::Framed::new(
                FrameTimeout::new(conn, FRAME_TIMEOUT),
                codec(),
            );
            let log: Box<dyn Fn(&io::Error) + Send + Sync> = Box::new(
                move |e| warn!(%peer, error = ?e, "dropping connection: unreadable or stalled request"),
            );
            let transport = FirstFrameDeadline::new(
                serde_transport::new(framed, crate::frame::ServerFormat::default()),
                FIRST_REQUEST_TIMEOUT,
            )
            .inspect_err(log);
            handle(transport, caller).await;
            debug!(%peer, "connection closed");
        });
    }
}

/// Runs a tarpc service over one server transport, each request in its own
/// task. A macro because the spawn needs the concrete service type.
#[macro_export]
macro_rules! execute {
    ($transport:expr, $service:expr) => {{
        use ::futures::StreamExt as _;
        use ::tarpc::server::Channel as _;
        let mut config = ::tarpc::server::Config::default();
        config.pending_response_buffer = 1024;
        ::tarpc::server::BaseChannel::new(config, $transport)
            .max_concurrent_requests($crate::net::MAX_IN_FLIGHT_PER_CONNECTION)
            .execute($service)
            .for_each(|response| async move {
                ::tokio::spawn(response);
            })
    }};
}

/// A channel, the flag that turns true when its connection dies, and how
/// it ended.
type Watched<Req, Resp> = (Channel<Req, Resp>, Arc<AtomicBool>, Ended);

/// A client connection to one address that reconnects on demand.
///
/// A call made while no connection exists first connects; a connect failure
/// means the request surely was not sent, which callers may rely on.
pub struct Link<Req, Resp> {
    addr: String,
    connect_timeout: Duration,
    dial: Dial,
    channel: Mutex<Option<Watched<Req, Resp>>>,
}

/// Why a call over a [`Link`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No connection could be made: the request was not sent.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The TLS handshake failed or the server refused it (or, plain,
    /// the server wants TLS): nothing was sent.
    #[error("{addr}: {problem}")]
    Tls {
        /// The address.
        addr: String,
        /// What went wrong.
        problem: TlsProblem,
    },
    /// The request may have been sent; its outcome is unknown.
    #[error("{addr}: {}", crate::rpc::describe_rpc_error(.source))]
    Rpc {
        /// The address.
        addr: String,
        /// The transport error.
        source: RpcError,
    },
}

impl LinkError {
    /// True when the request surely never reached the server: no connection,
    /// or tarpc could not even encode it into the send buffer.
    pub fn surely_not_sent(&self) -> bool {
        match self {
            LinkError::Connect { .. }
            | LinkError::Tls { .. }
            | LinkError::Rpc {
                source: RpcError::Send(_),
                ..
            } => true,
            // The server throttled it (too many in flight on the
            // connection): refused before it ran.
            LinkError::Rpc {
                source: RpcError::Server(e),
                ..
            } => e.kind == io::ErrorKind::WouldBlock,
            LinkError::Rpc { .. } => false,
        }
    }
}

impl<Req, Resp> Link<Req, Resp>
where
    Req: Serialize + RequestName + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// A plain-TCP link to `addr`; nothing is connected until the first call.
    pub fn new(addr: impl Into<String>, connect_timeout: Duration) -> Self {
        Link::with_dial(addr, connect_timeout, Dial::Plain)
    }

    /// A link to `addr` that connects as `dial` says.
    pub fn with_dial(addr: impl Into<String>, connect_timeout: Duration, dial: Dial) -> Self {
        Link {
            addr: addr.into(),
            connect_timeout,
            dial,
            channel: Mutex::new(None),
        }
    }

    /// The address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The current channel, connecting if there is none or the old
    /// connection is known to be dead. A request is never handed to a
    /// connection that had already died, so a failure to connect here is the
    /// one failure that proves a request was not sent.
    pub async fn channel(&self) -> Result<Channel<Req, Resp>, LinkError> {
        Ok(self.watched().await?.0)
    }

    async fn watched(&self) -> Result<(Channel<Req, Resp>, Ended), LinkError> {
        let mut guard = self.channel.lock().await;
        if let Some((c, dead, ended)) = guard.as_ref()
            && !dead.load(Ordering::Acquire)
        {
            return Ok((c.clone(), ended.clone()));
        }
        let (c, dead, ended) = connect_watched(&self.addr, self.connect_timeout, &self.dial)
            .await
            .map_err(|source| {
                match source
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<HandshakeFailed>())
                {
                    Some(HandshakeFailed(problem)) => LinkError::Tls {
                        addr: self.addr.clone(),
                        problem: problem.clone(),
                    },
                    None => LinkError::Connect {
                        addr: self.addr.clone(),
                        source,
                    },
                }
            })?;
        *guard = Some((c.clone(), dead, ended.clone()));
        Ok((c, ended))
    }

    /// Runs `call` on the channel; a broken connection is dropped so the next
    /// call reconnects.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, LinkError>
    where
        F: FnOnce(Channel<Req, Resp>) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let (channel, mut ended) = self.watched().await?;
        match call(channel).await {
            Ok(v) => Ok(v),
            Err(source) => {
                let broken = matches!(
                    source,
                    RpcError::Shutdown | RpcError::Channel(_) | RpcError::Send(_)
                );
                if broken {
                    self.channel.lock().await.take();
                }
                // A server that refused this side's certificate says so
                // only after the client's handshake; the connection's end
                // tells (at once: it ended when the call failed).
                let mut refused = refused_by_tls(&source, &self.dial.name());
                if refused.is_none() && broken {
                    let wait = ended.wait_for(|e| e.is_some());
                    if let Ok(Ok(end)) =
                        tokio::time::timeout(Duration::from_millis(200), wait).await
                    {
                        refused = end.clone().flatten();
                    }
                }
                if let Some(problem) = refused {
                    return Err(LinkError::Tls {
                        addr: self.addr.clone(),
                        problem,
                    });
                }
                Err(LinkError::Rpc {
                    addr: self.addr.clone(),
                    source,
                })
            }
        }
    }
}

/// The TLS refusal a failed call's connection ended with, if it did: a
/// TLS answer to plain TCP, or a TLS alert (a server that refuses this
/// side's certificate says so only after the client's handshake is done).
/// A server that refused the handshake ran nothing.
fn refused_by_tls(e: &RpcError, name: &str) -> Option<TlsProblem> {
    let RpcError::Channel(_) = e else {
        return None;
    };
    tls_refusal_in(e, name)
}

/// The TLS refusal anywhere in an error's chain.
fn tls_refusal_in(e: &(dyn std::error::Error + 'static), name: &str) -> Option<TlsProblem> {
    let mut todo: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    let mut steps = 0;
    while let Some(err) = todo.pop() {
        steps += 1;
        if steps > 32 {
            break;
        }
        if err.is::<TlsRequired>() {
            return Some(TlsProblem::ServerWantsTls);
        }
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            // Only a refused certificate proves the handshake never ended;
            // any other TLS failure may come mid-connection.
            let problem = TlsProblem::from_rustls(r, name);
            return matches!(problem, TlsProblem::Refused(_)).then_some(problem);
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            todo.push(inner);
        }
        // tarpc keeps the transport's error in an Arc, whose own `Error`
        // impl skips the error it holds.
        if let Some(arc) = err.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            todo.push(&**arc);
        }
        if let Some(arc) = err.downcast_ref::<Arc<io::Error>>() {
            todo.push(&**arc);
        }
        if let Some(next) = err.source() {
            todo.push(next);
        }
    }
    None
}

impl<Req, Resp> Debug for Link<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("addr", &self.addr).finish()
    }
}

/// Links to every replica of a replicated service (the coordinator), used
/// as one: a call goes to the replica last known to lead, and moves on when
/// that one refuses the connection (the call surely was not sent) or
/// answers [`Error::NotLeader`](crate::Error::NotLeader) (it did nothing),
/// to the leader it names or else the next replica. Each replica is tried
/// at most twice per call; a call that may have reached a replica is never
/// repeated, but when it failed in transit (a timeout: the replica may be
/// cut off or paused while the others elected a new leader) the *next*
/// call starts at the next replica.
pub struct LeaderLinks<Req, Resp> {
    links: Vec<Link<Req, Resp>>,
    current: std::sync::atomic::AtomicUsize,
}

impl<Req, Resp> LeaderLinks<Req, Resp>
where
    Req: Serialize + RequestName + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// Plain-TCP links to these addresses; the first is tried first.
    pub fn new(addrs: &[String], connect_timeout: Duration) -> Self {
        LeaderLinks::with_dial(addrs, connect_timeout, Dial::Plain)
    }

    /// Links to these addresses that connect as `dial` says.
    pub fn with_dial(addrs: &[String], connect_timeout: Duration, dial: Dial) -> Self {
        LeaderLinks {
            links: addrs
                .iter()
                .map(|a| Link::with_dial(a.trim(), connect_timeout, dial.clone()))
                .collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The addresses, in the order given.
    pub fn addrs(&self) -> Vec<&str> {
        self.links.iter().map(|l| l.addr()).collect()
    }

    /// The address currently believed to lead.
    pub fn current_addr(&self) -> &str {
        let i = self.current.load(Ordering::Acquire) % self.links.len().max(1);
        self.links.get(i).map_or("", |l| l.addr())
    }

    /// Runs `call` against the leader; see the type's docs.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<Result<T, crate::Error>, LinkError>
    where
        F: FnMut(Channel<Req, Resp>) -> Fut,
        Fut: Future<Output = Result<Result<T, crate::Error>, RpcError>>,
    {
        let n = self.links.len();
        let mut last = None;
        for _ in 0..(2 * n).max(1) {
            let i = self.current.load(Ordering::Acquire) % n.max(1);
            let Some(link) = self.links.get(i) else {
                break;
            };
            let next = |hint: &str| {
                self.links
                    .iter()
                    .position(|l| !hint.is_empty() && l.addr() == hint)
                    .unwrap_or((i + 1) % n)
            };
            match link.call(&mut call).await {
                Ok(Err(crate::Error::NotLeader { leader, detail })) => {
                    self.current.store(next(&leader), Ordering::Release);
                    last = Some(Ok(Err(crate::Error::NotLeader { leader, detail })));
                }
                Err(e) if e.surely_not_sent() => {
                    self.current.store(next(""), Ordering::Release);
                    // A replica that answered says more than one that is down.
                    if !matches!(last, Some(Ok(Err(crate::Error::NotLeader { .. })))) {
                        last = Some(Err(e));
                    }
                }
                Err(e) => {
                    self.current.store(next(""), Ordering::Release);
                    return Err(e);
                }
                other => return other,
            }
        }
        last.unwrap_or_else(|| {
            Err(LinkError::Connect {
                addr: String::new(),
                source: io::Error::new(io::ErrorKind::NotFound, "no coordinator address given"),
            })
        })
    }
}

/// A tarpc context whose deadline is `timeout` from now.
pub fn context_with_timeout(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{CoordinatorRequest, CoordinatorResponse, coord_conn};
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stalls_midway_times_out_and_idle_between_frames_does_not() {
        let (mut peer, server) = tokio::io::duplex(1024);
        let mut conn = FrameTimeout::new(server, Duration::from_secs(10));
        let mut buf = [0u8; 64];
        // A whole frame (length 3), then a long idle: fine.
        peer.write_all(&[0, 0, 0, 3, b'a', b'b', b'c'])
            .await
            .unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 7);
        let idle = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await;
        assert!(idle.is_err(), "idle between frames is allowed");
        // Half a frame, then nothing: dropped after the limit.
        peer.write_all(&[0, 0, 0, 100, 1, 2]).await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 6);
        let started = tokio::time::Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_secs(9));
    }

    /// Whether `bytes` stop inside a frame, by a plain parse: whole frames
    /// (a 4-byte big-endian length, then that many bytes) one after another.
    fn ends_mid_frame(bytes: &[u8]) -> bool {
        let mut rest = bytes;
        loop {
            if rest.is_empty() {
                return false;
            }
            if rest.len() < 4 {
                return true;
            }
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            if rest.len() - 4 < len {
                return true;
            }
            rest = &rest[4 + len..];
        }
    }

    proptest! {
        /// The frame tracking behind the stall timeout agrees with a plain
        /// parse of the same bytes, however the reads split them (bytes
        /// from an untrusted peer: any lengths, 0 and huge ones included),
        /// and a timer runs exactly while a frame is incomplete.
        #[test]
        fn frame_tracking_follows_the_frames_under_any_split(
            frames in prop::collection::vec(
                (prop_oneof![0u32..6, Just(u32::MAX), any::<u32>()], prop::collection::vec(any::<u8>(), 0..8)),
                0..6,
            ),
            cuts in prop::collection::vec(0usize..40, 0..8),
        ) {
            let bytes: Vec<u8> = frames
                .iter()
                .flat_map(|(len, body)| len.to_be_bytes().into_iter().chain(body.iter().copied()))
                .collect();
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let _in_rt = rt.enter();
            let mut t = FrameTimeout::new((), Duration::from_secs(10));
            let mut at = 0;
            let mut cuts = cuts;
            cuts.push(bytes.len());
            for cut in cuts {
                let end = cut.clamp(at, bytes.len());
                t.track(&bytes[at..end]);
                at = end;
                prop_assert_eq!(t.mid_frame(), ends_mid_frame(&bytes[..at]));
                prop_assert_eq!(t.deadline.is_some(), t.mid_frame());
            }
        }
    }

    /// A plain client that reaches a TLS port learns that it needs TLS,
    /// as a refusal that surely sent nothing.
    #[tokio::test]
    async fn a_plain_call_answered_in_tls_is_a_tls_refusal() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let answering = tokio::spawn(async move {
            let (mut c, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).await;
            c.write_all(&PLAIN_TCP_ALERT).await.unwrap();
            let _ = c.shutdown().await;
            let _ = c.read(&mut buf).await;
        });
        let link: Link<CoordinatorRequest, CoordinatorResponse> =
            Link::new(addr, Duration::from_secs(1));
        let err = link
            .call(|ch| async move {
                coord_conn(ch)
                    .status(context_with_timeout(Duration::from_secs(2)))
                    .await
            })
            .await
            .expect_err("no answer from a TLS port");
        assert!(
            matches!(
                err,
                LinkError::Tls {
                    problem: TlsProblem::ServerWantsTls,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.surely_not_sent());
        answering.await.unwrap();
    }

    /// A replica that accepts connections and never answers (paused, or
    /// cut off after the handshake) makes the call time out, and the next
    /// call starts at the next replica.
    #[tokio::test]
    async fn after_a_timeout_the_next_call_starts_at_the_next_replica() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let other = "127.0.0.1:1".to_string();
        let links: LeaderLinks<CoordinatorRequest, CoordinatorResponse> = LeaderLinks::new(
            &[silent_addr.clone(), other.clone()],
            Duration::from_secs(1),
        );
        assert_eq!(links.current_addr(), silent_addr);
        let answer = links
            .call(|ch| async move {
                coord_conn(ch)
                    .status(context_with_timeout(Duration::from_millis(200)))
                    .await
            })
            .await;
        let err = answer.expect_err("the silent replica cannot answer");
        assert!(!err.surely_not_sent(), "{err}");
        assert_eq!(links.current_addr(), other);
        held.abort();
    }
}
