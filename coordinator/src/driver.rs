//! The coordinator driver: one task owns the state machine and the decision
//! log and executes the actions it returns.
//!
//! Everything reaches the state machine as an [`Event`] on one channel:
//! client submits, votes and acks coming back from send tasks, timers, and
//! "this COMMIT record is durable" from the log writer. A single owner means
//! no lock and a total order of inputs, which is what the scenario tests
//! replay. Sends and waits run in their own tasks and report back as events,
//! so the loop never blocks on the network or the disk. A send that follows
//! a persist in the same batch of actions waits until that record is durable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quintet_common::error::Error;
use quintet_common::net::{Link, LinkError, context_with_timeout};
use quintet_common::protocol::coordinator::{Action, Coordinator, Message, Record};
use quintet_common::rpc::{
    CoordinatorStatus, Decision, ParticipantRequest, ParticipantResponse, Vote, peer_conn,
};
use quintet_common::storage::{wal, writer::LogWriter};
use quintet_common::types::{BatchId, NodeId, Op, OpResult};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

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
    /// The prepare timer of a batch fired.
    Timeout(BatchId),
    /// The COMMIT record of a batch is durable.
    CommitDurable(BatchId),
    /// A participant asks for a batch's fate.
    Resolve(BatchId, oneshot::Sender<Result<Decision, Error>>),
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

impl Driver {
    /// A driver over a started state machine.
    pub fn new(
        sm: Coordinator<Reply>,
        log: LogWriter,
        peers: BTreeMap<NodeId, Arc<PeerLink>>,
        tx: mpsc::UnboundedSender<Event>,
        prepare_timeout: Duration,
        dir: PathBuf,
        compact_bytes: u64,
    ) -> Self {
        Driver {
            sm,
            log,
            peers,
            tx,
            prepare_timeout,
            dir,
            compact_bytes,
        }
    }

    /// Executes start-up actions; returns once the new epoch is durable.
    pub async fn start(&mut self, actions: Vec<Action<Reply>>) {
        self.execute(actions);
        if let Err(e) = self.log.wait_durable(self.log.last_lsn()).await {
            fatal(e);
        }
    }

    /// Runs until [`Event::Stop`] and the round in flight is over.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
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
                        if stop_deadline.is_none() {
                            info!("stopping: refusing new writes, finishing the round in flight");
                            let actions = self.sm.stop();
                            self.execute(actions);
                            stop_deadline = Some(Instant::now() + self.prepare_timeout * 2);
                        }
                        if self.sm.is_idle() { break; }
                    }
                    Some(ev) => self.handle(ev),
                },
                _ = tick.tick() => {
                    let actions = self.sm.tick();
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

    fn handle(&mut self, ev: Event) {
        let actions = match ev {
            Event::Submit(op, reply) => self.sm.submit(op, reply),
            Event::Vote(from, batch, vote) => self.sm.vote(from, batch, vote),
            Event::Acked(from, batch) => self.sm.acked(from, batch),
            Event::Timeout(batch) => self.sm.prepare_timeout(batch),
            Event::CommitDurable(batch) => self.sm.commit_durable(batch),
            Event::Resolve(batch, reply) => {
                let _ = reply.send(self.sm.resolve(batch));
                Vec::new()
            }
            Event::Status(reply) => {
                let _ = reply.send(self.sm.status());
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
                    if let Record::Commit { batch, first, last } = record {
                        debug!(%batch, first, last, "logging commit");
                        let durable = self.log.wait_durable(lsn);
                        let tx = self.tx.clone();
                        tokio::spawn(async move {
                            match durable.await {
                                Ok(()) => {
                                    let _ = tx.send(Event::CommitDurable(batch));
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
