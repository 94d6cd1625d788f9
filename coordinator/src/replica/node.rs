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

use quintet_common::protocol::coordinator::{Record, Recovered};
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, Ready, StateRole};

use super::store::{RaftRecord, RaftStore};

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
    state: Recovered,
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
}

impl Replica {
    /// A replica with Raft id `id` of a group of `voters`, over a log
    /// restored from the WAL. A group of one wins its election at once.
    pub fn new(
        id: u64,
        voters: &[u64],
        store: RaftStore,
        timing: Timing,
    ) -> Result<Replica, String> {
        let state = decode_state(&store.latest_snapshot().data)?;
        let applied = store.latest_snapshot().get_metadata().index;
        let config = Config {
            id,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
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
        let mut raw =
            RawNode::new(&config, store, &logger).map_err(|e| format!("starting Raft: {e}"))?;
        if voters == [id] {
            raw.campaign()
                .map_err(|e| format!("starting a one-replica group: {e}"))?;
        }
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
        })
    }

    /// Whether the log is empty (a new replica, or a wiped one).
    pub fn is_empty(&self) -> bool {
        let store = self.raw.store();
        store.len() == 0 && store.latest_snapshot().get_metadata().index == 0
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
        &self.state
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

    /// A message from a peer.
    pub fn step(&mut self, mut msg: Message) {
        if self.withholding && is_vote_request(&msg) {
            return;
        }
        if matches!(
            msg.get_msg_type(),
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        ) {
            self.leader_commit = self.leader_commit.max(msg.commit);
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.leader_commit = self
                    .leader_commit
                    .max(msg.get_snapshot().get_metadata().index);
            }
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
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            match decode_state(&snap.data) {
                Ok(state) => self.state = state,
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
            self.state.apply(record.clone());
            io.applied.push(Applied {
                index: e.index,
                record,
                ours: mine == Some(e.term) && self.role == StateRole::Leader,
            });
        }
    }

    /// Compacts the log when it holds more than `max_entries`: a snapshot
    /// of the decision state at the applied index replaces the entries it
    /// covers. Returns what a fresh WAL segment must start with.
    pub fn maybe_compact(&mut self, max_entries: usize) -> Option<Vec<RaftRecord>> {
        let store = self.raw.store();
        if store.len() <= max_entries
            || self.applied <= store.latest_snapshot().get_metadata().index
        {
            return None;
        }
        let data = bincode::serialize(&self.state).ok()?;
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

fn decode_state(data: &[u8]) -> Result<Recovered, String> {
    if data.is_empty() {
        return Ok(Recovered::default());
    }
    bincode::deserialize(data)
        .map_err(|e| format!("the decision state in a Raft snapshot cannot be decoded: {e}"))
}
