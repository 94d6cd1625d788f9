//! The one error type that crosses the wire.
//!
//! Each variant tells a client what it may safely do next, which is why the
//! split is by outcome (surely not applied, outcome unknown, bad request)
//! rather than by where the error arose. Transport failures are not here:
//! they arrive as tarpc's `RpcError` and callers keep the two apart.

use serde::{Deserialize, Serialize};

/// A domain error returned inside a successful RPC.
#[derive(thiserror::Error, Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Error {
    /// The write's batch was aborted; nothing was applied anywhere. Safe to retry.
    #[error("aborted: {0}")]
    Aborted(String),
    /// The request was malformed or over a limit; nothing was applied.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A node needed for the request cannot be reached; nothing was applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A linearizable read waited too long on an undecided write of its key.
    #[error("in doubt, retry: {0}")]
    InDoubt(String),
    /// The replica cannot prove it is current, so it refuses linearizable reads.
    #[error("replica not current: {0}")]
    NotCurrent(String),
    /// The write was handed on but its fate is unknown; it may have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The peer belongs to another cluster or has another id.
    #[error("cluster mismatch: {0}")]
    ClusterMismatch(String),
    /// The node is stopping; nothing was applied.
    #[error("shutting down: {0}")]
    ShuttingDown(String),
    /// A bug or a broken disk; the message says which.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when the write surely did not take effect (safe to retry blindly).
    pub fn surely_not_applied(&self) -> bool {
        !matches!(self, Error::OutcomeUnknown(_) | Error::Internal(_))
    }
}
