//! Catch-up, both sides, as I/O around the state machines.
//!
//! **Learner.** When the coordinator says this replica is a learner,
//! [`run`] copies a member: it drives [`CatchUp`] (which checks every
//! answer), does the calls on the member's peer port, makes the copied
//! snapshot this replica's own on disk (rotate the log, write the snapshot
//! for the new segment, delete older segments: the same steps as a local
//! snapshot, so a crash at any point leaves either the old state or the
//! copy), and logs the batches it learns before asking for more. There is
//! no deadline on the whole copy, only on each call; progress is logged
//! every few seconds and shown by `quintet status`. An attempt that fails
//! is reported in the next heartbeat (`Failed`), and the coordinator points
//! the learner at another member.
//!
//! **Source.** [`Transfers`] serves those calls: a learner that the log in
//! memory cannot bring up to date gets an image of the committed state,
//! taken under the state lock and held until its last chunk is sent, and a
//! pin that keeps the log after the image in memory until the learner has
//! fetched it (bounded; see `quintet_common::protocol::window`). Transfers
//! idle for 30 s are dropped, so a learner that died does not pin memory.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quintet_common::clock;
use quintet_common::error::Error;
use quintet_common::net::{Link, LinkError, context_with_timeout};
use quintet_common::protocol::catchup::{CHUNK_BYTES, CatchUp, Next};
use quintet_common::protocol::participant::Snapshot;
use quintet_common::rpc::{
    CatchupPlan, CatchupRequest, CatchupState, CatchupStatus, ChunkRequest, LogChunk, LogRequest,
    ParticipantRequest, ParticipantResponse, Progress, SnapshotChunk, SnapshotOffer, Source,
    peer_conn,
};
use quintet_common::storage::{snapshot, wal};
use quintet_common::types::NodeId;
use tracing::{info, warn};

use crate::node::{Node, encode, fatal_log};

/// Bound on one catch-up call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed attempt waits before the next.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a caught-up learner waits to be made a member before it
/// starts over (it could not keep up with the writes).
const JOIN_PATIENCE: Duration = Duration::from_secs(30);
/// Most snapshot transfers served at once.
const MAX_TRANSFERS: usize = 2;
/// A transfer untouched this long is dropped.
const TRANSFER_IDLE: Duration = Duration::from_secs(30);
/// How often copy progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    Running {
        source: NodeId,
        phase: &'static str,
        progress: Progress,
    },
    Following {
        since: Instant,
        /// Heartbeats in a row that found it behind with nothing pending.
        behind: u32,
    },
    Failed {
        source: NodeId,
        at: Instant,
    },
}

/// The learner's catch-up, as the heartbeat and status see it.
#[derive(Debug, Default)]
pub struct CatchupTask {
    state: State,
    /// The member last copied, kept for closing small gaps while following.
    source: Option<(NodeId, Arc<PeerLink>)>,
}

impl CatchupTask {
    /// What the heartbeat reports.
    pub fn state(&self) -> CatchupState {
        match self.state {
            State::Idle => CatchupState::Idle,
            State::Running {
                source, progress, ..
            } => CatchupState::Transferring { source, progress },
            State::Following { .. } => CatchupState::Following,
            State::Failed { source, .. } => CatchupState::Failed { source },
        }
    }

    /// What status shows while a copy runs.
    pub fn status(&self) -> Option<CatchupStatus> {
        match self.state {
            State::Running {
                source,
                phase,
                progress,
            } => Some(CatchupStatus {
                source,
                phase: phase.to_string(),
                progress,
            }),
            _ => None,
        }
    }

    /// Whether it has caught up and follows prepares as a learner.
    pub fn is_following(&self) -> bool {
        matches!(self.state, State::Following { .. })
    }

    /// The coordinator says this replica is a member.
    pub fn joined(&mut self, id: NodeId) {
        if let State::Following { since, .. } = self.state {
            info!(
                node = id,
                waited_ms = since.elapsed().as_millis() as u64,
                "joined the view as a member"
            );
            self.state = State::Idle;
        }
        if matches!(self.state, State::Failed { .. }) {
            self.state = State::Idle;
        }
    }

    /// Whether a learner should start a copy now; if so the task counts as
    /// running from here on, so only one starts. `behind` says this
    /// heartbeat found committed writes it neither applied nor holds: an
    /// idle cluster sends no prepare that would bring it along, so two such
    /// heartbeats in a row start a fetch of the log.
    pub fn should_start(&mut self, out_of_sync: bool, behind: bool) -> bool {
        let start = match &mut self.state {
            State::Idle => true,
            State::Running { .. } => false,
            State::Failed { at, .. } => at.elapsed() >= RETRY_AFTER,
            State::Following {
                since,
                behind: count,
            } => {
                *count = if behind { *count + 1 } else { 0 };
                out_of_sync || *count >= 2 || since.elapsed() >= JOIN_PATIENCE
            }
        };
        if start {
            self.state = State::Running {
                source: 0,
                phase: "log",
                progress: Progress::default(),
            };
        }
        start
    }

    fn update(&mut self, source: NodeId, phase: &'static str, progress: Progress) {
        self.state = State::Running {
            source,
            phase,
            progress,
        };
    }
}

type PeerLink = Link<ParticipantRequest, ParticipantResponse>;

fn describe(e: LinkError) -> String {
    e.to_string()
}

/// One catch-up attempt from `source`; records the outcome in the task.
pub async fn run(node: Arc<Node>, source: Source) {
    let started = Instant::now();
    info!(
        node = node.id(),
        source = source.id,
        addr = %source.addr,
        "catch-up starting"
    );
    match attempt(&node, &source).await {
        Ok(progress) => {
            let applied = node.lock().sm.store().applied();
            info!(
                node = node.id(),
                source = source.id,
                applied,
                keys = progress.keys_done,
                bytes = progress.bytes_done,
                batches = progress.batches,
                duration_ms = started.elapsed().as_millis() as u64,
                "catch-up finished; following prepares until the coordinator adds it to the view"
            );
            node.task().state = State::Following {
                since: Instant::now(),
                behind: 0,
            };
            // Tell the coordinator now, not at the next heartbeat: under
            // load every heartbeat's worth of rounds is a gap to close.
            node.renew_now.notify_one();
        }
        Err(why) => {
            warn!(
                node = node.id(),
                source = source.id,
                reason = %why,
                duration_ms = started.elapsed().as_millis() as u64,
                "catch-up failed; will start over from another member"
            );
            node.task().state = State::Failed {
                source: source.id,
                at: Instant::now(),
            };
        }
    }
}

async fn attempt(node: &Node, source: &Source) -> Result<Progress, String> {
    if source.addr.is_empty() {
        return Err(format!("no address known for participant {}", source.id));
    }
    // The source must prove it is the member the coordinator named.
    let dial =
        quintet_common::tls::dial(&node.tls, &quintet_common::tls::participant_name(source.id));
    let link = Arc::new(PeerLink::with_dial(
        source.addr.clone(),
        Duration::from_secs(2),
        dial,
    ));
    node.task().source = Some((source.id, link.clone()));
    node.step(|sm| sm.begin_catch_up())
        .await
        .map_err(|e| e.to_string())?;
    node.wake_readers();
    let cluster = node
        .lock()
        .sm
        .cluster()
        .ok_or("not registered with a cluster")?;
    let mut cu = CatchUp::start(source.id, clock::now());
    let mut next = Next::Ask;
    let mut logged = Instant::now();
    loop {
        node.task()
            .update(source.id, cu.phase_name(), cu.progress());
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            let p = cu.progress();
            info!(
                node = node.id(),
                source = source.id,
                phase = cu.phase_name(),
                keys = p.keys_done,
                keys_total = p.keys_total,
                bytes = p.bytes_done,
                bytes_total = p.bytes_total,
                batches = p.batches,
                "catch-up progress"
            );
        }
        next = match next {
            Next::Ask => {
                let req = {
                    let g = node.lock();
                    CatchupRequest {
                        cluster,
                        from: node.id(),
                        applied: g.sm.store().applied(),
                        digest: g.sm.store().digest(),
                    }
                };
                let ctx = context_with_timeout(CALL_TIMEOUT);
                let plan = link
                    .call(|ch| async move { peer_conn(ch).catchup_begin(ctx, req).await })
                    .await
                    .map_err(describe)?
                    .map_err(|e| e.to_string())?;
                if let CatchupPlan::Snapshot(o) = plan {
                    info!(
                        node = node.id(),
                        source = source.id,
                        keys = o.keys,
                        bytes = o.bytes,
                        applied = o.applied,
                        "copying a snapshot"
                    );
                }
                cu.plan(plan, &node.lock().sm)
            }
            Next::Chunk { transfer, after } => {
                let req = ChunkRequest {
                    cluster,
                    transfer,
                    after,
                    max_bytes: CHUNK_BYTES,
                };
                let ctx = context_with_timeout(CALL_TIMEOUT);
                let chunk = link
                    .call(|ch| async move { peer_conn(ch).catchup_chunk(ctx, req).await })
                    .await
                    .map_err(describe)?
                    .map_err(|e| e.to_string())?;
                cu.chunk(chunk)
            }
            Next::Install(snap) => {
                install(node, *snap).await?;
                cu.installed(&node.lock().sm)
            }
            Next::Log { transfer, after } => {
                let req = LogRequest {
                    cluster,
                    transfer,
                    after,
                    max_bytes: CHUNK_BYTES,
                };
                let ctx = context_with_timeout(CALL_TIMEOUT);
                let chunk = link
                    .call(|ch| async move { peer_conn(ch).catchup_log(ctx, req).await })
                    .await
                    .map_err(describe)?
                    .map_err(|e| e.to_string())?;
                let (next, durable) = {
                    let mut g = node.lock();
                    let (records, next) = cu.log(chunk, &mut g.sm);
                    for r in &records {
                        g.log.append(encode(r));
                    }
                    (next, g.log.wait_durable(g.log.last_lsn()))
                };
                if let Err(e) = durable.await {
                    fatal_log(node.id(), e);
                }
                next
            }
            Next::Done => {
                node.lock().sm.finish_catch_up();
                return Ok(cu.progress());
            }
            Next::Failed(why) => return Err(why),
        };
    }
}

/// Brings a following learner up to `target` with committed batches from
/// its source, before it prepares a batch that starts after them. Gives up
/// quietly after a few calls; the prepare then says how far behind it is.
pub async fn close_gap(node: &Node, target: quintet_common::types::Version) {
    let Some((source, link)) = node.task().source.clone() else {
        return;
    };
    let Some(cluster) = node.lock().sm.cluster() else {
        return;
    };
    for _ in 0..4 {
        let after = node.lock().sm.store().applied();
        if after >= target {
            return;
        }
        let req = LogRequest {
            cluster,
            transfer: None,
            after,
            max_bytes: CHUNK_BYTES,
        };
        let ctx = context_with_timeout(Duration::from_millis(500));
        let chunk = match link
            .call(|ch| async move { peer_conn(ch).catchup_log(ctx, req).await })
            .await
        {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => {
                tracing::debug!(node = node.id(), source, error = %e, "cannot close the gap");
                return;
            }
            Err(e) => {
                tracing::debug!(node = node.id(), source, error = %e, "cannot close the gap");
                return;
            }
        };
        if chunk.batches.is_empty() {
            return;
        }
        let durable = {
            let mut g = node.lock();
            for lb in chunk.batches {
                match g.sm.learn(lb) {
                    Ok(step) => {
                        for r in &step.persist {
                            g.log.append(encode(r));
                        }
                    }
                    Err(why) => {
                        warn!(node = node.id(), source, reason = %why, "a batch from the source does not follow on");
                        break;
                    }
                }
            }
            g.log.wait_durable(g.log.last_lsn())
        };
        if let Err(e) = durable.await {
            fatal_log(node.id(), e);
        }
    }
}

/// Makes a copied snapshot this replica's own: a new log segment, the
/// snapshot written for it, older segments deleted, then the state replaced.
async fn install(node: &Node, mut snap: Snapshot) -> Result<(), String> {
    while node.snapshotting.swap(true, Ordering::AcqRel) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (segment, durable) = {
        let mut g = node.lock();
        snap.view = g.sm.durable_view().cloned();
        let (segment, lsn) = g.log.rotate(Vec::new());
        (segment, g.log.wait_durable(lsn))
    };
    if let Err(e) = durable.await {
        fatal_log(node.id(), e);
    }
    let dir = node.data_dir.clone();
    let written = tokio::task::spawn_blocking(move || {
        let payload = bincode::serialize(&snap).map_err(|e| e.to_string())?;
        snapshot::write_snapshot(&dir, segment, &payload).map_err(|e| e.to_string())?;
        wal::remove_segments_before(&dir, segment).map_err(|e| e.to_string())?;
        Ok::<_, String>(snap)
    })
    .await
    .map_err(|e| e.to_string());
    let result = match written {
        Ok(Ok(snap)) => {
            node.lock().sm.install(snap);
            Ok(())
        }
        Ok(Err(e)) | Err(e) => Err(format!("cannot write the copied snapshot: {e}")),
    };
    node.snapshotting.store(false, Ordering::Release);
    result
}

struct Transfer {
    learner: NodeId,
    image: Option<Arc<Snapshot>>,
    last_used: Instant,
}

#[derive(Default)]
struct Table {
    next: u64,
    map: BTreeMap<u64, Transfer>,
}

/// The snapshot transfers this replica serves as a source.
#[derive(Default)]
pub struct Transfers {
    table: Mutex<Table>,
}

impl Transfers {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A learner asks how to catch up: the log if it suffices, else a new
    /// pinned snapshot.
    pub async fn begin(&self, node: &Node, req: CatchupRequest) -> Result<CatchupPlan, Error> {
        let (image, transfer) = {
            let mut g = node.lock();
            check_cluster(&g.sm, req.cluster)?;
            if !g.sm.is_member() || g.sm.is_catching_up() {
                return Err(Error::Unavailable(format!(
                    "replica {} is not a member of the view; catch up from another member",
                    node.id()
                )));
            }
            if g.sm.can_serve_log(req.applied, req.digest) {
                return Ok(CatchupPlan::Log);
            }
            let transfer = {
                let mut t = self.table();
                t.next += 1;
                t.next
            };
            let image = Arc::new(g.sm.image());
            g.sm.pin(transfer, image.store.applied());
            (image, transfer)
        };
        let img = image.clone();
        let (keys, bytes, checksum) = tokio::task::spawn_blocking(move || {
            (
                img.store.len() as u64,
                img.store.bytes(),
                img.store.checksum(),
            )
        })
        .await
        .map_err(|e| Error::Internal(format!("checksumming the snapshot failed: {e}")))?;
        let offer = SnapshotOffer {
            transfer,
            applied: image.store.applied(),
            digest: image.store.digest(),
            last_committed: image.last_committed,
            highest_seen: image.highest_seen,
            keys,
            bytes,
            checksum,
        };
        let evicted: Vec<u64> = {
            let mut t = self.table();
            let mut evict: Vec<u64> = t
                .map
                .iter()
                .filter(|(_, x)| x.learner == req.from)
                .map(|(id, _)| *id)
                .collect();
            let others = t.map.len() - evict.len();
            if others >= MAX_TRANSFERS
                && let Some((&oldest, _)) = t
                    .map
                    .iter()
                    .filter(|(id, _)| !evict.contains(id))
                    .min_by_key(|(_, x)| x.last_used)
            {
                evict.push(oldest);
            }
            for id in &evict {
                t.map.remove(id);
            }
            t.map.insert(
                transfer,
                Transfer {
                    learner: req.from,
                    image: Some(image),
                    last_used: Instant::now(),
                },
            );
            evict
        };
        unpin(node, &evicted);
        info!(
            node = node.id(),
            learner = req.from,
            transfer,
            keys,
            bytes,
            applied = offer.applied,
            "serving a snapshot to a learner"
        );
        Ok(CatchupPlan::Snapshot(offer))
    }

    /// The next entries of a transfer's image.
    pub fn chunk(&self, node: &Node, req: ChunkRequest) -> Result<SnapshotChunk, Error> {
        check_cluster(&node.lock().sm, req.cluster)?;
        let mut t = self.table();
        let Some(x) = t.map.get_mut(&req.transfer) else {
            return Err(gone(node.id(), req.transfer));
        };
        let Some(image) = x.image.clone() else {
            return Err(gone(node.id(), req.transfer));
        };
        x.last_used = Instant::now();
        let (entries, last) = image
            .store
            .entries_after(req.after.as_deref(), req.max_bytes as usize);
        if last {
            // The log after the image stays pinned; the image can go.
            x.image = None;
        }
        Ok(SnapshotChunk { entries, last })
    }

    /// Committed batches after a version; ends the transfer once the
    /// learner has everything.
    pub fn log(&self, node: &Node, req: LogRequest) -> Result<LogChunk, Error> {
        let chunk = {
            let g = node.lock();
            check_cluster(&g.sm, req.cluster)?;
            if let Some(tr) = req.transfer
                && !g.sm.is_pinned(tr)
            {
                return Err(gone(node.id(), tr));
            }
            g.sm.log_after(req.after, req.max_bytes as usize)?
        };
        if let Some(tr) = req.transfer {
            let reaches = chunk
                .batches
                .last()
                .map_or(req.after, |b| b.batch.last_version())
                >= chunk.source_applied;
            let mut t = self.table();
            if reaches {
                t.map.remove(&tr);
            } else if let Some(x) = t.map.get_mut(&tr) {
                x.last_used = Instant::now();
            }
            drop(t);
            if reaches {
                unpin(node, &[tr]);
            }
        }
        Ok(chunk)
    }

    /// Drops transfers nobody asked about for a while.
    pub fn expire(&self, node: &Node) {
        let idle: Vec<u64> = {
            let mut t = self.table();
            let idle: Vec<u64> = t
                .map
                .iter()
                .filter(|(_, x)| x.last_used.elapsed() >= TRANSFER_IDLE)
                .map(|(id, _)| *id)
                .collect();
            for id in &idle {
                t.map.remove(id);
            }
            idle
        };
        if !idle.is_empty() {
            info!(node = node.id(), transfers = ?idle, "dropped idle snapshot transfers");
            unpin(node, &idle);
        }
    }
}

fn unpin(node: &Node, transfers: &[u64]) {
    if transfers.is_empty() {
        return;
    }
    let mut g = node.lock();
    for &t in transfers {
        g.sm.unpin(t);
    }
}

fn gone(id: NodeId, transfer: u64) -> Error {
    Error::Unavailable(format!(
        "replica {id} no longer holds transfer {transfer} (it expired, the source restarted, or its log moved on); start over"
    ))
}

fn check_cluster(
    sm: &quintet_common::protocol::participant::Participant,
    cluster: quintet_common::types::ClusterId,
) -> Result<(), Error> {
    match sm.cluster() {
        Some(c) if c == cluster => Ok(()),
        Some(c) => Err(Error::ClusterMismatch(format!(
            "replica {} belongs to cluster {c}, the request came from cluster {cluster}",
            sm.id()
        ))),
        None => Err(Error::Unavailable(format!(
            "replica {} has not registered with its coordinator yet",
            sm.id()
        ))),
    }
}
