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

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Sink, Stream, TryStreamExt};
use serde::{Serialize, de::DeserializeOwned};
use std::task::{Context, Poll};
use tarpc::client::{self, Channel, RpcError};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tarpc::{ClientMessage, RequestName, Response, serde_transport};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, warn};

/// Largest frame accepted on any port: a full batch plus headroom.
pub const MAX_FRAME: usize = 16 << 20;

/// Most concurrent connections a server accepts.
pub const MAX_CONNECTIONS: usize = 512;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Opens a tarpc channel to `addr`, failing after `timeout`.
pub async fn connect<Req, Resp>(addr: &str, timeout: Duration) -> io::Result<Channel<Req, Resp>>
where
    Req: Serialize + RequestName + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    Ok(connect_watched(addr, timeout).await?.0)
}

/// Like [`connect`], plus a flag that turns true once the connection's
/// dispatch task has ended (the connection is dead).
async fn connect_watched<Req, Resp>(
    addr: &str,
    timeout: Duration,
) -> io::Result<(Channel<Req, Resp>, Arc<AtomicBool>)>
where
    Req: Serialize + RequestName + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(s) => s?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out after {timeout:?}"),
            ));
        }
    };
    stream.set_nodelay(true)?;
    let framed = tarpc::tokio_util::codec::Framed::new(stream, codec());
    let transport = serde_transport::new(framed, Bincode::default());
    let mut config = client::Config::default();
    config.max_in_flight_requests = 10_000;
    config.pending_request_buffer = 10_000;
    let client::NewClient { client, dispatch } = client::new(config, transport);
    let dead = Arc::new(AtomicBool::new(false));
    let flag = dead.clone();
    let peer = addr.to_string();
    tokio::spawn(async move {
        if let Err(e) = dispatch.await {
            debug!(%peer, error = %e, "connection broken");
        }
        flag.store(true, Ordering::Release);
    });
    Ok((client, dead))
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
/// the connection.
pub type ServerTransport<Req, Resp> = futures::stream::InspectErr<
    FirstFrameDeadline<
        serde_transport::Transport<
            FrameTimeout<TcpStream>,
            ClientMessage<Req>,
            Response<Resp>,
            Bincode<ClientMessage<Req>, Response<Resp>>,
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

/// Accepts connections on `listener` until `shutdown` resolves and hands each
/// one, as a transport, to `handle` (which runs tarpc's `BaseChannel` on it).
/// The handler is written where the service type is concrete, so the
/// compiler can see that its futures are `Send`; see [`execute!`](crate::execute).
pub async fn serve<Req, Resp, F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    Req: DeserializeOwned + Send + Unpin + 'static,
    Resp: Serialize + Send + Unpin + 'static,
    F: Fn(ServerTransport<Req, Resp>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let framed = tarpc::tokio_util::codec::Framed::new(
            FrameTimeout::new(stream, FRAME_TIMEOUT),
            codec(),
        );
        let log: Box<dyn Fn(&io::Error) + Send + Sync> = Box::new(
            move |e| warn!(%peer, error = ?e, "dropping connection: unreadable or stalled request"),
        );
        let transport = FirstFrameDeadline::new(
            serde_transport::new(framed, Bincode::default()),
            FIRST_REQUEST_TIMEOUT,
        )
        .inspect_err(log);
        let conn = handle(transport);
        tokio::spawn(async move {
            let _permit = permit;
            conn.await;
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

/// A channel and the flag that turns true when its connection dies.
type Watched<Req, Resp> = (Channel<Req, Resp>, Arc<AtomicBool>);

/// A client connection to one address that reconnects on demand.
///
/// A call made while no connection exists first connects; a connect failure
/// means the request surely was not sent, which callers may rely on.
pub struct Link<Req, Resp> {
    addr: String,
    connect_timeout: Duration,
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
    /// A link to `addr`; nothing is connected until the first call.
    pub fn new(addr: impl Into<String>, connect_timeout: Duration) -> Self {
        Link {
            addr: addr.into(),
            connect_timeout,
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
        let mut guard = self.channel.lock().await;
        if let Some((c, dead)) = guard.as_ref()
            && !dead.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let (c, dead) = connect_watched(&self.addr, self.connect_timeout)
            .await
            .map_err(|source| LinkError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        *guard = Some((c.clone(), dead));
        Ok(c)
    }

    /// Runs `call` on the channel; a broken connection is dropped so the next
    /// call reconnects.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, LinkError>
    where
        F: FnOnce(Channel<Req, Resp>) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let channel = self.channel().await?;
        match call(channel).await {
            Ok(v) => Ok(v),
            Err(source) => {
                if matches!(
                    source,
                    RpcError::Shutdown | RpcError::Channel(_) | RpcError::Send(_)
                ) {
                    self.channel.lock().await.take();
                }
                Err(LinkError::Rpc {
                    addr: self.addr.clone(),
                    source,
                })
            }
        }
    }
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
    /// Links to these addresses; the first is tried first.
    pub fn new(addrs: &[String], connect_timeout: Duration) -> Self {
        LeaderLinks {
            links: addrs
                .iter()
                .map(|a| Link::new(a.trim(), connect_timeout))
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
