//! The per-key commands (`get`, `put`, `delete`) and `status`/`health`,
//! shared by the one-shot CLI, `shell` and `run`.
//!
//! A command returns a [`Reply`] (data, rendered later as text or JSON by
//! [`super::output`]) or a [`Failure`] (exit code + one line). Keeping
//! rendering out of here is what lets `run` print a JSON record per line and
//! the shell keep going after an error with the same code paths.

use std::io::{IsTerminal, Read};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use quintet_client::{Client, ClientError};
use quintet_common::rpc::Health;
use quintet_common::types::{Op, OpResult, ReadLevel, Version};

use super::output::{Output, StatusReport};
use super::{DEFAULT_ENDPOINTS, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, Global};

/// The per-key commands' arguments; the shell and `run` parse them too.
pub use quintet_client::script::{DeleteArgs, GetArgs, PutArgs, StatusArgs};

/// Arguments of `health`.
#[derive(Args, Debug, Clone)]
pub struct HealthArgs {
    /// The server to probe (coordinator or participant), e.g. 127.0.0.1:7700.
    #[arg(long, value_name = "ADDR")]
    pub addr: String,
}

/// Settings every command runs with, resolved from the global flags.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Participant addresses, in the order given.
    pub endpoints: Vec<String>,
    /// Whether --endpoints or QUINTET_ENDPOINTS was given (demo starts its own cluster otherwise).
    pub explicit_endpoints: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How results are printed.
    pub output: Output,
    /// The client token, if any.
    pub token: Option<String>,
    /// TLS settings (--cacert, --cert, --key), or why they cannot be used.
    pub tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
}

impl Ctx {
    /// Resolves the global flags.
    pub fn new(g: &Global) -> Ctx {
        let list = g.endpoints.as_deref().unwrap_or(DEFAULT_ENDPOINTS);
        Ctx {
            endpoints: list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            explicit_endpoints: g.endpoints.is_some(),
            timeout: g.timeout,
            output: g.output,
            token: g.token.clone(),
            tls: quintet_common::tls::client_config(
                g.cacert.as_deref(),
                g.tls_cert.as_deref(),
                g.tls_key.as_deref(),
            ),
        }
    }

    /// The TLS settings; a bad file is a usage error.
    pub fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, Failure> {
        self.tls.clone().map_err(Failure::usage)
    }

    /// A client for the endpoints.
    pub fn client(&self) -> Result<Client, Failure> {
        Client::new(&self.endpoints, self.timeout)
            .map(|c| c.with_token(self.token.clone()))
            .and_then(|c| c.with_tls(self.tls.clone()?))
            .map_err(Failure::usage)
    }

    /// Turns a 1-based `--at N` into an endpoint index, checking the range.
    pub fn replica_index(&self, at: usize) -> Result<usize, Failure> {
        if at == 0 || at > self.endpoints.len() {
            return Err(Failure::usage(format!(
                "--at {at} is out of range: there are {} endpoints, numbered from 1",
                self.endpoints.len()
            )));
        }
        Ok(at - 1)
    }
}

/// A failed command: the exit code and the one line to print after `error: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Exit code (2, 3 or 4).
    pub code: i32,
    /// What happened and what to do.
    pub message: String,
}

impl Failure {
    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// A failure where nothing was applied (exit 3).
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

/// Anything else that stopped a command (start-up, files): exit 3.
impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::failed(quintet_common::telemetry::error_line(&e))
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

/// What a successful command produced.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A read: the value and its version, or `None` if the key does not exist.
    Get {
        /// The key read.
        key: String,
        /// Value and version.
        found: Option<(Vec<u8>, Version)>,
    },
    /// A put was committed at `version`.
    Put {
        /// The key written.
        key: String,
        /// Its version.
        version: Version,
    },
    /// A delete was committed at `version`.
    Delete {
        /// The key deleted.
        key: String,
        /// Whether the key existed.
        deleted: bool,
        /// The version the delete took.
        version: Version,
    },
    /// The cluster's state.
    Status(StatusReport),
    /// A server's health answer.
    Health {
        /// The address probed.
        addr: String,
        /// What it said.
        health: Health,
    },
    /// Plain text (help).
    Text(String),
}

impl Reply {
    /// The exit code this reply means.
    pub fn exit_code(&self) -> i32 {
        match self {
            Reply::Get { found: None, .. } => EXIT_NOT_FOUND,
            Reply::Status(s) if !s.all_reachable() => EXIT_FAILED,
            Reply::Health { health, .. } if !health.ready => EXIT_FAILED,
            _ => EXIT_OK,
        }
    }

    /// The `error:` line to print on stderr along with the reply, if any.
    pub fn error_line(&self) -> Option<String> {
        match self {
            Reply::Status(s) if !s.all_reachable() => Some(format!(
                "{} unreachable: start the missing processes or check --endpoints",
                s.unreachable().join(", ")
            )),
            Reply::Health { addr, health } if !health.ready => Some(format!(
                "{addr} ({} {}) answered but is not ready: {}; wait or check its log",
                health.role, health.id, health.detail
            )),
            _ => None,
        }
    }
}

fn level(serializable: bool) -> ReadLevel {
    if serializable {
        ReadLevel::Serializable
    } else {
        ReadLevel::Linearizable
    }
}

/// `get KEY [--serializable] [--at N]`.
pub async fn get(ctx: &Ctx, a: &GetArgs) -> Result<Reply, Failure> {
    let client = ctx.client()?;
    let lvl = level(a.serializable);
    let answer = match a.at {
        Some(n) => {
            client
                .get_at(ctx.replica_index(n)?, a.key.as_bytes(), lvl)
                .await
        }
        None => client.get(a.key.as_bytes(), lvl).await,
    };
    let reply = answer.map_err(read_failure)?;
    Ok(Reply::Get {
        key: a.key.clone(),
        found: reply.value,
    })
}

/// A failed read changed nothing, so even "no answer" is exit 3, not the
/// write-oriented 4 (outcome unknown) that [`ClientError::exit_code`] gives.
fn read_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Unknown { endpoint, detail } => Failure::failed(format!(
            "{endpoint}: {detail}; a read changes nothing: retry, or raise --timeout"
        )),
        other => other.into(),
    }
}

/// Reads a put's value from stdin, refusing to wait on a terminal.
pub fn value_from_stdin() -> Result<Vec<u8>, Failure> {
    if std::io::stdin().is_terminal() {
        return Err(Failure::usage(
            "put needs a VALUE: give it as an argument or pipe it on stdin",
        ));
    }
    read_all_stdin().map_err(|e| Failure::failed(format!("cannot read the value from stdin: {e}")))
}

/// Reads stdin to its end.
pub fn read_all_stdin() -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf)?;
    Ok(buf)
}

/// `put KEY [VALUE] [--at N]`; `value` is already resolved (argument or stdin).
pub async fn put_value(
    ctx: &Ctx,
    key: &str,
    value: &[u8],
    at: Option<usize>,
) -> Result<Reply, Failure> {
    let client = ctx.client()?;
    let result = match at {
        Some(n) => {
            let op = Op::Put {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
            };
            client.write_at(ctx.replica_index(n)?, op).await?
        }
        None => client.put(key.as_bytes(), value).await?,
    };
    Ok(Reply::Put {
        key: key.to_string(),
        version: result.version(),
    })
}

/// `put KEY [VALUE] [--at N]` from the command line (stdin when VALUE is omitted).
pub async fn put(ctx: &Ctx, a: &PutArgs) -> Result<Reply, Failure> {
    // Check --at before blocking on stdin, so a typo fails at once.
    if let Some(n) = a.at {
        ctx.replica_index(n)?;
    }
    let value = match &a.value {
        Some(v) => v.as_bytes().to_vec(),
        None => value_from_stdin()?,
    };
    put_value(ctx, &a.key, &value, a.at).await
}

/// `delete KEY [--at N]`.
pub async fn delete(ctx: &Ctx, a: &DeleteArgs) -> Result<Reply, Failure> {
    let client = ctx.client()?;
    let result = match a.at {
        Some(n) => {
            let op = Op::Delete {
                key: a.key.as_bytes().to_vec(),
            };
            client.write_at(ctx.replica_index(n)?, op).await?
        }
        None => client.delete(a.key.as_bytes()).await?,
    };
    let deleted = matches!(result, OpResult::Delete { deleted: true, .. });
    Ok(Reply::Delete {
        key: a.key.clone(),
        deleted,
        version: result.version(),
    })
}

/// `status`.
pub async fn status(ctx: &Ctx, _a: &StatusArgs) -> Result<Reply, Failure> {
    let client = ctx.client()?;
    Ok(Reply::Status(StatusReport::gather(&client).await))
}

/// `health --addr ADDR`.
pub async fn health(ctx: &Ctx, a: &HealthArgs) -> Result<Reply, Failure> {
    let tls = ctx.tls()?;
    match quintet_client::client::health_with(&a.addr, ctx.timeout, tls.as_ref()).await {
        Ok(health) => Ok(Reply::Health {
            addr: a.addr.clone(),
            health,
        }),
        // A health probe changes nothing, so every failure is exit 3.
        Err(ClientError::Unreachable { detail }) => Err(Failure::failed(format!(
            "{}: not reachable ({detail}): check that the process is running and the address",
            a.addr
        ))),
        Err(ClientError::Unknown { detail, .. }) => Err(Failure::failed(format!(
            "{}: no answer ({detail}): the process may be stuck or not a quintet server; check its log",
            a.addr
        ))),
        Err(ClientError::Server { error, .. }) => {
            Err(Failure::failed(format!("{}: {error}", a.addr)))
        }
        Err(e @ (ClientError::Refused { .. } | ClientError::Tls { .. })) => {
            Err(Failure::failed(e.to_string()))
        }
    }
}
