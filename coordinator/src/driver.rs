//! The coordinator driver: one task owns the state machine and the decision
//! log and executes the actions it returns.
//!
//! Everything reaches the state machine as an [`Event`] on one channel:
//! client submits, heartbeats, votes and acks coming back from send tasks,
//! timers, and "this record is durable" from the log writer. A single owner
//! means no lock and a total order of inputs, which is what the scenario
//! tests replay. The boot clock is read once per event and handed in, so
//! the state machine never reads time itself. Sends and waits run in their
//! own tasks and report back as events, so the loop never blocks on the
//! network or the disk. A send that follows a persist in the same batch of
//! actions waits until that record is durable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quintet_common::clock;
use quintet_common::error::Error;
use quintet_common::net::{Link, LinkError, context_with_timeout};
use quintet_common::protocol::coordinator::{Action, Coordinator, Message, Record};
use quintet_common::rpc::{
    CoordinatorStatus, Decision, ParticipantRequest, ParticipantResponse, RenewReply, RenewRequest,
    Vote, peer_conn,
};
use quintet_common::storage::{wal, writer::LogWriter};
use quintet_common::types::{BatchId, NodeId, Op, OpResult, Version};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// Most queued inputs handled before a tick, so a flood cannot starve it.
const MAX_BEFORE_TICK: usize = 4096;

/// A waiting client's reply handle.
pub type Reply = oneshot::Sender<Result<OpResult, Error>>;

/// Link to one participant.
pub type PeerLink = Link<ParticipantRequest, ParticipantResponse>;

/// Inputs of the driver loop.
pub enum Event {
    /// A client write.
    Submit(Op, Reply),
    /// A prepare answer (or transport failure).
    Vote(NodeId, BatchId, Result<Vote, String>),
    /// A commit or abort acknowledgement.
    Acked(NodeId, BatchId),
    /// A suspect member acknowledged the revoke of its lease in an epoch.
    Revoked(NodeId, u64),
    /// A learner answered a probe sent in an epoch.
    Probed(NodeId, u64, quintet_common::rpc::ProbeReply),
    /// The prepare timer of a batch fired.
    Timeout(BatchId),
    /// The COMMIT record of a batch is durable.
    CommitDurable(BatchId),
    /// The VIEW record of an epoch is durable.
    ViewDurable(u64),
    /// A participant introduces itself with its peer address.
    Register(
        NodeId,
        String,
        oneshot::Sender<Result<CoordinatorStatus, Error>>,
    ),
    /// A participant's heartbeat.
    Renew(
        Box<RenewRequest>,
        oneshot::Sender<Result<RenewReply, Error>>,
    ),
    /// A participant asks for a batch's fate (given its first version).
    Resolve(BatchId, Version, oneshot::Sender<Result<Decision, Error>>),
    /// Status request.
    Status(oneshot::Sender<CoordinatorStatus>),
    /// Stop taking writes, finish the round in flight, flush and return.
    Stop,
}

/// The loop's state.
pub struct Driver {
    sm: Coordinator<Reply>,
    log: LogWriter,
    peers: BTreeMap<NodeId, Arc<PeerLink>>,
    tx: mpsc::UnboundedSender<Event>,
    prepare_timeout: Duration,
    tick_every: Duration,
    dir: PathBuf,
    compact_bytes: u64,
}

pub(crate) fn encode(record: &Record) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize(record).unwrap_or_default()
}

fn fatal(e: impl std::fmt::Display) -> ! {
    error!(error = %e, "the decision log failed; stopping to protect the data");
    std::process::exit(1);
}

/// What the driver needs besides the state machine and its log.
pub struct Settings {
    /// Links to the participants.
    pub peers: BTreeMap<NodeId, Arc<PeerLink>>,
    /// Bound on one prepare.
    pub prepare_timeout: Duration,
    /// How often the state machine is ticked.
    pub tick_every: Duration,
    /// The data dir, for compaction.
    pub dir: PathBuf,
    /// Compact after this many bytes of log.
    pub compact_bytes: u64,
}

impl Driver {
    /// A driver over a started state machine.
    pub fn new(
        sm: Coordinator<Reply>,
        log: LogWriter,
        tx: mpsc::UnboundedSender<Event>,
        settings: Settings,
    ) -> Self {
        Driver {
            sm,
            log,
            peers: settings.peers,
            tx,
            prepare_timeout: settings.prepare_timeout,
            tick_every: settings.tick_every,
            dir: settings.dir,
            compact_bytes: settings.compact_bytes,
        }
    }

    /// Executes start-up actions; returns once the new view is durable.
    pub async fn start(&mut self, actions: Vec<Action<Reply>>) {
        self.execute(actions);
        if let Err(e) = self.log.wait_durable(self.log.last_lsn()).await {
            fatal(e);
        }
    }

    /// Runs until [`Event::Stop`] and the round in flight is over.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut tick = tokio::time::interval(self.tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            if let Some(deadline) = stop_deadline
                && (self.sm.is_idle() || Instant::now() >= deadline)
            {
                break;
            }
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Stop) | None => {
                        self.begin_stop(&mut stop_deadline);
                        if self.sm.is_idle() { break; }
                    }
                    Some(ev) => self.handle(ev),
                },
                _ = tick.tick() => {
                    // Inputs already waiting go first: after the process was
                    // paused, the renewals queued meanwhile must count before
                    // a tick decides who stopped renewing.
                    for _ in 0..MAX_BEFORE_TICK {
                        match rx.try_recv() {
                            Ok(Event::Stop) => {
                                self.begin_stop(&mut stop_deadline);
                                break;
                            }
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                    let actions = self.sm.tick(clock::now());
                    self.execute(actions);
                }
            }
        }
        if let Err(e) = self.log.wait_durable(self.log.last_lsn()).await {
            error!(error = %e, "final log flush failed");
        }
        info!(
            epoch = self.sm.epoch(),
            committed = self.sm.committed(),
            "coordinator stopped"
        );
    }

    /// Refuses new writes and gives the round in flight a bounded time to
    /// finish (once).
    fn begin_stop(&mut self, stop_deadline: &mut Option<Instant>) {
        if stop_deadline.is_none() {
            info!("stopping: refusing new writes, finishing the round in flight");
            let actions = self.sm.stop();
            self.execute(actions);
            *stop_deadline = Some(Instant::now() + self.prepare_timeout * 2);
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = clock::now();
        let actions = match ev {
            Event::Submit(op, reply) => self.sm.submit(op, reply, now),
            Event::Vote(from, batch, vote) => self.sm.vote(from, batch, vote, now),
            Event::Acked(from, batch) => self.sm.acked(from, batch),
            Event::Revoked(from, epoch) => self.sm.revoked(from, epoch, now),
            Event::Probed(from, epoch, reply) => {
                self.sm.probed(from, epoch, reply);
                Vec::new()
            }
            Event::Timeout(batch) => self.sm.prepare_timeout(batch, now),
            Event::CommitDurable(batch) => self.sm.commit_durable(batch, now),
            Event::ViewDurable(epoch) => self.sm.view_durable(epoch, now),
            Event::Register(id, advertise, reply) => {
                let answer = self
                    .sm
                    .register(id, advertise)
                    .map(|()| self.sm.status(now));
                let _ = reply.send(answer);
                Vec::new()
            }
            Event::Renew(req, reply) => {
                let (answer, actions) = self.sm.renew(&req, now);
                let _ = reply.send(answer);
                actions
            }
            Event::Resolve(batch, first_version, reply) => {
                let _ = reply.send(self.sm.resolve(batch, first_version));
                Vec::new()
            }
            Event::Status(reply) => {
                let _ = reply.send(self.sm.status(now));
                Vec::new()
            }
            Event::Stop => Vec::new(),
        };
        self.execute(actions);
    }

    fn execute(&mut self, actions: Vec<Action<Reply>>) {
        let mut barrier = None;
        for action in actions {
            match action {
                Action::Persist(record) => {
                    let lsn = self.log.append(encode(&record));
                    barrier = Some(lsn);
                    let durable_event = match &record {
                        Record::Commit {
                            batch, first, last, ..
                        } => {
                            debug!(%batch, first, last, "logging commit");
                            Some(Event::CommitDurable(*batch))
                        }
                        Record::View(v) => Some(Event::ViewDurable(v.epoch)),
                        _ => None,
                    };
                    if let Some(event) = durable_event {
                        let durable = self.log.wait_durable(lsn);
                        let tx = self.tx.clone();
                        tokio::spawn(async move {
                            match durable.await {
                                Ok(()) => {
                                    let _ = tx.send(event);
                                }
                                Err(e) => fatal(e),
                            }
                        });
                    }
                    self.maybe_compact();
                }
                Action::Send { to, msg } => {
                    let Some(link) = self.peers.get(&to).cloned() else {
                        warn!(node = to, "no address for participant");
                        continue;
                    };
                    let wait = barrier.map(|lsn| self.log.wait_durable(lsn));
                    let tx = self.tx.clone();
                    let timeout = self.prepare_timeout;
                    tokio::spawn(async move {
                        if let Some(wait) = wait
                            && let Err(e) = wait.await
                        {
                            fatal(e);
                        }
                        send(link, to, msg, timeout, tx).await;
                    });
                }
                Action::Reply { token, result } => {
                    let _ = token.send(result);
                }
                Action::ArmTimer(batch) => {
                    let tx = self.tx.clone();
                    let timeout = self.prepare_timeout;
                    tokio::spawn(async move {
                        tokio::time::sleep(timeout).await;
                        let _ = tx.send(Event::Timeout(batch));
                    });
                }
                Action::Suspected { id, reason } => {
                    warn!(node = id, %reason, "member suspect; no more leases for it");
                }
                Action::ViewChanged { view, left, joined } => {
                    let list = |v: &[(NodeId, String)]| {
                        if v.is_empty() {
                            return "-".to_string();
                        }
                        v.iter()
                            .map(|(id, why)| format!("{id} ({why})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    info!(
                        epoch = view.epoch,
                        members = ?view.ids().collect::<Vec<_>>(),
                        left = %list(&left),
                        joined = %list(&joined),
                        "view change"
                    );
                }
            }
        }
    }

    fn maybe_compact(&mut self) {
        if self.log.bytes_since_rotate() < self.compact_bytes {
            return;
        }
        let (segment, lsn) = self.log.rotate(vec![encode(&self.sm.checkpoint())]);
        let durable = self.log.wait_durable(lsn);
        let dir = self.dir.clone();
        tokio::spawn(async move {
            if let Err(e) = durable.await {
                fatal(e);
            }
            match tokio::task::spawn_blocking(move || wal::remove_segments_before(&dir, segment))
                .await
            {
                Ok(Ok(removed)) => info!(segment, removed, "decision log compacted"),
                Ok(Err(e)) => warn!(error = %e, "could not delete old log segments"),
                Err(e) => warn!(error = %e, "log compaction task failed"),
            }
        });
    }
}

async fn send(
    link: Arc<PeerLink>,
    to: NodeId,
    msg: Message,
    timeout: Duration,
    tx: mpsc::UnboundedSender<Event>,
) {
    let ctx = context_with_timeout(timeout);
    let is_commit = matches!(msg, Message::Commit(_));
    match msg {
        Message::Prepare(req) => {
            let batch = req.batch.id;
            let answer = link
                .call(|ch| async move { peer_conn(ch).prepare(ctx, req).await })
                .await;
            let vote = match answer {
                Ok(Ok(vote)) => Ok(vote),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(describe(&e)),
            };
            let _ = tx.send(Event::Vote(to, batch, vote));
        }
        Message::Revoke(req) => {
            let epoch = req.epoch;
            let answer = link
                .call(|ch| async move { peer_conn(ch).revoke(ctx, req).await })
                .await;
            match answer {
                Ok(Ok(())) => {
                    let _ = tx.send(Event::Revoked(to, epoch));
                }
                Ok(Err(e)) => debug!(node = to, error = %e, "revoke refused"),
                Err(e) => debug!(node = to, error = %describe(&e), "revoke not delivered"),
            }
        }
        Message::Probe(req) => {
            let epoch = req.epoch;
            let answer = link
                .call(|ch| async move { peer_conn(ch).probe(ctx, req).await })
                .await;
            match answer {
                Ok(Ok(reply)) => {
                    let _ = tx.send(Event::Probed(to, epoch, reply));
                }
                Ok(Err(e)) => debug!(node = to, error = %e, "probe refused"),
                Err(e) => debug!(node = to, error = %describe(&e), "probe not delivered"),
            }
        }
        Message::Commit(req) | Message::Abort(req) => {
            let batch = req.batch;
            let answer = link
                .call(|ch| async move {
                    let peer = peer_conn(ch);
                    if is_commit {
                        peer.commit(ctx, req).await
                    } else {
                        peer.abort(ctx, req).await
                    }
                })
                .await;
            match answer {
                Ok(Ok(())) => {
                    let _ = tx.send(Event::Acked(to, batch));
                }
                Ok(Err(e)) => {
                    warn!(node = to, %batch, error = %e, "participant refused the decision; will resend")
                }
                Err(e) => {
                    debug!(node = to, %batch, error = %describe(&e), "decision not delivered; will resend")
                }
            }
        }
    }
}

fn describe(e: &LinkError) -> String {
    e.to_string()
}
