//! [`Client`]: GET, PUT, DELETE and status against any replica.
//!
//! Endpoint choice follows one rule: a request goes to a random endpoint and
//! moves to the next only when it surely was not delivered (no connection
//! could be made). A write that may have reached a replica is never retried
//! blindly; it is reported as [`ClientError::Unknown`] so the caller can read
//! the key and decide. Reads also move on when a replica refuses them (it is
//! not a member, its lease ran out, it is not current, or it is stopping),
//! since a read has no effect to duplicate; only when every replica refuses
//! does the read fail ([`ClientError::Refused`]).

use std::sync::Arc;
use std::time::Duration;

use quintet_common::error::Error;
use quintet_common::net::{Dial, Link, LinkError, context_with_timeout};
use quintet_common::rpc::{
    AdminOnlyRequest, AdminOnlyResponse, CoordinatorStatus, GetReply, Health, ParticipantRequest,
    ParticipantResponse, ParticipantStatus, admin_conn, kv_conn,
};
use quintet_common::tls::TlsProblem;
use quintet_common::types::{Op, OpResult, ReadLevel};
use rustls::ClientConfig;

/// Link to one participant.
type ReplicaLink = Link<ParticipantRequest, ParticipantResponse>;

/// Why a client call failed. [`ClientError::exit_code`] maps it to the CLI's
/// exit codes: 3 = failed and surely not applied, 4 = outcome unknown.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The replica answered with an error.
    #[error("{endpoint}: {error}")]
    Server {
        /// Which replica.
        endpoint: String,
        /// What it said.
        error: Error,
    },
    /// TLS refused the connection (a certificate not trusted or refused,
    /// TLS on one side only); nothing was sent.
    #[error("{endpoint}: {detail}")]
    Tls {
        /// Which replica.
        endpoint: String,
        /// What went wrong and what to pass.
        detail: String,
    },
    /// No endpoint accepted a connection; nothing was sent.
    #[error(
        "no replica reachable ({detail}); nothing was sent: check that the cluster is up and --endpoints"
    )]
    Unreachable {
        /// What each endpoint said.
        detail: String,
    },
    /// Every replica refused a linearizable read; nothing to retry blindly.
    #[error(
        "no replica can serve a linearizable read now ({detail}); retry shortly, or read with --serializable"
    )]
    Refused {
        /// What each replica said.
        detail: String,
    },
    /// The request was sent but no answer came back.
    #[error(
        "{endpoint}: {detail}; no answer came back: a write may or may not have been applied, read the key before retrying it"
    )]
    Unknown {
        /// Which replica.
        endpoint: String,
        /// What went wrong.
        detail: String,
    },
}

impl ClientError {
    /// True when the operation surely did not take effect.
    pub fn surely_not_applied(&self) -> bool {
        match self {
            ClientError::Server { error, .. } => error.surely_not_applied(),
            ClientError::Unreachable { .. }
            | ClientError::Refused { .. }
            | ClientError::Tls { .. } => true,
            ClientError::Unknown { .. } => false,
        }
    }

    /// The CLI exit code: 3 (failed, not applied) or 4 (outcome unknown).
    pub fn exit_code(&self) -> i32 {
        if self.surely_not_applied() { 3 } else { 4 }
    }

    /// A short machine-readable kind, for summaries and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Server { error, .. } => match error {
                Error::Aborted(_) => "aborted",
                Error::InvalidArgument(_) => "invalid",
                Error::Unavailable(_) => "unavailable",
                Error::InDoubt(_) => "in_doubt",
                Error::NotCurrent(_) => "not_current",
                Error::OutcomeUnknown(_) => "unknown",
                Error::ClusterMismatch(_) => "cluster_mismatch",
                Error::ShuttingDown(_) => "shutting_down",
                Error::Internal(_) => "internal",
                Error::NotMember(_) => "not_member",
                Error::LeaseExpired(_) => "lease_expired",
                Error::NotLeader { .. } => "not_leader",
                Error::Unauthenticated(_) => "unauthenticated",
                Error::PermissionDenied(_) => "permission_denied",
            },
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Tls { .. } => "tls",
            ClientError::Refused { .. } => "refused",
            ClientError::Unknown { .. } => "timeout",
        }
    }
}

/// A client of one cluster, cheap to clone; connections are shared.
#[derive(Clone)]
pub struct Client {
    links: Arc<Vec<ReplicaLink>>,
    timeout: Duration,
    token: Option<String>,
    tls: Option<Arc<ClientConfig>>,
}

/// What a TLS problem means for someone running the CLI, and what to pass.
pub fn tls_hint(problem: &TlsProblem) -> String {
    match problem {
        TlsProblem::NotTrusted => "the server's certificate is not trusted: pass --cacert DIR/ca.crt (the CA that signed the cluster's certificates, from quintet certs init)".into(),
        TlsProblem::WrongName(name) => format!(
            "the server's certificate does not name {name}: dial a name it carries, or remake the certificates with quintet certs init --hosts {name} --force"
        ),
        TlsProblem::Expired => "the server's certificate has expired (or is not valid yet): renew the cluster's certificates (quintet certs init --force) and restart the servers, or check the clocks".into(),
        TlsProblem::Refused(why) => format!(
            "the server refused this client's certificate ({why}): pass --cert DIR/client.crt --key DIR/client.key, signed by the cluster's CA"
        ),
        TlsProblem::ServerWantsTls => "the server requires TLS: pass --cacert DIR/ca.crt (and --cert/--key if it asks for a client certificate)".into(),
        TlsProblem::ServerHasNoTls => "the server did not complete a TLS handshake: it may not have TLS turned on; drop --cacert/--cert/--key, or turn TLS on at the server".into(),
        TlsProblem::Other(e) => format!("TLS failed: {e}"),
    }
}

fn dial_for(tls: &Option<Arc<ClientConfig>>, endpoint: &str) -> Result<Dial, String> {
    match tls {
        None => Ok(Dial::Plain),
        Some(c) => Dial::tls_to(c.clone(), endpoint),
    }
}

impl Client {
    /// A client for these participant addresses; nothing connects yet.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Client, String> {
        if endpoints.is_empty() {
            return Err("no endpoints given: pass --endpoints or set QUINTET_ENDPOINTS".into());
        }
        let connect = timeout.min(Duration::from_secs(2));
        let links = endpoints
            .iter()
            .map(|e| Link::new(e.trim(), connect))
            .collect();
        Ok(Client {
            links: Arc::new(links),
            timeout,
            token: None,
            tls: None,
        })
    }

    /// The same client over TLS with `tls` (from
    /// [`quintet_common::tls::client_config`]); `None` keeps plain TCP.
    pub fn with_tls(mut self, tls: Option<Arc<ClientConfig>>) -> Result<Client, String> {
        let connect = self.timeout.min(Duration::from_secs(2));
        let links = self
            .links
            .iter()
            .map(|l| {
                Ok(Link::with_dial(
                    l.addr(),
                    connect,
                    dial_for(&tls, l.addr())?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.links = Arc::new(links);
        self.tls = tls;
        Ok(self)
    }

    /// A client with this one's timeout, token and TLS settings for other
    /// endpoints (with connections of its own).
    pub fn like(&self, endpoints: &[String]) -> Result<Client, String> {
        Client::new(endpoints, self.timeout)?
            .with_token(self.token.clone())
            .with_tls(self.tls.clone())
    }

    /// The TLS config, if the client uses TLS.
    pub fn tls(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref()
    }

    /// The same client, sending `token` with every request (for a cluster
    /// with an auth file).
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The token sent, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The endpoint addresses, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.links.iter().map(|l| l.addr().to_string()).collect()
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reads a key at a random replica.
    pub async fn get(&self, key: &[u8], level: ReadLevel) -> Result<GetReply, ClientError> {
        self.failover(true, |c, i| c.get_at(i, key, level)).await
    }

    /// Writes a key through a random replica.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<OpResult, ClientError> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.failover(false, |c, i| c.write_at(i, op.clone())).await
    }

    /// Deletes a key through a random replica.
    pub async fn delete(&self, key: &[u8]) -> Result<OpResult, ClientError> {
        let op = Op::Delete { key: key.to_vec() };
        self.failover(false, |c, i| c.write_at(i, op.clone())).await
    }

    /// Reads a key at replica `i` (index into the endpoints), no failover.
    pub async fn get_at(
        &self,
        i: usize,
        key: &[u8],
        level: ReadLevel,
    ) -> Result<GetReply, ClientError> {
        let key = key.to_vec();
        let ctx = context_with_timeout(self.timeout);
        let token = self.token.clone();
        self.call(i, |ch| async move {
            kv_conn(ch).get(ctx, token, key, level).await
        })
        .await
    }

    /// Sends a write through replica `i`, no failover.
    pub async fn write_at(&self, i: usize, op: Op) -> Result<OpResult, ClientError> {
        let ctx = context_with_timeout(self.timeout);
        let token = self.token.clone();
        self.call(
            i,
            |ch| async move { kv_conn(ch).write(ctx, token, op).await },
        )
        .await
        .map(|r| r.result)
    }

    /// Status of replica `i`.
    pub async fn status_at(&self, i: usize) -> Result<ParticipantStatus, ClientError> {
        let ctx = context_with_timeout(self.timeout);
        let token = self.token.clone();
        self.call(i, |ch| async move { kv_conn(ch).status(ctx, token).await })
            .await
    }

    /// Status of every replica, in endpoint order, queried in parallel.
    pub async fn status_all(&self) -> Vec<Result<ParticipantStatus, ClientError>> {
        futures::future::join_all((0..self.links.len()).map(|i| self.status_at(i))).await
    }

    /// The coordinator's status, asked through the first replica that answers.
    pub async fn coordinator_status(&self) -> Result<CoordinatorStatus, ClientError> {
        let mut last = None;
        for i in 0..self.links.len() {
            let ctx = context_with_timeout(self.timeout);
            let token = self.token.clone();
            match self
                .call(i, |ch| async move {
                    kv_conn(ch).coordinator_status(ctx, token).await
                })
                .await
            {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Unreachable {
            detail: "no endpoints".into(),
        }))
    }

    async fn call<T, F, Fut>(&self, i: usize, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(quintet_common::rpc::ParticipantChannel) -> Fut,
        Fut: Future<Output = Result<Result<T, Error>, tarpc::client::RpcError>>,
    {
        let link = &self.links[i % self.links.len()];
        let endpoint = link.addr().to_string();
        match link.call(f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => Err(ClientError::Server { endpoint, error }),
            Err(e @ LinkError::Connect { .. }) => Err(ClientError::Unreachable {
                detail: e.to_string(),
            }),
            Err(LinkError::Tls { problem, .. }) => Err(ClientError::Tls {
                endpoint,
                detail: tls_hint(&problem),
            }),
            Err(e) if e.surely_not_sent() => Err(ClientError::Server {
                endpoint,
                error: Error::InvalidArgument(format!(
                    "the request could not be sent ({e}); nothing was applied"
                )),
            }),
            Err(e) => Err(ClientError::Unknown {
                endpoint,
                detail: e.to_string(),
            }),
        }
    }

    async fn failover<'a, T, F, Fut>(&'a self, read: bool, f: F) -> Result<T, ClientError>
    where
        F: Fn(&'a Client, usize) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let n = self.links.len();
        let start = rand::random_range(0..n);
        let mut unreachable = Vec::new();
        let mut refused = Vec::new();
        let mut tls = None;
        for k in 0..n {
            let i = (start + k) % n;
            match f(self, i).await {
                Err(ClientError::Unreachable { detail }) => unreachable.push(detail),
                // Surely not sent; another replica may be set up right.
                Err(e @ ClientError::Tls { .. }) => {
                    tls.get_or_insert(e);
                }
                Err(ClientError::Server { error, endpoint }) if read && error.read_elsewhere() => {
                    refused.push(format!("{endpoint} {}", error.label()));
                }
                other => return other,
            }
        }
        if let Some(e) = tls
            && refused.is_empty()
        {
            return Err(e);
        }
        if refused.is_empty() {
            return Err(ClientError::Unreachable {
                detail: unreachable.join("; "),
            });
        }
        if !unreachable.is_empty() {
            refused.push(format!("{} unreachable", unreachable.len()));
        }
        Err(ClientError::Refused {
            detail: refused.join("; "),
        })
    }
}

/// Probes any quintet server (coordinator or participant) for health.
pub async fn health(addr: &str, timeout: Duration) -> Result<Health, ClientError> {
    health_with(addr, timeout, None).await
}

/// [`health`] over TLS when `tls` is given (a peer or coordinator port
/// also needs a client certificate in it).
pub async fn health_with(
    addr: &str,
    timeout: Duration,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<Health, ClientError> {
    let dial = dial_for(&tls.cloned(), addr).map_err(|detail| ClientError::Tls {
        endpoint: addr.into(),
        detail,
    })?;
    let link: Link<AdminOnlyRequest, AdminOnlyResponse> = Link::with_dial(addr, timeout, dial);
    let ctx = context_with_timeout(timeout);
    match link
        .call(|ch| async move { admin_conn(ch).health(ctx).await })
        .await
    {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(error)) => Err(ClientError::Server {
            endpoint: addr.into(),
            error,
        }),
        Err(e @ LinkError::Connect { .. }) => Err(ClientError::Unreachable {
            detail: e.to_string(),
        }),
        Err(LinkError::Tls { problem, .. }) => Err(ClientError::Tls {
            endpoint: addr.into(),
            detail: tls_hint(&problem),
        }),
        Err(e) => Err(ClientError::Unknown {
            endpoint: addr.into(),
            detail: e.to_string(),
        }),
    }
}
