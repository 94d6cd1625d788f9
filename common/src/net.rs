//! TCP plumbing shared by every process: framing, the serve loop and
//! reconnecting client links.
//!
//! Frames are length-delimited bincode, capped at [`MAX_FRAME`]: a huge length
//! prefix, a truncated frame or garbage bytes fail decoding, which ends that
//! one connection with a warning and leaves every other connection alone.
//! Connections are capped too (a semaphore, as in mini-redis), so a client
//! that connects and stalls can hold at most one slot.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use serde::{Serialize, de::DeserializeOwned};
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
    Ok(client::new(config, transport).spawn())
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

/// The server side of one connection: decoded requests in, responses out.
/// Decode failures are logged (with the peer) and end the connection.
pub type ServerTransport<Req, Resp> = futures::stream::InspectErr<
    serde_transport::Transport<
        TcpStream,
        ClientMessage<Req>,
        Response<Resp>,
        Bincode<ClientMessage<Req>, Response<Resp>>,
    >,
    Box<dyn Fn(&io::Error) + Send + Sync>,
>;

/// Accepts connections on `listener` until `shutdown` resolves and hands each
/// one, as a transport, to `handle` (which runs tarpc's `BaseChannel` on it).
/// The handler is written where the service type is concrete, so the
/// compiler can see that its futures are `Send`; see [`execute`].
pub async fn serve<Req, Resp, F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
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
        let framed = tarpc::tokio_util::codec::Framed::new(stream, codec());
        let log: Box<dyn Fn(&io::Error) + Send + Sync> =
            Box::new(move |e| warn!(%peer, error = %e, "dropping connection: unreadable request"));
        let transport = serde_transport::new(framed, Bincode::default()).inspect_err(log);
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
            .execute($service)
            .for_each(|response| async move {
                ::tokio::spawn(response);
            })
    }};
}

/// A client connection to one address that reconnects on demand.
///
/// A call made while no connection exists first connects; a connect failure
/// means the request surely was not sent, which callers may rely on.
pub struct Link<Req, Resp> {
    addr: String,
    connect_timeout: Duration,
    channel: Mutex<Option<Channel<Req, Resp>>>,
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
    /// True when the request surely never reached the server.
    pub fn surely_not_sent(&self) -> bool {
        matches!(self, LinkError::Connect { .. })
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

    /// The current channel, connecting if there is none.
    pub async fn channel(&self) -> Result<Channel<Req, Resp>, LinkError> {
        let mut guard = self.channel.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.addr, self.connect_timeout)
            .await
            .map_err(|source| LinkError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        *guard = Some(c.clone());
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

/// A tarpc context whose deadline is `timeout` from now.
pub fn context_with_timeout(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}
