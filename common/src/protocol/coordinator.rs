//! The coordinator's side of 2PC: sequencing, group commit and the decision.
//!
//! Writes queue until the round in flight ends, then go out together as the
//! next batch (group commit), so a busy cluster pays one prepare and one
//! decision fsync for many writes. One round runs at a time: its prepare
//! carries the id of the last committed batch, which settles a batch a
//! participant still holds if a commit or abort message was lost.
//!
//! The decision is COMMIT only when every participant voted YES with the same
//! results; the COMMIT record must be durable ([`Action::Persist`], then
//! [`Coordinator::commit_durable`]) before any client hears of it. Abort is
//! presumed: nothing is logged, so a batch without a COMMIT record in the log
//! is aborted, and a restart bumps the epoch so no batch id is ever reused.
//!
//! `T` is the driver's reply handle for a waiting client (a oneshot sender in
//! the binary, a plain number in tests).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::rpc::{CoordinatorStatus, Decision, DecisionRequest, PrepareRequest, Vote};
use crate::types::{Batch, BatchId, ClusterId, NodeId, Op, OpResult, Version};

/// A record of the coordinator's decision log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Record {
    /// The coordinator started in this epoch; forced before serving.
    Epoch(u64),
    /// The batch is committed with versions `first..=last`; forced before any reply.
    Commit {
        /// The batch.
        batch: BatchId,
        /// Its first version.
        first: Version,
        /// Its last version.
        last: Version,
    },
    /// Every participant acknowledged the commit; the record may be forgotten.
    Acked(BatchId),
    /// Everything still needed from older segments, written first in a new
    /// segment so the older ones can be deleted.
    Checkpoint {
        /// Epoch at checkpoint time.
        epoch: u64,
        /// Highest committed version.
        committed: Version,
        /// Last committed batch.
        last_committed: Option<BatchId>,
        /// Committed batches not acknowledged by every participant.
        unacked: Vec<BatchId>,
    },
}

/// A message for one participant.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// Phase 1.
    Prepare(PrepareRequest),
    /// Phase 2, commit.
    Commit(DecisionRequest),
    /// Phase 2, abort.
    Abort(DecisionRequest),
}

/// Something the driver must do, in the order given.
#[derive(Debug)]
pub enum Action<T> {
    /// Make the record durable. For a `Commit` record, call
    /// [`Coordinator::commit_durable`] once it is.
    Persist(Record),
    /// Send a message; report the answer with `vote` or `acked`.
    Send {
        /// Recipient.
        to: NodeId,
        /// What to send.
        msg: Message,
    },
    /// Answer a waiting client.
    Reply {
        /// The client's handle.
        token: T,
        /// The outcome of its write.
        result: Result<OpResult, Error>,
    },
    /// Call [`Coordinator::prepare_timeout`] for this batch after the prepare timeout.
    ArmTimer(BatchId),
}

/// Bounds on a batch and on the queue behind it.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most operations in one batch.
    pub max_ops: usize,
    /// Most bytes (approximate) in one batch; a single larger op still goes alone.
    pub max_bytes: usize,
    /// Most operations waiting; more are refused as overload.
    pub max_queued: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_ops: 1024,
            max_bytes: 4 << 20,
            max_queued: 100_000,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Preparing,
    Logging,
}

#[derive(Debug)]
struct Round<T> {
    batch: Batch,
    /// The `last_committed` its prepare carries: a YES vote proves the
    /// voter made that batch's commit durable, so it doubles as the ack.
    carried: Option<BatchId>,
    waiters: Vec<T>,
    votes: BTreeMap<NodeId, Vec<OpResult>>,
    phase: Phase,
}

/// What the log says after replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Highest epoch started.
    pub epoch: u64,
    /// Highest committed version.
    pub committed: Version,
    /// Last committed batch.
    pub last_committed: Option<BatchId>,
    /// Committed batches not acknowledged by everyone.
    pub unacked: BTreeSet<BatchId>,
}

impl Recovered {
    /// Folds the log, oldest record first.
    pub fn replay(records: impl IntoIterator<Item = Record>) -> Recovered {
        let mut r = Recovered::default();
        for record in records {
            match record {
                Record::Epoch(e) => r.epoch = r.epoch.max(e),
                Record::Commit { batch, last, .. } => {
                    r.committed = r.committed.max(last);
                    r.last_committed = r.last_committed.max(Some(batch));
                    r.unacked.insert(batch);
                }
                Record::Acked(batch) => {
                    r.unacked.remove(&batch);
                }
                Record::Checkpoint {
                    epoch,
                    committed,
                    last_committed,
                    unacked,
                } => {
                    r.epoch = r.epoch.max(epoch);
                    r.committed = r.committed.max(committed);
                    r.last_committed = r.last_committed.max(last_committed);
                    r.unacked.extend(unacked);
                }
            }
        }
        r
    }
}

/// The sequencer and 2PC decider.
#[derive(Debug)]
pub struct Coordinator<T> {
    cluster: ClusterId,
    epoch: u64,
    participants: Vec<NodeId>,
    limits: BatchLimits,
    next_seq: u64,
    committed: Version,
    last_committed: Option<BatchId>,
    queue: VecDeque<(Op, T)>,
    round: Option<Round<T>>,
    unacked_commits: BTreeMap<BatchId, BTreeSet<NodeId>>,
    unacked_aborts: BTreeMap<BatchId, BTreeSet<NodeId>>,
    stopping: bool,
}

impl<T> Coordinator<T> {
    /// Starts a new epoch after `recovered`. The returned actions persist the
    /// epoch (wait for it before serving) and resend unacknowledged commits.
    pub fn start(
        cluster: ClusterId,
        participants: Vec<NodeId>,
        limits: BatchLimits,
        recovered: Recovered,
    ) -> (Self, Vec<Action<T>>) {
        let epoch = recovered.epoch + 1;
        let all: BTreeSet<NodeId> = participants.iter().copied().collect();
        let c = Coordinator {
            cluster,
            epoch,
            participants,
            limits,
            next_seq: 1,
            committed: recovered.committed,
            last_committed: recovered.last_committed,
            queue: VecDeque::new(),
            round: None,
            unacked_commits: recovered
                .unacked
                .into_iter()
                .map(|b| (b, all.clone()))
                .collect(),
            unacked_aborts: BTreeMap::new(),
            stopping: false,
        };
        let mut actions = vec![Action::Persist(Record::Epoch(epoch))];
        actions.extend(c.resend());
        (c, actions)
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Highest committed version.
    pub fn committed(&self) -> Version {
        self.committed
    }

    /// Last committed batch.
    pub fn last_committed(&self) -> Option<BatchId> {
        self.last_committed
    }

    /// True when no round is in flight and nothing is queued.
    pub fn is_idle(&self) -> bool {
        self.round.is_none() && self.queue.is_empty()
    }

    /// Queues a write; starts a round if none is in flight.
    pub fn submit(&mut self, op: Op, token: T) -> Vec<Action<T>> {
        if self.stopping {
            return vec![Action::Reply {
                token,
                result: Err(Error::ShuttingDown(
                    "the coordinator is stopping; retry elsewhere later".into(),
                )),
            }];
        }
        if self.queue.len() >= self.limits.max_queued {
            return vec![Action::Reply {
                token,
                result: Err(Error::Unavailable(format!(
                    "the coordinator has {} writes queued; slow down and retry",
                    self.queue.len()
                ))),
            }];
        }
        self.queue.push_back((op, token));
        self.maybe_start_round()
    }

    /// A participant's answer to prepare; `Err` carries a transport failure.
    pub fn vote(
        &mut self,
        from: NodeId,
        batch: BatchId,
        vote: Result<Vote, String>,
    ) -> Vec<Action<T>> {
        let Some(round) = self.round.as_mut() else {
            return Vec::new();
        };
        if round.batch.id != batch
            || round.phase != Phase::Preparing
            || !self.participants.contains(&from)
        {
            return Vec::new();
        }
        match vote {
            Ok(Vote::Yes(results)) => {
                let carried = round.carried;
                let mut actions = match carried {
                    Some(c) => self.acked(from, c),
                    None => Vec::new(),
                };
                let Some(round) = self.round.as_mut() else {
                    return actions;
                };
                if let Some((other, theirs)) = round.votes.iter().next()
                    && *theirs != results
                {
                    let reason = format!(
                        "replicas {other} and {from} disagree on the results of batch {batch}; their data has diverged"
                    );
                    actions.extend(self.abort_round(reason));
                    return actions;
                }
                round.votes.insert(from, results);
                if round.votes.len() == self.participants.len() {
                    round.phase = Phase::Logging;
                    let b = &round.batch;
                    actions.push(Action::Persist(Record::Commit {
                        batch: b.id,
                        first: b.first_version,
                        last: b.last_version(),
                    }));
                }
                actions
            }
            Ok(Vote::No(reason)) => self.abort_round(format!("replica {from} voted no: {reason}")),
            Err(reason) => {
                self.abort_round(format!("replica {from} did not answer prepare: {reason}"))
            }
        }
    }

    /// The prepare timeout of `batch` fired.
    pub fn prepare_timeout(&mut self, batch: BatchId) -> Vec<Action<T>> {
        match &self.round {
            Some(r) if r.batch.id == batch && r.phase == Phase::Preparing => {
                let missing: Vec<String> = self
                    .participants
                    .iter()
                    .filter(|p| !r.votes.contains_key(p))
                    .map(|p| p.to_string())
                    .collect();
                self.abort_round(format!(
                    "prepare of batch {batch} timed out waiting for replica(s) {}",
                    missing.join(",")
                ))
            }
            _ => Vec::new(),
        }
    }

    /// The COMMIT record of `batch` is durable: answer the clients, send
    /// commit to everyone and start the next round.
    pub fn commit_durable(&mut self, batch: BatchId) -> Vec<Action<T>> {
        let Some(round) = self
            .round
            .take_if(|r| r.batch.id == batch && r.phase == Phase::Logging)
        else {
            return Vec::new();
        };
        let results = round.votes.into_values().next().unwrap_or_default();
        self.committed = round.batch.last_version();
        self.last_committed = Some(batch);
        let mut actions: Vec<Action<T>> = round
            .waiters
            .into_iter()
            .zip(results)
            .map(|(token, result)| Action::Reply {
                token,
                result: Ok(result),
            })
            .collect();
        self.unacked_commits
            .insert(batch, self.participants.iter().copied().collect());
        // With writes waiting, the next prepare carries this commit (and its
        // YES votes acknowledge it); a separate commit message would only
        // cost every replica an extra RPC and fsync. Idle, send it now.
        let next = self.maybe_start_round();
        if next.is_empty() {
            actions.extend(self.participants.iter().map(|&to| Action::Send {
                to,
                msg: Message::Commit(self.decision(to, batch)),
            }));
        }
        actions.extend(next);
        actions
    }

    /// A participant acknowledged a commit or abort.
    pub fn acked(&mut self, from: NodeId, batch: BatchId) -> Vec<Action<T>> {
        if let Some(waiting) = self.unacked_commits.get_mut(&batch) {
            waiting.remove(&from);
            if waiting.is_empty() {
                self.unacked_commits.remove(&batch);
                return vec![Action::Persist(Record::Acked(batch))];
            }
        }
        if let Some(waiting) = self.unacked_aborts.get_mut(&batch) {
            waiting.remove(&from);
            if waiting.is_empty() {
                self.unacked_aborts.remove(&batch);
            }
        }
        Vec::new()
    }

    /// Periodic tick: resend every commit and abort not yet acknowledged.
    pub fn tick(&mut self) -> Vec<Action<T>> {
        self.resend()
    }

    /// The fate of a batch, for a participant that holds it prepared.
    pub fn resolve(&self, batch: BatchId) -> Result<Decision, Error> {
        if self.unacked_commits.contains_key(&batch) || self.last_committed == Some(batch) {
            return Ok(Decision::Commit);
        }
        if let Some(r) = &self.round
            && r.batch.id == batch
        {
            return Ok(Decision::Pending);
        }
        if batch.epoch < self.epoch || (batch.epoch == self.epoch && batch.seq < self.next_seq) {
            return Ok(Decision::Abort);
        }
        Err(Error::Internal(format!(
            "batch {batch} was never proposed by this coordinator (epoch {}); the replica's log does not belong to this cluster",
            self.epoch
        )))
    }

    /// Stops taking writes: queued ones are refused and a round still
    /// preparing is aborted. A round already logging finishes normally.
    pub fn stop(&mut self) -> Vec<Action<T>> {
        self.stopping = true;
        let mut actions: Vec<Action<T>> = self
            .queue
            .drain(..)
            .map(|(_, token)| Action::Reply {
                token,
                result: Err(Error::ShuttingDown(
                    "the coordinator is stopping; nothing was applied".into(),
                )),
            })
            .collect();
        if self
            .round
            .as_ref()
            .is_some_and(|r| r.phase == Phase::Preparing)
        {
            actions.extend(self.abort_round("the coordinator is stopping".into()));
        }
        actions
    }

    /// A record holding everything the log must remember, to start a new
    /// segment with before older ones are deleted.
    pub fn checkpoint(&self) -> Record {
        let mut committed = self.committed;
        let mut last_committed = self.last_committed;
        let mut unacked: Vec<BatchId> = self.unacked_commits.keys().copied().collect();
        // A round whose COMMIT record is already in the log but not yet
        // durable counts as committed: the checkpoint follows that record in
        // the same ordered log, and the segment holding it may be deleted.
        if let Some(r) = &self.round
            && r.phase == Phase::Logging
        {
            committed = committed.max(r.batch.last_version());
            last_committed = last_committed.max(Some(r.batch.id));
            unacked.push(r.batch.id);
        }
        Record::Checkpoint {
            epoch: self.epoch,
            committed,
            last_committed,
            unacked,
        }
    }

    /// Status for operators.
    pub fn status(&self) -> CoordinatorStatus {
        CoordinatorStatus {
            cluster: self.cluster,
            epoch: self.epoch,
            committed: self.committed,
            queued: self.queue.len() as u64,
            in_flight: self.round.as_ref().map(|r| r.batch.id),
        }
    }

    fn maybe_start_round(&mut self) -> Vec<Action<T>> {
        if self.round.is_some() || self.queue.is_empty() || self.stopping {
            return Vec::new();
        }
        let mut ops = Vec::new();
        let mut waiters = Vec::new();
        let mut bytes = 0;
        while let Some((op, _)) = self.queue.front() {
            let size = op.size();
            if !ops.is_empty()
                && (ops.len() >= self.limits.max_ops || bytes + size > self.limits.max_bytes)
            {
                break;
            }
            bytes += size;
            let Some((op, token)) = self.queue.pop_front() else {
                break;
            };
            ops.push(op);
            waiters.push(token);
        }
        let id = BatchId {
            epoch: self.epoch,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let batch = Batch {
            id,
            first_version: self.committed + 1,
            ops,
        };
        let mut actions: Vec<Action<T>> = self
            .participants
            .iter()
            .map(|&to| Action::Send {
                to,
                msg: Message::Prepare(PrepareRequest {
                    cluster: self.cluster,
                    to,
                    batch: batch.clone(),
                    last_committed: self.last_committed,
                }),
            })
            .collect();
        actions.push(Action::ArmTimer(id));
        self.round = Some(Round {
            batch,
            carried: self.last_committed,
            waiters,
            votes: BTreeMap::new(),
            phase: Phase::Preparing,
        });
        actions
    }

    fn abort_round(&mut self, reason: String) -> Vec<Action<T>> {
        let Some(round) = self.round.take() else {
            return Vec::new();
        };
        let id = round.batch.id;
        let mut actions: Vec<Action<T>> = round
            .waiters
            .into_iter()
            .map(|token| Action::Reply {
                token,
                result: Err(Error::Aborted(reason.clone())),
            })
            .collect();
        self.unacked_aborts
            .insert(id, self.participants.iter().copied().collect());
        actions.extend(self.participants.iter().map(|&to| Action::Send {
            to,
            msg: Message::Abort(self.decision(to, id)),
        }));
        actions.extend(self.maybe_start_round());
        actions
    }

    fn resend(&self) -> Vec<Action<T>> {
        let commits = self.unacked_commits.iter().flat_map(|(&b, nodes)| {
            nodes.iter().map(move |&to| Action::Send {
                to,
                msg: Message::Commit(self.decision(to, b)),
            })
        });
        let aborts = self.unacked_aborts.iter().flat_map(|(&b, nodes)| {
            nodes.iter().map(move |&to| Action::Send {
                to,
                msg: Message::Abort(self.decision(to, b)),
            })
        });
        commits.chain(aborts).collect()
    }

    fn decision(&self, to: NodeId, batch: BatchId) -> DecisionRequest {
        DecisionRequest {
            cluster: self.cluster,
            to,
            batch,
        }
    }
}
