//! The tarpc services a participant serves: `Admin` on both ports, `Kv`
//! for clients on the client port and `Peer` for the coordinator and for
//! learners catching up on the peer port.
//! Each method is a thin adapter to [`Node`] (or its catch-up
//! [`crate::catchup::Transfers`]); all of them are cancel-safe because the
//! node hands records to the log writer before awaiting anything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quintet_common::auth::{Role, Tokens};
use quintet_common::error::Error;
use quintet_common::net::context_with_timeout;
use quintet_common::rpc::{
    Admin, CatchupPlan, CatchupRequest, ChunkRequest, CoordinatorStatus, DecisionRequest, GetReply,
    Health, Kv, LogChunk, LogRequest, ParticipantStatus, Peer, PrepareRequest, ProbeReply,
    ProbeRequest, RevokeRequest, SnapshotChunk, Token, Vote, WriteReply, coord_conn,
};
use quintet_common::tls::Caller;
use quintet_common::types::{Op, ReadLevel};
use tarpc::context::Context;
use tracing::{Instrument, info_span};

use crate::node::Node;

/// Margin kept from the client's deadline so an "outcome unknown" answer
/// still reaches the client in time.
const FORWARD_MARGIN: Duration = Duration::from_millis(150);

/// The tokens a replica accepts: none loaded means no auth file, and
/// every client is let in. Replaced whole on SIGHUP.
pub type Auth = Arc<std::sync::RwLock<Option<Arc<Tokens>>>>;

/// The handler tarpc clones per request: the node, the client tokens, and
/// who this connection's caller is (its TLS certificate).
#[derive(Clone)]
pub struct Handler(pub Arc<Node>, pub Auth, pub Caller);

impl Handler {
    fn check(&self, token: &Token, need: Role) -> Result<(), Error> {
        let tokens = match self.1.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match tokens {
            Some(t) => t.check(token.as_deref(), need),
            None => Ok(()),
        }
    }
}

impl Admin for Handler {
    async fn health(self, _: Context) -> Result<Health, Error> {
        Ok(self.0.health())
    }
}

impl Kv for Handler {
    async fn get(
        self,
        _: Context,
        token: Token,
        key: Vec<u8>,
        level: ReadLevel,
    ) -> Result<GetReply, Error> {
        self.check(&token, Role::Read)?;
        self.0.get(key, level).await
    }

    async fn write(self, ctx: Context, token: Token, op: Op) -> Result<WriteReply, Error> {
        self.check(&token, Role::ReadWrite)?;
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        let timeout = left
            .saturating_sub(FORWARD_MARGIN)
            .max(Duration::from_millis(10));
        self.0.write(op, timeout).await
    }

    async fn status(self, _: Context, token: Token) -> Result<ParticipantStatus, Error> {
        self.check(&token, Role::Read)?;
        Ok(self.0.status())
    }

    async fn coordinator_status(
        self,
        _: Context,
        token: Token,
    ) -> Result<CoordinatorStatus, Error> {
        self.check(&token, Role::Read)?;
        let ctx = context_with_timeout(Duration::from_secs(2));
        match self
            .0
            .coordinator()
            .call(|ch| async move { coord_conn(ch).status(ctx).await })
            .await
        {
            Ok(answer) => answer,
            Err(e) => Err(Error::Unavailable(format!(
                "cannot reach the coordinator: {e}"
            ))),
        }
    }
}

impl Peer for Handler {
    async fn prepare(self, _: Context, req: PrepareRequest) -> Result<Vote, Error> {
        let span = info_span!("prepare", node = self.0.id(), batch = %req.batch.id, version = req.batch.first_version);
        async move {
            self.2.require_coordinator()?;
            let vote = self.0.prepare(req).await?;
            match &vote {
                Ok(Vote::No(reason)) => tracing::warn!(%reason, "voted no"),
                Ok(Vote::OutOfSync(reason)) => tracing::info!(%reason, "cannot vote: out of sync"),
                _ => {}
            }
            vote
        }
        .instrument(span)
        .await
    }

    async fn commit(self, _: Context, req: DecisionRequest) -> Result<(), Error> {
        self.2.require_coordinator()?;
        self.0
            .step(|sm| sm.commit(req.cluster, req.to, req.batch))
            .await?
    }

    async fn abort(self, _: Context, req: DecisionRequest) -> Result<(), Error> {
        self.2.require_coordinator()?;
        self.0
            .step(|sm| sm.abort(req.cluster, req.to, req.batch))
            .await?
    }

    async fn probe(self, _: Context, req: ProbeRequest) -> Result<ProbeReply, Error> {
        self.2.require_coordinator()?;
        self.0.probe(req).await
    }

    async fn revoke(self, _: Context, req: RevokeRequest) -> Result<(), Error> {
        self.2.require_coordinator()?;
        self.0.revoke(req)
    }

    async fn catchup_begin(self, _: Context, req: CatchupRequest) -> Result<CatchupPlan, Error> {
        self.2.require_participant(req.from)?;
        self.0.transfers.begin(&self.0, req).await
    }

    async fn catchup_chunk(self, _: Context, req: ChunkRequest) -> Result<SnapshotChunk, Error> {
        self.2.require_a_participant()?;
        self.0.transfers.chunk(&self.0, req)
    }

    async fn catchup_log(self, _: Context, req: LogRequest) -> Result<LogChunk, Error> {
        self.2.require_a_participant()?;
        self.0.transfers.log(&self.0, req)
    }
}
