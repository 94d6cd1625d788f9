//! The Raft log of a coordinator replica, in memory, and the records that
//! make it durable.
//!
//! raft-rs reads the log through [`Storage`]; this store keeps it in memory
//! (the log holds decisions only, no key-value data, so it is small) and is
//! changed only by the replica's Ready handling. Every change is also
//! returned as a [`RaftRecord`] that the driver appends to the coordinator's
//! write-ahead log (the same segmented, checksummed WAL as before) and
//! fsyncs before the messages that depend on it leave. Replaying those
//! records in order ([`RaftStore::replay`]) rebuilds the store exactly.
//!
//! A group's log starts from a bootstrap snapshot at index 1 (members and
//! their addresses), not from an empty log, so a replica joining later
//! always starts from a snapshot and learns the membership with it.
//! Compaction keeps a snapshot (metadata plus the folded replica state as
//! data) and drops the entries it covers; a follower too far behind gets
//! that snapshot from the leader, which is how a wiped replica rejoins. A
//! snapshot raft-rs asks for that is too old (or predates the member it is
//! for) is refused as temporarily unavailable and flagged, and the replica
//! takes a fresh one.

use std::cell::Cell;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use serde::{Deserialize, Serialize};

/// One change to the Raft log, as written to the WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRecord {
    /// Entries appended (protobuf); they replace any entries from their
    /// first index on.
    Entries(Vec<Vec<u8>>),
    /// The hard state (term, vote, commit), protobuf.
    HardState(Vec<u8>),
    /// A snapshot installed or taken (protobuf): entries up to its index
    /// are gone.
    Snapshot(Vec<u8>),
}

fn encode(m: &impl protobuf::Message) -> Vec<u8> {
    // Writing a protobuf message into a Vec cannot fail.
    m.write_to_bytes().unwrap_or_default()
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, String> {
    M::parse_from_bytes(bytes).map_err(|e| format!("a Raft {what} record cannot be decoded: {e}"))
}

impl RaftRecord {
    /// The record for appended entries.
    pub fn entries(entries: &[Entry]) -> RaftRecord {
        RaftRecord::Entries(entries.iter().map(encode).collect())
    }

    /// The record for a hard state.
    pub fn hard_state(hs: &HardState) -> RaftRecord {
        RaftRecord::HardState(encode(hs))
    }

    /// The record for a snapshot.
    pub fn snapshot(s: &Snapshot) -> RaftRecord {
        RaftRecord::Snapshot(encode(s))
    }
}

/// The in-memory Raft log; see the module docs.
#[derive(Debug, Default)]
pub struct RaftStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
    snapshot: Snapshot,
    /// See [`RaftStore::take_snapshot_wanted`].
    snapshot_wanted: Cell<bool>,
}

/// Index of the snapshot a group's log starts from.
pub const BOOTSTRAP_INDEX: u64 = 1;

impl RaftStore {
    /// An empty log that belongs to no group yet: a replica joining a
    /// running group, which learns the members from the leader's snapshot.
    pub fn new() -> RaftStore {
        RaftStore::default()
    }

    /// The log a group of `voters` starts from: a snapshot at index 1
    /// (term 1) holding `data`, the same on every founding member. Entries
    /// start at 2, so a replica that joins later always gets a snapshot
    /// first, and with it the members and their addresses.
    pub fn bootstrap(voters: Vec<u64>, data: Vec<u8>) -> RaftStore {
        let mut conf_state = ConfState::default();
        conf_state.set_voters(voters);
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = 1;
        meta.set_conf_state(conf_state.clone());
        let hard_state = HardState {
            term: 1,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        RaftStore {
            hard_state,
            conf_state,
            snapshot,
            ..RaftStore::default()
        }
    }

    /// Rebuilds the log from its records, oldest first, over `base` (what
    /// the log started as: [`RaftStore::bootstrap`] or [`RaftStore::new`]).
    pub fn replay(
        base: RaftStore,
        records: impl IntoIterator<Item = RaftRecord>,
    ) -> Result<RaftStore, String> {
        let mut store = base;
        for r in records {
            match r {
                RaftRecord::Entries(es) => {
                    let es: Vec<Entry> = es
                        .iter()
                        .map(|b| decode("entry", b))
                        .collect::<Result<_, _>>()?;
                    store.append(&es)?;
                }
                RaftRecord::HardState(b) => store.set_hard_state(decode("hard state", &b)?),
                RaftRecord::Snapshot(b) => store.apply_snapshot(decode("snapshot", &b)?),
            }
        }
        Ok(store)
    }

    /// The membership as of the last applied configuration change (kept in
    /// memory: on restart the changes after the snapshot are applied
    /// again).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Whether raft-rs asked for a snapshot this store could not give (the
    /// latest one is too old, or predates the member it is for); the
    /// replica then takes a fresh one. Clears the request.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The latest snapshot (index 0 when none was taken).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries held, for rewriting the log after compaction.
    pub fn held_entries(&self) -> &[Entry] {
        &self.entries
    }

    fn snap_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snap_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snap_index(), |e| e.index)
    }

    /// Appends entries, replacing any held from their first index on
    /// (a new leader overwrites an uncommitted suffix); entries the
    /// snapshot already covers are skipped.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), String> {
        let ents: Vec<&Entry> = ents
            .iter()
            .filter(|e| e.index > self.snap_index())
            .collect();
        let Some(first) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        if first > self.last() + 1 {
            return Err(format!(
                "Raft entries start at {first} but the log ends at {}",
                self.last()
            ));
        }
        let keep = (first - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(ents.into_iter().cloned());
        Ok(())
    }

    /// Records the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Installs a snapshot: everything up to its index is replaced by it.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        let index = meta.index;
        self.entries.retain(|e| e.index > index);
        if self.entries.first().is_some_and(|e| e.index != index + 1) {
            self.entries.clear();
        }
        self.conf_state = meta.get_conf_state().clone();
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
        if self.hard_state.term < meta.term {
            self.hard_state.term = meta.term;
        }
        self.snapshot = snapshot;
    }

    /// Takes a snapshot at `index` (applied and committed) holding `data`,
    /// and drops the entries it covers; returns the snapshot.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<Snapshot, String> {
        if index <= self.snap_index() {
            return Ok(self.snapshot.clone());
        }
        let term = self.term_of(index)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.entries.retain(|e| e.index > index);
        self.snapshot = snapshot.clone();
        Ok(snapshot)
    }

    fn term_of(&self, index: u64) -> Result<u64, String> {
        if index == self.snap_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < self.first() || index > self.last() {
            return Err(format!("no Raft entry at index {index}"));
        }
        Ok(self.entries[(index - self.first()) as usize].term)
    }
}

impl Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let cs = meta.get_conf_state();
        let member = cs.get_voters().contains(&to) || cs.get_learners().contains(&to);
        if meta.index >= request_index && member {
            return Ok(self.snapshot.clone());
        }
        self.snapshot_wanted.set(true);
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry {
            index,
            term,
            ..Default::default()
        };
        e.set_data(vec![index as u8].into());
        e
    }

    #[test]
    fn a_new_leader_overwrites_an_uncommitted_suffix_and_replay_agrees() {
        let mut s = RaftStore::new();
        let mut log = Vec::new();
        let a: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        s.append(&a).unwrap();
        log.push(RaftRecord::entries(&a));
        let b = vec![entry(4, 2), entry(5, 2), entry(6, 2)];
        s.append(&b).unwrap();
        log.push(RaftRecord::entries(&b));
        assert_eq!(s.term(3).unwrap(), 1);
        assert_eq!(s.term(5).unwrap(), 2);
        assert_eq!(s.last_index().unwrap(), 6);
        let hs = HardState {
            term: 2,
            commit: 5,
            ..Default::default()
        };
        s.set_hard_state(hs.clone());
        log.push(RaftRecord::hard_state(&hs));
        let snap = s.compact(4, b"state at 4".to_vec()).unwrap();
        log.push(RaftRecord::snapshot(&snap));
        assert_eq!(s.first_index().unwrap(), 5);
        assert!(matches!(
            s.entries(3, 5, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let r = RaftStore::replay(RaftStore::new(), log).unwrap();
        assert_eq!(r.first_index().unwrap(), 5);
        assert_eq!(r.last_index().unwrap(), 6);
        assert_eq!(r.term(4).unwrap(), 2);
        assert_eq!(r.hard_state(), &hs);
        assert_eq!(&r.latest_snapshot().data[..], b"state at 4");
        assert!(s.append(&[entry(9, 2)]).is_err(), "a gap is refused");
    }

    #[test]
    fn an_installed_snapshot_replaces_a_shorter_log() {
        let mut s = RaftStore::new();
        s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 3;
        s.apply_snapshot(snap);
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.hard_state().commit, 10);
        s.append(&[entry(11, 3)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 11);
    }
}
