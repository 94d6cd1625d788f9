//! The tarpc services a coordinator replica serves: `Admin`, `Coord` for
//! participants and `CoordPeer` (Raft) for the other replicas. Each call
//! becomes an [`Event`] for the driver loop. On a replica that does not
//! lead, participant calls are answered `not the leader` with the leader's
//! address, and callers move on. A dropped handler (deadline or client
//! cancel) leaves a write queued and decided as usual, which is why a
//! client that times out must treat the outcome as unknown; so must one
//! whose coordinator lost its leadership while the write waited.

use std::sync::Arc;

use protobuf::Message as _;
use quintet_common::error::Error;
use quintet_common::rpc::{
    Admin, Coord, CoordPeer, CoordinatorStatus, Decision, Health, RegisterReply, RegisterRequest,
    RenewReply, RenewRequest, ResolveRequest,
};
use quintet_common::tls::Caller;
use quintet_common::types::{Op, OpResult};
use tarpc::context::Context;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::driver::Event;

/// The handler tarpc clones per request.
#[derive(Clone)]
pub struct Handler {
    /// The driver's inbox.
    pub events: mpsc::UnboundedSender<Event>,
    /// This replica's id.
    pub id: u32,
    /// Participant addresses as configured (id i at index i-1).
    pub addresses: Arc<Vec<String>>,
    /// Who this connection's caller is (its TLS certificate).
    pub caller: Caller,
}

fn stopped() -> Error {
    Error::ShuttingDown("the coordinator is stopping; retry later".into())
}

impl Handler {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.events.send(make(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

impl Admin for Handler {
    async fn health(self, _: Context) -> Result<Health, Error> {
        match self.ask(Event::Health).await {
            Ok(h) => Ok(h),
            Err(_) => Ok(Health {
                role: "coordinator".into(),
                id: self.id,
                ready: false,
                detail: "stopping".into(),
            }),
        }
    }
}

impl Coord for Handler {
    async fn register(self, _: Context, req: RegisterRequest) -> Result<RegisterReply, Error> {
        self.caller.require_participant(req.id)?;
        let n = self.addresses.len() as u32;
        if req.id == 0 || req.id > n {
            return Err(Error::ClusterMismatch(format!(
                "this coordinator has participants 1..={n}; id {} is not one of them (check --id and --participants)",
                req.id
            )));
        }
        // Catch-up sources are given out by the address a participant
        // advertises, else by the one this coordinator reaches it on.
        let advertise = if req.advertise.is_empty() {
            self.addresses[req.id as usize - 1].clone()
        } else {
            req.advertise.clone()
        };
        let status = self
            .ask(|tx| Event::Register(req.id, advertise.clone(), tx))
            .await??;
        if let Some(c) = req.cluster
            && c != status.cluster
        {
            return Err(Error::ClusterMismatch(format!(
                "participant {} belongs to cluster {c}, this coordinator runs cluster {}",
                req.id, status.cluster
            )));
        }
        info!(
            node = req.id,
            incarnation = %format!("{:016x}", req.incarnation),
            applied = req.applied,
            %advertise,
            "participant registered"
        );
        Ok(RegisterReply {
            cluster: status.cluster,
            epoch: status.epoch,
            committed: status.committed,
        })
    }

    async fn renew(self, _: Context, mut req: RenewRequest) -> Result<RenewReply, Error> {
        self.caller.require_participant(req.id)?;
        if req.advertise.is_empty()
            && let Some(addr) = self.addresses.get((req.id as usize).wrapping_sub(1))
        {
            req.advertise.clone_from(addr);
        }
        self.ask(|tx| Event::Renew(Box::new(req), tx)).await?
    }

    async fn submit(self, _: Context, op: Op) -> Result<OpResult, Error> {
        self.caller.require_a_participant()?;
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Submit(op, tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| {
            Error::OutcomeUnknown(
                "the coordinator lost its leadership (or stopped) while the write waited; it may or may not be applied: read the key to find out".into(),
            )
        })?
    }

    async fn resolve(self, _: Context, req: ResolveRequest) -> Result<Decision, Error> {
        self.caller.require_participant(req.from)?;
        let status = self.ask(Event::Status).await??;
        if req.cluster != status.cluster {
            return Err(Error::ClusterMismatch(format!(
                "participant {} belongs to cluster {}, this coordinator runs cluster {}",
                req.from, req.cluster, status.cluster
            )));
        }
        self.ask(|tx| Event::Resolve(req.batch, req.first_version, tx))
            .await?
    }

    async fn status(self, _: Context) -> Result<CoordinatorStatus, Error> {
        self.caller.require_a_participant()?;
        self.ask(Event::Status).await?
    }
}

impl CoordPeer for Handler {
    async fn raft(
        self,
        _: Context,
        from: u64,
        cluster: u64,
        msgs: Vec<Vec<u8>>,
    ) -> Result<(), Error> {
        self.caller.require_coordinator_replica(from)?;
        let mut decoded = Vec::with_capacity(msgs.len());
        for m in &msgs {
            match raft::eraftpb::Message::parse_from_bytes(m) {
                Ok(m) => decoded.push(m),
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "a Raft message from coordinator {from} cannot be decoded: {e}"
                    )));
                }
            }
        }
        self.events
            .send(Event::Raft(from, cluster, decoded))
            .map_err(|_| stopped())
    }

    async fn survey(self, _: Context, from: u64) -> Result<u64, Error> {
        self.caller.require_coordinator_replica(from)?;
        self.ask(|tx| Event::Survey(from, tx)).await
    }

    async fn join(self, _: Context, id: u64, address: String) -> Result<Vec<(u64, String)>, Error> {
        self.caller.require_coordinator_replica(id)?;
        if id == 0 || id > 7 || address.trim().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "a coordinator replica asked to join as id {id} at {address:?}: give an id from 1 to 7 and an address"
            )));
        }
        self.ask(|tx| Event::Join(id, address, tx)).await?
    }
}
