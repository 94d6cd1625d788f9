//! Scenario tests for the 2PC state machines, run in a deterministic simulator.
//!
//! The simulator wires one [`Coordinator`] (whose client tokens are plain
//! numbers) to N [`Participant`]s and plays the driver's part by hand:
//!
//! - **Network.** Every message in flight is a [`Packet`] in one list. A test
//!   delivers, drops or duplicates any of them in any order; nothing moves
//!   unless a test says so. Replies travel back through the same list and are
//!   fed to `vote`/`acked`.
//! - **Disks.** Each node keeps the records it persisted (plus a participant's
//!   latest snapshot). A crash keeps exactly that and loses the rest;
//!   restart is `Participant::restore` or `Recovered::replay` +
//!   `Coordinator::start`. Persist before send is honoured: a step's reply
//!   enters the network only after its records are in the node's log, and a
//!   crash in the middle of a step may keep any prefix of them.
//! - **Oracle.** Every COMMIT record the coordinator persists is applied to a
//!   reference [`Store`], which is by definition the committed history. The
//!   checks compare replicas and client answers against it, so they state the
//!   DESIGN.md invariants directly: acknowledged writes are present at their
//!   version, replicas only ever hold a prefix of the committed history, and a
//!   linearizable read never returns anything but the committed value.
//!
//! The coordinator's log compaction (`checkpoint()` starts a new segment and
//! the older ones are deleted) is modelled too, because the driver may
//! compact right after appending any record.
//!
//! The hand-written tests each walk one fault through the protocol; the
//! proptest at the end throws random interleavings of the same faults at it
//! (fixed seed, so every run is the same) and then heals the cluster.
//!
//! This simulator covers the 2PC core with a fixed membership: every
//! participant is a member from the start, `min_members` is the whole
//! cluster (so nobody is ever dropped), and leases last an hour of
//! simulated time, which moves one second per `tick`. Views, leases,
//! drops and catch-up are exercised by the text scenarios in
//! `testscripts/` (see `script.rs`).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use std::time::Duration;

use super::coordinator::{self, Action, BatchLimits, Coordinator, Message, Recovered};
use super::participant::{self, Participant, Read, Snapshot};
use super::view::{Member, View};
use crate::clock::Time;
use crate::error::Error;
use crate::rpc::{CatchupState, Decision, DecisionRequest, PrepareRequest, RenewRequest, Vote};
use crate::store::Store;
use crate::types::{Batch, BatchId, ClusterId, Limits, NodeId, Op, OpResult, ReadLevel, Version};

const CLUSTER: ClusterId = ClusterId(0x0051_0e7a);

/// The coordinator's reply handle for a client: a number in tests.
type Token = u64;

/// One message in flight. `inc` is the coordinator incarnation the exchange
/// belongs to: a reply addressed to a crashed coordinator is lost with its
/// connection.
#[derive(Clone, Debug)]
enum Packet {
    /// Coordinator → participant.
    Request { inc: u32, to: NodeId, msg: Message },
    /// Participant → coordinator: the answer to a prepare.
    Vote {
        inc: u32,
        from: NodeId,
        batch: BatchId,
        vote: Result<Vote, Error>,
    },
    /// Participant → coordinator: the answer to a commit or abort.
    Ack {
        inc: u32,
        from: NodeId,
        batch: BatchId,
        result: Result<(), Error>,
    },
    /// Participant → coordinator: the answer to a revoke.
    Revoked { inc: u32, from: NodeId, epoch: u64 },
}

fn prepare_to(n: NodeId) -> impl Fn(&Packet) -> bool + Copy {
    move |p| matches!(p, Packet::Request { to, msg: Message::Prepare(_), .. } if *to == n)
}

fn commit_to(n: NodeId) -> impl Fn(&Packet) -> bool + Copy {
    move |p| matches!(p, Packet::Request { to, msg: Message::Commit(_), .. } if *to == n)
}

fn abort_to(n: NodeId) -> impl Fn(&Packet) -> bool + Copy {
    move |p| matches!(p, Packet::Request { to, msg: Message::Abort(_), .. } if *to == n)
}

fn vote_from(n: NodeId) -> impl Fn(&Packet) -> bool + Copy {
    move |p| matches!(p, Packet::Vote { from, .. } if *from == n)
}

fn ack_from(n: NodeId) -> impl Fn(&Packet) -> bool + Copy {
    move |p| matches!(p, Packet::Ack { from, .. } if *from == n)
}

fn any_commit(p: &Packet) -> bool {
    matches!(
        p,
        Packet::Request {
            msg: Message::Commit(_),
            ..
        }
    )
}

/// How a participant's step ends.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Persist everything, then send the reply.
    Normal,
    /// Crash after the first `persisted` records reached the disk; no reply.
    Crash { persisted: usize },
    /// Persist everything, but the call times out on the coordinator's side:
    /// the driver reports a failed prepare as a transport-error vote and
    /// forgets a failed commit or abort until the next resend.
    LoseReply,
}

/// Every record of the step made it to disk, then the node died.
const CRASH_AFTER_PERSIST: Fate = Fate::Crash {
    persisted: usize::MAX,
};
/// The node died before anything of the step reached the disk.
const CRASH_BEFORE_PERSIST: Fate = Fate::Crash { persisted: 0 };

/// A participant process and its disk.
struct Node {
    limits: Limits,
    cluster: ClusterId,
    p: Participant,
    log: Vec<participant::Record>,
    snapshot: Option<Snapshot>,
}

/// The committed history, built from the coordinator's COMMIT records.
#[derive(Default)]
struct Oracle {
    proposed: BTreeMap<BatchId, Batch>,
    store: Store,
    committed: Vec<Batch>,
    /// Every committed operation and the result it must have.
    ops: BTreeMap<Version, (Op, OpResult)>,
    /// Digest of the committed history after each committed batch.
    digests: BTreeMap<Version, u128>,
}

impl Oracle {
    fn propose(&mut self, batch: &Batch) {
        let known = self
            .proposed
            .entry(batch.id)
            .or_insert_with(|| batch.clone());
        assert_eq!(
            known, batch,
            "batch id {} was proposed with two contents",
            batch.id
        );
    }

    fn commit(&mut self, id: BatchId, first: Version, last: Version) {
        let batch = self
            .proposed
            .get(&id)
            .cloned()
            .unwrap_or_else(|| panic!("COMMIT of unproposed batch {id}"));
        assert_eq!(
            (first, last),
            (batch.first_version, batch.last_version()),
            "COMMIT record of {id} names other versions than its prepare"
        );
        assert_eq!(
            first,
            self.store.applied() + 1,
            "COMMIT of {id} is not gap-free after version {}: a version would be skipped or reused",
            self.store.applied()
        );
        let results = self.store.preview(&batch);
        for (i, (op, result)) in batch.ops.iter().zip(results).enumerate() {
            self.ops.insert(first + i as u64, (op.clone(), result));
        }
        self.store.apply(batch.clone());
        self.digests.insert(last, self.store.digest());
        self.committed.push(batch);
    }
}

/// One coordinator, N participants, a network and their disks.
struct Sim {
    ids: Vec<NodeId>,
    /// Where the network delivers a message addressed to an id (misrouting).
    route: BTreeMap<NodeId, NodeId>,
    nodes: BTreeMap<NodeId, Node>,
    batch_limits: BatchLimits,
    coord: Coordinator<Token>,
    coord_log: Vec<coordinator::Record>,
    /// Coordinator incarnation; bumped at every coordinator crash.
    inc: u32,
    /// When set, a durable COMMIT record is reported to the coordinator only
    /// by [`Sim::commit_durable`], so a test can crash it in between.
    hold_durable: bool,
    durable: Vec<BatchId>,
    durable_views: Vec<u64>,
    timers: Vec<BatchId>,
    /// Simulated time; moves only in `tick`.
    now: Time,
    net: Vec<Packet>,
    next_token: Token,
    submitted: BTreeMap<Token, Op>,
    replies: BTreeMap<Token, Result<OpResult, Error>>,
    /// Tokens whose coordinator crashed before answering: outcome unknown.
    lost: BTreeSet<Token>,
    oracle: Oracle,
    /// The coordinator was told to stop; it refuses writes until restarted.
    stopped: bool,
}

impl Sim {
    fn new(n: u32) -> Sim {
        Sim::with(n, |_| Limits::default(), BatchLimits::default())
    }

    fn config(n: u32, batch_limits: BatchLimits) -> coordinator::Config {
        coordinator::Config {
            limits: batch_limits,
            lease: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(600),
            min_members: n as usize,
            ..coordinator::Config::new(CLUSTER, n)
        }
    }

    fn with(n: u32, limits: impl Fn(NodeId) -> Limits, batch_limits: BatchLimits) -> Sim {
        let ids: Vec<NodeId> = (1..=n).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut p = Participant::new(id, id as u64, limits(id));
                p.registered(CLUSTER, 0);
                let node = Node {
                    limits: limits(id),
                    cluster: CLUSTER,
                    p,
                    log: Vec::new(),
                    snapshot: None,
                };
                (id, node)
            })
            .collect();
        // A cluster bootstrapped with every participant a member since epoch 0.
        let recovered = Recovered {
            view: View {
                epoch: 0,
                members: ids
                    .iter()
                    .map(|&id| Member {
                        id,
                        incarnation: id as u64,
                    })
                    .collect(),
            },
            ..Recovered::default()
        };
        let now = Time(1_000_000);
        let (coord, actions) = Coordinator::start(Sim::config(n, batch_limits), recovered, now);
        let mut sim = Sim {
            ids,
            route: BTreeMap::new(),
            nodes,
            batch_limits,
            coord,
            coord_log: Vec::new(),
            inc: 0,
            hold_durable: false,
            durable: Vec::new(),
            durable_views: Vec::new(),
            timers: Vec::new(),
            now,
            net: Vec::new(),
            next_token: 1,
            submitted: BTreeMap::new(),
            replies: BTreeMap::new(),
            lost: BTreeSet::new(),
            oracle: Oracle::default(),
            stopped: false,
        };
        sim.run(actions);
        sim.renew_all();
        sim
    }

    /// Every participant renews its lease, as its heartbeat would.
    fn renew_all(&mut self) {
        for id in self.ids.clone() {
            self.renew(id);
        }
    }

    fn renew(&mut self, id: NodeId) {
        let p = self.p(id);
        let req = RenewRequest {
            cluster: CLUSTER,
            id,
            incarnation: p.incarnation(),
            epoch: p.view().epoch,
            applied: p.store().applied(),
            digest: p.store().digest(),
            pending: p.pending().map(|x| x.batch.id),
            catchup: CatchupState::Idle,
            advertise: String::new(),
        };
        let now = self.now;
        let (reply, actions) = self.coord.renew(&req, now);
        if let Ok(reply) = reply {
            self.p_mut(id).granted(now, &reply);
        }
        self.run(actions);
    }

    fn p(&self, id: NodeId) -> &Participant {
        &self.nodes[&id].p
    }

    fn p_mut(&mut self, id: NodeId) -> &mut Participant {
        &mut self.node(id).p
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no participant {id}"))
    }

    // ---- clients -------------------------------------------------------

    fn submit(&mut self, op: Op) -> Token {
        let token = self.next_token;
        self.next_token += 1;
        self.submitted.insert(token, op.clone());
        let actions = self.coord.submit(op, token, self.now);
        self.run(actions);
        token
    }

    fn reply(&self, token: Token) -> Option<Result<OpResult, Error>> {
        self.replies.get(&token).cloned()
    }

    fn assert_aborted(&self, token: Token, reason: &str) {
        match self.reply(token) {
            Some(Err(Error::Aborted(why))) => {
                assert!(
                    why.contains(reason),
                    "token {token} aborted for «{why}», expected «{reason}»"
                )
            }
            other => panic!("token {token}: expected Aborted({reason}), got {other:?}"),
        }
    }

    fn read(&self, id: NodeId, key: &str, level: ReadLevel) -> Result<Read, Error> {
        self.p(id).read(key.as_bytes(), level, self.now)
    }

    // ---- the coordinator's actions ----------------------------------------

    fn run(&mut self, actions: Vec<Action<Token>>) {
        for action in actions {
            match action {
                Action::Persist(record) => {
                    self.coord_log.push(record.clone());
                    match record {
                        coordinator::Record::Commit {
                            batch, first, last, ..
                        } => {
                            self.oracle.commit(batch, first, last);
                            self.durable.push(batch);
                        }
                        coordinator::Record::View(v) => self.durable_views.push(v.epoch),
                        _ => {}
                    }
                }
                Action::Send { to, msg } => {
                    if let Message::Prepare(req) = &msg {
                        self.oracle.propose(&req.batch);
                    }
                    self.net.push(Packet::Request {
                        inc: self.inc,
                        to,
                        msg,
                    });
                }
                Action::Reply { token, result } => {
                    if let Some(old) = self.replies.insert(token, result) {
                        panic!("token {token} answered twice (first {old:?})");
                    }
                }
                Action::ArmTimer(batch) => self.timers.push(batch),
                Action::Suspected { .. } | Action::ViewChanged { .. } => {}
            }
        }
        if !self.hold_durable {
            self.commit_durable();
        }
    }

    /// Tells the coordinator its held COMMIT records are durable.
    fn commit_durable(&mut self) {
        for epoch in std::mem::take(&mut self.durable_views) {
            let actions = self.coord.view_durable(epoch, self.now);
            self.run(actions);
        }
        for batch in std::mem::take(&mut self.durable) {
            let actions = self.coord.commit_durable(batch, self.now);
            self.run(actions);
        }
    }

    /// Fires every armed prepare timer.
    fn timeout(&mut self) {
        for batch in std::mem::take(&mut self.timers) {
            let actions = self.coord.prepare_timeout(batch, self.now);
            self.run(actions);
        }
    }

    /// One second passes and the coordinator ticks (resending what is
    /// not acknowledged).
    fn tick(&mut self) {
        self.now = self.now.plus(Duration::from_secs(1));
        let actions = self.coord.tick(self.now);
        self.run(actions);
    }

    // ---- the network -------------------------------------------------------

    fn position(&self, sel: impl Fn(&Packet) -> bool) -> usize {
        self.net.iter().position(sel).unwrap_or_else(|| {
            panic!(
                "no such packet in flight; the network holds {:#?}",
                self.net
            )
        })
    }

    fn count(&self, sel: impl Fn(&Packet) -> bool) -> usize {
        self.net.iter().filter(|p| sel(p)).count()
    }

    /// Delivers the oldest packet matching `sel`.
    fn deliver(&mut self, sel: impl Fn(&Packet) -> bool) {
        self.deliver_with(sel, Fate::Normal);
    }

    /// Delivers the oldest packet matching `sel`, the receiver ending as `fate` says.
    fn deliver_with(&mut self, sel: impl Fn(&Packet) -> bool, fate: Fate) {
        let i = self.position(sel);
        let packet = self.net.remove(i);
        self.process(packet, fate);
    }

    fn drop(&mut self, sel: impl Fn(&Packet) -> bool) {
        let i = self.position(sel);
        self.net.remove(i);
    }

    fn duplicate(&mut self, sel: impl Fn(&Packet) -> bool) {
        let i = self.position(sel);
        self.net.push(self.net[i].clone());
    }

    /// The answer carried by the oldest vote from `n` in flight.
    fn vote_in_flight(&self, n: NodeId) -> Result<Vote, Error> {
        match &self.net[self.position(vote_from(n))] {
            Packet::Vote { vote, .. } => vote.clone(),
            _ => unreachable!(),
        }
    }

    /// Delivers everything in flight, and everything that causes, except
    /// packets matching `hold`, which stay in flight. No timer fires and no
    /// tick runs.
    fn settle_except(&mut self, hold: impl Fn(&Packet) -> bool) {
        for _ in 0..10_000 {
            if !self.hold_durable && !self.durable.is_empty() {
                self.commit_durable();
            }
            let Some(i) = self.net.iter().position(|p| !hold(p)) else {
                return;
            };
            let packet = self.net.remove(i);
            self.process(packet, Fate::Normal);
        }
        panic!("the network never went quiet");
    }

    fn settle(&mut self) {
        self.settle_except(|_| false);
    }

    fn process(&mut self, packet: Packet, fate: Fate) {
        match packet {
            Packet::Request { inc, to, msg } => self.at_participant(inc, to, msg, fate),
            Packet::Vote {
                inc,
                from,
                batch,
                vote,
            } => {
                if inc == self.inc {
                    let actions =
                        self.coord
                            .vote(from, batch, vote.map_err(|e| e.to_string()), self.now);
                    self.run(actions);
                }
            }
            Packet::Ack {
                inc,
                from,
                batch,
                result,
            } => {
                if inc == self.inc && result.is_ok() {
                    let actions = self.coord.acked(from, batch);
                    self.run(actions);
                }
            }
            Packet::Revoked { inc, from, epoch } => {
                if inc == self.inc {
                    let actions = self.coord.revoked(from, epoch, self.now);
                    self.run(actions);
                }
            }
        }
    }

    fn at_participant(&mut self, inc: u32, to: NodeId, msg: Message, fate: Fate) {
        let at = self.route.get(&to).copied().unwrap_or(to);
        let now = self.now;
        let node = self.node(at);
        let (persist, reply) = match &msg {
            Message::Prepare(req) => {
                let step = node.p.prepare(req);
                (
                    step.persist,
                    Packet::Vote {
                        inc,
                        from: to,
                        batch: req.batch.id,
                        vote: step.reply,
                    },
                )
            }
            Message::Commit(d) => {
                let step = node.p.commit(d.cluster, d.to, d.batch);
                (
                    step.persist,
                    Packet::Ack {
                        inc,
                        from: to,
                        batch: d.batch,
                        result: step.reply,
                    },
                )
            }
            Message::Abort(d) => {
                let step = node.p.abort(d.cluster, d.to, d.batch);
                (
                    step.persist,
                    Packet::Ack {
                        inc,
                        from: to,
                        batch: d.batch,
                        result: step.reply,
                    },
                )
            }
            Message::Probe(_) => return,
            Message::Revoke(r) => {
                let ok = node.p.revoke(r.incarnation, now).is_ok();
                if !ok {
                    return;
                }
                (
                    Vec::new(),
                    Packet::Revoked {
                        inc,
                        from: to,
                        epoch: r.epoch,
                    },
                )
            }
        };
        match fate {
            Fate::Normal => {
                node.log.extend(persist);
                self.net.push(reply);
            }
            Fate::Crash { persisted } => {
                node.log.extend(persist.into_iter().take(persisted));
                self.restart(at);
            }
            Fate::LoseReply => {
                node.log.extend(persist);
                if let Packet::Vote {
                    inc, from, batch, ..
                } = reply
                {
                    let vote = Err(Error::Unavailable(
                        "timed out waiting for the answer".into(),
                    ));
                    self.net.push(Packet::Vote {
                        inc,
                        from,
                        batch,
                        vote,
                    });
                }
            }
        }
    }

    // ---- crashes --------------------------------------------------------------

    /// Crash and restart participant `id`: memory is rebuilt from its disk,
    /// then it registers with the coordinator again.
    fn restart(&mut self, id: NodeId) {
        let committed = self.coord.committed();
        let node = self.node(id);
        node.p = Participant::restore(
            id,
            id as u64,
            node.limits,
            node.snapshot.clone(),
            node.log.clone(),
        )
        .unwrap_or_else(|e| panic!("participant {id} cannot restore its own log: {e}"));
        node.p.registered(node.cluster, committed);
        self.renew(id);
    }

    /// Takes a snapshot of `id`; its log restarts with the carried records.
    fn snapshot(&mut self, id: NodeId) {
        let node = self.node(id);
        let (snap, carry) = node.p.snapshot();
        node.snapshot = Some(snap);
        node.log = carry;
    }

    /// Compacts the decision log the way the driver does once it grows: a
    /// new segment starting with `checkpoint()`, older segments deleted.
    /// The driver may do this right after appending any record, including
    /// a COMMIT record whose `commit_durable` has not arrived yet.
    fn compact_coordinator_log(&mut self) {
        self.coord_log = vec![self.coord.checkpoint()];
    }

    /// Replaces `id`'s disk with an empty one (a replica that lost its data).
    fn wipe(&mut self, id: NodeId) {
        let node = self.node(id);
        node.log.clear();
        node.snapshot = None;
        self.restart(id);
    }

    /// Crash and restart the coordinator: it keeps its log, loses its clients
    /// (their outcome is unknown), its timers and every reply in flight to it.
    fn crash_coordinator(&mut self) {
        self.inc += 1;
        self.net.retain(|p| matches!(p, Packet::Request { .. }));
        self.timers.clear();
        self.durable.clear();
        for token in self.submitted.keys() {
            if !self.replies.contains_key(token) {
                self.lost.insert(*token);
            }
        }
        let recovered = Recovered::replay(self.coord_log.clone());
        let cfg = Sim::config(self.ids.len() as u32, self.batch_limits);
        let (coord, actions) = Coordinator::start(cfg, recovered, self.now);
        self.coord = coord;
        self.stopped = false;
        self.run(actions);
        self.commit_durable();
    }

    /// Participant `id` asks the coordinator about its pending batch and
    /// applies the answer. Returns the answer, or None with nothing pending.
    fn resolve(&mut self, id: NodeId) -> Option<Decision> {
        let pending = &self.p(id).pending()?.batch;
        let (batch, first) = (pending.id, pending.first_version);
        let decision = self
            .coord
            .resolve(batch, first)
            .unwrap_or_else(|e| panic!("resolve of {batch} for participant {id}: {e}"));
        let node = self.node(id);
        let step = node.p.resolved(batch, decision);
        node.log.extend(step.persist);
        step.reply.unwrap_or_else(|e| {
            panic!("participant {id} refused decision {decision:?} for {batch}: {e}")
        });
        Some(decision)
    }

    /// Lets the cluster recover from whatever happened: deliver everything,
    /// fire timers, resend decisions, resolve what is still in doubt.
    fn heal(&mut self) {
        self.hold_durable = false;
        if self.stopped {
            // A stopped coordinator finishes its round and exits; the
            // operator starts it again.
            self.settle();
            self.crash_coordinator();
        }
        for _ in 0..100 {
            self.commit_durable();
            self.settle();
            self.timeout();
            for id in self.ids.clone() {
                self.resolve(id);
                self.renew(id);
            }
            let quiet = self.net.is_empty()
                && self.coord.is_idle()
                && self.ids.iter().all(|&id| self.p(id).pending().is_none());
            self.tick();
            if quiet && self.net.is_empty() {
                return;
            }
        }
        panic!("the cluster did not settle; in flight: {:#?}", self.net);
    }

    // ---- invariants -------------------------------------------------------------

    /// Every replica holds a prefix of the committed history (never an
    /// aborted batch, never half a batch), and its log rebuilds its state.
    fn check_replicas(&self) {
        for (&id, node) in &self.nodes {
            let store = node.p.store();
            let applied = store.applied();
            if applied > 0 {
                assert_eq!(
                    self.oracle.digests.get(&applied),
                    Some(&store.digest()),
                    "replica {id} at version {applied} does not hold the committed history"
                );
            }
            let rebuilt = Participant::restore(
                id,
                id as u64,
                node.limits,
                node.snapshot.clone(),
                node.log.clone(),
            )
            .unwrap_or_else(|e| panic!("participant {id} cannot restore its own log: {e}"));
            assert_eq!(
                rebuilt.store(),
                store,
                "replica {id}'s log does not rebuild its data"
            );
            assert_eq!(
                rebuilt.pending(),
                node.p.pending(),
                "replica {id}'s log does not rebuild its pending batch"
            );
        }
    }

    /// All replicas are idle, current, and hold the whole committed history.
    fn check_converged(&self) {
        self.check_replicas();
        for (&id, node) in &self.nodes {
            assert!(
                node.p.pending().is_none(),
                "replica {id} still holds {:?}",
                node.p.pending()
            );
            assert_eq!(
                node.p.store(),
                &self.oracle.store,
                "replica {id} differs from the committed history"
            );
            assert!(
                node.p.is_current(),
                "replica {id} is not current after healing"
            );
        }
    }

    /// Client answers agree with the committed history.
    fn check_clients(&self) {
        for (token, reply) in &self.replies {
            let op = &self.submitted[token];
            match reply {
                Ok(result) => {
                    let committed = self.oracle.ops.get(&result.version());
                    assert_eq!(
                        committed,
                        Some(&(op.clone(), *result)),
                        "token {token} was told {result:?} for {op:?}, the history says otherwise"
                    );
                }
                Err(e) => {
                    assert!(e.surely_not_applied(), "token {token} got {e:?}");
                    if let Op::Put { value, .. } = op {
                        let found = self
                            .oracle
                            .ops
                            .values()
                            .find(|(o, _)| matches!(o, Op::Put { value: v, .. } if v == value));
                        assert!(
                            found.is_none(),
                            "token {token} got {e:?} but its write was committed"
                        );
                    }
                }
            }
        }
    }

    /// The end-state invariants: every replica equals the committed history
    /// (so every write a client was told is Ok sits on every replica at its
    /// version), and no client was told anything the history contradicts.
    fn check_all(&self) {
        self.check_converged();
        self.check_clients();
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn del(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

/// A read that found `v`, last written at `version`.
fn value(v: &str, version: Version) -> Read {
    Read::Value(Some((v.as_bytes().to_vec(), version)))
}

fn ok_put(version: Version) -> Option<Result<OpResult, Error>> {
    Some(Ok(OpResult::Put { version }))
}

fn batch_id(epoch: u64, seq: u64) -> BatchId {
    BatchId { epoch, seq }
}

// ---- the happy path ------------------------------------------------------------

#[test]
fn all_yes_commits_everywhere_and_answers_clients() {
    let mut sim = Sim::new(5);
    let t1 = sim.submit(put("a", "1"));
    sim.settle();
    assert_eq!(sim.reply(t1), ok_put(1));

    let t2 = sim.submit(put("b", "2"));
    let t3 = sim.submit(del("a"));
    let t4 = sim.submit(del("never"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(2));
    assert_eq!(
        sim.reply(t3),
        Some(Ok(OpResult::Delete {
            deleted: true,
            version: 3
        }))
    );
    assert_eq!(
        sim.reply(t4),
        Some(Ok(OpResult::Delete {
            deleted: false,
            version: 4
        }))
    );

    let digest = sim.p(1).store().digest();
    for id in 1..=5 {
        let store = sim.p(id).store();
        assert_eq!(
            (store.applied(), store.digest()),
            (4, digest),
            "replica {id}"
        );
        assert_eq!(
            sim.read(id, "b", ReadLevel::Linearizable),
            Ok(value("2", 2))
        );
        assert_eq!(
            sim.read(id, "a", ReadLevel::Linearizable),
            Ok(Read::Value(None))
        );
    }
    assert!(sim.coord.is_idle());
    assert_eq!(sim.coord.committed(), 4);
    let acked = sim
        .coord_log
        .iter()
        .filter(|r| matches!(r, coordinator::Record::Acked(_)))
        .count();
    assert_eq!(acked, 3, "every commit acked by everyone is forgettable");
    sim.tick();
    assert!(sim.net.is_empty(), "nothing left to resend");
    sim.check_all();
}

#[test]
fn a_busy_round_carries_the_previous_commit_and_its_yes_votes_ack_it() {
    let mut sim = Sim::new(3);
    let t1 = sim.submit(put("a", "1"));
    let t2 = sim.submit(put("b", "2"));
    // Deliver batch 1.1's prepares and votes; its COMMIT becomes durable with
    // batch 1.2 waiting, so 1.2's prepare goes out instead of commit messages.
    sim.settle_except(|p| matches!(p, Packet::Request { msg: Message::Prepare(r), .. } if r.batch.id == batch_id(1, 2)));
    assert_eq!(sim.reply(t1), ok_put(1));
    assert_eq!(
        sim.count(any_commit),
        0,
        "no separate commit while the next round starts"
    );
    assert_eq!(
        sim.count(|p| matches!(
            p,
            Packet::Request {
                msg: Message::Prepare(_),
                ..
            }
        )),
        3
    );
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(2));
    assert!(
        sim.coord_log
            .contains(&coordinator::Record::Acked(batch_id(1, 1))),
        "the YES votes for 1.2 acknowledged the commit of 1.1"
    );
    sim.tick();
    assert_eq!(sim.count(any_commit), 0, "nothing left to resend");
    sim.check_all();
}

#[test]
fn writes_during_a_round_go_out_as_one_batch_with_contiguous_versions() {
    let mut sim = Sim::new(5);
    let t1 = sim.submit(put("a", "1"));
    assert_eq!(sim.count(|p| matches!(p, Packet::Request { .. })), 5);
    let queued: Vec<Token> = (0..4)
        .map(|i| sim.submit(put(&format!("k{i}"), "v")))
        .collect();
    assert_eq!(
        sim.count(|p| matches!(p, Packet::Request { .. })),
        5,
        "queued writes wait for the round"
    );
    sim.settle();

    assert_eq!(sim.reply(t1), ok_put(1));
    for (i, t) in queued.iter().enumerate() {
        assert_eq!(sim.reply(*t), ok_put(2 + i as u64));
    }
    let batches: Vec<(BatchId, Version, usize)> = sim
        .oracle
        .committed
        .iter()
        .map(|b| (b.id, b.first_version, b.ops.len()))
        .collect();
    assert_eq!(
        batches,
        vec![(batch_id(1, 1), 1, 1), (batch_id(1, 2), 2, 4)]
    );
    assert_eq!(sim.oracle.proposed.len(), 2, "one prepare round per batch");
    sim.check_all();
}

#[test]
fn group_commit_splits_batches_at_max_ops() {
    let limits = BatchLimits {
        max_ops: 2,
        ..BatchLimits::default()
    };
    let mut sim = Sim::with(3, |_| Limits::default(), limits);
    sim.submit(put("a", "1"));
    let tokens: Vec<Token> = (0..5)
        .map(|i| sim.submit(put(&format!("k{i}"), "v")))
        .collect();
    sim.settle();
    let sizes: Vec<usize> = sim.oracle.committed.iter().map(|b| b.ops.len()).collect();
    assert_eq!(sizes, vec![1, 2, 2, 1]);
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(sim.reply(*t), ok_put(2 + i as u64));
    }
    sim.check_all();
}

// ---- NO votes and timeouts -----------------------------------------------------------

#[test]
fn one_no_vote_aborts_everywhere_and_the_next_write_succeeds() {
    let mut sim = Sim::with(
        5,
        |id| Limits {
            max_value_len: if id == 3 { 8 } else { 1024 },
        },
        BatchLimits::default(),
    );
    let t1 = sim.submit(put("k", "sixteen bytes..."));
    sim.settle();
    sim.assert_aborted(t1, "replica 3 voted no");
    for id in 1..=5 {
        assert_eq!(
            sim.p(id).store().applied(),
            0,
            "replica {id} applied an aborted batch"
        );
        assert!(sim.p(id).pending().is_none());
        assert_eq!(
            sim.read(id, "k", ReadLevel::Linearizable),
            Ok(Read::Value(None))
        );
    }

    let t2 = sim.submit(put("k", "small"));
    sim.settle();
    assert_eq!(
        sim.reply(t2),
        ok_put(1),
        "the aborted batch's versions are reused"
    );
    sim.check_all();
}

#[test]
fn a_replica_that_lost_its_data_votes_no_and_refuses_linearizable_reads() {
    let mut sim = Sim::new(5);
    sim.submit(put("a", "1"));
    sim.settle();
    sim.wipe(4);
    assert!(matches!(
        sim.read(4, "a", ReadLevel::Linearizable),
        Err(Error::NotCurrent(_))
    ));
    assert_eq!(
        sim.read(4, "a", ReadLevel::Serializable),
        Ok(Read::Value(None)),
        "serializable reads may be stale"
    );

    let t = sim.submit(put("b", "2"));
    sim.settle();
    sim.assert_aborted(t, "replica 4 is behind");
    for id in 1..=5 {
        assert!(
            sim.p(id).store().get(b"b").is_none(),
            "replica {id} applied an aborted write"
        );
    }
    // Its out-of-sync vote made the coordinator revoke its lease.
    assert!(matches!(
        sim.read(4, "a", ReadLevel::Linearizable),
        Err(Error::LeaseExpired(_))
    ));
    sim.check_replicas();
    sim.check_clients();
}

#[test]
fn prepare_timeout_aborts_and_the_late_prepare_after_the_abort_votes_no() {
    let mut sim = Sim::new(5);
    let t = sim.submit(put("a", "1"));
    sim.settle_except(prepare_to(5));
    assert!(sim.reply(t).is_none(), "the round waits for replica 5");
    sim.timeout();
    sim.assert_aborted(
        t,
        "replica 5 cannot take part (it did not vote on batch 1.1 before the prepare timed out)",
    );

    // The abort overtakes the prepare it cancels.
    sim.settle_except(prepare_to(5));
    sim.deliver(prepare_to(5));
    assert!(matches!(sim.vote_in_flight(5), Ok(Vote::No(why)) if why.contains("stale")));
    sim.settle();
    for id in 1..=5 {
        assert!(sim.p(id).pending().is_none(), "replica {id}");
        assert_eq!(sim.p(id).store().applied(), 0, "replica {id}");
    }

    let t2 = sim.submit(put("a", "2"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(1));
    sim.check_all();
}

#[test]
fn prepare_timeout_then_slow_prepare_then_abort_applies_nothing() {
    let mut sim = Sim::new(5);
    let t = sim.submit(put("a", "1"));
    sim.settle_except(prepare_to(5));
    sim.timeout();
    sim.assert_aborted(t, "timed out");

    // The slow replica prepares after the decision; its YES is ignored.
    sim.deliver(prepare_to(5));
    assert!(matches!(sim.vote_in_flight(5), Ok(Vote::Yes { .. })));
    assert!(sim.p(5).pending().is_some());
    sim.settle();
    assert!(
        sim.p(5).pending().is_none(),
        "the abort dropped the late batch"
    );
    sim.check_all();
    assert_eq!(sim.oracle.store.applied(), 0);
}

#[test]
fn late_prepare_after_abort_and_a_replica_restart_is_never_applied() {
    // A presumed abort is not logged, so a replica restarted after it no
    // longer knows the batch was aborted and may accept the late prepare.
    // Its YES is ignored; the batch must stay unapplied and be cleared by
    // resolve (or by the next prepare).
    let mut sim = Sim::new(3);
    let t = sim.submit(put("a", "1"));
    sim.settle_except(prepare_to(3));
    sim.timeout();
    sim.assert_aborted(t, "timed out");
    sim.settle_except(prepare_to(3));
    sim.restart(3);
    sim.deliver(prepare_to(3));
    sim.settle();
    assert_eq!(sim.p(3).store().applied(), 0);
    if sim.p(3).pending().is_some() {
        assert_eq!(sim.resolve(3), Some(Decision::Abort));
    }
    sim.check_all();
    let t2 = sim.submit(put("a", "2"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(1));
    sim.check_all();
}

#[test]
fn abort_overtaking_its_prepare_makes_the_late_prepare_vote_no() {
    let mut sim = Sim::with(
        5,
        |id| Limits {
            max_value_len: if id == 5 { 4 } else { 1024 },
        },
        BatchLimits::default(),
    );
    let t = sim.submit(put("a", "too long"));
    sim.settle_except(prepare_to(1));
    sim.assert_aborted(t, "replica 5 voted no");
    assert_eq!(sim.count(prepare_to(1)), 1);
    assert_eq!(
        sim.count(abort_to(1)),
        0,
        "the abort to 1 was already delivered"
    );
    sim.deliver(prepare_to(1));
    assert!(matches!(sim.vote_in_flight(1), Ok(Vote::No(_))));
    assert!(sim.p(1).pending().is_none());
    sim.settle();
    sim.check_all();
}

// ---- lost, duplicated and reordered decisions ------------------------------------------

#[test]
fn lost_commit_is_settled_by_the_next_prepare() {
    let mut sim = Sim::new(5);
    let t1 = sim.submit(put("a", "1"));
    sim.settle_except(commit_to(3));
    sim.drop(commit_to(3));
    assert_eq!(sim.reply(t1), ok_put(1));
    assert_eq!(sim.p(3).pending().map(|p| p.batch.id), Some(batch_id(1, 1)));
    assert_eq!(
        sim.read(3, "a", ReadLevel::Linearizable),
        Ok(Read::Blocked(batch_id(1, 1)))
    );
    assert_eq!(
        sim.read(3, "a", ReadLevel::Serializable),
        Ok(Read::Value(None))
    );

    let t2 = sim.submit(put("b", "2"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(2));
    sim.check_all();
    // Replica 3's YES vote for batch 1.2 acknowledged the commit of 1.1 that
    // its prepare carried, so nothing is left to resend.
    sim.tick();
    assert_eq!(sim.count(commit_to(3)), 0);
    assert!(sim.net.is_empty(), "once acked the commit is forgotten");
    assert!(
        sim.coord_log
            .contains(&coordinator::Record::Acked(batch_id(1, 1)))
    );
    sim.check_all();
}

#[test]
fn lost_commit_is_settled_by_the_tick_resend() {
    let mut sim = Sim::new(5);
    let t1 = sim.submit(put("a", "1"));
    sim.settle_except(commit_to(3));
    sim.drop(commit_to(3));
    assert_eq!(sim.reply(t1), ok_put(1));
    assert!(
        !sim.coord_log
            .contains(&coordinator::Record::Acked(batch_id(1, 1)))
    );

    sim.tick();
    assert_eq!(sim.net.len(), 1, "only replica 3 is missing");
    sim.settle();
    assert!(
        sim.coord_log
            .contains(&coordinator::Record::Acked(batch_id(1, 1)))
    );
    sim.check_all();
}

#[test]
fn lost_abort_is_settled_by_the_next_prepare() {
    let mut sim = Sim::with(
        5,
        |id| Limits {
            max_value_len: if id == 5 { 4 } else { 1024 },
        },
        BatchLimits::default(),
    );
    let t1 = sim.submit(put("a", "too long"));
    sim.settle_except(abort_to(2));
    sim.drop(abort_to(2));
    sim.assert_aborted(t1, "replica 5 voted no");
    assert_eq!(sim.p(2).pending().map(|p| p.batch.id), Some(batch_id(1, 1)));

    let t2 = sim.submit(put("b", "ok"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(1));
    assert!(
        sim.nodes[&2]
            .log
            .contains(&participant::Record::Aborted(batch_id(1, 1)))
    );
    assert!(sim.p(2).store().get(b"a").is_none());
    sim.check_all();
    sim.tick();
    sim.settle();
    sim.tick();
    assert!(sim.net.is_empty(), "the resent abort was acknowledged");
}

#[test]
fn lost_abort_is_settled_by_the_tick_resend() {
    let mut sim = Sim::with(
        3,
        |id| Limits {
            max_value_len: if id == 3 { 4 } else { 1024 },
        },
        BatchLimits::default(),
    );
    sim.submit(put("a", "too long"));
    sim.settle_except(abort_to(1));
    sim.drop(abort_to(1));
    assert!(sim.p(1).pending().is_some());
    sim.tick();
    assert_eq!(sim.net.len(), 1);
    sim.settle();
    assert!(sim.p(1).pending().is_none());
    sim.check_all();
}

#[test]
fn duplicated_prepare_commit_and_abort_get_the_same_answer_and_apply_once() {
    let mut sim = Sim::with(
        5,
        |id| Limits {
            max_value_len: if id == 5 { 4 } else { 1024 },
        },
        BatchLimits::default(),
    );
    let t1 = sim.submit(put("a", "1"));
    for id in 1..=5 {
        sim.duplicate(prepare_to(id));
    }
    sim.settle_except(|p| matches!(p, Packet::Vote { .. }));
    for id in 1..=5 {
        let votes: Vec<&Packet> = sim.net.iter().filter(|p| vote_from(id)(p)).collect();
        assert_eq!(votes.len(), 2);
        let (Packet::Vote { vote: a, .. }, Packet::Vote { vote: b, .. }) = (votes[0], votes[1])
        else {
            unreachable!()
        };
        assert_eq!(a, b, "replica {id} answered a repeated prepare differently");
        assert!(matches!(a, Ok(Vote::Yes { .. })));
    }
    sim.settle_except(any_commit);
    for id in 1..=5 {
        sim.duplicate(commit_to(id));
    }
    sim.settle_except(|p| matches!(p, Packet::Ack { .. }));
    for id in 1..=5 {
        let acks: Vec<&Packet> = sim.net.iter().filter(|p| ack_from(id)(p)).collect();
        assert_eq!(acks.len(), 2);
        assert!(
            acks.iter()
                .all(|p| matches!(p, Packet::Ack { result: Ok(()), .. })),
            "replica {id}: {acks:?}"
        );
    }
    sim.settle();
    assert_eq!(sim.reply(t1), ok_put(1));
    sim.check_all();

    let t2 = sim.submit(put("b", "too long"));
    sim.settle_except(|p| {
        matches!(
            p,
            Packet::Request {
                msg: Message::Abort(_),
                ..
            }
        )
    });
    sim.assert_aborted(t2, "replica 5 voted no");
    for id in 1..=5 {
        sim.duplicate(abort_to(id));
    }
    sim.settle_except(|p| matches!(p, Packet::Ack { .. }));
    for id in 1..=5 {
        let acks: Vec<&Packet> = sim.net.iter().filter(|p| ack_from(id)(p)).collect();
        assert_eq!(acks.len(), 2);
        assert!(
            acks.iter()
                .all(|p| matches!(p, Packet::Ack { result: Ok(()), .. })),
            "replica {id}: {acks:?}"
        );
    }
    sim.settle();
    sim.check_all();
    assert_eq!(sim.oracle.store.applied(), 1);
}

#[test]
fn commit_before_or_after_a_duplicate_prepare_applies_once() {
    let mut sim = Sim::new(3);
    let t = sim.submit(put("a", "1"));
    sim.duplicate(prepare_to(1));
    sim.duplicate(prepare_to(2));
    // Replica 1 sees: prepare, duplicate prepare, commit.
    sim.deliver(prepare_to(1));
    sim.deliver(prepare_to(1));
    // Replica 2 sees: prepare, commit, duplicate prepare.
    sim.deliver(prepare_to(2));
    sim.settle_except(|p| prepare_to(2)(p) || any_commit(p));
    assert_eq!(sim.reply(t), ok_put(1));
    sim.deliver(commit_to(2));
    sim.deliver(prepare_to(2));
    // A replica does not keep its vote once the batch is decided, so this
    // replay is answered NO (stale), not with the original YES; the
    // coordinator ignores votes for decided rounds, so only the state matters.
    assert!(sim.vote_in_flight(2).is_ok());
    assert!(
        sim.p(2).pending().is_none(),
        "the replay must not prepare the batch again"
    );
    assert_eq!(sim.p(2).store().applied(), 1);
    sim.settle();
    sim.check_all();
    assert_eq!(sim.p(1).store().applied(), 1);
}

// ---- coordinator crashes --------------------------------------------------------------

#[test]
fn coordinator_crash_after_commit_logged_resends_commit_and_resolve_says_commit() {
    let mut sim = Sim::new(5);
    sim.hold_durable = true;
    let t = sim.submit(put("a", "1"));
    sim.settle();
    assert!(
        sim.coord_log
            .iter()
            .any(|r| matches!(r, coordinator::Record::Commit { .. }))
    );
    assert!(
        sim.reply(t).is_none(),
        "no client hears of a commit before commit_durable"
    );
    assert!(
        sim.net.is_empty(),
        "no commit is sent before the record is durable"
    );

    sim.crash_coordinator();
    sim.hold_durable = false;
    assert_eq!(sim.coord.epoch(), 2);
    assert_eq!(
        sim.count(any_commit),
        5,
        "the restarted coordinator resends the logged commit"
    );
    assert_eq!(
        sim.read(2, "a", ReadLevel::Linearizable),
        Ok(Read::Blocked(batch_id(1, 1)))
    );
    assert_eq!(sim.resolve(1), Some(Decision::Commit));
    assert_eq!(sim.read(1, "a", ReadLevel::Linearizable), Ok(value("1", 1)));
    sim.settle();
    assert!(
        sim.coord_log
            .contains(&coordinator::Record::Acked(batch_id(1, 1)))
    );

    let t2 = sim.submit(put("b", "2"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(2));
    assert_eq!(sim.oracle.committed[1].id, batch_id(2, 1));
    sim.check_all();
}

#[test]
fn coordinator_crash_before_commit_logged_aborts_and_reuses_versions() {
    let mut sim = Sim::new(5);
    let t = sim.submit(put("a", "1"));
    sim.duplicate(prepare_to(4));
    sim.settle_except(|p| vote_from(5)(p) || prepare_to(4)(p));
    sim.deliver(prepare_to(4));
    for id in 1..=5 {
        assert_eq!(
            sim.p(id).pending().map(|p| p.batch.id),
            Some(batch_id(1, 1)),
            "replica {id}"
        );
    }
    sim.crash_coordinator();
    assert!(sim.lost.contains(&t));
    assert_eq!(sim.coord.epoch(), 2);
    assert!(
        sim.net.iter().all(|p| prepare_to(4)(p)),
        "only the old duplicate prepare is still in flight"
    );

    assert_eq!(sim.resolve(1), Some(Decision::Abort));
    assert!(sim.p(1).pending().is_none());
    let t2 = sim.submit(put("b", "2"));
    let old_epoch = |p: &Packet| matches!(p, Packet::Request { inc: 0, .. });
    sim.settle_except(old_epoch);
    assert_eq!(
        sim.reply(t2),
        ok_put(1),
        "version 1 is reused by the new epoch"
    );
    // The old epoch's duplicate prepare arrives last.
    sim.deliver(old_epoch);
    assert!(matches!(sim.vote_in_flight(4), Ok(Vote::No(_))));
    sim.settle();
    let ids: Vec<BatchId> = sim.oracle.committed.iter().map(|b| b.id).collect();
    assert_eq!(ids, vec![batch_id(2, 1)]);
    for id in 1..=5 {
        assert!(sim.p(id).store().get(b"a").is_none(), "replica {id}");
    }
    sim.check_all();
}

#[test]
fn coordinator_log_compaction_between_commit_record_and_commit_durable_keeps_the_commit() {
    // The driver appends the COMMIT record, may rotate the log right away
    // (`maybe_compact` after every append), and calls `commit_durable` only
    // when the record is on disk. The checkpoint must not forget the batch.
    let mut sim = Sim::new(3);
    sim.hold_durable = true;
    let t = sim.submit(put("a", "1"));
    sim.settle();
    sim.compact_coordinator_log();
    sim.commit_durable();
    assert_eq!(
        sim.reply(t),
        ok_put(1),
        "the client was told its write is committed"
    );
    sim.settle_except(any_commit);
    sim.crash_coordinator();
    assert_eq!(
        (sim.coord.committed(), sim.coord.last_committed()),
        (1, Some(batch_id(1, 1))),
        "the restarted coordinator forgot an acknowledged commit"
    );
    assert_eq!(sim.coord.resolve(batch_id(1, 1), 1), Ok(Decision::Commit));
    sim.heal();
    let t2 = sim.submit(put("b", "2"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(2));
    sim.check_all();
}

#[test]
fn coordinator_crash_with_nothing_in_flight_keeps_every_acked_write() {
    let mut sim = Sim::new(3);
    for i in 0..3 {
        sim.submit(put(&format!("k{i}"), "v"));
        sim.settle();
    }
    sim.crash_coordinator();
    sim.crash_coordinator();
    assert_eq!((sim.coord.epoch(), sim.coord.committed()), (3, 3));
    let t = sim.submit(put("k9", "v"));
    sim.settle();
    assert_eq!(sim.reply(t), ok_put(4));
    sim.check_all();
}

// ---- participant crashes ------------------------------------------------------------------

#[test]
fn participant_crash_before_persisting_prepared_loses_its_vote_and_the_round_aborts() {
    let mut sim = Sim::new(5);
    let t = sim.submit(put("a", "1"));
    sim.deliver_with(prepare_to(3), CRASH_BEFORE_PERSIST);
    assert!(sim.p(3).pending().is_none());
    sim.settle();
    assert!(sim.reply(t).is_none());
    sim.timeout();
    sim.assert_aborted(t, "replica 3 cannot take part (it did not vote");
    sim.settle();
    let t2 = sim.submit(put("a", "2"));
    sim.settle();
    assert_eq!(sim.reply(t2), ok_put(1));
    sim.check_all();
}

#[test]
fn participant_crash_after_persisting_prepared_restores_the_pending_batch() {
    let mut sim = Sim::new(5);
    let t = sim.submit(put("a", "1"));
    sim.duplicate(prepare_to(3)); // the driver's retry of the lost call
    sim.deliver_with(prepare_to(3), CRASH_AFTER_PERSIST);
    let pending = sim.p(3).pending().cloned().expect("PREPARED was durable");
    assert_eq!(pending.batch.id, batch_id(1, 1));
    assert_eq!(pending.results, vec![OpResult::Put { version: 1 }]);
    assert_eq!(
        sim.read(3, "a", ReadLevel::Linearizable),
        Ok(Read::Blocked(batch_id(1, 1)))
    );
    sim.settle();
    assert_eq!(
        sim.reply(t),
        ok_put(1),
        "the retried prepare got the same YES"
    );
    sim.check_all();
}

#[test]
fn participant_crash_after_its_vote_applies_the_commit_after_restart() {
    let mut sim = Sim::new(5);
    let t = sim.submit(put("a", "1"));
    sim.settle_except(any_commit);
    assert_eq!(sim.reply(t), ok_put(1));
    sim.restart(2);
    assert_eq!(sim.p(2).pending().map(|p| p.batch.id), Some(batch_id(1, 1)));
    assert!(
        sim.p(2).is_current(),
        "the pending batch covers the committed version"
    );
    assert_eq!(
        sim.read(2, "a", ReadLevel::Linearizable),
        Ok(Read::Blocked(batch_id(1, 1)))
    );
    sim.settle();
    sim.check_all();
}

#[test]
fn participant_crash_after_commit_before_ack_keeps_the_write_and_acks_the_resend() {
    let mut sim = Sim::new(5);
    let t = sim.submit(put("a", "1"));
    sim.settle_except(commit_to(4));
    sim.deliver_with(commit_to(4), CRASH_AFTER_PERSIST);
    assert_eq!(sim.reply(t), ok_put(1));
    assert_eq!(sim.p(4).store().applied(), 1);
    assert!(sim.p(4).pending().is_none());
    assert!(
        !sim.coord_log
            .contains(&coordinator::Record::Acked(batch_id(1, 1)))
    );
    sim.tick();
    sim.settle();
    assert!(
        sim.coord_log
            .contains(&coordinator::Record::Acked(batch_id(1, 1)))
    );
    sim.check_all();
}

#[test]
fn participant_crash_before_commit_is_durable_reapplies_it_from_the_resend() {
    let mut sim = Sim::new(5);
    sim.submit(put("a", "1"));
    sim.settle_except(commit_to(4));
    sim.deliver_with(commit_to(4), CRASH_BEFORE_PERSIST);
    assert_eq!(sim.p(4).store().applied(), 0);
    assert!(sim.p(4).pending().is_some());
    sim.tick();
    sim.settle();
    sim.check_all();
}

#[test]
fn participant_crash_while_a_prepare_settles_the_previous_batch_keeps_a_valid_log() {
    // Batch 1.1's commit to replica 2 is lost; batch 1.2's prepare settles it
    // and prepares in one step. Crash after each prefix of that step.
    for persisted in 0..=2 {
        let mut sim = Sim::new(3);
        sim.submit(put("a", "1"));
        sim.settle_except(commit_to(2));
        sim.drop(commit_to(2));
        let t = sim.submit(put("b", "2"));
        sim.deliver_with(prepare_to(2), Fate::Crash { persisted });
        let expect_applied = if persisted == 0 { 0 } else { 1 };
        assert_eq!(
            sim.p(2).store().applied(),
            expect_applied,
            "crash after {persisted} records"
        );
        sim.check_replicas();
        sim.heal();
        sim.check_all();
        assert!(
            matches!(sim.reply(t), Some(Err(Error::Aborted(_)))),
            "its vote never left: {persisted}"
        );
    }
}

#[test]
fn participant_restores_from_a_snapshot_with_the_carried_pending_batch() {
    let mut sim = Sim::new(3);
    sim.submit(put("a", "1"));
    sim.settle();
    let t = sim.submit(put("a", "2"));
    sim.settle_except(any_commit);
    sim.snapshot(2);
    assert_eq!(
        sim.nodes[&2].log.len(),
        1,
        "the snapshot carries only the pending batch"
    );
    sim.restart(2);
    assert_eq!(sim.p(2).store().applied(), 1);
    assert_eq!(sim.p(2).pending().map(|p| p.batch.id), Some(batch_id(1, 2)));
    // A replayed old prepare is still stale after the snapshot.
    let stale = PrepareRequest {
        cluster: CLUSTER,
        to: 2,
        batch: sim.oracle.proposed[&batch_id(1, 1)].clone(),
        last_committed: None,
        view: sim.coord.view().clone(),
        prev: None,
    };
    let step = sim.p_mut(2).prepare(&stale);
    assert!(step.persist.is_empty());
    assert!(matches!(step.reply, Ok(Vote::No(_))));
    sim.settle();
    assert_eq!(sim.reply(t), ok_put(2));
    sim.snapshot(2);
    sim.restart(2);
    sim.check_all();
}

// ---- reads -------------------------------------------------------------------------

#[test]
fn linearizable_read_of_a_pending_key_blocks_and_serializable_read_is_stale() {
    let mut sim = Sim::new(3);
    sim.submit(put("a", "1"));
    sim.settle();
    sim.submit(put("a", "2"));
    sim.settle_except(|p| matches!(p, Packet::Vote { .. }));
    assert_eq!(
        sim.read(1, "a", ReadLevel::Linearizable),
        Ok(Read::Blocked(batch_id(1, 2)))
    );
    assert_eq!(sim.read(1, "a", ReadLevel::Serializable), Ok(value("1", 1)));
    assert_eq!(
        sim.read(1, "other", ReadLevel::Linearizable),
        Ok(Read::Value(None)),
        "only written keys block"
    );
    sim.settle_except(any_commit);
    // Committed at the coordinator, not yet here: still blocked, never stale.
    assert_eq!(
        sim.read(1, "a", ReadLevel::Linearizable),
        Ok(Read::Blocked(batch_id(1, 2)))
    );
    let node = sim.node(1);
    let step = node.p.commit(CLUSTER, 1, batch_id(1, 2));
    assert!(step.decided, "blocked readers are woken");
    node.log.extend(step.persist);
    sim.drop(commit_to(1));
    assert_eq!(sim.read(1, "a", ReadLevel::Linearizable), Ok(value("2", 2)));
    sim.settle();
    sim.check_all();
}

#[test]
fn replica_told_of_a_newer_commit_with_nothing_pending_refuses_linearizable_reads() {
    let mut sim = Sim::new(3);
    sim.submit(put("a", "1"));
    sim.settle();
    sim.p_mut(2).registered(CLUSTER, 5);
    assert!(!sim.p(2).is_current());
    assert!(matches!(
        sim.read(2, "a", ReadLevel::Linearizable),
        Err(Error::NotCurrent(_))
    ));
    assert_eq!(sim.read(2, "a", ReadLevel::Serializable), Ok(value("1", 1)));
    assert_eq!(sim.read(1, "a", ReadLevel::Linearizable), Ok(value("1", 1)));
}

// ---- divergence and identity ------------------------------------------------------------

#[test]
fn replicas_with_diverged_data_make_the_coordinator_abort() {
    let mut sim = Sim::new(5);
    sim.submit(put("y", "1"));
    sim.settle();
    // Replica 3's disk holds another history at the same version.
    let mut other = Store::default();
    other.apply(Batch {
        id: batch_id(1, 1),
        first_version: 1,
        ops: vec![put("x", "1")],
    });
    let node = sim.node(3);
    let (mut snap, carry) = node.p.snapshot();
    snap.store = other;
    node.snapshot = Some(snap);
    node.log = carry;
    sim.restart(3);
    assert_eq!(sim.p(3).store().applied(), sim.p(1).store().applied());
    assert_ne!(sim.p(3).store().digest(), sim.p(1).store().digest());

    let t = sim.submit(del("x"));
    sim.settle();
    sim.assert_aborted(t, "diverged");
    for id in 1..=5 {
        assert_eq!(
            sim.p(id).store().applied(),
            1,
            "replica {id} applied a batch the replicas disagree on"
        );
        assert!(sim.p(id).pending().is_none());
    }
}

#[test]
fn requests_from_another_cluster_get_cluster_mismatch_and_abort_the_round() {
    let mut sim = Sim::new(3);
    let p = sim.p_mut(1);
    let batch = Batch {
        id: batch_id(9, 1),
        first_version: 1,
        ops: vec![put("a", "1")],
    };
    let foreign = PrepareRequest {
        cluster: ClusterId(7),
        to: 1,
        view: View {
            epoch: 9,
            members: Vec::new(),
        },
        batch,
        last_committed: None,
        prev: None,
    };
    let step = p.prepare(&foreign);
    assert!(step.persist.is_empty());
    assert!(matches!(step.reply, Err(Error::ClusterMismatch(_))));
    let d = DecisionRequest {
        cluster: ClusterId(7),
        to: 1,
        batch: batch_id(9, 1),
    };
    assert!(matches!(
        p.commit(d.cluster, d.to, d.batch).reply,
        Err(Error::ClusterMismatch(_))
    ));
    assert!(matches!(
        p.abort(d.cluster, d.to, d.batch).reply,
        Err(Error::ClusterMismatch(_))
    ));

    // A replica registered in another cluster refuses the coordinator's round.
    sim.node(2).cluster = ClusterId(7);
    sim.restart(2);
    let t = sim.submit(put("a", "1"));
    sim.settle();
    sim.assert_aborted(t, "cluster mismatch");
    assert!(
        sim.nodes
            .values()
            .all(|n| n.p.store().applied() == 0 && n.p.pending().is_none())
    );
    assert!(sim.nodes[&2].log.is_empty());
}

#[test]
fn misrouted_requests_get_cluster_mismatch_and_abort_the_round() {
    let mut sim = Sim::new(3);
    sim.route.insert(2, 3); // the coordinator's --participants order is wrong
    let t = sim.submit(put("a", "1"));
    sim.settle();
    sim.assert_aborted(t, "meant for replica 2");
    assert!(
        sim.nodes
            .values()
            .all(|n| n.p.store().applied() == 0 && n.p.pending().is_none())
    );

    let unregistered = Participant::new(4, 4, Limits::default());
    let d = DecisionRequest {
        cluster: CLUSTER,
        to: 4,
        batch: batch_id(1, 1),
    };
    let mut unregistered = unregistered;
    assert!(matches!(
        unregistered.commit(d.cluster, d.to, d.batch).reply,
        Err(Error::Unavailable(_))
    ));
}

#[test]
fn resolve_says_pending_while_undecided_then_the_decision() {
    let mut sim = Sim::new(3);
    sim.submit(put("a", "1"));
    sim.settle_except(|p| vote_from(3)(p));
    assert_eq!(sim.resolve(1), Some(Decision::Pending));
    assert!(sim.p(1).pending().is_some(), "Pending changes nothing");
    sim.settle_except(any_commit);
    assert_eq!(sim.resolve(1), Some(Decision::Commit));
    assert_eq!(sim.p(1).store().applied(), 1);
    sim.settle();
    // An already-applied commit resent later is acknowledged without effect.
    assert_eq!(sim.coord.resolve(batch_id(1, 1), 1), Ok(Decision::Commit));
    sim.check_all();
}

#[test]
fn stop_refuses_queued_writes_and_aborts_the_preparing_round() {
    let mut sim = Sim::new(3);
    let t1 = sim.submit(put("a", "1"));
    let t2 = sim.submit(put("b", "2"));
    let actions = sim.coord.stop();
    sim.run(actions);
    sim.assert_aborted(t1, "stopping");
    assert!(matches!(sim.reply(t2), Some(Err(Error::ShuttingDown(_)))));
    let t3 = sim.submit(put("c", "3"));
    assert!(matches!(sim.reply(t3), Some(Err(Error::ShuttingDown(_)))));
    sim.settle();
    sim.check_all();
    assert_eq!(sim.oracle.store.applied(), 0);
}

// ---- randomized faults ----------------------------------------------------------------------

/// One fault or step of the random schedule. Indices are taken modulo
/// whatever they pick from, so every generated schedule is valid.
#[derive(Clone, Debug)]
enum Ev {
    Submit { key: u8, delete: bool, big: bool },
    Deliver(usize),
    DeliverLoseReply(usize),
    FailRequest(usize),
    Drop(usize),
    Duplicate(usize),
    DeliverAndCrash { pick: usize, persisted: usize },
    Settle,
    Timeout,
    Tick,
    CommitDurable,
    CrashParticipant(usize),
    Snapshot(usize),
    CrashCoordinator,
    CompactCoordinatorLog,
    StopCoordinator,
    Resolve(usize),
    Read { node: usize, key: u8 },
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (0..4u8, prop::bool::weighted(0.2), prop::bool::weighted(0.1))
            .prop_map(|(key, delete, big)| Ev::Submit { key, delete, big }),
        40 => any::<usize>().prop_map(Ev::Deliver),
        1 => any::<usize>().prop_map(Ev::DeliverLoseReply),
        1 => any::<usize>().prop_map(Ev::FailRequest),
        1 => any::<usize>().prop_map(Ev::Drop),
        1 => any::<usize>().prop_map(Ev::Duplicate),
        1 => (any::<usize>(), 0..3usize).prop_map(|(pick, persisted)| Ev::DeliverAndCrash { pick, persisted }),
        3 => Just(Ev::Settle),
        1 => Just(Ev::Timeout),
        1 => Just(Ev::Tick),
        3 => Just(Ev::CommitDurable),
        1 => any::<usize>().prop_map(Ev::CrashParticipant),
        1 => any::<usize>().prop_map(Ev::Snapshot),
        1 => Just(Ev::CrashCoordinator),
        1 => Just(Ev::CompactCoordinatorLog),
        1 => Just(Ev::StopCoordinator),
        1 => any::<usize>().prop_map(Ev::Resolve),
        3 => (any::<usize>(), 0..4u8).prop_map(|(node, key)| Ev::Read { node, key }),
    ]
}

impl Sim {
    fn pick_node(&self, i: usize) -> NodeId {
        self.ids[i % self.ids.len()]
    }

    fn play(&mut self, ev: &Ev) {
        let in_flight = self.net.len();
        match *ev {
            Ev::Submit { key, delete, big } => {
                let key = format!("k{key}");
                // Every put writes a value of its own, so a committed put
                // names its client. A big one exceeds replica 2's limit.
                let pad = if big { "-over-the-limit" } else { "" };
                let op = if delete {
                    del(&key)
                } else {
                    put(&key, &format!("t{}{pad}", self.next_token))
                };
                self.submit(op);
            }
            Ev::Deliver(_)
            | Ev::DeliverLoseReply(_)
            | Ev::FailRequest(_)
            | Ev::Drop(_)
            | Ev::Duplicate(_)
            | Ev::DeliverAndCrash { .. }
                if in_flight == 0 => {}
            Ev::Deliver(i) => {
                let packet = self.net.remove(i % in_flight);
                self.process(packet, Fate::Normal);
            }
            Ev::DeliverLoseReply(i) => {
                let packet = self.net.remove(i % in_flight);
                let fate = if matches!(packet, Packet::Request { .. }) {
                    Fate::LoseReply
                } else {
                    Fate::Normal
                };
                self.process(packet, fate);
            }
            Ev::FailRequest(i) => {
                // The call never reached the participant; the driver says so.
                if let Packet::Request {
                    inc,
                    to,
                    msg: Message::Prepare(req),
                } = self.net.remove(i % in_flight)
                {
                    let vote = Err(Error::Unavailable("could not connect".into()));
                    self.net.push(Packet::Vote {
                        inc,
                        from: to,
                        batch: req.batch.id,
                        vote,
                    });
                }
            }
            Ev::Drop(i) => {
                self.net.remove(i % in_flight);
            }
            Ev::Duplicate(i) => self.net.push(self.net[i % in_flight].clone()),
            Ev::DeliverAndCrash { pick, persisted } => {
                let packet = self.net.remove(pick % in_flight);
                let fate = if matches!(packet, Packet::Request { .. }) {
                    Fate::Crash { persisted }
                } else {
                    Fate::Normal
                };
                self.process(packet, fate);
            }
            Ev::Settle => self.settle(),
            Ev::Timeout => self.timeout(),
            Ev::Tick => self.tick(),
            Ev::CommitDurable => self.commit_durable(),
            Ev::CrashParticipant(i) => self.restart(self.pick_node(i)),
            Ev::Snapshot(i) => self.snapshot(self.pick_node(i)),
            Ev::CrashCoordinator => self.crash_coordinator(),
            Ev::CompactCoordinatorLog => self.compact_coordinator_log(),
            Ev::StopCoordinator => {
                let actions = self.coord.stop();
                self.run(actions);
                self.stopped = true;
            }
            Ev::Resolve(i) => {
                self.resolve(self.pick_node(i));
            }
            Ev::Read { node, key } => {
                let id = self.pick_node(node);
                let key = format!("k{key}");
                match self.read(id, &key, ReadLevel::Linearizable) {
                    Ok(Read::Value(v)) => {
                        let committed = self
                            .oracle
                            .store
                            .get(key.as_bytes())
                            .map(|e| (e.value.clone(), e.version));
                        assert_eq!(
                            v, committed,
                            "replica {id} served a stale linearizable read of {key}"
                        );
                    }
                    Ok(Read::Blocked(batch)) => {
                        assert_eq!(self.p(id).pending().map(|p| p.batch.id), Some(batch));
                    }
                    // A replica whose lease a revoke ended refuses: never stale.
                    Err(e) if e.read_elsewhere() => {}
                    Err(e) => panic!("replica {id} failed a linearizable read: {e}"),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        rng_seed: RngSeed::Fixed(0x0051_0e7a),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_faults_then_healing_keep_every_invariant(
        n in prop_oneof![Just(3u32), Just(5u32)],
        events in prop::collection::vec(ev(), 1..200),
    ) {
        let limits = |id| Limits { max_value_len: if id == 2 { 8 } else { 1024 } };
        let mut sim = Sim::with(n, limits, BatchLimits::default());
        sim.hold_durable = true;
        for ev in &events {
            sim.play(ev);
            sim.check_replicas();
        }
        sim.heal();
        sim.check_all();
        for token in sim.submitted.keys() {
            prop_assert!(
                sim.replies.contains_key(token) || sim.lost.contains(token),
                "token {} never got an answer from a live coordinator", token
            );
        }
        // A write after healing commits everywhere.
        let t = sim.submit(put("after", "heal"));
        sim.settle();
        prop_assert!(matches!(sim.reply(t), Some(Ok(_))), "{:?}", sim.reply(t));
        sim.check_all();
    }
}
