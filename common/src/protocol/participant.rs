//! The participant's side of 2PC, views, leases and catch-up.
//!
//! A participant decides nothing: it checks what the coordinator proposes,
//! makes it durable, votes, and applies or drops it when told. Rounds run one
//! at a time, so at most one batch is prepared and undecided at any moment;
//! the next prepare carries the id of the last committed batch, which settles
//! a prepared batch whose commit or abort message was lost.
//!
//! Views and leases (see [`super::view`]): a prepare names its view; a
//! replica that is not a member prepares it as a *learner*, whose vote does
//! not count. The first PREPARED of a new epoch is preceded by a VIEW record,
//! so after a restart the replica still refuses prepares of older epochs.
//! Linearizable reads need a member with an unexpired lease that is current;
//! anything else is refused with an error that sends the client elsewhere.
//!
//! Catch-up: a learner that cannot follow (it is behind, or was wiped)
//! drops its undecided batch, copies a member's snapshot ([`Participant::install`])
//! and the committed batches after it ([`Participant::learn`]), and then
//! prepares as a non-voter until the coordinator makes it a member. A
//! member serves those copies from its [`Window`] of recent batches.
//!
//! Every method returns a [`Step`]: the records to make durable, in order,
//! before the reply may leave. Replaying those records over the latest
//! snapshot rebuilds exactly the state the participant had (see
//! [`Participant::restore`]). Time is an argument, never read here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::view::{Incarnation, View, holder_end};
use super::window::Window;
use crate::clock::Time;
use crate::error::Error;
use crate::rpc::{Decision, LearnedBatch, LogChunk, PrepareRequest, ProbeReply, RenewReply, Vote};
use crate::store::Store;
use crate::types::{Batch, BatchId, ClusterId, Limits, NodeId, OpResult, ReadLevel, Version};

/// A record of the participant's write-ahead log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Record {
    /// The batch was checked and this replica votes YES for it.
    Prepared(Batch),
    /// The batch was committed and applied.
    Committed(BatchId),
    /// The batch was aborted and dropped.
    Aborted(BatchId),
    /// The view of the prepares that follow; written before the first
    /// PREPARED of each epoch.
    View(View),
    /// A committed batch copied from a member while catching up.
    Learned(Batch),
    /// The undecided batch was dropped to catch up; its fate comes with the
    /// copy.
    Discarded(BatchId),
}

/// The committed state saved in a snapshot. A batch still prepared at
/// snapshot time is not in here: it is carried into the next log segment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Snapshot {
    /// The committed data.
    pub store: Store,
    /// Last committed batch.
    pub last_committed: Option<BatchId>,
    /// Highest batch id seen in a prepare or abort.
    pub highest_seen: Option<BatchId>,
    /// The newest view made durable.
    pub view: Option<View>,
}

/// The result of feeding one input: persist `persist`, then release `reply`.
#[derive(Debug)]
#[must_use]
pub struct Step<T> {
    /// Records to make durable before `reply` is sent, in this order.
    pub persist: Vec<Record>,
    /// The answer for the caller.
    pub reply: T,
    /// True when a batch was committed, aborted or dropped, so blocked reads
    /// may proceed.
    pub decided: bool,
}

impl<T> Step<T> {
    fn reply(reply: T) -> Self {
        Step {
            persist: Vec::new(),
            reply,
            decided: false,
        }
    }
}

/// A batch prepared here and not decided yet.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Prepared {
    /// The batch.
    pub batch: Batch,
    /// What its operations return, as voted.
    pub results: Vec<OpResult>,
    /// The digest once it is applied, as voted.
    pub digest: u128,
}

/// What a read found.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Read {
    /// The committed value and its version, if the key exists.
    Value(Option<(Vec<u8>, Version)>),
    /// The key is written by an undecided batch: wait for its decision.
    Blocked(BatchId),
}

/// One replica's protocol state and committed data.
#[derive(Debug)]
pub struct Participant {
    id: NodeId,
    incarnation: Incarnation,
    cluster: Option<ClusterId>,
    limits: Limits,
    store: Store,
    last_committed: Option<BatchId>,
    pending: Option<Prepared>,
    highest_seen: Option<BatchId>,
    known_committed: Version,
    /// The newest view known (from a prepare or a lease grant).
    view: View,
    /// The newest view made durable.
    durable_view: Option<View>,
    lease_end: Option<Time>,
    /// When the last revoke arrived: a grant for a renewal sent before it
    /// is ignored, or a grant still in flight when the coordinator took
    /// the revoke's acknowledgement as final would revive the lease.
    revoked_at: Option<Time>,
    catching_up: bool,
    out_of_sync: bool,
    window: Window,
}

impl Participant {
    /// A fresh, empty replica.
    pub fn new(id: NodeId, incarnation: Incarnation, limits: Limits) -> Self {
        Participant {
            id,
            incarnation,
            cluster: None,
            limits,
            store: Store::default(),
            last_committed: None,
            pending: None,
            highest_seen: None,
            known_committed: 0,
            view: View::default(),
            durable_view: None,
            lease_end: None,
            revoked_at: None,
            catching_up: false,
            out_of_sync: false,
            window: Window::default(),
        }
    }

    /// Sets the byte budget of the recent-batch window (and its cap with
    /// pins), keeping the batches that still fit.
    pub fn set_window(&mut self, budget: usize, hard_cap: usize) {
        self.window.set_bounds(budget, hard_cap);
    }

    /// Rebuilds a replica from its latest snapshot and the log after it.
    /// Fails when the log contradicts itself (a sign of a damaged disk).
    pub fn restore(
        id: NodeId,
        incarnation: Incarnation,
        limits: Limits,
        snapshot: Option<Snapshot>,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Self, String> {
        let mut p = Participant::new(id, incarnation, limits);
        if let Some(s) = snapshot {
            p.store = s.store;
            p.last_committed = s.last_committed;
            p.highest_seen = s.highest_seen;
            if let Some(v) = s.view {
                p.view = v.clone();
                p.durable_view = Some(v);
            }
        }
        for record in records {
            match record {
                Record::Prepared(batch) => {
                    // A snapshot carries the pending batch into the next
                    // segment; until the old segment is deleted it is seen twice.
                    if p.pending
                        .as_ref()
                        .is_some_and(|old| old.batch.id == batch.id)
                    {
                        continue;
                    }
                    if let Some(old) = &p.pending {
                        return Err(format!(
                            "log holds batch {} prepared while {} was still undecided",
                            batch.id, old.batch.id
                        ));
                    }
                    p.check_next(&batch, "prepared")?;
                    p.highest_seen = p.highest_seen.max(Some(batch.id));
                    let results = p.store.preview(&batch);
                    let digest = p.store.digest_after(&batch);
                    p.pending = Some(Prepared {
                        batch,
                        results,
                        digest,
                    });
                }
                Record::Committed(id) => match p.pending.take() {
                    Some(prep) if prep.batch.id == id => p.apply(prep.batch),
                    other => {
                        return Err(format!(
                            "log commits batch {id} but the prepared batch is {:?}",
                            other.map(|o| o.batch.id)
                        ));
                    }
                },
                Record::Aborted(id) => {
                    if p.pending.as_ref().is_some_and(|prep| prep.batch.id == id) {
                        p.pending = None;
                    }
                    p.highest_seen = p.highest_seen.max(Some(id));
                }
                Record::Discarded(id) => {
                    if p.pending.as_ref().is_some_and(|prep| prep.batch.id == id) {
                        p.pending = None;
                    }
                }
                Record::View(v) => {
                    if v.epoch >= p.view.epoch {
                        p.view = v.clone();
                    }
                    p.durable_view = Some(v);
                }
                Record::Learned(batch) => {
                    if let Some(old) = &p.pending {
                        return Err(format!(
                            "log holds batch {} learned while {} was still undecided",
                            batch.id, old.batch.id
                        ));
                    }
                    p.check_next(&batch, "learned")?;
                    p.highest_seen = p.highest_seen.max(Some(batch.id));
                    p.apply(batch);
                }
            }
        }
        p.known_committed = p.store.applied();
        Ok(p)
    }

    /// Whether `batch` (from the log: `what` is "prepared" or "learned")
    /// follows the applied version, with checked sums: a damaged data dir
    /// may claim any version, even one that leaves no room for its own.
    fn check_next(&self, batch: &Batch, what: &str) -> Result<(), String> {
        self.follows(batch)
            .map_err(|e| format!("log holds batch {} {what}: {e}", batch.id))
    }

    /// Whether `batch` starts right after the applied version, holds
    /// writes, and its versions fit: the check every batch from a log or a
    /// peer passes
    /// before this replica adds to its versions.
    fn follows(&self, batch: &Batch) -> Result<(), String> {
        if self.store.applied().checked_add(1) != Some(batch.first_version) {
            return Err(format!(
                "it starts at version {} but this replica applied up to {}",
                batch.first_version,
                self.store.applied()
            ));
        }
        if batch.checked_last_version().is_none() {
            return Err(format!(
                "its {} versions from {} run past the last version",
                batch.ops.len(),
                batch.first_version
            ));
        }
        // Only a batch with writes is ever prepared, so only one is ever
        // committed, logged or copied.
        if batch.ops.is_empty() {
            return Err("it holds no writes".into());
        }
        Ok(())
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This data dir's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The cluster this replica belongs to, once registered.
    pub fn cluster(&self) -> Option<ClusterId> {
        self.cluster
    }

    /// Records the cluster and what the coordinator says is committed.
    pub fn registered(&mut self, cluster: ClusterId, committed: Version) {
        self.cluster = Some(cluster);
        self.known_committed = self.known_committed.max(committed);
    }

    /// The committed data.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The batch prepared and undecided, if any.
    pub fn pending(&self) -> Option<&Prepared> {
        self.pending.as_ref()
    }

    /// Last committed batch applied here.
    pub fn last_committed(&self) -> Option<BatchId> {
        self.last_committed
    }

    /// The newest view known.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The newest view made durable here.
    pub fn durable_view(&self) -> Option<&View> {
        self.durable_view.as_ref()
    }

    /// Whether this replica is a member of the newest view it knows.
    pub fn is_member(&self) -> bool {
        self.view.contains(self.id, self.incarnation)
    }

    /// Whether a catch-up is running.
    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    /// Whether a prepare showed this replica cannot follow without a copy.
    pub fn is_out_of_sync(&self) -> bool {
        self.out_of_sync
    }

    /// The lease left at `now`, if any.
    pub fn lease_left(&self, now: Time) -> Option<Duration> {
        self.lease_end
            .filter(|end| *end > now)
            .map(|end| now.until(end))
    }

    /// Whether this replica can prove it holds every committed write (or
    /// blocks on it), which is what makes its linearizable reads safe.
    pub fn is_current(&self) -> bool {
        let reach = match &self.pending {
            Some(p) => p.batch.last_version(),
            None => self.store.applied(),
        };
        reach >= self.known_committed
    }

    /// For a learner with nothing pending: the version it must reach (by
    /// fetching committed batches from its source) before it can prepare
    /// `req`, when it is behind; the batch `req.prev` carries counts as had.
    pub fn learner_gap(&self, req: &PrepareRequest) -> Option<Version> {
        if req.view.contains(self.id, self.incarnation)
            || self.catching_up
            || self.pending.is_some()
        {
            return None;
        }
        // Checked sums: `req` comes from the network, and a batch whose
        // versions do not fit is refused by `prepare`, not fetched for.
        let first = req.batch.first_version;
        let target = match &req.prev {
            Some(prev)
                if prev.checked_last_version().and_then(|l| l.checked_add(1)) == Some(first)
                    && Some(prev.id) == req.last_committed =>
            {
                prev.first_version.checked_sub(1)?
            }
            _ => first.checked_sub(1)?,
        };
        (self.store.applied() < target).then_some(target)
    }

    /// Phase 1. Votes YES only with the PREPARED record in `persist`.
    pub fn prepare(&mut self, req: &PrepareRequest) -> Step<Result<Vote, Error>> {
        if let Err(e) = self.check_sender(req.cluster, req.to) {
            return Step::reply(Err(e));
        }
        let batch = &req.batch;
        // Every sum below on the versions of `batch` and `req.prev` is safe
        // once both are known to fit.
        if let Some(b) = std::iter::once(batch)
            .chain(&req.prev)
            .find(|b| b.checked_last_version().is_none())
        {
            return Step::reply(Ok(Vote::No(format!(
                "batch {} is malformed: its {} versions from {} run past the last version",
                b.id,
                b.ops.len(),
                b.first_version
            ))));
        }
        if req.view.epoch != batch.id.epoch {
            return Step::reply(Ok(Vote::No(format!(
                "batch {} does not belong to the view it names ({})",
                batch.id, req.view
            ))));
        }
        if batch.id.epoch < self.view.epoch {
            return Step::reply(Ok(Vote::No(format!(
                "stale prepare for batch {}: replica {} is in epoch {}",
                batch.id, self.id, self.view.epoch
            ))));
        }
        if self.catching_up {
            return Step::reply(Ok(Vote::OutOfSync(format!(
                "replica {} is catching up from a peer",
                self.id
            ))));
        }
        if let Some(p) = &self.pending
            && p.batch.id == batch.id
        {
            // A retried prepare carries the same batch; one id with other
            // writes is a sender's bug, never to be voted for as held.
            if p.batch != *batch {
                return Step::reply(Ok(Vote::No(format!(
                    "batch {} is already prepared here with other writes",
                    batch.id
                ))));
            }
            return Step::reply(Ok(Vote::Yes {
                results: p.results.clone(),
                digest: p.digest,
                incarnation: self.incarnation,
            }));
        }
        if let Some(seen) = self.highest_seen
            && batch.id <= seen
        {
            return Step::reply(Ok(Vote::No(format!(
                "stale prepare for batch {}: batch {seen} was already seen",
                batch.id
            ))));
        }
        let member = req.view.contains(self.id, self.incarnation);
        // The view names another incarnation of this id (this data dir
        // replaced it): voting would speak for a replica that is gone.
        if let Some(m) = req.view.member(self.id)
            && m.incarnation != self.incarnation
        {
            return Step::reply(Ok(Vote::OutOfSync(format!(
                "replica {} is a new incarnation ({:016x}); {} still names {:016x}",
                self.id, self.incarnation, req.view, m.incarnation
            ))));
        }
        let mut step = Step::reply(Ok(Vote::No(String::new())));
        // A newer round means the coordinator decided the pending batch:
        // committed if it is the last committed one, aborted if the new
        // batch takes its versions (committed versions are never reused).
        // A member always sees one of the two; a learner that missed rounds
        // may see neither and must copy the truth from a peer.
        if let Some(p) = self.pending.take() {
            step.decided = true;
            if Some(p.batch.id) == req.last_committed {
                step.persist.push(Record::Committed(p.batch.id));
                self.apply(p.batch);
            } else if batch.first_version == p.batch.first_version {
                step.persist.push(Record::Aborted(p.batch.id));
                self.highest_seen = self.highest_seen.max(Some(p.batch.id));
            } else if !member {
                step.persist.push(Record::Discarded(p.batch.id));
                self.out_of_sync = true;
                step.reply = Ok(Vote::OutOfSync(format!(
                    "learner {} held batch {} whose fate batch {} does not tell; it catches up from a peer",
                    self.id, p.batch.id, batch.id
                )));
                return step;
            } else {
                let id = p.batch.id;
                self.pending = Some(p);
                step.decided = false;
                self.out_of_sync = true;
                step.reply = Ok(Vote::OutOfSync(format!(
                    "replica {} holds batch {id} undecided, which batch {} (after {:?}) does not settle",
                    self.id, batch.id, req.last_committed
                )));
                return step;
            }
        }
        // A learner one batch behind takes the batch it missed from the
        // prepare itself.
        if !member
            && let Some(prev) = &req.prev
            && Some(prev.id) == req.last_committed
            && self.follows(prev).is_ok()
            && prev.last_version().checked_add(1) == Some(batch.first_version)
        {
            step.persist.push(Record::Learned(prev.clone()));
            self.highest_seen = self.highest_seen.max(Some(prev.id));
            self.apply(prev.clone());
            step.decided = true;
        }
        self.highest_seen = Some(batch.id);
        let Some(next) = self.store.applied().checked_add(1) else {
            step.reply = Ok(Vote::No(format!(
                "replica {} applied the last version there is; batch {} cannot follow",
                self.id, batch.id
            )));
            return step;
        };
        if batch.first_version != next {
            self.known_committed = self
                .known_committed
                .max(batch.first_version.saturating_sub(1));
            self.out_of_sync = true;
            step.reply = Ok(Vote::OutOfSync(if batch.first_version > next {
                format!(
                    "replica {} is behind: it applied up to version {} but batch {} starts at {}; it catches up from a peer",
                    self.id,
                    next - 1,
                    batch.id,
                    batch.first_version
                )
            } else {
                format!(
                    "batch {} starts at version {} but replica {} already applied up to {}",
                    batch.id,
                    batch.first_version,
                    self.id,
                    next - 1
                )
            }));
            return step;
        }
        if batch.ops.is_empty() {
            step.reply = Ok(Vote::No(format!("batch {} is empty", batch.id)));
            return step;
        }
        if let Some(e) = batch
            .ops
            .iter()
            .find_map(|op| op.validate(&self.limits).err())
        {
            step.reply = Ok(Vote::No(e.to_string()));
            return step;
        }
        if self.durable_view.as_ref().map(|v| v.epoch) < Some(req.view.epoch) {
            step.persist.push(Record::View(req.view.clone()));
            self.durable_view = Some(req.view.clone());
        }
        if req.view.epoch >= self.view.epoch {
            self.view = req.view.clone();
            if !member {
                self.lease_end = None;
            }
        }
        self.known_committed = self.known_committed.max(next - 1);
        let results = self.store.preview(batch);
        let digest = self.store.digest_after(batch);
        step.persist.push(Record::Prepared(batch.clone()));
        step.reply = Ok(Vote::Yes {
            results: results.clone(),
            digest,
            incarnation: self.incarnation,
        });
        self.pending = Some(Prepared {
            batch: batch.clone(),
            results,
            digest,
        });
        step
    }

    /// Phase 2, commit. The reply is Ok once the COMMITTED record is durable.
    pub fn commit(
        &mut self,
        cluster: ClusterId,
        to: NodeId,
        id: BatchId,
    ) -> Step<Result<(), Error>> {
        if let Err(e) = self.check_sender(cluster, to) {
            return Step::reply(Err(e));
        }
        self.decide(id, Decision::Commit)
    }

    /// Phase 2, abort.
    pub fn abort(
        &mut self,
        cluster: ClusterId,
        to: NodeId,
        id: BatchId,
    ) -> Step<Result<(), Error>> {
        if let Err(e) = self.check_sender(cluster, to) {
            return Step::reply(Err(e));
        }
        self.decide(id, Decision::Abort)
    }

    /// Applies the coordinator's answer to a `resolve` for the pending batch.
    pub fn resolved(&mut self, id: BatchId, decision: Decision) -> Step<Result<(), Error>> {
        self.decide(id, decision)
    }

    fn decide(&mut self, id: BatchId, decision: Decision) -> Step<Result<(), Error>> {
        let is_pending = self.pending.as_ref().is_some_and(|p| p.batch.id == id);
        match decision {
            Decision::Pending => Step::reply(Ok(())),
            Decision::Unknown => {
                // A member waits for the next prepare to settle it; a
                // learner copies the truth instead.
                if is_pending && !self.is_member() {
                    self.out_of_sync = true;
                }
                Step::reply(Ok(()))
            }
            Decision::Commit if is_pending => {
                let Some(p) = self.pending.take() else {
                    return Step::reply(Ok(()));
                };
                self.apply(p.batch);
                Step {
                    persist: vec![Record::Committed(id)],
                    reply: Ok(()),
                    decided: true,
                }
            }
            Decision::Commit if self.last_committed.is_some_and(|c| id <= c) => Step::reply(Ok(())),
            // A learner acknowledges a batch it does not hold: it will never
            // ask about it, and it gets the batch with its copy.
            Decision::Commit if !self.is_member() || self.catching_up => Step::reply(Ok(())),
            Decision::Commit => Step::reply(Err(Error::Internal(format!(
                "commit for batch {id}, which replica {} never prepared",
                self.id
            )))),
            Decision::Abort if is_pending => {
                self.pending = None;
                self.highest_seen = self.highest_seen.max(Some(id));
                Step {
                    persist: vec![Record::Aborted(id)],
                    reply: Ok(()),
                    decided: true,
                }
            }
            Decision::Abort if self.last_committed == Some(id) => {
                Step::reply(Err(Error::Internal(format!(
                    "abort for batch {id}, which replica {} already committed",
                    self.id
                ))))
            }
            Decision::Abort => {
                // Presumed abort: nothing to undo; remembering the id makes a
                // late prepare of this batch vote NO.
                self.highest_seen = self.highest_seen.max(Some(id));
                Step::reply(Ok(()))
            }
        }
    }

    /// A heartbeat answer for a request that left at `t0`: learns the view
    /// and what is committed, and takes the lease if one is granted to a
    /// member. A grant of an older epoch than known is ignored.
    pub fn granted(&mut self, t0: Time, reply: &RenewReply) {
        if reply.view.epoch < self.view.epoch {
            return;
        }
        self.view = reply.view.clone();
        self.known_committed = self.known_committed.max(reply.committed);
        if !self.is_member() || self.catching_up {
            self.lease_end = None;
            return;
        }
        if self.revoked_at.is_some_and(|r| t0 <= r) {
            return;
        }
        if let Some(ms) = reply.lease_ms {
            let end = holder_end(t0, Duration::from_millis(ms));
            self.lease_end = self.lease_end.max(Some(end));
        }
    }

    /// Where this replica stands, for the coordinator's probe.
    pub fn probe(&self, cluster: ClusterId, to: NodeId) -> Result<ProbeReply, Error> {
        self.check_sender(cluster, to)?;
        Ok(ProbeReply {
            incarnation: self.incarnation,
            applied: self.store.applied(),
            digest: self.store.digest(),
            busy: self.pending.is_some() || self.catching_up,
        })
    }

    /// Ends the lease at once (the coordinator revoked it), and refuses
    /// every grant for a renewal sent before `now`. Refused when meant for
    /// another incarnation of this id: its lease is not ours to end.
    pub fn revoke(&mut self, incarnation: Incarnation, now: Time) -> Result<(), Error> {
        if incarnation != self.incarnation {
            return Err(Error::ClusterMismatch(format!(
                "revoke meant for incarnation {incarnation:016x} of replica {}, this is {:016x}",
                self.id, self.incarnation
            )));
        }
        self.lease_end = None;
        self.revoked_at = self.revoked_at.max(Some(now));
        Ok(())
    }

    /// Reads `key` at `now`. Linearizable reads need a member with a live
    /// lease that is current; they block on an undecided write of the key.
    pub fn read(&self, key: &[u8], level: ReadLevel, now: Time) -> Result<Read, Error> {
        if level == ReadLevel::Linearizable {
            if self.catching_up || !self.is_member() {
                return Err(Error::NotMember(format!(
                    "replica {} is not a member of {} ({}); read at another replica or use --serializable",
                    self.id,
                    self.view,
                    if self.catching_up {
                        "it is catching up"
                    } else {
                        "it is a learner or was dropped"
                    }
                )));
            }
            match self.lease_end {
                Some(end) if now < end => {}
                Some(end) => {
                    return Err(Error::LeaseExpired(format!(
                        "replica {}'s lease ended {} ms ago (it cannot reach the coordinator, or was paused); read at another replica or use --serializable",
                        self.id,
                        now.since(end).as_millis()
                    )));
                }
                None => {
                    return Err(Error::LeaseExpired(format!(
                        "replica {} holds no lease yet; read at another replica or use --serializable",
                        self.id
                    )));
                }
            }
            if !self.is_current() {
                return Err(Error::NotCurrent(format!(
                    "replica {} applied up to version {} but version {} is committed; read at another replica or use --serializable",
                    self.id,
                    self.store.applied(),
                    self.known_committed
                )));
            }
            if let Some(p) = &self.pending
                && p.batch.touches(key)
            {
                return Ok(Read::Blocked(p.batch.id));
            }
        }
        Ok(Read::Value(
            self.store.get(key).map(|e| (e.value.clone(), e.version)),
        ))
    }

    /// The snapshot of the committed state and the records a new log segment
    /// must start with so that replay still finds the pending batch.
    pub fn snapshot(&self) -> (Snapshot, Vec<Record>) {
        let snap = Snapshot {
            store: self.store.clone(),
            last_committed: self.last_committed,
            highest_seen: self.highest_seen,
            view: self.durable_view.clone(),
        };
        let carry = self
            .pending
            .iter()
            .map(|p| Record::Prepared(p.batch.clone()))
            .collect();
        (snap, carry)
    }

    // ---- catch-up, learner side ----

    /// Starts a catch-up: no lease, no votes, and the undecided batch (if
    /// any) is dropped, since its fate comes with the copy.
    pub fn begin_catch_up(&mut self) -> Step<()> {
        self.catching_up = true;
        self.out_of_sync = false;
        self.lease_end = None;
        let mut step = Step::reply(());
        if let Some(p) = self.pending.take() {
            step.persist.push(Record::Discarded(p.batch.id));
            step.decided = true;
        }
        step
    }

    /// Replaces the data with a copied snapshot, already durable on disk as
    /// this replica's own snapshot.
    pub fn install(&mut self, snap: Snapshot) {
        self.store = snap.store;
        self.last_committed = snap.last_committed;
        self.highest_seen = self.highest_seen.max(snap.highest_seen);
        self.pending = None;
        self.window.clear();
        self.known_committed = self.known_committed.max(self.store.applied());
    }

    /// Applies a committed batch copied from a member, after checking it
    /// follows the applied version and yields the member's digest.
    pub fn learn(&mut self, lb: LearnedBatch) -> Result<Step<()>, String> {
        if self.pending.is_some() {
            return Err("a batch is still undecided; catch-up must drop it first".into());
        }
        let b = &lb.batch;
        self.follows(b)
            .map_err(|e| format!("batch {} from the source: {e}", b.id))?;
        let digest = self.store.digest_after(b);
        if digest != lb.digest {
            return Err(format!(
                "after batch {} this replica's digest would be {digest:032x} but the source's is {:032x}",
                b.id, lb.digest
            ));
        }
        self.highest_seen = self.highest_seen.max(Some(b.id));
        self.apply(lb.batch.clone());
        Ok(Step {
            persist: vec![Record::Learned(lb.batch)],
            reply: (),
            decided: true,
        })
    }

    /// Ends the catch-up: the replica follows prepares again.
    pub fn finish_catch_up(&mut self) {
        self.catching_up = false;
        self.out_of_sync = false;
    }

    // ---- catch-up, source side ----

    /// Whether this replica can serve the log right after `applied` to a
    /// learner whose digest there is `digest`.
    pub fn can_serve_log(&self, applied: Version, digest: u128) -> bool {
        if applied == self.store.applied() {
            return digest == self.store.digest();
        }
        if applied > self.store.applied() {
            return false;
        }
        let known = if applied == 0 {
            Some(0)
        } else {
            self.window.digest_at(applied)
        };
        known == Some(digest) && self.window.after(applied, 1).is_some()
    }

    /// The committed batches after `after`, up to about `max_bytes`.
    pub fn log_after(&self, after: Version, max_bytes: usize) -> Result<LogChunk, Error> {
        let batches = if after == self.store.applied() {
            Vec::new()
        } else if after > self.store.applied() {
            return Err(Error::Unavailable(format!(
                "replica {} applied only up to version {}, behind the asked {after}; catch up from another member",
                self.id,
                self.store.applied()
            )));
        } else {
            self.window.after(after, max_bytes).ok_or_else(|| {
                Error::Unavailable(format!(
                    "replica {} no longer holds the log after version {after}; start over with a snapshot",
                    self.id
                ))
            })?
        };
        Ok(LogChunk {
            batches,
            source_applied: self.store.applied(),
            source_digest: self.store.digest(),
        })
    }

    /// Keeps the log after `version` for a transfer.
    pub fn pin(&mut self, transfer: u64, version: Version) {
        self.window.pin(transfer, version);
    }

    /// Releases a transfer's pin.
    pub fn unpin(&mut self, transfer: u64) {
        self.window.unpin(transfer);
    }

    /// Whether a transfer's pin still holds.
    pub fn is_pinned(&self, transfer: u64) -> bool {
        self.window.is_pinned(transfer)
    }

    /// The committed state to copy to a learner.
    pub fn image(&self) -> Snapshot {
        Snapshot {
            store: self.store.clone(),
            last_committed: self.last_committed,
            highest_seen: self.highest_seen,
            view: None,
        }
    }

    fn apply(&mut self, batch: Batch) {
        self.last_committed = Some(batch.id);
        let kept = batch.clone();
        self.store.apply(batch);
        self.window.push(LearnedBatch {
            batch: kept,
            digest: self.store.digest(),
        });
        self.known_committed = self.known_committed.max(self.store.applied());
    }

    fn check_sender(&self, cluster: ClusterId, to: NodeId) -> Result<(), Error> {
        match self.cluster {
            None => Err(Error::Unavailable(format!(
                "replica {} has not registered with its coordinator yet",
                self.id
            ))),
            Some(mine) if mine != cluster => Err(Error::ClusterMismatch(format!(
                "replica {} belongs to cluster {mine}, the request came from cluster {cluster}",
                self.id
            ))),
            Some(_) if to != self.id => Err(Error::ClusterMismatch(format!(
                "request meant for replica {to} reached replica {}; check the coordinator's --participants order",
                self.id
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::view::Member;
    use crate::types::Op;
    use proptest::prelude::*;

    const CLUSTER: ClusterId = ClusterId(7);

    fn op(key: u8, value: Option<u8>) -> Op {
        let key = vec![b'k', key];
        match value {
            Some(v) => Op::Put {
                key,
                value: vec![v],
            },
            None => Op::Delete { key },
        }
    }

    fn view(epoch: u64) -> View {
        View {
            epoch,
            members: vec![Member {
                id: 1,
                incarnation: 1,
            }],
        }
    }

    /// An empty store's snapshot at `applied`.
    fn empty_snapshot(applied: Version) -> Snapshot {
        Snapshot {
            store: Store::from_parts(Default::default(), applied, 0),
            last_committed: None,
            highest_seen: None,
            view: None,
        }
    }

    /// Replica 1 restored from [`empty_snapshot`] at `applied`, registered.
    fn restored_at(applied: Version) -> Participant {
        let mut p =
            Participant::restore(1, 1, Limits::default(), Some(empty_snapshot(applied)), [])
                .unwrap();
        p.registered(CLUSTER, applied);
        p
    }

    proptest! {
        /// Restoring from a snapshot taken at any point plus the log written
        /// after it gives exactly the state a replay of the whole log gives.
        #[test]
        fn snapshot_plus_replay_equals_full_replay(
            batches in prop::collection::vec(
                prop::collection::vec((0u8..6, prop::option::of(any::<u8>())), 1..5),
                1..12,
            ),
            snapshot_at in 0usize..12,
            snapshot_mid_round in any::<bool>(),
            leave_last_pending in any::<bool>(),
        ) {
            let mut p = Participant::new(1, 1, Limits::default());
            p.registered(CLUSTER, 0);
            let mut full: Vec<Record> = Vec::new();
            let mut suffix: Option<(Snapshot, Vec<Record>)> = None;
            let mut last_committed = None;
            let n = batches.len();
            for (seq, ops) in batches.into_iter().enumerate() {
                let take_snapshot = |p: &Participant, suffix: &mut Option<(Snapshot, Vec<Record>)>| {
                    let (snap, carry) = p.snapshot();
                    *suffix = Some((snap, carry));
                };
                if seq == snapshot_at && !snapshot_mid_round {
                    take_snapshot(&p, &mut suffix);
                }
                let batch = Batch {
                    id: BatchId { epoch: 1, seq: seq as u64 + 1 },
                    first_version: p.store().applied() + 1,
                    ops: ops.into_iter().map(|(k, v)| op(k, v)).collect(),
                };
                let id = batch.id;
                let req = PrepareRequest { cluster: CLUSTER, to: 1, batch, last_committed, view: view(1), prev: None };
                let step = p.prepare(&req);
                prop_assert!(matches!(step.reply, Ok(Vote::Yes { .. })), "prepare voted {:?}", step.reply);
                if let Some((_, tail)) = suffix.as_mut() {
                    tail.extend(step.persist.iter().cloned());
                }
                full.extend(step.persist);
                // Mid-round, the snapshot must carry the prepared batch.
                if seq == snapshot_at && snapshot_mid_round {
                    take_snapshot(&p, &mut suffix);
                }
                if !(leave_last_pending && seq + 1 == n) {
                    let step = p.commit(CLUSTER, 1, id);
                    prop_assert_eq!(step.reply, Ok(()));
                    if let Some((_, tail)) = suffix.as_mut() {
                        tail.extend(step.persist.iter().cloned());
                    }
                    full.extend(step.persist);
                    last_committed = Some(id);
                }
            }
            let replayed = Participant::restore(1, 1, Limits::default(), None, full).unwrap();
            prop_assert_eq!(replayed.store(), p.store());
            prop_assert_eq!(replayed.pending(), p.pending());
            prop_assert_eq!(replayed.view(), p.view());
            if let Some((snap, tail)) = suffix {
                let restored = Participant::restore(1, 1, Limits::default(), Some(snap), tail).unwrap();
                prop_assert_eq!(restored.store(), replayed.store());
                prop_assert_eq!(restored.store().digest(), replayed.store().digest());
                prop_assert_eq!(restored.pending(), replayed.pending());
            }
        }
    }

    /// Found by the `peer` fuzz target: a prepare retried with the same id
    /// but other writes was voted YES as the batch held, so a YES could
    /// stand for writes this replica never prepared.
    #[test]
    fn a_retried_prepare_must_carry_the_same_batch() {
        let mut p = Participant::new(1, 1, Limits::default());
        p.registered(CLUSTER, 0);
        let req = |ops| PrepareRequest {
            cluster: CLUSTER,
            to: 1,
            batch: Batch {
                id: BatchId { epoch: 1, seq: 1 },
                first_version: 1,
                ops,
            },
            last_committed: None,
            view: view(1),
            prev: None,
        };
        let first = req(vec![op(1, Some(1))]);
        assert!(matches!(p.prepare(&first).reply, Ok(Vote::Yes { .. })));
        assert!(
            matches!(p.prepare(&first).reply, Ok(Vote::Yes { .. })),
            "a plain retry"
        );
        let other = p.prepare(&req(vec![op(1, Some(2))]));
        assert!(
            matches!(&other.reply, Ok(Vote::No(why)) if why.contains("other writes")),
            "{:?}",
            other.reply
        );
        assert!(other.persist.is_empty());
        assert_eq!(p.pending().unwrap().batch, first.batch);
    }

    /// Found in review: a batch ending at the very last version passed the
    /// checks, then `Batch::last_version` overflowed on it (`first + len`
    /// before `- 1`) in `is_current`, the learner path and the window.
    #[test]
    fn a_batch_ending_at_the_last_version_is_served_like_any_other() {
        let last = Batch {
            id: BatchId { epoch: 1, seq: 1 },
            first_version: u64::MAX,
            ops: vec![op(1, Some(1))],
        };
        assert_eq!(last.last_version(), u64::MAX);
        // A member prepares and commits it, then serves the log up to it.
        let mut p = restored_at(u64::MAX - 1);
        let req = PrepareRequest {
            cluster: CLUSTER,
            to: 1,
            batch: last.clone(),
            last_committed: None,
            view: view(1),
            prev: None,
        };
        assert!(matches!(p.prepare(&req).reply, Ok(Vote::Yes { .. })));
        assert!(p.is_current());
        assert_eq!(p.commit(CLUSTER, 1, last.id).reply, Ok(()));
        assert_eq!(p.store().applied(), u64::MAX);
        let digest = p.store().digest();
        assert!(p.can_serve_log(u64::MAX, digest));
        assert!(
            !p.can_serve_log(u64::MAX - 1, 0),
            "no digest is known before it"
        );
        let served = p.log_after(u64::MAX - 1, 1 << 20).unwrap().batches;
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].batch.last_version(), u64::MAX);
        assert!(p.log_after(u64::MAX, 1 << 20).unwrap().batches.is_empty());
        // A learner takes it as the `prev` of the next prepare, which can
        // only be refused: no version follows it.
        let mut learner = restored_at(u64::MAX - 1);
        let next = PrepareRequest {
            cluster: CLUSTER,
            to: 1,
            batch: Batch {
                id: BatchId { epoch: 1, seq: 2 },
                first_version: 1,
                ops: vec![op(2, Some(2))],
            },
            last_committed: Some(last.id),
            view: View {
                epoch: 1,
                members: vec![],
            },
            prev: Some(last),
        };
        assert_eq!(learner.learner_gap(&next), None);
        let step = learner.prepare(&next);
        assert!(
            !matches!(step.reply, Ok(Vote::Yes { .. })),
            "{:?}",
            step.reply
        );
        assert_eq!(
            learner.store().applied(),
            u64::MAX - 1,
            "nothing follows it"
        );
        assert!(learner.is_current());
    }

    /// A version near either end of the range, or near `applied`.
    fn version_near(applied: Version) -> impl Strategy<Value = Version> {
        prop_oneof![
            0u64..3,
            (u64::MAX - 3)..=u64::MAX,
            (0u64..5).prop_map(move |d| applied.saturating_sub(2).saturating_add(d)),
        ]
    }

    proptest! {
        /// The peer port is a trust boundary: a prepare, a learner's gap
        /// question or a learned batch with any versions at all (0, the
        /// last one, more ops than fit, an empty batch) is answered (or
        /// refused) and never overflows a version, and whatever is voted
        /// YES or learned follows the applied version and fits.
        #[test]
        fn versions_from_a_peer_never_overflow(
            (applied, first, prev_first) in prop_oneof![Just(0u64), Just(5), Just(u64::MAX - 1), Just(u64::MAX)]
                .prop_flat_map(|a| (Just(a), version_near(a), version_near(a))),
            ops in 0usize..4,
            prev_ops in prop::option::of(0usize..4),
            member in any::<bool>(),
            prev_committed in any::<bool>(),
        ) {
            let mut p = restored_at(applied);
            let batch = |seq, first_version, n: usize| Batch {
                id: BatchId { epoch: 1, seq },
                first_version,
                ops: (0..n).map(|i| op(i as u8, Some(1))).collect(),
            };
            let prev = prev_ops.map(|n| batch(1, prev_first, n));
            let req = PrepareRequest {
                cluster: CLUSTER,
                to: 1,
                batch: batch(2, first, ops),
                last_committed: prev_committed.then_some(BatchId { epoch: 1, seq: 1 }),
                view: if member { view(1) } else { View { epoch: 1, members: vec![] } },
                prev,
            };
            if let Some(target) = p.learner_gap(&req) {
                prop_assert!(target > applied && target < first);
            }
            let step = p.prepare(&req);
            if let Ok(Vote::Yes { .. }) = step.reply {
                let start = p.store().applied().checked_add(1);
                prop_assert_eq!(start, Some(first));
                prop_assert!(req.batch.checked_last_version().is_some());
            }
            let mut fresh = restored_at(applied);
            let lb = LearnedBatch { digest: 0, batch: batch(3, first, ops) };
            let fits = applied.checked_add(1) == Some(first) && lb.batch.checked_last_version().is_some();
            if !fits {
                prop_assert!(fresh.learn(lb).is_err());
            }
        }
    }

    /// Found by the `snapshot` fuzz target (`fuzz/corpus/snapshot/regress-
    /// version-overflow`): a snapshot that claims version u64::MAX, or a
    /// batch whose versions run past it, made restoring panic (`applied +
    /// 1` overflowed) instead of refusing the damaged data dir.
    #[test]
    fn restore_refuses_versions_past_the_last_one() {
        let batch = |first_version, ops: Vec<Op>| Batch {
            id: BatchId { epoch: 1, seq: 1 },
            first_version,
            ops,
        };
        let restore = |applied, record| {
            Participant::restore(
                1,
                1,
                Limits::default(),
                Some(empty_snapshot(applied)),
                [record],
            )
        };
        let next = |b: Batch| [Record::Prepared(b.clone()), Record::Learned(b)];
        for record in next(batch(0, vec![op(1, Some(1))])) {
            let e = restore(u64::MAX, record).unwrap_err();
            assert!(e.contains("applied up to 18446744073709551615"), "{e}");
        }
        for record in next(batch(u64::MAX, vec![op(1, Some(1)), op(2, None)])) {
            let e = restore(u64::MAX - 1, record).unwrap_err();
            assert!(e.contains("past the last version"), "{e}");
        }
        // The very last version is still a version.
        let last = restore(
            u64::MAX - 1,
            Record::Learned(batch(u64::MAX, vec![op(1, Some(1))])),
        );
        assert_eq!(last.unwrap().store().applied(), u64::MAX);
    }
}
