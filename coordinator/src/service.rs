//! The tarpc services the coordinator serves: `Admin` and `Coord`. Each call
//! becomes an [`Event`] for the driver loop; a dropped handler (deadline or
//! client cancel) leaves the write queued and decided as usual, which is why
//! a client that times out must treat the outcome as unknown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quintet_common::error::Error;
use quintet_common::rpc::{
    Admin, Coord, CoordinatorStatus, Decision, Health, RegisterReply, RegisterRequest, RenewReply,
    RenewRequest, ResolveRequest,
};
use quintet_common::types::{ClusterId, NodeId, Op, OpResult};
use tarpc::context::Context;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::driver::Event;

/// The handler tarpc clones per request.
#[derive(Clone)]
pub struct Handler {
    /// The driver's inbox.
    pub events: mpsc::UnboundedSender<Event>,
    /// This cluster.
    pub cluster: ClusterId,
    /// Participant addresses as configured (id i at index i-1).
    pub addresses: Arc<Vec<String>>,
    /// False once stopping.
    pub ready: Arc<AtomicBool>,
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

    fn check_cluster(&self, cluster: ClusterId, from: NodeId) -> Result<(), Error> {
        if cluster != self.cluster {
            return Err(Error::ClusterMismatch(format!(
                "participant {from} belongs to cluster {cluster}, this coordinator runs cluster {}",
                self.cluster
            )));
        }
        Ok(())
    }
}

impl Admin for Handler {
    async fn health(self, _: Context) -> Result<Health, Error> {
        let ready = self.ready.load(Ordering::Acquire);
        Ok(Health {
            role: "coordinator".into(),
            id: 0,
            ready,
            detail: if ready {
                String::new()
            } else {
                "stopping".into()
            },
        })
    }
}

impl Coord for Handler {
    async fn register(self, _: Context, req: RegisterRequest) -> Result<RegisterReply, Error> {
        let n = self.addresses.len() as u32;
        if req.id == 0 || req.id > n {
            return Err(Error::ClusterMismatch(format!(
                "this coordinator has participants 1..={n}; id {} is not one of them (check --id and --participants)",
                req.id
            )));
        }
        if let Some(c) = req.cluster {
            self.check_cluster(c, req.id)?;
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
        info!(
            node = req.id,
            incarnation = %format!("{:016x}", req.incarnation),
            applied = req.applied,
            %advertise,
            "participant registered"
        );
        Ok(RegisterReply {
            cluster: self.cluster,
            epoch: status.epoch,
            committed: status.committed,
        })
    }

    async fn renew(self, _: Context, mut req: RenewRequest) -> Result<RenewReply, Error> {
        if req.advertise.is_empty()
            && let Some(addr) = self.addresses.get((req.id as usize).wrapping_sub(1))
        {
            req.advertise.clone_from(addr);
        }
        self.ask(|tx| Event::Renew(Box::new(req), tx)).await?
    }

    async fn submit(self, _: Context, op: Op) -> Result<OpResult, Error> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Submit(op, tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn resolve(self, _: Context, req: ResolveRequest) -> Result<Decision, Error> {
        self.check_cluster(req.cluster, req.from)?;
        self.ask(|tx| Event::Resolve(req.batch, req.first_version, tx))
            .await?
    }

    async fn status(self, _: Context) -> Result<CoordinatorStatus, Error> {
        self.ask(Event::Status).await
    }
}
