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
    /// The replica is not a member of the current view (a learner, or cut
    /// off), so it refuses linearizable reads. Retry at another replica.
    #[error("not a member: {0}")]
    NotMember(String),
    /// The replica's lease ran out (it cannot reach the coordinator, or was
    /// paused), so it refuses linearizable reads. Retry at another replica.
    #[error("lease expired: {0}")]
    LeaseExpired(String),
    /// The request carried no token, or one this replica does not know
    /// (the cluster has an auth file). Nothing was done.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The token's role does not allow this request (a `read` token
    /// writing). Nothing was done.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// This coordinator replica is not the leader; ask `leader` (its
    /// address, empty while no leader is known). Nothing was done.
    #[error("not the leader: {detail}")]
    NotLeader {
        /// The leader's address, if known.
        leader: String,
        /// What this replica knows.
        detail: String,
    },
}

impl Error {
    /// True when the write surely did not take effect (safe to retry blindly).
    pub fn surely_not_applied(&self) -> bool {
        !matches!(self, Error::OutcomeUnknown(_) | Error::Internal(_))
    }

    /// The kind, as the message starts (`not a member`, `lease expired`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Error::Aborted(_) => "aborted",
            Error::InvalidArgument(_) => "invalid request",
            Error::Unavailable(_) => "unavailable",
            Error::InDoubt(_) => "in doubt",
            Error::NotCurrent(_) => "replica not current",
            Error::OutcomeUnknown(_) => "outcome unknown",
            Error::ClusterMismatch(_) => "cluster mismatch",
            Error::ShuttingDown(_) => "shutting down",
            Error::Internal(_) => "internal error",
            Error::NotMember(_) => "not a member",
            Error::LeaseExpired(_) => "lease expired",
            Error::NotLeader { .. } => "not the leader",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission denied",
        }
    }

    /// True for a read this replica refuses but another may serve.
    pub fn read_elsewhere(&self) -> bool {
        matches!(
            self,
            Error::NotCurrent(_)
                | Error::NotMember(_)
                | Error::LeaseExpired(_)
                | Error::ShuttingDown(_)
        )
    }
}
