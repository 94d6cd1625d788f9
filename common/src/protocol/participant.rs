//! The participant's side of 2PC.
//!
//! A participant decides nothing: it checks what the coordinator proposes,
//! makes it durable, votes, and applies or drops it when told. Rounds run one
//! at a time, so at most one batch is prepared and undecided at any moment;
//! the next prepare carries the id of the last committed batch, which settles
//! a prepared batch whose commit or abort message was lost.
//!
//! Every method returns a [`Step`]: the records to make durable, in order,
//! before the reply may leave. Replaying those records over the latest
//! snapshot rebuilds exactly the state the participant had (see
//! [`Participant::restore`]).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::rpc::{Decision, PrepareRequest, Vote};
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
}

/// The result of feeding one input: persist `persist`, then release `reply`.
#[derive(Debug)]
#[must_use]
pub struct Step<T> {
    /// Records to make durable before `reply` is sent, in this order.
    pub persist: Vec<Record>,
    /// The answer for the caller.
    pub reply: T,
    /// True when a batch was committed or aborted, so blocked reads may proceed.
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
}

/// What a read found.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Read {
    /// The committed value and its version, if the key exists.
    Value(Option<(Vec<u8>, Version)>),
    /// The key is written by an undecided batch: wait for its decision.
    Blocked(BatchId),
}

/// One replica's 2PC state and committed data.
#[derive(Debug)]
pub struct Participant {
    id: NodeId,
    cluster: Option<ClusterId>,
    limits: Limits,
    store: Store,
    last_committed: Option<BatchId>,
    pending: Option<Prepared>,
    highest_seen: Option<BatchId>,
    known_committed: Version,
}

impl Participant {
    /// A fresh, empty replica.
    pub fn new(id: NodeId, limits: Limits) -> Self {
        Participant {
            id,
            cluster: None,
            limits,
            store: Store::default(),
            last_committed: None,
            pending: None,
            highest_seen: None,
            known_committed: 0,
        }
    }

    /// Rebuilds a replica from its latest snapshot and the log after it.
    /// Fails when the log contradicts itself (a sign of a damaged disk).
    pub fn restore(
        id: NodeId,
        limits: Limits,
        snapshot: Option<Snapshot>,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Self, String> {
        let mut p = Participant::new(id, limits);
        if let Some(s) = snapshot {
            p.store = s.store;
            p.last_committed = s.last_committed;
            p.highest_seen = s.highest_seen;
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
                    if batch.first_version != p.store.applied() + 1 {
                        return Err(format!(
                            "log holds batch {} at version {} but the replica applied up to {}",
                            batch.id,
                            batch.first_version,
                            p.store.applied()
                        ));
                    }
                    p.highest_seen = p.highest_seen.max(Some(batch.id));
                    let results = p.store.preview(&batch);
                    p.pending = Some(Prepared { batch, results });
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
            }
        }
        p.known_committed = p.store.applied();
        Ok(p)
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
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

    /// Whether this replica can prove it holds every committed write (or
    /// blocks on it), which is what makes its linearizable reads safe.
    pub fn is_current(&self) -> bool {
        let reach = match &self.pending {
            Some(p) => p.batch.last_version(),
            None => self.store.applied(),
        };
        reach >= self.known_committed
    }

    /// Phase 1. Votes YES only with the PREPARED record in `persist`.
    pub fn prepare(&mut self, req: &PrepareRequest) -> Step<Result<Vote, Error>> {
        if let Err(e) = self.check_sender(req.cluster, req.to) {
            return Step::reply(Err(e));
        }
        let batch = &req.batch;
        if let Some(p) = &self.pending
            && p.batch.id == batch.id
        {
            return Step::reply(Ok(Vote::Yes(p.results.clone())));
        }
        if let Some(seen) = self.highest_seen
            && batch.id <= seen
        {
            return Step::reply(Ok(Vote::No(format!(
                "stale prepare for batch {}: batch {seen} was already seen",
                batch.id
            ))));
        }
        let mut step = Step::reply(Ok(Vote::No(String::new())));
        // A newer round means the coordinator decided the pending batch:
        // committed if it is the last committed one, aborted otherwise.
        if let Some(p) = self.pending.take() {
            if Some(p.batch.id) == req.last_committed {
                step.persist.push(Record::Committed(p.batch.id));
                self.apply(p.batch);
            } else {
                step.persist.push(Record::Aborted(p.batch.id));
            }
            step.decided = true;
        }
        self.highest_seen = Some(batch.id);
        let next = self.store.applied() + 1;
        if batch.first_version != next {
            self.known_committed = self
                .known_committed
                .max(batch.first_version.saturating_sub(1));
            step.reply = Ok(Vote::No(if batch.first_version > next {
                format!(
                    "replica {} is behind: it applied up to version {} but batch {} starts at {}; rebuild its data dir from a peer",
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
        self.known_committed = self.known_committed.max(next - 1);
        let results = self.store.preview(batch);
        step.persist.push(Record::Prepared(batch.clone()));
        step.reply = Ok(Vote::Yes(results.clone()));
        self.pending = Some(Prepared {
            batch: batch.clone(),
            results,
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

    /// Reads `key`. Linearizable reads block on an undecided write of the key
    /// and are refused when the replica cannot prove it is current.
    pub fn read(&self, key: &[u8], level: ReadLevel) -> Result<Read, Error> {
        if level == ReadLevel::Linearizable {
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
        };
        let carry = self
            .pending
            .iter()
            .map(|p| Record::Prepared(p.batch.clone()))
            .collect();
        (snap, carry)
    }

    fn apply(&mut self, batch: Batch) {
        self.last_committed = Some(batch.id);
        self.store.apply(batch);
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
            let mut p = Participant::new(1, Limits::default());
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
                let req = PrepareRequest { cluster: CLUSTER, to: 1, batch, last_committed };
                let step = p.prepare(&req);
                prop_assert!(matches!(step.reply, Ok(Vote::Yes(_))));
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
            let replayed = Participant::restore(1, Limits::default(), None, full).unwrap();
            prop_assert_eq!(replayed.store(), p.store());
            prop_assert_eq!(replayed.pending(), p.pending());
            if let Some((snap, tail)) = suffix {
                let restored = Participant::restore(1, Limits::default(), Some(snap), tail).unwrap();
                prop_assert_eq!(restored.store(), replayed.store());
                prop_assert_eq!(restored.store().digest(), replayed.store().digest());
                prop_assert_eq!(restored.pending(), replayed.pending());
            }
        }
    }
}
