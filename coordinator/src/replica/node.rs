//! One coordinator replica's Raft node: raft-rs's `RawNode` over the
//! in-memory [`RaftStore`], and the decision state folded from every
//! applied entry.
//!
//! Free of I/O in the raft-rs way: [`Replica::ready`] hands out what the
//! driver must do (records to make durable, messages to send before and
//! after that, entries applied) and [`Replica::advance`] completes the
//! cycle. Every replica applies every committed decision record to its
//! [`Recovered`] state; only the leader runs the 2PC state machine, and
//! only once the empty entry that opens its term is applied (then every
//! record of earlier terms is applied too). An applied record this replica
//! proposed in the current term is marked `ours`: that is the 2PC state
//! machine's "durable".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use protobuf::Message as _;
use quintet_common::clock::Time;
use quintet_common::protocol::coordinator::{Record, Recovered};
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, Ready, StateRole};
use serde::{Deserialize, Serialize};

use super::store::{BOOTSTRAP_INDEX, RaftRecord, RaftStore};

/// What every replica folds from the applied log, and what a snapshot
/// holds: the decision state and the coordinator replicas' addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The 2PC decision state.
    pub decisions: Recovered,
    /// Every member's address (voters and learners), by Raft id.
    pub coordinators: BTreeMap<u64, String>,
}

impl ReplicaState {
    /// The snapshot data of this state.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain maps and structs cannot fail.
        bincode::serialize(self).unwrap_or_default()
    }
}

/// A learner counts as caught up, and is promoted to voter, once it is
/// within this many entries of the leader's commit index.
const PROMOTE_WITHIN: u64 = 64;

/// A committed record, applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its index in the Raft log.
    pub index: u64,
    /// The decision record.
    pub record: Record,
    /// Proposed by this replica in its current term as leader.
    pub ours: bool,
}

/// What the driver does with one Ready, in this order: send `send_now`,
/// make `persist` durable, send `send_after`, then call
/// [`Replica::advance`]. `applied` and `role` are already in effect.
#[derive(Debug, Default)]
pub struct Io {
    /// Messages that may leave before `persist` is durable (a leader's
    /// appends: raft lets it write its own log while replicating).
    pub send_now: Vec<Message>,
    /// Changes to append to the WAL; fsync them before `send_after`.
    pub persist: Vec<RaftRecord>,
    /// Messages that depend on `persist` (votes, append answers).
    pub send_after: Vec<Message>,
    /// Records applied, in log order.
    pub applied: Vec<Applied>,
    /// The replica's role changed.
    pub role: Option<RoleChange>,
    /// The membership (or a member's address) changed.
    pub members_changed: bool,
}

/// A change of the replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// It won an election.
    BecameLeader {
        /// The term.
        term: u64,
    },
    /// It was leader and is not any more.
    SteppedDown {
        /// The term it is in now.
        term: u64,
    },
}

/// Where a peer stands, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// Raft id.
    pub id: u64,
    /// Highest index known to be replicated there.
    pub matched: u64,
    /// Heard from within the last election timeout.
    pub active: bool,
}

/// A coordinator replica's Raft node; see the module docs.
pub struct Replica {
    raw: RawNode<RaftStore>,
    state: ReplicaState,
    applied: u64,
    leader: u64,
    role: StateRole,
    /// Index of the empty entry opening this leader's term.
    opened_at: Option<u64>,
    /// This leader's proposals not applied yet: index -> term.
    mine: BTreeMap<u64, u64>,
    /// Casts no vote and starts no election (see [`Replica::withhold_votes`]).
    withholding: bool,
    /// Highest commit index a leader has told this replica.
    leader_commit: u64,
    /// On the leader: the latest send time of a heartbeat round a majority
    /// acknowledged in this term (see [`Replica::leadership_confirmed`]).
    confirmed: Option<Time>,
}

fn is_vote_request(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    )
}

/// A slog drain that forwards raft-rs's log lines to `tracing`.
struct TracingDrain;

struct Kv(String);

impl slog::Serializer for Kv {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV as _;
        let mut kv = Kv(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{msg}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}{}", kv.0),
            _ => tracing::debug!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// Raft settings of a replica.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Ticks without a leader before an election (randomized up to twice that).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Most ticks a randomized election timeout lasts (exclusive; 0: twice
    /// `election_ticks`). Tests pin it to `election_ticks + 1`.
    pub max_election_ticks: usize,
}

impl Replica {
    /// A replica with Raft id `id` over a log restored from the WAL (whose
    /// snapshot gives the members).
    pub fn new(id: u64, store: RaftStore, timing: Timing) -> Result<Replica, String> {
        let state = decode_state(&store.latest_snapshot().data)?;
        let applied = store.latest_snapshot().get_metadata().index;
        let config = Config {
            id,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
            max_election_tick: timing.max_election_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| format!("Raft settings: {e}"))?;
        let logger = slog::Logger::root(slog::Drain::fuse(TracingDrain), slog::o!());
        let raw =
            RawNode::new(&config, store, &logger).map_err(|e| format!("starting Raft: {e}"))?;
        Ok(Replica {
            raw,
            state,
            applied,
            leader: 0,
            role: StateRole::Follower,
            opened_at: None,
            mine: BTreeMap::new(),
            withholding: false,
            leader_commit: 0,
            confirmed: None,
        })
    }

    /// Campaigns at once if this replica is the only voter, so a group of
    /// one leads without waiting out an election timeout. Call it once the
    /// committed log is applied: the membership changes in it decide
    /// whether the replica is alone.
    pub fn campaign_if_alone(&mut self) {
        if self.voters() == [self.id()]
            && self.role != StateRole::Leader
            && let Err(e) = self.raw.campaign()
        {
            tracing::warn!(error = %e, "cannot start the election of a one-replica group");
        }
    }

    /// Starts an election at once that voters take even while they still
    /// hear a leader (as in a leadership transfer): lets tests choose who
    /// leads.
    #[cfg(test)]
    pub fn force_campaign(&mut self) {
        self.raw.raft.campaign(raft::CAMPAIGN_TRANSFER);
    }

    /// Every member's address, by Raft id.
    pub fn coordinators(&self) -> &BTreeMap<u64, String> {
        &self.state.coordinators
    }

    /// The voters.
    pub fn voters(&self) -> Vec<u64> {
        self.raw.raft.prs().conf().voters().ids().iter().collect()
    }

    /// The learners (joining, not yet voting).
    pub fn learners(&self) -> Vec<u64> {
        let mut l: Vec<u64> = self
            .raw
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        l.sort_unstable();
        l
    }

    /// This replica's Raft id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// Whether a membership change is proposed and not applied yet (Raft
    /// takes one at a time).
    pub fn changing_members(&self) -> bool {
        self.raw.raft.pending_conf_index > self.applied
    }

    /// Proposes adding replica `id`, reached at `address`, as a learner
    /// (`voter` false) or promoting it to voter (`voter` true). Returns the
    /// entry's index.
    pub fn propose_member(&mut self, id: u64, address: &str, voter: bool) -> Result<u64, String> {
        let mut cc = ConfChange::default();
        cc.set_change_type(if voter {
            ConfChangeType::AddNode
        } else {
            ConfChangeType::AddLearnerNode
        });
        cc.node_id = id;
        cc.set_context(address.as_bytes().to_vec().into());
        self.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| format!("Raft refused the membership change: {e}"))?;
        Ok(self.raw.raft.raft_log.last_index())
    }

    /// Learners close enough to the leader's log to vote (on the leader,
    /// with no membership change pending).
    pub fn learners_caught_up(&self) -> Vec<u64> {
        if self.role != StateRole::Leader || self.changing_members() {
            return Vec::new();
        }
        let committed = self.raw.raft.raft_log.committed;
        let prs = self.raw.raft.prs();
        self.learners()
            .into_iter()
            .filter(|id| {
                prs.get(*id).is_some_and(|p| {
                    p.matched > BOOTSTRAP_INDEX && p.matched + PROMOTE_WITHIN >= committed
                })
            })
            .collect()
    }

    /// Whether the log is empty (a new replica, or a wiped one).
    /// (Nothing beyond the bootstrap snapshot, or not even that.)
    pub fn is_empty(&self) -> bool {
        self.last_index() <= BOOTSTRAP_INDEX
    }

    /// The last index of the log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// Makes this replica neither vote nor stand for election (`true`)
    /// until it has applied everything a leader says is committed, or
    /// until told otherwise (`false`). A replica whose log was wiped lost
    /// its votes and its entries; voting at once could hand a stale
    /// candidate the majority and erase committed decisions.
    pub fn withhold_votes(&mut self, withhold: bool) {
        self.withholding = withhold;
    }

    /// Whether votes are withheld.
    pub fn is_withholding(&self) -> bool {
        self.withholding
    }

    /// The decision state folded from every applied record.
    pub fn state(&self) -> &Recovered {
        &self.state.decisions
    }

    /// Highest index applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader's Raft id (0 while unknown).
    pub fn leader(&self) -> u64 {
        self.leader
    }

    /// Whether this replica leads and every record before its term is
    /// applied: the 2PC state machine may run.
    pub fn is_serving(&self) -> bool {
        self.role == StateRole::Leader && self.opened_at.is_some_and(|i| self.applied >= i)
    }

    /// Whether this replica is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.role == StateRole::Leader
    }

    /// Appends a decision record; returns its index. Only a leader can.
    pub fn propose(&mut self, record: &Record) -> Result<u64, String> {
        if self.role != StateRole::Leader {
            return Err("this coordinator replica is not the leader".into());
        }
        let data = bincode::serialize(record).map_err(|e| e.to_string())?;
        self.raw
            .propose(Vec::new(), data)
            .map_err(|e| format!("Raft refused the proposal: {e}"))?;
        let index = self.raw.raft.raft_log.last_index();
        self.mine.insert(index, self.raw.raft.term);
        Ok(index)
    }

    /// Starts a round that confirms this leader: a heartbeat tagged with
    /// `now` (raft-rs's ReadIndex), which counts once a majority answers
    /// it. Call it every tick.
    pub fn confirm(&mut self, now: Time) {
        if self.is_serving() {
            self.raw.read_index(now.0.to_be_bytes().to_vec());
        }
    }

    /// Whether this replica leads and a majority of voters acknowledged a
    /// heartbeat it sent within `within` before `now`. The time is the
    /// round's *send* time, by this replica's clock, so a leader cut off
    /// from the other replicas, or paused past its election timeout, fails
    /// this at once when it runs again, even if stale answers are still
    /// queued for it: it must not grant leases, since a new leader may be
    /// counting on their end (docs/protocol.md).
    pub fn leadership_confirmed(&self, now: Time, within: Duration) -> bool {
        self.role == StateRole::Leader && self.confirmed.is_some_and(|t| now.since(t) < within)
    }

    /// A message from a peer.
    pub fn step(&mut self, mut msg: Message) {
        if self.withholding && is_vote_request(&msg) {
            return;
        }
        // An append carries the leader's whole commit index (a heartbeat
        // only what this replica is known to hold, a snapshot only its own
        // index): that is what a wiped replica must hold before it votes.
        if msg.get_msg_type() == MessageType::MsgAppend {
            self.leader_commit = self.leader_commit.max(msg.commit);
        }
        // A leader that has not heard this replica was wiped still
        // believes it holds what it acknowledged and sends that as the
        // commit; raft-rs takes a commit past the log's end for a bug.
        // This replica commits no further than it holds.
        let last = self.raw.raft.raft_log.last_index();
        if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last {
            msg.commit = last;
        }
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(error = %e, "Raft message dropped");
        }
    }

    /// Replica `id` says its log is empty (it was wiped). A leader forgets
    /// what it matched there and probes it from the start, so it gets the
    /// log again (or the snapshot) instead of appends it cannot place.
    pub fn peer_emptied(&mut self, id: u64) {
        if self.raw.raft.state != StateRole::Leader || id == self.raw.raft.id {
            return;
        }
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(id)
            && pr.matched > 0
        {
            tracing::info!(
                peer = id,
                matched = pr.matched,
                "coordinator replica {id} lost its log; sending it the log again"
            );
            pr.matched = 0;
            pr.become_probe();
        }
    }

    /// One Raft tick.
    pub fn tick(&mut self) {
        // A withholding follower's election timer stands still: it must
        // not campaign.
        if self.withholding && self.role == StateRole::Follower {
            return;
        }
        self.raw.tick();
    }

    /// A peer could not be reached.
    pub fn unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// The next batch of work, if raft has any; see [`Io`].
    pub fn ready(&mut self) -> Option<(Ready, Io)> {
        if !self.raw.has_ready() {
            return None;
        }
        let mut rd = self.raw.ready();
        let mut io = Io::default();
        if let Some(ss) = rd.ss() {
            self.leader = ss.leader_id;
            io.role = self.role_changed(ss.raft_state);
        }
        io.send_now = rd.take_messages();
        for rs in rd.take_read_states() {
            if let Ok(bytes) = <[u8; 8]>::try_from(&rs.request_ctx[..]) {
                let sent = Time(u64::from_be_bytes(bytes));
                self.confirmed = self.confirmed.max(Some(sent));
            }
        }
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            match decode_state(&snap.data) {
                Ok(state) => {
                    self.state = state;
                    io.members_changed = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "a snapshot from the leader cannot be decoded")
                }
            }
            self.applied = snap.get_metadata().index;
            io.persist.push(RaftRecord::snapshot(&snap));
            self.raw.mut_store().apply_snapshot(snap);
        }
        self.apply_entries(rd.take_committed_entries(), &mut io);
        if !rd.entries().is_empty() {
            if let Err(e) = self.raw.mut_store().append(rd.entries()) {
                tracing::error!(error = %e, "the Raft log rejected entries");
            }
            io.persist.push(RaftRecord::entries(rd.entries()));
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone());
            io.persist.push(RaftRecord::hard_state(hs));
        }
        io.send_after = rd.take_persisted_messages();
        self.filter_votes(&mut io);
        Some((rd, io))
    }

    /// While withholding, drops this replica's own vote requests, and stops
    /// withholding once it has applied what a leader says is committed.
    fn filter_votes(&mut self, io: &mut Io) {
        if !self.withholding {
            return;
        }
        if self.leader_commit > 0 && self.applied >= self.leader_commit {
            self.withholding = false;
            tracing::info!(
                applied = self.applied,
                "caught up with the coordinator leader's log; this replica votes again"
            );
            return;
        }
        io.send_now.retain(|m| !is_vote_request(m));
        io.send_after.retain(|m| !is_vote_request(m));
    }

    /// Completes a Ready whose `persist` is durable and whose messages went.
    pub fn advance(&mut self, rd: Ready) -> Io {
        let mut light = self.raw.advance(rd);
        let mut io = Io::default();
        if let Some(commit) = light.commit_index() {
            let mut hs = self.raw.store().hard_state().clone();
            hs.commit = commit;
            io.persist.push(RaftRecord::hard_state(&hs));
            self.raw.mut_store().set_hard_state(hs);
        }
        io.send_now = light.take_messages();
        self.apply_entries(light.take_committed_entries(), &mut io);
        self.raw.advance_apply();
        self.filter_votes(&mut io);
        io
    }

    fn role_changed(&mut self, now: StateRole) -> Option<RoleChange> {
        let was = self.role;
        self.role = now;
        let term = self.raw.raft.term;
        match (was, now) {
            (StateRole::Leader, StateRole::Leader) => None,
            (_, StateRole::Leader) => {
                self.confirmed = None;
                // Becoming leader appended the empty entry that opens the term.
                self.opened_at = Some(self.raw.raft.raft_log.last_index());
                Some(RoleChange::BecameLeader { term })
            }
            (StateRole::Leader, _) => {
                self.opened_at = None;
                self.mine.clear();
                Some(RoleChange::SteppedDown { term })
            }
            _ => None,
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, io: &mut Io) {
        for e in entries {
            self.applied = e.index;
            let mine = self.mine.remove(&e.index);
            if e.get_entry_type() == EntryType::EntryConfChange {
                self.apply_member_change(&e);
                io.members_changed = true;
                continue;
            }
            if e.data.is_empty() || e.get_entry_type() != EntryType::EntryNormal {
                continue;
            }
            let record: Record = match bincode::deserialize(&e.data[..]) {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(index = e.index, error = %err, "a committed decision record cannot be decoded; skipping it");
                    continue;
                }
            };
            self.state.decisions.apply(record.clone());
            io.applied.push(Applied {
                index: e.index,
                record,
                ours: mine == Some(e.term) && self.role == StateRole::Leader,
            });
        }
    }

    fn apply_member_change(&mut self, e: &Entry) {
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(index = e.index, error = %err, "a committed membership change cannot be decoded; skipping it");
                return;
            }
        };
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => self.raw.mut_store().set_conf_state(cs),
            Err(err) => {
                tracing::error!(index = e.index, error = %err, "a committed membership change cannot be applied; skipping it");
                return;
            }
        }
        let id = cc.node_id;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let address = String::from_utf8_lossy(cc.get_context()).into_owned();
                if !address.is_empty() {
                    self.state.coordinators.insert(id, address);
                }
                let voter = cc.get_change_type() == ConfChangeType::AddNode;
                tracing::info!(
                    replica = id,
                    address = self.state.coordinators.get(&id).map_or("?", |a| a.as_str()),
                    index = e.index,
                    "coordinator replica {id} {}",
                    if voter {
                        "is a voter"
                    } else {
                        "joined as a learner"
                    }
                );
            }
            ConfChangeType::RemoveNode => {
                self.state.coordinators.remove(&id);
                tracing::info!(
                    replica = id,
                    index = e.index,
                    "coordinator replica {id} removed"
                );
            }
        }
    }

    /// Compacts the log when it holds more than `max_entries`, or when
    /// raft-rs wanted a newer snapshot for a peer: a snapshot of the
    /// replica state at the applied index replaces the entries it covers.
    /// Returns what a fresh WAL segment must start with.
    pub fn maybe_compact(&mut self, max_entries: usize) -> Option<Vec<RaftRecord>> {
        let store = self.raw.store();
        let wanted = store.take_snapshot_wanted();
        if (store.len() <= max_entries && !wanted)
            || self.applied <= store.latest_snapshot().get_metadata().index
        {
            return None;
        }
        let data = self.state.encode();
        let applied = self.applied;
        let snap = match self.raw.mut_store().compact(applied, data) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot compact the Raft log");
                return None;
            }
        };
        let store = self.raw.store();
        let mut carry = vec![
            RaftRecord::snapshot(&snap),
            RaftRecord::hard_state(store.hard_state()),
        ];
        carry.extend(store.held_entries().chunks(4096).map(RaftRecord::entries));
        Some(carry)
    }

    /// Where each peer stands (meaningful on the leader).
    pub fn progress(&self) -> Vec<PeerProgress> {
        let status = self.raw.status();
        let Some(tracker) = status.progress else {
            return Vec::new();
        };
        let mut out: Vec<PeerProgress> = tracker
            .iter()
            .map(|(&id, p)| PeerProgress {
                id,
                matched: p.matched,
                active: p.recent_active,
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }
}

fn decode_state(data: &[u8]) -> Result<ReplicaState, String> {
    if data.is_empty() {
        return Ok(ReplicaState::default());
    }
    bincode::deserialize(data)
        .map_err(|e| format!("the replica state in a Raft snapshot cannot be decoded: {e}"))
}
