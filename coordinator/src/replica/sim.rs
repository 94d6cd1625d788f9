//! Tests of the Raft glue: coordinator replicas over a simulated network,
//! driven the way the driver drives them (send what may go, persist, send
//! what depended on it, advance), with crashes, wipes, cuts and a clock.
//!
//! Every replica's "disk" is the list of records it persisted; a crash
//! keeps it, a wipe clears it, a restart replays it. Every message that
//! leaves is checked against that disk: an append answer must follow the
//! entries it acknowledges, a vote the hard state that records it. Election
//! timeouts are pinned (not randomized), so every run is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quintet_common::clock::Time;
use quintet_common::protocol::coordinator::Record;
use quintet_common::types::BatchId;
use raft::Storage as _;
use raft::eraftpb::{Message, MessageType};

use super::node::{Applied, Io, Replica, ReplicaState, Timing};
use super::store::{RaftRecord, RaftStore};

const ELECTION: usize = 10;
const TICK: Duration = Duration::from_millis(50);

fn timing() -> Timing {
    Timing {
        election_ticks: ELECTION,
        heartbeat_ticks: 1,
        max_election_ticks: ELECTION + 1,
    }
}

fn founders(n: u64) -> ReplicaState {
    ReplicaState {
        coordinators: (1..=n).map(|i| (i, format!("c{i}:7700"))).collect(),
        ..ReplicaState::default()
    }
}

/// The COMMIT of batch 1.n at version n.
fn rec(n: u64) -> Record {
    Record::Commit {
        batch: BatchId { epoch: 1, seq: n },
        first: n,
        last: n,
        digest: u128::from(n),
    }
}

struct Node {
    replica: Option<Replica>,
    disk: Vec<RaftRecord>,
    /// Everything applied in this process life, in order.
    applied: Vec<Applied>,
}

struct Sim {
    nodes: BTreeMap<u64, Node>,
    net: Vec<Message>,
    cut: BTreeSet<(u64, u64)>,
    /// Paused replicas: they neither tick nor take messages; what is sent
    /// to them waits in `queued`.
    paused: BTreeSet<u64>,
    queued: Vec<Message>,
    now: Time,
}

impl Sim {
    /// A founding group of `n` replicas (as `--coordinators` starts one).
    fn new(n: u64) -> Sim {
        let mut sim = Sim {
            nodes: BTreeMap::new(),
            net: Vec::new(),
            cut: BTreeSet::new(),
            paused: BTreeSet::new(),
            queued: Vec::new(),
            now: Time(1_000_000),
        };
        for id in 1..=n {
            let state = founders(n);
            let store = RaftStore::bootstrap((1..=n).collect(), state.encode());
            let disk = vec![
                RaftRecord::snapshot(store.latest_snapshot()),
                RaftRecord::hard_state(store.hard_state()),
            ];
            sim.nodes.insert(
                id,
                Node {
                    replica: None,
                    disk,
                    applied: Vec::new(),
                },
            );
            sim.restart(id);
        }
        sim
    }

    fn r(&mut self, id: u64) -> &mut Replica {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.replica.as_mut())
            .unwrap_or_else(|| panic!("replica {id} is down"))
    }

    fn up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.replica.is_some())
    }

    /// The store a replica's disk replays to.
    fn disk_store(&self, id: u64) -> RaftStore {
        RaftStore::replay(RaftStore::new(), self.nodes[&id].disk.clone()).expect("replay")
    }

    /// Checks that `m` may leave `from` given what is on its disk now.
    fn check_durable(&self, from: u64, m: &Message) {
        let disk = self.disk_store(from);
        match m.get_msg_type() {
            MessageType::MsgAppendResponse if !m.reject => {
                let last = disk.last_index().expect("last index");
                assert!(
                    last >= m.index,
                    "replica {from} acknowledged index {} with only {last} on disk",
                    m.index
                );
            }
            MessageType::MsgRequestVoteResponse if !m.reject => {
                let hs = disk.hard_state();
                assert!(
                    hs.vote == m.to && hs.term >= m.term,
                    "replica {from} granted its vote to {} in term {} before recording it (disk: vote {} term {})",
                    m.to,
                    m.term,
                    hs.vote,
                    hs.term
                );
            }
            _ => {}
        }
    }

    fn send(&mut self, from: u64, msgs: Vec<Message>) {
        for m in msgs {
            self.check_durable(from, &m);
            self.net.push(m);
        }
    }

    /// One replica's Ready cycles, as the driver runs them.
    fn cycle(&mut self, id: u64) {
        loop {
            let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) else {
                return;
            };
            let Some((rd, io)) = r.ready() else {
                return;
            };
            let Io {
                send_now,
                persist,
                send_after,
                applied,
                ..
            } = io;
            self.send(id, send_now);
            let node = self.nodes.get_mut(&id).expect("node");
            node.disk.extend(persist);
            node.applied.extend(applied);
            self.send(id, send_after);
            let r = self.r(id);
            let io = r.advance(rd);
            let node = self.nodes.get_mut(&id).expect("node");
            node.disk.extend(io.persist);
            node.applied.extend(io.applied);
            self.send(id, io.send_now);
            let r = self.r(id);
            if let Some(carry) = r.maybe_compact(usize::MAX) {
                self.nodes.get_mut(&id).expect("node").disk = carry;
            }
        }
    }

    /// Delivers until the network is quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in &ids {
                self.cycle(*id);
            }
            if self.net.is_empty() {
                return;
            }
            for m in std::mem::take(&mut self.net) {
                if self.cut.contains(&(m.from, m.to)) || !self.up(m.to) {
                    continue;
                }
                if self.paused.contains(&m.to) {
                    self.queued.push(m);
                    continue;
                }
                self.r(m.to).step(m);
            }
        }
        panic!("the network never went quiet");
    }

    /// `n` ticks of the given replicas (time moves one tick each).
    fn tick(&mut self, ids: &[u64], n: usize) {
        for _ in 0..n {
            self.now = self.now.plus(TICK);
            let now = self.now;
            for &id in ids {
                if self.up(id) && !self.paused.contains(&id) {
                    self.r(id).tick();
                    self.r(id).confirm(now);
                }
            }
            self.settle();
        }
    }

    fn tick_all(&mut self, n: usize) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        self.tick(&ids, n);
    }

    fn pause(&mut self, id: u64) {
        self.paused.insert(id);
    }

    /// Resumes `id`: what was sent to it meanwhile arrives first.
    fn resume(&mut self, id: u64) {
        self.paused.remove(&id);
        let (mine, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|m| m.to == id);
        self.queued = rest;
        for m in mine {
            self.r(id).step(m);
        }
        self.settle();
    }

    fn crash(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.replica = None;
        node.applied.clear();
    }

    fn restart(&mut self, id: u64) {
        let store = self.disk_store(id);
        let replica = Replica::new(id, store, timing()).expect("replica");
        let node = self.nodes.get_mut(&id).expect("node");
        node.replica = Some(replica);
        node.applied.clear();
        self.cycle(id);
        self.r(id).campaign_if_alone();
        self.settle();
    }

    /// Deletes a founding replica's disk and starts it over from the
    /// bootstrap snapshot, withholding its vote as after a survey that
    /// found the others holding a log.
    fn wipe(&mut self, id: u64, group: u64) {
        let store = RaftStore::bootstrap((1..=group).collect(), founders(group).encode());
        let node = self.nodes.get_mut(&id).expect("node");
        node.disk = vec![
            RaftRecord::snapshot(store.latest_snapshot()),
            RaftRecord::hard_state(store.hard_state()),
        ];
        node.replica = Some(Replica::new(id, store, timing()).expect("replica"));
        node.applied.clear();
        self.r(id).withhold_votes(true);
        // Its survey tells the leader it lost its log.
        for l in self.leaders() {
            self.r(l).peer_emptied(id);
        }
        self.settle();
    }

    /// Cuts `id` off from every other replica, both ways.
    fn isolate(&mut self, id: u64) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        self.settle();
    }

    fn leaders(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.replica.as_ref().is_some_and(|r| r.is_leader()))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Makes `id` stand for election now (see [`Replica::force_campaign`])
    /// and checks that it wins and serves.
    fn elect(&mut self, id: u64) {
        self.r(id).force_campaign();
        self.settle();
        assert!(self.r(id).is_leader(), "replica {id} should lead");
        // Serving needs the term's first entry applied.
        self.settle();
        assert!(self.r(id).is_serving());
    }

    fn confirmed(&mut self, id: u64, within: Duration) -> bool {
        let now = self.now;
        self.r(id).leadership_confirmed(now, within)
    }

    fn propose(&mut self, id: u64, n: u64) -> u64 {
        let index = self.r(id).propose(&rec(n)).expect("propose");
        self.settle();
        index
    }

    /// The records `id` applied in this life, as (value, ours).
    fn applied(&self, id: u64) -> Vec<(u64, bool)> {
        self.nodes[&id]
            .applied
            .iter()
            .filter_map(|a| match a.record {
                Record::Commit { last, .. } => Some((last, a.ours)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_record_is_ours_on_the_leader_once_a_majority_holds_it() {
    let mut sim = Sim::new(3);
    sim.elect(1);
    sim.isolate(3);
    sim.propose(1, 7);
    assert_eq!(sim.applied(1), vec![(7, true)]);
    assert_eq!(sim.applied(2), vec![(7, false)]);
    assert_eq!(sim.applied(3), vec![], "3 is cut off");
    // The leader alone is no majority: nothing applies.
    sim.isolate(1);
    sim.propose(1, 8);
    assert_eq!(sim.applied(1), vec![(7, true)]);
    sim.heal();
    sim.tick_all(1);
    assert_eq!(sim.applied(1), vec![(7, true), (8, true)]);
    assert_eq!(sim.applied(3), vec![(7, false), (8, false)]);
}

#[test]
fn answers_leave_only_after_what_they_acknowledge_is_on_disk() {
    // check_durable runs on every message; an election and appends under
    // a crash exercise votes and append answers.
    let mut sim = Sim::new(3);
    sim.elect(2);
    for n in 1..=5 {
        sim.propose(2, n);
    }
    sim.crash(3);
    sim.propose(2, 6);
    sim.restart(3);
    sim.tick_all(2);
    assert_eq!(
        sim.applied(3).len(),
        6,
        "the restarted replica applies the log again"
    );
    sim.crash(2);
    sim.elect(1);
    assert_eq!(sim.r(1).state().committed, 6);
}

#[test]
fn a_leader_deposed_mid_round_never_counts_its_lost_record_as_durable() {
    let mut sim = Sim::new(3);
    sim.elect(1);
    sim.propose(1, 1);
    sim.isolate(1);
    let lost = sim.propose(1, 2);
    sim.elect(3);
    let index = sim.propose(3, 3);
    assert_eq!(
        index,
        lost + 1,
        "the new leader's term entry takes the lost index"
    );
    sim.heal();
    sim.tick_all(2);
    assert_eq!(sim.leaders(), vec![3]);
    // Replica 1 applied 1 as its own, then 3's record, never its lost one.
    assert_eq!(sim.applied(1), vec![(1, true), (3, false)]);
    assert_eq!(sim.applied(3), vec![(1, false), (3, true)]);
}

#[test]
fn a_leader_cut_off_stops_confirming_at_once_and_steps_down_within_two_timeouts() {
    let within = TICK * ELECTION as u32;
    let mut sim = Sim::new(3);
    sim.elect(1);
    assert!(!sim.confirmed(1, within), "no round confirmed yet");
    sim.tick_all(1);
    assert!(sim.confirmed(1, within));
    sim.isolate(1);
    // Cut off from the other replicas but still leading in its own eyes:
    // it may not grant leases once the election timeout has passed.
    sim.tick(&[1], ELECTION);
    assert!(!sim.confirmed(1, within));
    sim.tick(&[1], ELECTION);
    assert!(sim.leaders().is_empty(), "check_quorum deposes it");
}

#[test]
fn a_leader_paused_past_its_timeout_does_not_count_stale_answers_as_fresh() {
    let within = TICK * ELECTION as u32;
    let mut sim = Sim::new(3);
    sim.elect(1);
    sim.tick_all(1);
    assert!(sim.confirmed(1, within));
    // Replica 1 sends a confirmation round, then stops (SIGSTOP) before
    // the answers arrive; they wait in its socket while the others elect
    // a new leader.
    let now = sim.now;
    sim.r(1).confirm(now);
    sim.pause(1);
    sim.settle();
    sim.isolate(1);
    sim.elect(2);
    sim.tick(&[2, 3], 2 * ELECTION);
    // Replica 1 resumes and reads only those old answers: it still thinks
    // it leads, but the round they confirm is as old as its send time.
    sim.resume(1);
    assert!(sim.r(1).is_leader(), "it has not heard of the new term");
    assert!(!sim.confirmed(1, within));
}

#[test]
fn a_wiped_follower_catches_up_from_a_snapshot() {
    let mut sim = Sim::new(3);
    sim.elect(1);
    for n in 1..=20 {
        sim.propose(1, n);
    }
    // Compact the leader's log to a snapshot.
    let carry = sim.r(1).maybe_compact(0).expect("compacts");
    sim.nodes.get_mut(&1).expect("node").disk = carry;
    sim.crash(2);
    sim.wipe(2, 3);
    sim.tick_all(3);
    let leader = sim.r(1).state().clone();
    assert_eq!(sim.r(2).state(), &leader, "the snapshot brought the state");
    assert!(!sim.r(2).is_withholding(), "caught up: it votes again");
    // Its disk now holds the snapshot: a restart keeps the state.
    sim.crash(2);
    sim.restart(2);
    assert_eq!(sim.r(2).state(), &leader);
}

#[test]
fn a_wiped_replica_withholds_its_vote_from_a_stale_candidate() {
    // 1 and 2 commit records 3 never saw; 1 dies and 2 is wiped. Had 2
    // voted, stale 3 would lead and the committed records would be lost.
    let mut sim = Sim::new(3);
    sim.elect(1);
    sim.isolate(3);
    for n in 1..=3 {
        sim.propose(1, n);
    }
    assert_eq!(sim.applied(2).len(), 3, "committed on 1 and 2");
    sim.crash(1);
    sim.heal();
    sim.wipe(2, 3);
    sim.tick_all(4 * ELECTION);
    assert!(sim.leaders().is_empty(), "3 cannot win without 2's vote");
    // Replica 1 comes back: it leads, 2 copies the log and votes again.
    sim.restart(1);
    sim.elect(1);
    sim.tick_all(2);
    assert_eq!(sim.r(2).state().committed, 3, "nothing committed was lost");
    assert_eq!(sim.r(3).state().committed, 3);
    assert!(!sim.r(2).is_withholding());
}

#[test]
fn a_joining_replica_learns_the_members_from_a_snapshot_then_votes() {
    let mut sim = Sim::new(1);
    sim.settle();
    assert_eq!(sim.leaders(), vec![1], "a group of one leads at once");
    sim.propose(1, 5);
    // Replica 2 starts empty and asks to join.
    sim.nodes.insert(
        2,
        Node {
            replica: Some(Replica::new(2, RaftStore::new(), timing()).expect("replica")),
            disk: Vec::new(),
            applied: Vec::new(),
        },
    );
    sim.r(2).withhold_votes(true);
    sim.r(1)
        .propose_member(2, "c2:7700", false)
        .expect("add learner");
    sim.tick_all(3);
    assert_eq!(sim.r(1).learners(), vec![2]);
    assert_eq!(sim.r(2).state().committed, 5);
    assert_eq!(
        sim.r(2).coordinators().get(&2).map(String::as_str),
        Some("c2:7700")
    );
    assert_eq!(sim.r(1).learners_caught_up(), vec![2]);
    sim.r(1)
        .propose_member(2, "c2:7700", true)
        .expect("promote");
    sim.tick_all(2);
    assert_eq!(sim.r(1).voters(), vec![1, 2]);
    assert_eq!(sim.r(2).voters(), vec![1, 2]);
    // Two voters: a restarted 1 must not think itself alone and campaign
    // past 2 (its snapshot still says one voter; the log says two).
    sim.crash(1);
    sim.restart(1);
    assert!(sim.leaders().is_empty(), "no election without 2's vote yet");
    assert_eq!(sim.r(1).voters(), vec![1, 2]);
}
