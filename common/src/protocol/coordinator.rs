//! The coordinator's side of 2PC: sequencing, group commit, the decision,
//! and the membership of the view (leases, drops, learners joining).
//!
//! **Rounds.** Writes queue until the round in flight ends, then go out
//! together as the next batch (group commit). One round runs at a time: its
//! prepare carries the id of the last committed batch, which settles a batch
//! a participant still holds if a commit or abort message was lost. The
//! decision is COMMIT only when every *member of the view* voted YES with the
//! same results and digest; the COMMIT record must be durable
//! ([`Action::Persist`], then [`Coordinator::commit_durable`]) before any
//! client hears of it. Abort is presumed: nothing is logged.
//!
//! **Views.** A view is `(epoch, members)`; every start and every view
//! change bumps the epoch and persists a VIEW record, and no prepare of an
//! epoch leaves before its VIEW record is durable
//! ([`Coordinator::view_durable`]). Members renew a lease every heartbeat
//! ([`Coordinator::renew`]). A member is dropped only when all of these hold
//! (DESIGN.md): it is suspect (missed renewals, a failed or timed-out
//! prepare, an out-of-sync vote, or a new incarnation of it registered); no
//! lease is granted to it any more; its last lease has surely expired
//! (`now >= t_g + D'`) or it acknowledged a revoke; at least
//! `min_members` remain; and the new VIEW record is durable before any
//! prepare of it. A round still preparing when a member turns suspect is
//! aborted without telling its clients and re-proposed in the next view:
//! they only see latency. Because the drop waits for the lease, no batch of
//! the new view can commit while the dropped replica may still serve reads.
//!
//! **Learners.** A participant that is not a member renews too; it is told
//! to copy a member (its *source*). Once it reports it has caught up
//! (`Following`), it receives prepares as a non-voter (with the previous
//! committed batch, so one batch behind is not a gap). It joins in a VIEW
//! record at a batch boundary, never while it is copying: when it voted
//! YES with the members' results and digest on the batch just committed,
//! or, with no round in flight, when it answers a probe at the committed
//! version with the committed digest. Either proves the coordinator can
//! reach it, which a heartbeat would not (a one-way cut lets those
//! through). The probe is also how a new cluster forms: the first view has
//! no members and nothing to copy, and every participant joins with
//! nothing applied.
//!
//! **Resolve.** Once members can be dropped, a batch the coordinator does
//! not know any more may have committed without the asker (its ack was no
//! longer awaited). Presumed abort is answered only for a batch of a
//! finished round that starts beyond the committed version (committed
//! versions have no gaps, so it cannot have committed); for any other
//! forgotten batch the answer is "unknown, catch up".
//!
//! Time enters as a [`Time`] argument; `T` is the driver's reply handle for
//! a waiting client (a oneshot sender in the binary, a number in tests).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::view::{Incarnation, Member, View, grantor_bound};
use crate::clock::Time;
use crate::error::Error;
use crate::rpc::{
    CatchupState, CoordinatorStatus, Decision, DecisionRequest, LearnerStatus, MemberStatus,
    PrepareRequest, ProbeReply, ProbeRequest, RenewReply, RenewRequest, RevokeRequest, Role,
    Source, Vote,
};
use crate::types::{Batch, BatchId, ClusterId, NodeId, Op, OpResult, Version};

/// A record of the coordinator's decision log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Record {
    /// The view of an epoch; forced before any prepare of that epoch.
    View(View),
    /// The batch is committed with versions `first..=last`; forced before any reply.
    Commit {
        /// The batch.
        batch: BatchId,
        /// Its first version.
        first: Version,
        /// Its last version.
        last: Version,
        /// The members' state digest after it.
        digest: u128,
    },
    /// Every replica that could ask about it acknowledged the commit; the
    /// record may be forgotten.
    Acked(BatchId),
    /// Everything still needed from older segments, written first in a new
    /// segment so the older ones can be deleted.
    Checkpoint {
        /// The newest view.
        view: View,
        /// Highest committed version.
        committed: Version,
        /// Last committed batch.
        last_committed: Option<BatchId>,
        /// Digest after it.
        digest: u128,
        /// Committed batches not acknowledged by everyone.
        unacked: Vec<BatchId>,
    },
    /// The cluster's id, chosen by the first leader of a replicated
    /// decision log (a lone coordinator keeps it in `IDENTITY`).
    Cluster(ClusterId),
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
    /// End the lease of a suspect member now.
    Revoke(RevokeRequest),
    /// Ask a learner where it stands; report the answer with `probed`.
    Probe(ProbeRequest),
}

/// Something the driver must do, in the order given.
#[derive(Debug)]
pub enum Action<T> {
    /// Make the record durable. For a `Commit` record call
    /// [`Coordinator::commit_durable`] once it is, for a `View` record
    /// [`Coordinator::view_durable`]. Sends that follow a persist in the
    /// same list wait for it.
    Persist(Record),
    /// Send a message; report the answer with `vote`, `acked` or `revoked`.
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
    /// A member became suspect (for the log).
    Suspected {
        /// The member.
        id: NodeId,
        /// Why.
        reason: String,
    },
    /// A new view was proposed (for the log; its VIEW record is in a
    /// `Persist` just before).
    ViewChanged {
        /// The new view.
        view: View,
        /// Members dropped, with the reason each was suspect.
        left: Vec<(NodeId, String)>,
        /// Learners that joined, with how they proved they are current.
        joined: Vec<(NodeId, String)>,
    },
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

/// What the coordinator is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster.
    pub cluster: ClusterId,
    /// Participant ids that may ever be members (1..=N).
    pub participants: Vec<NodeId>,
    /// Batch and queue bounds.
    pub limits: BatchLimits,
    /// The lease granted, `D`.
    pub lease: Duration,
    /// How often participants renew, `H`; 3 H without a renewal makes a
    /// member suspect.
    pub heartbeat: Duration,
    /// Fewest members writes go on with; a drop never goes below it.
    pub min_members: usize,
    /// How long a write may wait in the queue while the view has fewer
    /// than `min_members` members before it is refused.
    pub queue_timeout: Duration,
    /// How often unacknowledged commits and aborts are resent.
    pub resend_every: Duration,
    /// At start, how long past `now` a member may still have been granted a
    /// lease by someone else: zero for a coordinator restarting alone, the
    /// bound on a deposed leader's last grant for a new Raft leader.
    pub takeover_wait: Duration,
}

impl Config {
    /// Defaults for a cluster of `n` participants.
    pub fn new(cluster: ClusterId, n: u32) -> Config {
        Config {
            cluster,
            participants: (1..=n).collect(),
            limits: BatchLimits::default(),
            lease: Duration::from_secs(1),
            heartbeat: Duration::from_millis(100),
            min_members: 3.min(n as usize),
            queue_timeout: Duration::from_secs(2),
            resend_every: Duration::from_secs(1),
            takeover_wait: Duration::ZERO,
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
    waiters: Vec<(T, Time)>,
    /// The members of the view it was proposed in.
    voters: BTreeSet<NodeId>,
    /// Learners it was sent to, with their incarnations (their votes do
    /// not count).
    learners: BTreeMap<NodeId, Incarnation>,
    votes: BTreeMap<NodeId, (Vec<OpResult>, u128)>,
    learner_yes: BTreeMap<NodeId, (Vec<OpResult>, u128, Incarnation)>,
    phase: Phase,
}

impl<T> Round<T> {
    fn recipients(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(self.learners.keys())
            .copied()
            .collect()
    }
}

/// What the log says after replay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovered {
    /// The newest view.
    pub view: View,
    /// Highest committed version.
    pub committed: Version,
    /// Last committed batch.
    pub last_committed: Option<BatchId>,
    /// Digest after it.
    pub digest: u128,
    /// Committed batches not acknowledged by everyone.
    pub unacked: BTreeSet<BatchId>,
    /// The cluster's id, once a `Cluster` record was applied.
    pub cluster: Option<ClusterId>,
}

impl Recovered {
    /// Folds the log, oldest record first.
    pub fn replay(records: impl IntoIterator<Item = Record>) -> Recovered {
        let mut r = Recovered::default();
        for record in records {
            r.apply(record);
        }
        r
    }

    /// Folds one more record in (a replicated log applies them one by one).
    pub fn apply(&mut self, record: Record) {
        let r = self;
        match record {
            Record::View(v) => {
                if v.epoch >= r.view.epoch {
                    r.view = v;
                }
            }
            Record::Commit {
                batch,
                last,
                digest,
                ..
            } => {
                if Some(batch) > r.last_committed {
                    r.committed = last;
                    r.last_committed = Some(batch);
                    r.digest = digest;
                }
                r.unacked.insert(batch);
            }
            Record::Acked(batch) => {
                r.unacked.remove(&batch);
            }
            Record::Checkpoint {
                view,
                committed,
                last_committed,
                digest,
                unacked,
            } => {
                if view.epoch >= r.view.epoch {
                    r.view = view;
                }
                if last_committed > r.last_committed {
                    r.committed = committed;
                    r.last_committed = last_committed;
                    r.digest = digest;
                }
                r.unacked.extend(unacked);
            }
            Record::Cluster(id) => {
                r.cluster.get_or_insert(id);
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Suspicion {
    since: Time,
    /// Cleared by a renewal when false (missed renewals); kept until the
    /// drop when true (the member failed a prepare or is out of sync, so a
    /// renewal that gets through proves nothing).
    sticky: bool,
    reason: String,
}

#[derive(Clone, Debug)]
struct LearnerInfo {
    incarnation: Incarnation,
    catchup: CatchupState,
    applied: Version,
    digest: u128,
    pending: Option<BatchId>,
    last_renew: Time,
    source: Option<NodeId>,
    /// The committed batch it voted YES on with the members' results.
    synced_on: Option<BatchId>,
    /// When a probe last left for it.
    probe_sent: Option<Time>,
    /// Its last probe answer, with the epoch it was asked in.
    probed: Option<(u64, ProbeReply)>,
}

#[derive(Clone, Debug, Default)]
struct NodeInfo {
    advertise: String,
    last_renew: Option<Time>,
    last_grant: Option<Time>,
    suspect: Option<Suspicion>,
    revoked: bool,
    learner: Option<LearnerInfo>,
}

/// How long a learner may go without a heartbeat before it is forgotten.
const LEARNER_TIMEOUT: Duration = Duration::from_secs(3);

/// The sequencer, 2PC decider and view master.
#[derive(Debug)]
pub struct Coordinator<T> {
    cfg: Config,
    view: View,
    /// The VIEW record of `view` is not durable yet.
    view_pending: bool,
    next_seq: u64,
    committed: Version,
    last_committed: Option<BatchId>,
    digest: u128,
    last_batch: Option<Batch>,
    queue: VecDeque<(Op, T, Time)>,
    round: Option<Round<T>>,
    unacked_commits: BTreeMap<BatchId, BTreeSet<NodeId>>,
    unacked_aborts: BTreeMap<BatchId, BTreeSet<NodeId>>,
    /// Seqs of the current epoch that were aborted.
    aborted: BTreeSet<u64>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    last_resend: Time,
    stopping: bool,
}

impl<T> Coordinator<T> {
    /// Starts a new epoch after `recovered`, with the recovered members. The
    /// returned actions persist the new view (no prepare leaves before it is
    /// durable) and resend unacknowledged commits. Every member is assumed
    /// to hold a lease granted just now by the previous incarnation (or as
    /// late as `takeover_wait` from now by a deposed leader), so none is
    /// dropped before that plus `D'`.
    pub fn start(cfg: Config, recovered: Recovered, now: Time) -> (Self, Vec<Action<T>>) {
        let view = View {
            epoch: recovered.view.epoch + 1,
            members: recovered.view.members.clone(),
        };
        let mut nodes: BTreeMap<NodeId, NodeInfo> = cfg
            .participants
            .iter()
            .map(|&id| (id, NodeInfo::default()))
            .collect();
        for m in &view.members {
            let n = nodes.entry(m.id).or_default();
            n.last_grant = Some(now.plus(cfg.takeover_wait));
            n.last_renew = Some(now);
        }
        let members: BTreeSet<NodeId> = view.ids().collect();
        let c = Coordinator {
            cfg,
            view: view.clone(),
            view_pending: true,
            next_seq: 1,
            committed: recovered.committed,
            last_committed: recovered.last_committed,
            digest: recovered.digest,
            last_batch: None,
            queue: VecDeque::new(),
            round: None,
            unacked_commits: recovered
                .unacked
                .into_iter()
                .map(|b| (b, members.clone()))
                .collect(),
            unacked_aborts: BTreeMap::new(),
            aborted: BTreeSet::new(),
            nodes,
            last_resend: now,
            stopping: false,
        };
        let mut actions = vec![Action::Persist(Record::View(view))];
        actions.extend(c.resend());
        (c, actions)
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.view.epoch
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
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

    /// The D' the coordinator waits out after a grant.
    fn lease_bound(&self) -> Duration {
        grantor_bound(self.cfg.lease)
    }

    /// The VIEW record of `epoch` is durable: prepares of it may leave.
    pub fn view_durable(&mut self, epoch: u64, now: Time) -> Vec<Action<T>> {
        if epoch != self.view.epoch || !self.view_pending {
            return Vec::new();
        }
        self.view_pending = false;
        let mut actions = self.maybe_change_view(now);
        actions.extend(self.maybe_start_round());
        actions
    }

    /// Records where other participants reach `id`'s peer service.
    pub fn register(&mut self, id: NodeId, advertise: String) -> Result<(), Error> {
        let n = self.nodes.get_mut(&id).ok_or_else(|| {
            Error::ClusterMismatch(format!(
                "this coordinator has participants 1..={}; id {id} is not one of them (check --id and --participants)",
                self.cfg.participants.len()
            ))
        })?;
        n.advertise = advertise;
        Ok(())
    }

    /// A participant's heartbeat at `now`: renews a member's lease (unless it
    /// is suspect or a view change is pending), tracks a learner, and says
    /// which it is.
    pub fn renew(
        &mut self,
        req: &RenewRequest,
        now: Time,
    ) -> (Result<RenewReply, Error>, Vec<Action<T>>) {
        if req.cluster != self.cfg.cluster {
            return (
                Err(Error::ClusterMismatch(format!(
                    "participant {} belongs to cluster {}, this coordinator runs cluster {}",
                    req.id, req.cluster, self.cfg.cluster
                ))),
                Vec::new(),
            );
        }
        if !self.nodes.contains_key(&req.id) {
            return (
                Err(Error::ClusterMismatch(format!(
                    "this coordinator has participants 1..={}; id {} is not one of them",
                    self.cfg.participants.len(),
                    req.id
                ))),
                Vec::new(),
            );
        }
        let mut actions = Vec::new();
        if !req.advertise.is_empty()
            && let Some(n) = self.nodes.get_mut(&req.id)
        {
            n.advertise.clone_from(&req.advertise);
        }
        let lease_ms = self.cfg.lease.as_millis() as u64;
        let member = self.view.member(req.id).copied();
        if let Some(m) = member
            && m.incarnation == req.incarnation
        {
            let grant = !self.view_pending && !self.stopping;
            let n = self.nodes.entry(req.id).or_default();
            n.last_renew = Some(now);
            n.learner = None;
            if n.suspect.as_ref().is_some_and(|s| !s.sticky) {
                n.suspect = None;
            }
            let grant = grant && n.suspect.is_none();
            if grant {
                n.last_grant = Some(now);
            }
            actions.extend(self.maybe_start_round());
            let reply = RenewReply {
                view: self.view.clone(),
                lease_ms: grant.then_some(lease_ms),
                committed: self.committed,
                role: Role::Member,
            };
            return (Ok(reply), actions);
        }
        if member.is_some() {
            actions.extend(self.suspect(
                req.id,
                true,
                format!(
                    "a new incarnation of replica {} registered (its data dir was replaced)",
                    req.id
                ),
                now,
            ));
        }
        // A learner: remember what it reports and point it at a source.
        let avoid = match req.catchup {
            CatchupState::Failed { source } => Some(source),
            _ => None,
        };
        let previous = self.nodes.get(&req.id).and_then(|n| n.learner.clone());
        let keep = previous
            .as_ref()
            .filter(|l| l.incarnation == req.incarnation);
        let source = self.pick_source(req.id, keep.and_then(|l| l.source), avoid);
        let synced_on = keep.and_then(|l| l.synced_on);
        let (probe_sent, probed) = keep.map_or((None, None), |l| (l.probe_sent, l.probed));
        let info = LearnerInfo {
            incarnation: req.incarnation,
            catchup: req.catchup,
            applied: req.applied,
            digest: req.digest,
            pending: req.pending,
            last_renew: now,
            source,
            synced_on: if matches!(req.catchup, CatchupState::Following) {
                synced_on
            } else {
                None
            },
            probe_sent,
            probed,
        };
        if let Some(n) = self.nodes.get_mut(&req.id) {
            n.learner = Some(info);
        }
        // Joins happen at the next tick, so learners that report together
        // (a cluster's first start) join in one view change.
        let source = source.map(|id| Source {
            id,
            addr: self
                .nodes
                .get(&id)
                .map(|n| n.advertise.clone())
                .unwrap_or_default(),
        });
        let reply = RenewReply {
            view: self.view.clone(),
            lease_ms: None,
            committed: self.committed,
            role: Role::Learner { source },
        };
        (Ok(reply), actions)
    }

    /// A member to copy: the learner's current source if still fit, else
    /// the fit member heard from most recently, avoiding `avoid` if possible.
    fn pick_source(
        &self,
        learner: NodeId,
        current: Option<NodeId>,
        avoid: Option<NodeId>,
    ) -> Option<NodeId> {
        let fit = |id: NodeId| {
            id != learner
                && self.view.member(id).is_some()
                && self.nodes.get(&id).is_some_and(|n| n.suspect.is_none())
        };
        if let Some(c) = current
            && fit(c)
            && Some(c) != avoid
        {
            return Some(c);
        }
        let mut candidates: Vec<NodeId> = self.view.ids().filter(|&id| fit(id)).collect();
        candidates.sort_by_key(|id| {
            (
                Some(*id) == avoid,
                std::cmp::Reverse(self.nodes.get(id).and_then(|n| n.last_renew)),
                *id,
            )
        });
        candidates.first().copied()
    }

    /// Queues a write; starts a round if none is in flight.
    pub fn submit(&mut self, op: Op, token: T, now: Time) -> Vec<Action<T>> {
        if self.stopping {
            return vec![Action::Reply {
                token,
                result: Err(Error::ShuttingDown(
                    "the coordinator is stopping; retry elsewhere later".into(),
                )),
            }];
        }
        if self.queue.len() >= self.cfg.limits.max_queued {
            return vec![Action::Reply {
                token,
                result: Err(Error::Unavailable(format!(
                    "the coordinator has {} writes queued; slow down and retry",
                    self.queue.len()
                ))),
            }];
        }
        self.queue.push_back((op, token, now));
        self.maybe_start_round()
    }

    /// A participant's answer to prepare; `Err` carries a transport failure.
    pub fn vote(
        &mut self,
        from: NodeId,
        batch: BatchId,
        vote: Result<Vote, String>,
        now: Time,
    ) -> Vec<Action<T>> {
        let Some(round) = self.round.as_mut() else {
            return Vec::new();
        };
        if round.batch.id != batch || round.phase != Phase::Preparing {
            return Vec::new();
        }
        if let Some(&expected) = round.learners.get(&from) {
            if let Ok(Vote::Yes {
                results,
                digest,
                incarnation,
            }) = vote
                && incarnation == expected
            {
                round
                    .learner_yes
                    .insert(from, (results, digest, incarnation));
            }
            return Vec::new();
        }
        if !round.voters.contains(&from) {
            return Vec::new();
        }
        let expected = self.view.member(from).map(|m| m.incarnation);
        match vote {
            Ok(Vote::Yes { incarnation, .. }) if Some(incarnation) != expected => self.suspect(
                from,
                true,
                format!("a new incarnation ({incarnation:016x}) of replica {from} answered for it"),
                now,
            ),
            Ok(Vote::Yes {
                results, digest, ..
            }) => {
                // A YES proves the member is reachable both ways: a member
                // kept because it could not be dropped gets leases again.
                if let Some(n) = self.nodes.get_mut(&from) {
                    n.suspect = None;
                    n.revoked = false;
                    n.last_renew = n.last_renew.max(Some(now));
                }
                let Some(round) = self.round.as_mut() else {
                    return Vec::new();
                };
                let carried = round.carried;
                let mut actions = match carried {
                    Some(c) => self.acked(from, c),
                    None => Vec::new(),
                };
                let Some(round) = self.round.as_mut() else {
                    return actions;
                };
                if let Some((other, theirs)) = round.votes.iter().next()
                    && (theirs.0 != results || theirs.1 != digest)
                {
                    let reason = format!(
                        "replicas {other} and {from} disagree on the results of batch {batch}; their data has diverged"
                    );
                    actions.extend(self.abort_round(reason));
                    return actions;
                }
                round.votes.insert(from, (results, digest));
                if round.votes.len() == round.voters.len() {
                    round.phase = Phase::Logging;
                    let b = &round.batch;
                    actions.push(Action::Persist(Record::Commit {
                        batch: b.id,
                        first: b.first_version,
                        last: b.last_version(),
                        digest,
                    }));
                }
                actions
            }
            Ok(Vote::No(reason)) => self.abort_round(format!("replica {from} voted no: {reason}")),
            Ok(Vote::OutOfSync(reason)) => {
                let mut actions = self.suspect(from, true, reason, now);
                actions.extend(self.maybe_change_view(now));
                actions
            }
            Err(reason) => self.suspect(
                from,
                true,
                format!("it did not answer the prepare of batch {batch}: {reason}"),
                now,
            ),
        }
    }

    /// The prepare timeout of `batch` fired.
    pub fn prepare_timeout(&mut self, batch: BatchId, now: Time) -> Vec<Action<T>> {
        let missing: Vec<NodeId> = match &self.round {
            Some(r) if r.batch.id == batch && r.phase == Phase::Preparing => r
                .voters
                .iter()
                .filter(|p| !r.votes.contains_key(p))
                .copied()
                .collect(),
            _ => return Vec::new(),
        };
        let mut actions = Vec::new();
        for id in missing {
            actions.extend(self.suspect(
                id,
                true,
                format!("it did not vote on batch {batch} before the prepare timed out"),
                now,
            ));
        }
        actions
    }

    /// Marks member `id` suspect. A round still preparing with it as a
    /// voter is re-proposed once it is dropped (aborted now without telling
    /// its clients) or, if it cannot be dropped (`min_members`), aborted
    /// with an error.
    fn suspect(&mut self, id: NodeId, sticky: bool, reason: String, now: Time) -> Vec<Action<T>> {
        if self.view.member(id).is_none() {
            return Vec::new();
        }
        let mut actions = Vec::new();
        let Some(n) = self.nodes.get_mut(&id) else {
            return actions;
        };
        match &mut n.suspect {
            Some(s) => {
                if sticky && !s.sticky {
                    s.sticky = true;
                    s.reason = reason.clone();
                }
            }
            None => {
                n.suspect = Some(Suspicion {
                    since: now,
                    sticky,
                    reason: reason.clone(),
                });
                actions.push(Action::Suspected {
                    id,
                    reason: reason.clone(),
                });
            }
        }
        if sticky && !n.revoked {
            actions.extend(self.revoke(id));
        }
        // Only a sticky suspicion ends the round: a member that is merely
        // late with its renewals may still vote in time.
        let in_round = self
            .round
            .as_ref()
            .is_some_and(|r| r.phase == Phase::Preparing && r.voters.contains(&id));
        if in_round && sticky {
            if self.view.len() > self.cfg.min_members {
                actions.extend(self.abort_round_silently());
            } else {
                actions.extend(self.abort_round(format!(
                    "replica {id} cannot take part ({reason}) and cannot be dropped: the view has {} members and --min-participants is {}; writes resume when it is back",
                    self.view.len(),
                    self.cfg.min_members
                )));
            }
        }
        actions.extend(self.maybe_change_view(now));
        actions
    }

    /// A learner answered a probe sent in `epoch`. It joins at the next
    /// tick, with every learner that answered the same wave of probes.
    pub fn probed(&mut self, from: NodeId, epoch: u64, reply: ProbeReply) {
        if let Some(l) = self.nodes.get_mut(&from).and_then(|n| n.learner.as_mut())
            && l.incarnation == reply.incarnation
        {
            l.probed = Some((epoch, reply));
        }
    }

    /// Probes learners whose heartbeats say they are at the committed
    /// state, so they can join with no round in flight (at most one probe
    /// per learner per heartbeat).
    fn probe_learners(&mut self, now: Time) -> Vec<Action<T>> {
        if self.round.is_some() || self.view_pending {
            return Vec::new();
        }
        let mut actions = Vec::new();
        let (committed, digest, epoch, every) = (
            self.committed,
            self.digest,
            self.view.epoch,
            self.cfg.heartbeat,
        );
        for (&id, n) in self.nodes.iter_mut() {
            let Some(l) = n.learner.as_mut() else {
                continue;
            };
            let ready = matches!(l.catchup, CatchupState::Following | CatchupState::Idle)
                && l.pending.is_none()
                && l.applied == committed
                && l.digest == digest;
            let due = l.probe_sent.is_none_or(|t| now.since(t) >= every);
            if ready && due {
                l.probe_sent = Some(now);
                actions.push(Action::Send {
                    to: id,
                    msg: Message::Probe(ProbeRequest {
                        cluster: self.cfg.cluster,
                        to: id,
                        epoch,
                    }),
                });
            }
        }
        actions
    }

    /// A suspect member acknowledged the revoke of its lease.
    pub fn revoked(&mut self, from: NodeId, epoch: u64, now: Time) -> Vec<Action<T>> {
        if epoch != self.view.epoch {
            return Vec::new();
        }
        if let Some(n) = self.nodes.get_mut(&from)
            && n.suspect.as_ref().is_some_and(|s| s.sticky)
        {
            n.revoked = true;
            return self.maybe_change_view(now);
        }
        Vec::new()
    }

    /// The COMMIT record of `batch` is durable: answer the clients, send
    /// commit to everyone and start the next round (after a view change, if
    /// one is due at this boundary).
    pub fn commit_durable(&mut self, batch: BatchId, now: Time) -> Vec<Action<T>> {
        let Some(round) = self
            .round
            .take_if(|r| r.batch.id == batch && r.phase == Phase::Logging)
        else {
            return Vec::new();
        };
        let (results, digest) = round.votes.values().next().cloned().unwrap_or_default();
        self.committed = round.batch.last_version();
        self.last_committed = Some(batch);
        self.digest = digest;
        let mut actions: Vec<Action<T>> = round
            .waiters
            .into_iter()
            .zip(results.iter().copied())
            .map(|((token, _), result)| Action::Reply {
                token,
                result: Ok(result),
            })
            .collect();
        let mut unacked = round.voters.clone();
        for (id, (r, d, incarnation)) in &round.learner_yes {
            if *r == results && *d == digest {
                unacked.insert(*id);
                if let Some(l) = self.nodes.get_mut(id).and_then(|n| n.learner.as_mut())
                    && l.incarnation == *incarnation
                {
                    l.synced_on = Some(batch);
                }
            }
        }
        self.unacked_commits.insert(batch, unacked.clone());
        self.last_batch = Some(round.batch);
        actions.extend(self.maybe_change_view(now));
        // With writes waiting, the next prepare carries this commit (and its
        // YES votes acknowledge it); a separate commit message would only
        // cost every replica an extra RPC and fsync. Idle, send it now.
        let next = self.maybe_start_round();
        if next.is_empty() {
            actions.extend(unacked.iter().map(|&to| Action::Send {
                to,
                msg: Message::Commit(self.decision(to, batch)),
            }));
        }
        actions.extend(next);
        actions
    }

    /// A participant acknowledged a commit or abort.
    pub fn acked(&mut self, from: NodeId, batch: BatchId) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        if let Some(waiting) = self.unacked_commits.get_mut(&batch) {
            waiting.remove(&from);
            if waiting.is_empty() {
                self.unacked_commits.remove(&batch);
                actions.push(Action::Persist(Record::Acked(batch)));
            }
        }
        if let Some(waiting) = self.unacked_aborts.get_mut(&batch) {
            waiting.remove(&from);
            if waiting.is_empty() {
                self.unacked_aborts.remove(&batch);
            }
        }
        actions
    }

    /// Periodic tick (every heartbeat or faster): suspects members that
    /// stopped renewing, forgets silent learners, refuses writes that
    /// waited too long for enough members, changes the view when a drop or
    /// a join is due, and resends unacknowledged commits, aborts and
    /// revokes every `resend_every`.
    pub fn tick(&mut self, now: Time) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let silent_after = self.cfg.heartbeat * 3;
        let silent: Vec<(NodeId, Duration)> = self
            .view
            .ids()
            .filter_map(|id| {
                let n = self.nodes.get(&id)?;
                let last = n.last_renew?;
                (n.suspect.is_none() && now.since(last) > silent_after)
                    .then(|| (id, now.since(last)))
            })
            .collect();
        for (id, quiet) in silent {
            actions.extend(self.suspect(
                id,
                false,
                format!("no lease renewal for {} ms", quiet.as_millis()),
                now,
            ));
        }
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.learner
                    .as_ref()
                    .is_some_and(|l| now.since(l.last_renew) > LEARNER_TIMEOUT)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.learner = None;
            }
            if self.view.member(id).is_none() {
                actions.extend(self.forget_acks_of(id));
            }
        }
        if self.view.len() < self.cfg.min_members {
            while let Some((_, _, since)) = self.queue.front() {
                if now.since(*since) < self.cfg.queue_timeout {
                    break;
                }
                let Some((_, token, _)) = self.queue.pop_front() else {
                    break;
                };
                actions.push(Action::Reply {
                    token,
                    result: Err(Error::Unavailable(format!(
                        "only {} of {} replicas are members of {} and --min-participants is {}; nothing was applied, retry when replicas are back",
                        self.view.len(),
                        self.cfg.participants.len(),
                        self.view,
                        self.cfg.min_members
                    ))),
                });
            }
        }
        actions.extend(self.maybe_change_view(now));
        actions.extend(self.maybe_start_round());
        actions.extend(self.probe_learners(now));
        if now.since(self.last_resend) >= self.cfg.resend_every {
            self.last_resend = now;
            actions.extend(self.resend());
        }
        actions
    }

    /// The fate of a batch that a participant holds prepared, given the
    /// batch's first version.
    pub fn resolve(&self, batch: BatchId, first_version: Version) -> Result<Decision, Error> {
        if self.unacked_commits.contains_key(&batch) || self.last_committed == Some(batch) {
            return Ok(Decision::Commit);
        }
        if let Some(r) = &self.round
            && r.batch.id == batch
        {
            return Ok(Decision::Pending);
        }
        let never = || {
            Err(Error::Internal(format!(
                "batch {batch} was never proposed by this coordinator (epoch {}); the replica's log does not belong to this cluster",
                self.view.epoch
            )))
        };
        if batch.epoch > self.view.epoch
            || (batch.epoch == self.view.epoch && batch.seq >= self.next_seq)
        {
            return never();
        }
        if batch.epoch == self.view.epoch && self.aborted.contains(&batch.seq) {
            return Ok(Decision::Abort);
        }
        // Not remembered. Committed versions have no gaps, so a batch that
        // starts beyond the committed version never committed, and being
        // of a finished round it never will: presumed abort. Otherwise it
        // may have committed and been forgotten once everyone who could
        // ask had acknowledged it, and the asker (a replica that was out of
        // the view, or whose question arrives late) must not be told abort.
        if batch.epoch < self.view.epoch && first_version > self.committed {
            return Ok(Decision::Abort);
        }
        Ok(Decision::Unknown)
    }

    /// Stops taking writes: queued ones are refused and a round still
    /// preparing is aborted. A round already logging finishes normally.
    pub fn stop(&mut self) -> Vec<Action<T>> {
        self.stopping = true;
        let mut actions: Vec<Action<T>> = self
            .queue
            .drain(..)
            .map(|(_, token, _)| Action::Reply {
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
        let mut digest = self.digest;
        let mut unacked: Vec<BatchId> = self.unacked_commits.keys().copied().collect();
        // A round whose COMMIT record is already in the log but not yet
        // durable counts as committed: the checkpoint follows that record in
        // the same ordered log, and the segment holding it may be deleted.
        // The same holds for a VIEW record not yet durable.
        if let Some(r) = &self.round
            && r.phase == Phase::Logging
        {
            committed = committed.max(r.batch.last_version());
            last_committed = last_committed.max(Some(r.batch.id));
            digest = r.votes.values().next().map_or(digest, |v| v.1);
            unacked.push(r.batch.id);
        }
        Record::Checkpoint {
            view: self.view.clone(),
            committed,
            last_committed,
            digest,
            unacked,
        }
    }

    /// Status for operators at `now`.
    pub fn status(&self, now: Time) -> CoordinatorStatus {
        let bound = self.lease_bound();
        CoordinatorStatus {
            cluster: self.cfg.cluster,
            epoch: self.view.epoch,
            committed: self.committed,
            queued: self.queue.len() as u64,
            in_flight: self.round.as_ref().map(|r| r.batch.id),
            view: self.view.clone(),
            min_participants: self.cfg.min_members as u32,
            members: self
                .view
                .members
                .iter()
                .map(|m| {
                    let n = self.nodes.get(&m.id);
                    MemberStatus {
                        id: m.id,
                        incarnation: m.incarnation,
                        lease_ms: n
                            .and_then(|n| n.last_grant)
                            .map_or(0, |g| now.until(g.plus(bound)).as_millis() as u64),
                        suspect: n.and_then(|n| n.suspect.as_ref().map(|s| s.reason.clone())),
                    }
                })
                .collect(),
            learners: self
                .nodes
                .iter()
                .filter_map(|(&id, n)| {
                    n.learner.as_ref().map(|l| LearnerStatus {
                        id,
                        incarnation: l.incarnation,
                        applied: l.applied,
                        catchup: l.catchup,
                    })
                })
                .collect(),
            replicas: Vec::new(),
        }
    }

    /// True while a suspect member holds up rounds: it can be dropped once
    /// its lease is surely over, so proposing now would only stall on it.
    fn waiting_for_drop(&self) -> bool {
        self.view.len() > self.cfg.min_members
            && self
                .view
                .ids()
                .any(|id| self.nodes.get(&id).is_some_and(|n| n.suspect.is_some()))
    }

    fn maybe_start_round(&mut self) -> Vec<Action<T>> {
        if self.round.is_some()
            || self.queue.is_empty()
            || self.stopping
            || self.view_pending
            || self.view.len() < self.cfg.min_members
            || self.waiting_for_drop()
        {
            return Vec::new();
        }
        let mut ops = Vec::new();
        let mut waiters = Vec::new();
        let mut bytes = 0;
        while let Some((op, _, _)) = self.queue.front() {
            let size = op.size();
            if !ops.is_empty()
                && (ops.len() >= self.cfg.limits.max_ops
                    || bytes + size > self.cfg.limits.max_bytes)
            {
                break;
            }
            bytes += size;
            let Some((op, token, since)) = self.queue.pop_front() else {
                break;
            };
            ops.push(op);
            waiters.push((token, since));
        }
        let id = BatchId {
            epoch: self.view.epoch,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let batch = Batch {
            id,
            first_version: self.committed + 1,
            ops,
        };
        let voters: BTreeSet<NodeId> = self.view.ids().collect();
        let learners: BTreeMap<NodeId, Incarnation> = self
            .nodes
            .iter()
            .filter(|(id, _)| !voters.contains(id))
            .filter_map(|(&id, n)| {
                let l = n.learner.as_ref()?;
                matches!(l.catchup, CatchupState::Following).then_some((id, l.incarnation))
            })
            .collect();
        let prev = self
            .last_batch
            .as_ref()
            .filter(|b| Some(b.id) == self.last_committed)
            .cloned();
        let mut actions: Vec<Action<T>> = Vec::new();
        for &to in voters.iter().chain(learners.keys()) {
            let is_learner = learners.contains_key(&to);
            actions.push(Action::Send {
                to,
                msg: Message::Prepare(PrepareRequest {
                    cluster: self.cfg.cluster,
                    to,
                    batch: batch.clone(),
                    last_committed: self.last_committed,
                    view: self.view.clone(),
                    prev: if is_learner { prev.clone() } else { None },
                }),
            });
        }
        actions.push(Action::ArmTimer(id));
        self.round = Some(Round {
            batch,
            carried: self.last_committed,
            waiters,
            voters,
            learners,
            votes: BTreeMap::new(),
            learner_yes: BTreeMap::new(),
            phase: Phase::Preparing,
        });
        actions
    }

    /// Drops the members that may be dropped and adds the learners that may
    /// join, in one new view, if either exists and no round is logging.
    fn maybe_change_view(&mut self, now: Time) -> Vec<Action<T>> {
        if self.view_pending
            || self.stopping
            || self
                .round
                .as_ref()
                .is_some_and(|r| r.phase == Phase::Logging)
        {
            return Vec::new();
        }
        let bound = self.lease_bound();
        // Members that may be dropped: suspect, no lease granted since, and
        // the last one surely over (or revoked), the longest suspected first.
        let mut suspects: Vec<(Time, NodeId, String)> = self
            .view
            .ids()
            .filter_map(|id| {
                let n = self.nodes.get(&id)?;
                let s = n.suspect.as_ref()?;
                let expired = n.revoked || n.last_grant.is_none_or(|g| now >= g.plus(bound));
                expired.then(|| (s.since, id, s.reason.clone()))
            })
            .collect();
        suspects.sort();
        let droppable: BTreeSet<NodeId> = suspects.iter().map(|(_, id, _)| *id).collect();
        // Learners that may join: not while they copy (a copy may still
        // replace their state), and only with proof the coordinator reaches
        // them: a YES with the members on the batch just committed, or a
        // probe answered in this epoch at the committed version and digest
        // (a heartbeat would not do: a one-way cut lets those through). A
        // new incarnation of a member joins in the same view change that
        // drops the old one, so a wiped replica can come back even when the
        // view is at `min_members`.
        let joining: Vec<(NodeId, Incarnation, String)> = if self.round.is_none() {
            self.nodes
                .iter()
                .filter_map(|(&id, n)| {
                    let l = n.learner.as_ref()?;
                    match self.view.member(id) {
                        Some(m) if m.incarnation == l.incarnation || !droppable.contains(&id) => {
                            return None;
                        }
                        _ => {}
                    }
                    if !matches!(l.catchup, CatchupState::Following | CatchupState::Idle) {
                        return None;
                    }
                    let synced = l.synced_on.filter(|b| Some(*b) == self.last_committed);
                    let caught_up = l.probed.is_some_and(|(epoch, r)| {
                        epoch == self.view.epoch
                            && r.incarnation == l.incarnation
                            && !r.busy
                            && r.applied == self.committed
                            && r.digest == self.digest
                    });
                    let why = match synced {
                        Some(b) => format!("voted with the members on batch {b}"),
                        None if caught_up => format!(
                            "at the committed version {} with the committed digest",
                            self.committed
                        ),
                        None => return None,
                    };
                    Some((id, l.incarnation, why))
                })
                .collect()
        } else {
            Vec::new()
        };
        let replaced: BTreeSet<NodeId> = joining
            .iter()
            .map(|(id, _, _)| *id)
            .filter(|id| self.view.member(*id).is_some())
            .collect();
        // Every replaced member goes; other drops only as far as the view
        // keeps `min_members` (a replacement leaves the count as it was).
        let room =
            (self.view.len() + joining.len()).saturating_sub(self.cfg.min_members + replaced.len());
        let mut others = 0;
        suspects.retain(|(_, id, _)| {
            if replaced.contains(id) {
                return true;
            }
            others += 1;
            others <= room
        });
        let dropping: BTreeSet<NodeId> = suspects.iter().map(|(_, id, _)| *id).collect();
        if dropping.is_empty() && joining.is_empty() {
            return Vec::new();
        }
        let mut actions = Vec::new();
        if self
            .round
            .as_ref()
            .is_some_and(|r| r.phase == Phase::Preparing)
        {
            actions.extend(self.abort_round_silently());
        }
        let epoch = self.view.epoch + 1;
        let mut members: Vec<Member> = self
            .view
            .members
            .iter()
            .filter(|m| !dropping.contains(&m.id))
            .copied()
            .collect();
        members.extend(
            joining
                .iter()
                .map(|&(id, incarnation, _)| Member { id, incarnation }),
        );
        members.sort();
        self.view = View { epoch, members };
        self.view_pending = true;
        self.next_seq = 1;
        self.aborted.clear();
        actions.push(Action::Persist(Record::View(self.view.clone())));
        for &id in &dropping {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.suspect = None;
                n.revoked = false;
                n.last_grant = None;
                n.last_renew = None;
            }
            actions.extend(self.forget_acks_of(id));
        }
        for &(id, _, _) in &joining {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.learner = None;
                n.suspect = None;
                n.revoked = false;
                n.last_grant = None;
                n.last_renew = Some(now);
            }
        }
        actions.push(Action::ViewChanged {
            view: self.view.clone(),
            left: suspects
                .into_iter()
                .map(|(_, id, reason)| (id, reason))
                .collect(),
            joined: joining.into_iter().map(|(id, _, why)| (id, why)).collect(),
        });
        actions
    }

    /// Stops waiting for `id`'s acks: it is not a member any more and gets
    /// those batches (or their absence) with its catch-up.
    fn forget_acks_of(&mut self, id: NodeId) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        let batches: Vec<BatchId> = self.unacked_commits.keys().copied().collect();
        for b in batches {
            actions.extend(self.acked(id, b));
        }
        let aborts: Vec<BatchId> = self.unacked_aborts.keys().copied().collect();
        for b in aborts {
            self.acked(id, b);
        }
        actions
    }

    /// Aborts the round in flight without answering its clients: its writes
    /// go back to the front of the queue, to be re-proposed in the next view.
    fn abort_round_silently(&mut self) -> Vec<Action<T>> {
        let Some(round) = self.round.take() else {
            return Vec::new();
        };
        let id = round.batch.id;
        let recipients = round.recipients();
        self.aborted.insert(id.seq);
        for ((token, since), op) in round.waiters.into_iter().zip(round.batch.ops).rev() {
            self.queue.push_front((op, token, since));
        }
        self.unacked_aborts.insert(id, recipients.clone());
        recipients
            .into_iter()
            .map(|to| Action::Send {
                to,
                msg: Message::Abort(self.decision(to, id)),
            })
            .collect()
    }

    fn abort_round(&mut self, reason: String) -> Vec<Action<T>> {
        let Some(round) = self.round.take() else {
            return Vec::new();
        };
        let id = round.batch.id;
        let recipients = round.recipients();
        self.aborted.insert(id.seq);
        let mut actions: Vec<Action<T>> = round
            .waiters
            .into_iter()
            .map(|(token, _)| Action::Reply {
                token,
                result: Err(Error::Aborted(reason.clone())),
            })
            .collect();
        self.unacked_aborts.insert(id, recipients.clone());
        actions.extend(recipients.into_iter().map(|to| Action::Send {
            to,
            msg: Message::Abort(self.decision(to, id)),
        }));
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
        let revokes = self.view.ids().filter(|id| {
            self.nodes
                .get(id)
                .is_some_and(|n| n.suspect.as_ref().is_some_and(|s| s.sticky) && !n.revoked)
        });
        let revokes: Vec<Action<T>> = revokes.flat_map(|id| self.revoke(id)).collect();
        commits.chain(aborts).chain(revokes).collect()
    }

    /// A revoke addressed to the member's incarnation: a new incarnation at
    /// the same address must not answer for the old one.
    fn revoke(&self, id: NodeId) -> Option<Action<T>> {
        let m = self.view.member(id)?;
        Some(Action::Send {
            to: id,
            msg: Message::Revoke(RevokeRequest {
                cluster: self.cfg.cluster,
                to: id,
                incarnation: m.incarnation,
                epoch: self.view.epoch,
            }),
        })
    }

    fn decision(&self, to: NodeId, batch: BatchId) -> DecisionRequest {
        DecisionRequest {
            cluster: self.cfg.cluster,
            to,
            batch,
        }
    }
}
