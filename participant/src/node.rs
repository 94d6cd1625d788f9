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
//!
//! Time: the boot clock is read under the state lock right before a
//! linearizable read checks the lease, and again after every wait, so a
//! process paused between the two can never answer from an expired lease.
//! The heartbeat loop notes the time *before* each renewal leaves, which is
//! what the lease is measured from. Catch-up (both sides) is in
//! [`crate::catchup`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quintet_common::clock;
use quintet_common::error::Error;
use quintet_common::net::{LeaderLinks, context_with_timeout};
use quintet_common::protocol::participant::{Participant, Read, Record, Step};
use quintet_common::rpc::{
    CatchupState, CatchupStatus, CoordinatorRequest, CoordinatorResponse, Decision, GetReply,
    Health, ParticipantStatus, RegisterReply, RegisterRequest, RenewRequest, ResolveRequest, Role,
    WriteReply, coord_conn,
};
use quintet_common::storage::{snapshot, wal, writer::LogWriter};
use quintet_common::store::digest_hex;
use quintet_common::types::{BatchId, Limits, NodeId, Op, ReadLevel, validate_key};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::catchup::{CatchupTask, Transfers};

/// Pause between attempts to forward a write while no coordinator leads.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Links to the coordinator replicas; calls go to the leader.
pub type CoordinatorLink = LeaderLinks<CoordinatorRequest, CoordinatorResponse>;

pub(crate) struct Inner {
    pub(crate) sm: Participant,
    pub(crate) log: LogWriter,
}

/// A running replica.
pub struct Node {
    id: NodeId,
    inner: Mutex<Inner>,
    decided: watch::Sender<u64>,
    coordinator: CoordinatorLink,
    limits: Limits,
    read_timeout: Duration,
    heartbeat: Duration,
    advertise: String,
    pub(crate) data_dir: PathBuf,
    snapshot_bytes: u64,
    /// The free space kept on the data dir's file system.
    reserve: quintet_common::storage::space::Reserve,
    /// TLS towards other participants (catch-up), if on.
    pub(crate) tls: Option<Arc<quintet_common::tls::NodeTls>>,
    pub(crate) snapshotting: Arc<AtomicBool>,
    registered: AtomicBool,
    pub(crate) catchup: Mutex<CatchupTask>,
    pub(crate) transfers: Transfers,
    /// Wakes the heartbeat loop for an early renewal (a learner that just
    /// caught up says so at once).
    pub(crate) renew_now: tokio::sync::Notify,
    /// Serializes prepares, so a learner closing a gap before one prepare
    /// does not race the next.
    prepare_turn: tokio::sync::Mutex<()>,
}

/// What the node needs besides its state.
pub struct Settings {
    /// Its id.
    pub id: NodeId,
    /// Request limits.
    pub limits: Limits,
    /// Bound on a linearizable read's wait.
    pub read_timeout: Duration,
    /// Lease renewal interval.
    pub heartbeat: Duration,
    /// The address to advertise to the coordinator (empty: its own).
    pub advertise: String,
    /// Where snapshots go.
    pub data_dir: PathBuf,
    /// Snapshot after this many bytes of log.
    pub snapshot_bytes: u64,
    /// Vote NO on prepares while the data dir's file system has less free.
    pub min_free_bytes: u64,
    /// TLS towards other participants (catch-up), if on.
    pub tls: Option<Arc<quintet_common::tls::NodeTls>>,
}

pub(crate) fn encode(record: &Record) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize(record).unwrap_or_default()
}

pub(crate) fn fatal_log(id: NodeId, e: impl std::fmt::Display) -> ! {
    error!(node = id, error = %e, "the write-ahead log failed; stopping to protect the data");
    std::process::exit(1);
}

impl Node {
    /// Wraps a restored state machine and its log.
    pub fn new(
        settings: Settings,
        sm: Participant,
        log: LogWriter,
        coordinator: CoordinatorLink,
    ) -> Arc<Node> {
        let reserve = quintet_common::storage::space::Reserve::new(
            &settings.data_dir,
            settings.min_free_bytes,
        );
        Arc::new(Node {
            id: settings.id,
            inner: Mutex::new(Inner { sm, log }),
            decided: watch::Sender::new(0),
            coordinator,
            limits: settings.limits,
            read_timeout: settings.read_timeout,
            heartbeat: settings.heartbeat,
            advertise: settings.advertise,
            data_dir: settings.data_dir,
            snapshot_bytes: settings.snapshot_bytes,
            reserve,
            tls: settings.tls,
            snapshotting: Arc::new(AtomicBool::new(false)),
            registered: AtomicBool::new(false),
            catchup: Mutex::new(CatchupTask::default()),
            transfers: Transfers::default(),
            renew_now: tokio::sync::Notify::new(),
            prepare_turn: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock ends the process (see
        // telemetry::exit_on_panic), so a poisoned lock is never observed.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn task(&self) -> MutexGuard<'_, CatchupTask> {
        self.catchup.lock().unwrap_or_else(|e| e.into_inner())
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
            self.wake_readers();
        }
        if let Err(e) = durable.await {
            fatal_log(self.id, e);
        }
        Ok(reply)
    }

    /// Lets reads blocked on an undecided batch look again.
    pub(crate) fn wake_readers(&self) {
        self.decided.send_modify(|n| *n += 1);
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

    /// Marks the node registered (or, at shutdown, not serving).
    pub fn set_registered(&self, registered: bool) {
        self.registered.store(registered, Ordering::Release);
    }

    /// Reads a key; a linearizable read waits (bounded) for an undecided
    /// write of the key, and checks membership and the lease each time it
    /// looks.
    pub async fn get(&self, key: Vec<u8>, level: ReadLevel) -> Result<GetReply, Error> {
        validate_key(&key)?;
        let deadline = Instant::now() + self.read_timeout;
        let mut decided = self.decided.subscribe();
        loop {
            let (read, applied) = {
                let g = self.lock();
                (
                    g.sm.read(&key, level, clock::now())?,
                    g.sm.store().applied(),
                )
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
        // While the coordinator replicas answer but none leads (an
        // election), the write surely went nowhere: keep trying until the
        // deadline, so a failover shows as latency rather than an error.
        // With no replica reachable at all, fail at once.
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ctx = context_with_timeout(left);
            let answer = self
                .coordinator
                .call(|ch| {
                    let op = op.clone();
                    async move { coord_conn(ch).submit(ctx, op).await }
                })
                .await;
            let retry = matches!(&answer, Ok(Err(Error::NotLeader { .. })));
            if retry && left > WRITE_RETRY_PAUSE * 2 {
                tokio::time::sleep(WRITE_RETRY_PAUSE).await;
                continue;
            }
            return match answer {
                Ok(Ok(result)) => Ok(WriteReply { result }),
                Ok(Err(Error::NotLeader { detail, .. })) => Err(Error::Unavailable(format!(
                    "replica {} found no coordinator leader in time ({detail}): an election is under way, or fewer than a majority of the coordinator replicas are up; nothing was applied",
                    self.id
                ))),
                Ok(Err(e)) => Err(e),
                Err(e) if e.surely_not_sent() => Err(Error::Unavailable(format!(
                    "replica {} cannot reach the coordinator ({e}); nothing was applied, retry later",
                    self.id
                ))),
                Err(e) => Err(Error::OutcomeUnknown(format!(
                    "replica {} lost the answer from the coordinator ({e}); the write may or may not be applied: read the key to find out",
                    self.id
                ))),
            };
        }
    }

    /// Status for operators.
    pub fn status(&self) -> ParticipantStatus {
        let catchup = self.task().status();
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
            incarnation: g.sm.incarnation(),
            epoch: g.sm.view().epoch,
            member: g.sm.is_member() && !g.sm.is_catching_up(),
            lease_ms: g.sm.lease_left(clock::now()).map(|d| d.as_millis() as u64),
            catchup,
        }
    }

    /// Health for probes: ready means a member holding a lease, i.e. a
    /// replica that serves linearizable reads.
    pub fn health(&self) -> Health {
        let task: Option<CatchupStatus> = self.task().status();
        let (member, lease, epoch) = {
            let g = self.lock();
            (
                g.sm.is_member() && !g.sm.is_catching_up(),
                g.sm.lease_left(clock::now()).is_some(),
                g.sm.view().epoch,
            )
        };
        let detail = if !self.registered.load(Ordering::Acquire) {
            "not registered with the coordinator yet".to_string()
        } else if let Some(c) = task {
            format!(
                "learner: catching up ({}) from participant {}, {} of {} bytes, {} batches",
                c.phase,
                c.source,
                c.progress.bytes_done,
                c.progress.bytes_total,
                c.progress.batches
            )
        } else if !member {
            format!("learner: not a member of view {epoch} yet")
        } else if !lease {
            "member without a lease: it cannot reach the coordinator".to_string()
        } else {
            String::new()
        };
        Health {
            role: "participant".into(),
            id: self.id,
            ready: detail.is_empty(),
            detail,
        }
    }

    /// Phase 1. A learner that follows its source but is a few batches
    /// behind this prepare first fetches them from the source; its vote does
    /// not count, so taking a round trip longer holds up nobody.
    pub async fn prepare(
        &self,
        req: quintet_common::rpc::PrepareRequest,
    ) -> Result<Result<quintet_common::rpc::Vote, Error>, Error> {
        let _turn = self.prepare_turn.lock().await;
        if let Some(vote) = self.refuse_when_disk_full() {
            return Ok(Ok(vote));
        }
        let gap = self.lock().sm.learner_gap(&req);
        if let Some(target) = gap
            && self.task().is_following()
        {
            crate::catchup::close_gap(self, target).await;
        }
        self.step(|sm| sm.prepare(&req)).await
    }

    /// A NO vote while the disk is below its reserve: nothing of the batch is
    /// written, reads go on, and the next prepare after space is freed is
    /// voted on as usual. Says so once when it starts and once when it ends.
    fn refuse_when_disk_full(&self) -> Option<quintet_common::rpc::Vote> {
        use quintet_common::storage::space::Change;
        let (short, change) = self.reserve.check();
        match (&short, change) {
            (Some(why), Some(Change::Short)) => {
                warn!(node = self.id, %why, "voting no on every write until disk space is freed")
            }
            (_, Some(Change::Recovered)) => info!(
                node = self.id,
                "disk space is back above the reserve; voting on writes again"
            ),
            _ => {}
        }
        short.map(quintet_common::rpc::Vote::No)
    }

    /// Where this replica stands, answered only once that state is durable:
    /// the coordinator may make it a member on this answer.
    pub async fn probe(
        &self,
        req: quintet_common::rpc::ProbeRequest,
    ) -> Result<quintet_common::rpc::ProbeReply, Error> {
        let (reply, durable) = {
            let g = self.lock();
            (
                g.sm.probe(req.cluster, req.to)?,
                g.log.wait_durable(g.log.last_lsn()),
            )
        };
        if let Err(e) = durable.await {
            fatal_log(self.id, e);
        }
        Ok(reply)
    }

    /// Ends the lease at once, if the revoke is meant for this replica.
    pub fn revoke(&self, req: quintet_common::rpc::RevokeRequest) -> Result<(), Error> {
        let mut g = self.lock();
        match g.sm.cluster() {
            Some(c) if c == req.cluster && req.to == self.id => {}
            _ => {
                return Err(Error::ClusterMismatch(format!(
                    "revoke for replica {} of cluster {} reached replica {}",
                    req.to, req.cluster, self.id
                )));
            }
        }
        g.sm.revoke(req.incarnation, clock::now())?;
        drop(g);
        info!(
            node = self.id,
            epoch = req.epoch,
            "lease revoked by the coordinator"
        );
        Ok(())
    }

    /// The coordinator link, for status forwarding.
    pub fn coordinator(&self) -> &CoordinatorLink {
        &self.coordinator
    }

    /// Introduces this replica to the coordinator, retrying until `patience`
    /// runs out. Identity conflicts fail at once.
    pub async fn register(
        &self,
        patience: Duration,
        advertise: String,
    ) -> anyhow::Result<RegisterReply> {
        let deadline = Instant::now() + patience;
        let req = {
            let g = self.lock();
            RegisterRequest {
                id: self.id,
                cluster: g.sm.cluster(),
                incarnation: g.sm.incarnation(),
                applied: g.sm.store().applied(),
                advertise,
            }
        };
        let mut warned = false;
        loop {
            let ctx = context_with_timeout(Duration::from_secs(5));
            match self
                .coordinator
                .call(|ch| {
                    let r = req.clone();
                    async move { coord_conn(ch).register(ctx, r).await }
                })
                .await
            {
                Ok(Ok(reply)) => {
                    self.lock().sm.registered(reply.cluster, reply.committed);
                    return Ok(reply);
                }
                // No leader yet (an election, or a coordinator that is still
                // applying its log): wait like for an unreachable one.
                Ok(Err(e @ Error::NotLeader { .. })) if Instant::now() >= deadline => {
                    anyhow::bail!(
                        "no coordinator at {} leads after {patience:?}: {e}; check that a majority of the coordinators are up",
                        self.coordinator.addrs().join(",")
                    )
                }
                Ok(Err(Error::NotLeader { .. })) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Err(e)) => anyhow::bail!(
                    "the coordinator at {} refused this replica: {e}",
                    self.coordinator.current_addr()
                ),
                Err(e) if Instant::now() >= deadline => anyhow::bail!(
                    "cannot reach a coordinator at {} after {patience:?}: {e}; start it first or check --coordinator",
                    self.coordinator.addrs().join(",")
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

    /// Renews the lease every heartbeat, and starts a catch-up when the
    /// coordinator says this replica is a learner. The time is noted before
    /// each request leaves: the lease counts from then.
    pub async fn heartbeat_loop(self: Arc<Self>) {
        let mut failing = false;
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.renew_now.notified() => {}
            }
            next = tokio::time::Instant::now() + self.heartbeat;
            self.transfers.expire(self.as_ref());
            let Some(req) = self.renew_request() else {
                continue;
            };
            let t0 = clock::now();
            let ctx = context_with_timeout((self.heartbeat * 5).max(Duration::from_millis(500)));
            let answer = self
                .coordinator
                .call(|ch| {
                    let req = req.clone();
                    async move { coord_conn(ch).renew(ctx, req).await }
                })
                .await;
            let reply = match answer {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    if !failing {
                        warn!(node = self.id, error = %e, "the coordinator refused the lease renewal");
                    }
                    failing = true;
                    continue;
                }
                Err(e) => {
                    if !failing {
                        warn!(node = self.id, error = %e, "cannot renew the lease; linearizable reads stop when it runs out");
                    }
                    failing = true;
                    continue;
                }
            };
            if failing {
                info!(node = self.id, "lease renewals get through again");
                failing = false;
            }
            let was_member = {
                let mut g = self.lock();
                let before = g.sm.is_member();
                g.sm.granted(t0, &reply);
                if before && !g.sm.is_member() {
                    Some(g.sm.view().epoch)
                } else {
                    None
                }
            };
            if let Some(epoch) = was_member {
                info!(
                    node = self.id,
                    epoch, "dropped from the view; catching up as a learner"
                );
                self.wake_readers();
            }
            match reply.role {
                Role::Member => self.task().joined(self.id),
                Role::Learner { source } => {
                    let (out_of_sync, behind) = {
                        let g = self.lock();
                        let behind =
                            g.sm.pending().is_none() && g.sm.store().applied() < reply.committed;
                        (g.sm.is_out_of_sync(), behind)
                    };
                    if let Some(source) = source
                        && self.task().should_start(out_of_sync, behind)
                    {
                        tokio::spawn(crate::catchup::run(self.clone(), source));
                    }
                }
            }
        }
    }

    fn renew_request(&self) -> Option<RenewRequest> {
        let catchup = self.task().state();
        let g = self.lock();
        let cluster = g.sm.cluster()?;
        Some(RenewRequest {
            cluster,
            id: self.id,
            incarnation: g.sm.incarnation(),
            epoch: g.sm.view().epoch,
            applied: g.sm.store().applied(),
            digest: g.sm.store().digest(),
            pending: g.sm.pending().map(|p| p.batch.id),
            catchup: if g.sm.is_out_of_sync() && matches!(catchup, CatchupState::Following) {
                CatchupState::Idle
            } else {
                catchup
            },
            advertise: self.advertise.clone(),
        })
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
        let (cluster, incarnation, first_version) = {
            let g = self.lock();
            let (Some(cluster), Some(p)) = (g.sm.cluster(), g.sm.pending()) else {
                return;
            };
            if p.batch.id != batch {
                return;
            }
            (cluster, g.sm.incarnation(), p.batch.first_version)
        };
        let req = ResolveRequest {
            cluster,
            from: self.id,
            incarnation,
            batch,
            first_version,
        };
        let ctx = context_with_timeout(Duration::from_secs(2));
        match self
            .coordinator
            .call(|ch| async move { coord_conn(ch).resolve(ctx, req).await })
            .await
        {
            Ok(Ok(Decision::Pending)) => {}
            Ok(Ok(Decision::Unknown)) => {
                debug!(node = self.id, %batch, "the coordinator no longer knows the batch; the next prepare or a catch-up settles it");
                let _ = self.step(|sm| sm.resolved(batch, Decision::Unknown)).await;
            }
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
