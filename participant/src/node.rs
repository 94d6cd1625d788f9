//! The participant driver: owns the protocol state machine, its log writer
//! and the link to the coordinator, and turns [`Step`]s into I/O.
//!
//! The state machine and the log writer live under one mutex so records are
//! appended in exactly the order the state changed. A reply leaves only after
//! everything appended so far is durable (not just this step's records): a
//! duplicate prepare must not vote YES before the first one's PREPARED record
//! reached the disk. Waiting happens after the lock is released, so fsyncs
//! batch across concurrent requests, and a cancelled handler loses nothing:
//! its records are already with the writer thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quintet_common::error::Error;
use quintet_common::net::{Link, context_with_timeout};
use quintet_common::protocol::participant::{Participant, Read, Record, Step};
use quintet_common::rpc::{
    CoordinatorRequest, CoordinatorResponse, Decision, GetReply, Health, ParticipantStatus,
    RegisterReply, RegisterRequest, ResolveRequest, WriteReply, coord_conn,
};
use quintet_common::storage::{snapshot, wal, writer::LogWriter};
use quintet_common::store::digest_hex;
use quintet_common::types::{BatchId, Limits, NodeId, Op, ReadLevel, validate_key};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Link to the coordinator.
pub type CoordinatorLink = Link<CoordinatorRequest, CoordinatorResponse>;

struct Inner {
    sm: Participant,
    log: LogWriter,
}

/// A running replica.
pub struct Node {
    id: NodeId,
    inner: Mutex<Inner>,
    decided: watch::Sender<u64>,
    coordinator: CoordinatorLink,
    limits: Limits,
    read_timeout: Duration,
    data_dir: PathBuf,
    snapshot_bytes: u64,
    snapshotting: Arc<AtomicBool>,
    ready: AtomicBool,
}

/// What the node needs besides its state.
pub struct Settings {
    /// Its id.
    pub id: NodeId,
    /// Request limits.
    pub limits: Limits,
    /// Bound on a linearizable read's wait.
    pub read_timeout: Duration,
    /// Where snapshots go.
    pub data_dir: PathBuf,
    /// Snapshot after this many bytes of log.
    pub snapshot_bytes: u64,
}

pub(crate) fn encode(record: &Record) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize(record).unwrap_or_default()
}

impl Node {
    /// Wraps a restored state machine and its log.
    pub fn new(
        settings: Settings,
        sm: Participant,
        log: LogWriter,
        coordinator: CoordinatorLink,
    ) -> Arc<Node> {
        Arc::new(Node {
            id: settings.id,
            inner: Mutex::new(Inner { sm, log }),
            decided: watch::Sender::new(0),
            coordinator,
            limits: settings.limits,
            read_timeout: settings.read_timeout,
            data_dir: settings.data_dir,
            snapshot_bytes: settings.snapshot_bytes,
            snapshotting: Arc::new(AtomicBool::new(false)),
            ready: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock ends the process (see
        // telemetry::exit_on_panic), so a poisoned lock is never observed.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds one input to the state machine, persists what it asks for and
    /// returns the reply once everything appended so far is durable.
    pub async fn step<T>(&self, f: impl FnOnce(&mut Participant) -> Step<T>) -> Result<T, Error> {
        let (reply, decided, durable) = {
            let mut g = self.lock();
            let step = f(&mut g.sm);
            for record in &step.persist {
                g.log.append(encode(record));
            }
            let durable = g.log.wait_durable(g.log.last_lsn());
            self.maybe_snapshot(&mut g);
            (step.reply, step.decided, durable)
        };
        if decided {
            self.decided.send_modify(|n| *n += 1);
        }
        if let Err(e) = durable.await {
            error!(node = self.id, error = %e, "the write-ahead log failed; stopping to protect the data");
            std::process::exit(1);
        }
        Ok(reply)
    }

    fn maybe_snapshot(&self, g: &mut Inner) {
        if g.log.bytes_since_rotate() < self.snapshot_bytes
            || self.snapshotting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // The snapshot holds the committed state at this point of the log; a
        // batch still prepared is carried into the new segment it starts.
        let (snap, carry) = g.sm.snapshot();
        let (segment, lsn) = g.log.rotate(carry.iter().map(encode).collect());
        let durable = g.log.wait_durable(lsn);
        let dir = self.data_dir.clone();
        let id = self.id;
        let flag = self.snapshotting.clone();
        let applied = snap.store.applied();
        tokio::spawn(async move {
            let result = async {
                durable.await.map_err(|e| e.to_string())?;
                tokio::task::spawn_blocking(move || {
                    let payload = bincode::serialize(&snap).map_err(|e| e.to_string())?;
                    snapshot::write_snapshot(&dir, segment, &payload).map_err(|e| e.to_string())?;
                    wal::remove_segments_before(&dir, segment).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?
            }
            .await;
            match result {
                Ok(removed) => info!(node = id, applied, segment, removed, "snapshot written"),
                Err(e) => {
                    warn!(node = id, error = %e, "snapshot failed; the log still holds everything")
                }
            }
            flag.store(false, Ordering::Release);
        });
    }
}

impl Node {
    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Marks the node ready (registered and serving) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Reads a key; a linearizable read waits (bounded) for an undecided
    /// write of the key.
    pub async fn get(&self, key: Vec<u8>, level: ReadLevel) -> Result<GetReply, Error> {
        validate_key(&key)?;
        let deadline = Instant::now() + self.read_timeout;
        let mut decided = self.decided.subscribe();
        loop {
            let (read, applied) = {
                let g = self.lock();
                (g.sm.read(&key, level)?, g.sm.store().applied())
            };
            match read {
                Read::Value(value) => return Ok(GetReply { value, applied }),
                Read::Blocked(batch) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, decided.changed()).await.is_err() {
                        return Err(Error::InDoubt(format!(
                            "the key is written by batch {batch}, still undecided after {:?}; retry, or read with --serializable",
                            self.read_timeout
                        )));
                    }
                }
            }
        }
    }

    /// Forwards a write to the coordinator; `timeout` bounds the wait.
    pub async fn write(&self, op: Op, timeout: Duration) -> Result<WriteReply, Error> {
        op.validate(&self.limits)?;
        let ctx = context_with_timeout(timeout);
        let answer = self
            .coordinator
            .call(|ch| async move { coord_conn(ch).submit(ctx, op).await })
            .await;
        match answer {
            Ok(Ok(result)) => Ok(WriteReply { result }),
            Ok(Err(e)) => Err(e),
            Err(e) if e.surely_not_sent() => Err(Error::Unavailable(format!(
                "replica {} cannot reach the coordinator ({e}); nothing was applied, retry later",
                self.id
            ))),
            Err(e) => Err(Error::OutcomeUnknown(format!(
                "replica {} lost the answer from the coordinator ({e}); the write may or may not be applied: read the key to find out",
                self.id
            ))),
        }
    }

    /// Status for operators.
    pub fn status(&self) -> ParticipantStatus {
        let g = self.lock();
        let store = g.sm.store();
        ParticipantStatus {
            id: self.id,
            cluster: g.sm.cluster(),
            applied: store.applied(),
            digest: digest_hex(store.digest()),
            pending: g.sm.pending().map(|p| p.batch.id).into_iter().collect(),
            keys: store.len() as u64,
            current: g.sm.is_current(),
        }
    }

    /// Health for probes.
    pub fn health(&self) -> Health {
        let ready = self.ready.load(Ordering::Acquire);
        Health {
            role: "participant".into(),
            id: self.id,
            ready,
            detail: if ready {
                String::new()
            } else {
                "not registered with the coordinator yet".into()
            },
        }
    }

    /// The coordinator link, for status forwarding.
    pub fn coordinator(&self) -> &CoordinatorLink {
        &self.coordinator
    }

    /// Introduces this replica to the coordinator, retrying until `patience`
    /// runs out. Identity conflicts fail at once.
    pub async fn register(&self, patience: Duration) -> anyhow::Result<RegisterReply> {
        let deadline = Instant::now() + patience;
        let req = {
            let g = self.lock();
            RegisterRequest {
                id: self.id,
                cluster: g.sm.cluster(),
                applied: g.sm.store().applied(),
            }
        };
        let mut warned = false;
        loop {
            let ctx = context_with_timeout(Duration::from_secs(5));
            match self
                .coordinator
                .call(|ch| async move { coord_conn(ch).register(ctx, req).await })
                .await
            {
                Ok(Ok(reply)) => {
                    self.lock().sm.registered(reply.cluster, reply.committed);
                    return Ok(reply);
                }
                Ok(Err(e)) => anyhow::bail!(
                    "the coordinator at {} refused this replica: {e}",
                    self.coordinator.addr()
                ),
                Err(e) if Instant::now() >= deadline => anyhow::bail!(
                    "cannot reach the coordinator at {} after {patience:?}: {e}; start it first or check --coordinator",
                    self.coordinator.addr()
                ),
                Err(e) => {
                    if !warned {
                        warn!(node = self.id, error = %e, "waiting for the coordinator");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Settles batches that stay prepared: a batch still pending at two
    /// consecutive ticks is resolved by asking the coordinator.
    pub async fn resolve_loop(self: Arc<Self>, tick: Duration) {
        let mut last: Option<BatchId> = None;
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(tick).await;
            }
            let pending = self.lock().sm.pending().map(|p| p.batch.id);
            let Some(batch) = pending else {
                last = None;
                first = false;
                continue;
            };
            if first || last == Some(batch) {
                self.resolve(batch).await;
            }
            first = false;
            last = Some(batch);
        }
    }

    async fn resolve(&self, batch: BatchId) {
        let Some(cluster) = self.lock().sm.cluster() else {
            return;
        };
        let req = ResolveRequest {
            cluster,
            from: self.id,
            batch,
        };
        let ctx = context_with_timeout(Duration::from_secs(2));
        match self
            .coordinator
            .call(|ch| async move { coord_conn(ch).resolve(ctx, req).await })
            .await
        {
            Ok(Ok(Decision::Pending)) => {}
            Ok(Ok(decision)) => {
                info!(node = self.id, %batch, ?decision, "resolved in-doubt batch");
                let _ = self.step(|sm| sm.resolved(batch, decision)).await;
            }
            Ok(Err(e)) => {
                warn!(node = self.id, %batch, error = %e, "the coordinator cannot resolve the batch")
            }
            Err(e) => {
                warn!(node = self.id, %batch, error = %e, "cannot ask the coordinator about an in-doubt batch")
            }
        }
    }

    /// Waits until everything appended to the log is durable.
    pub async fn flush(&self) {
        let durable = {
            let g = self.lock();
            g.log.wait_durable(g.log.last_lsn())
        };
        if let Err(e) = durable.await {
            error!(node = self.id, error = %e, "final log flush failed");
        }
    }
}
