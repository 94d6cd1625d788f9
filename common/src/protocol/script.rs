//! Text scenarios for views, leases, drops and catch-up (`testscripts/*`).
//!
//! Each file is a goldenscript: commands, then `---`, then what happened,
//! regenerated with `UPDATE_GOLDENFILES=1 cargo test -p quintet-common
//! testscripts` and reviewed as a diff. The runner plays both drivers over
//! one simulated clock and a simulated network, using the real state
//! machines:
//!
//! - **Clock.** Time moves only in `run DURATION`, in 10 ms steps; at each
//!   step due timers fire (participant heartbeats every H, resolve checks
//!   every 500 ms, coordinator ticks every H/2, prepare timeouts), then
//!   everything deliverable is delivered until the network is quiet.
//!   `stabilize` delivers without moving time.
//! - **Network.** Every message is a packet between two nodes (`c` is the
//!   coordinator, `1`..`n` participants). `cut A B [oneway]` drops packets
//!   on a link (one direction with `oneway`); `heal` restores links;
//!   `hold type=T [from=A] [to=B]` keeps matching packets in flight until
//!   `deliver ...` or `drop ...`. A request to a crashed node fails at once
//!   (connection refused), as it does on a real host; a request on a cut
//!   link is lost (the sender times out).
//! - **Durability.** A coordinator record counts as durable when the runner
//!   reports it so; `hold durable` delays that, and `crash c` meanwhile
//!   loses what was appended since. `compact` replaces the decision log
//!   with the coordinator's checkpoint, as its driver may at any point.
//! - **Nodes.** `crash N` loses memory and keeps the disk, `restart N`
//!   replays the disk (a participant keeps its incarnation; `restart c
//!   takeover=D` is a new Raft leader taking over, which treats every
//!   member as granted until D from now by its predecessor), `wipe N` also
//!   deletes the disk (the restart gets a new incarnation), `pause N` /
//!   `resume N` freeze a process whose clock keeps running.
//! - **Clients.** `put K V` / `delete K` submit a write (its answer is
//!   printed when it comes); `get N K [serializable]` reads at a replica.
//!
//! After every command the runner checks the invariants of DESIGN.md: every
//! replica holds a prefix of the committed history (2, 4), every answer a
//! client got agrees with it (1), a linearizable read returns the committed
//! value or is refused (3, 5), no batch commits while a replica outside its
//! view holds a live lease (6), views grow, are durable before their first
//! prepare and never commit below `min` (7), a joining replica is at the
//! committed version with the committed digest (8), and `resolve` answers
//! never change (9). At the end of a script every fault is healed and the
//! cluster must converge: every participant a member holding the whole
//! committed history.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::time::Duration;

use super::catchup::{CatchUp, Next};
use super::coordinator::{self, Action, Coordinator, Message, Recovered};
use super::participant::{self, Participant, Read, Snapshot};
use super::view::View;
use crate::clock::Time;
use crate::error::Error;
use crate::rpc::{
    CatchupPlan, CatchupRequest, CatchupState, ChunkRequest, Decision, LogChunk, LogRequest,
    ProbeReply, RenewReply, RenewRequest, Role, SnapshotChunk, SnapshotOffer, Vote,
};
use crate::store::Store;
use crate::types::{Batch, BatchId, ClusterId, Limits, NodeId, Op, OpResult, ReadLevel, Version};

const CLUSTER: ClusterId = ClusterId(0x5c21);
const STEP: Duration = Duration::from_millis(10);
const RESOLVE_EVERY: Duration = Duration::from_millis(500);
/// Small chunks, so a copy takes several round trips that faults can hit.
const SIM_CHUNK: u64 = 64;
/// A copy call without an answer by then fails (the driver's 10 s).
const COPY_CALL_TIMEOUT: Duration = Duration::from_secs(10);

type R = Result<String, Box<dyn StdError>>;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Addr {
    C,
    P(NodeId),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::C => write!(f, "c"),
            Addr::P(id) => write!(f, "{id}"),
        }
    }
}

fn parse_addr(s: &str) -> Result<Addr, Box<dyn StdError>> {
    if s == "c" {
        return Ok(Addr::C);
    }
    Ok(Addr::P(s.parse().map_err(|_| format!("bad node {s:?}"))?))
}

#[derive(Clone, Debug)]
enum Msg {
    Peer(Message),
    Vote(BatchId, Result<Vote, String>),
    Ack(BatchId),
    Revoked(u64),
    Probed(u64, ProbeReply),
    Renew(Box<RenewRequest>, Time),
    RenewReply(Box<RenewReply>, Time),
    Resolve(BatchId, Version),
    Resolved(BatchId, Decision),
    CuBegin(CatchupRequest),
    CuPlan(Result<CatchupPlan, Error>),
    CuChunk(ChunkRequest),
    CuChunkReply(Result<SnapshotChunk, Error>),
    CuLog(LogRequest),
    CuLogReply(Result<LogChunk, Error>),
}

impl Msg {
    fn kind(&self) -> &'static str {
        match self {
            Msg::Peer(Message::Prepare(_)) => "prepare",
            Msg::Peer(Message::Commit(_)) => "commit",
            Msg::Peer(Message::Abort(_)) => "abort",
            Msg::Peer(Message::Revoke(_)) => "revoke",
            Msg::Peer(Message::Probe(_)) => "probe",
            Msg::Probed(..) => "probed",
            Msg::Vote(..) => "vote",
            Msg::Ack(..) => "ack",
            Msg::Revoked(..) => "revoked",
            Msg::Renew(..) => "renew",
            Msg::RenewReply(..) => "grant",
            Msg::Resolve(..) => "resolve",
            Msg::Resolved(..) => "resolved",
            Msg::CuBegin(..) | Msg::CuChunk(..) | Msg::CuLog(..) => "copy",
            Msg::CuPlan(..) | Msg::CuChunkReply(..) | Msg::CuLogReply(..) => "copied",
        }
    }

    /// Whether a sender waits for an answer (a crashed receiver then fails
    /// it at once, as a refused connection does).
    fn is_request(&self) -> bool {
        matches!(
            self,
            Msg::Peer(_)
                | Msg::Renew(..)
                | Msg::Resolve(..)
                | Msg::CuBegin(..)
                | Msg::CuChunk(..)
                | Msg::CuLog(..)
        )
    }
}

#[derive(Clone, Debug)]
struct Packet {
    from: Addr,
    to: Addr,
    /// The sender's process life (bumped at each restart): an answer to a process that has
    /// restarted since is lost with its connection.
    life: u32,
    msg: Msg,
}

#[derive(Default, Clone)]
struct Filter {
    kind: Option<String>,
    from: Option<Addr>,
    to: Option<Addr>,
    /// The view epoch a prepare or a grant belongs to.
    epoch: Option<u64>,
}

impl Filter {
    fn parse(cmd: &goldenscript::Command) -> Result<Filter, Box<dyn StdError>> {
        let mut f = Filter::default();
        let mut args = cmd.consume_args();
        while let Some((k, v)) = args.next_key() {
            match k {
                "type" => f.kind = Some(v.to_string()),
                "from" => f.from = Some(parse_addr(v)?),
                "to" => f.to = Some(parse_addr(v)?),
                "epoch" => f.epoch = Some(v.parse()?),
                other => return Err(format!("unknown filter key {other}").into()),
            }
        }
        args.reject_next()?;
        Ok(f)
    }

    fn matches(&self, p: &Packet) -> bool {
        let epoch = match &p.msg {
            Msg::Peer(Message::Prepare(r)) => Some(r.view.epoch),
            Msg::RenewReply(r, _) => Some(r.view.epoch),
            _ => None,
        };
        self.kind.as_deref().is_none_or(|k| k == p.msg.kind())
            && self.from.is_none_or(|a| a == p.from)
            && self.to.is_none_or(|a| a == p.to)
            && self.epoch.is_none_or(|e| Some(e) == epoch)
    }
}

/// The learner side of a participant's catch-up, as its driver runs it.
#[derive(Default)]
enum Copy {
    #[default]
    Idle,
    Running(Box<CatchUp>),
    Following {
        behind: u32,
    },
    Failed(NodeId),
}

struct PNode {
    id: NodeId,
    incarnation: u64,
    up: bool,
    /// The disk was wiped: the next start is a new data dir.
    wiped: bool,
    paused: bool,
    life: u32,
    sm: Participant,
    log: Vec<participant::Record>,
    snapshot: Option<Snapshot>,
    next_heartbeat: Time,
    next_resolve: Time,
    copy: Copy,
    source: Option<NodeId>,
    /// When the copy's last call left, for its timeout.
    copy_asked: Option<Time>,
    /// Source side: transfer id -> (image still to send, learner).
    transfers: BTreeMap<u64, (Option<Snapshot>, NodeId)>,
    next_transfer: u64,
}

impl PNode {
    fn fresh(id: NodeId, incarnation: u64, now: Time) -> PNode {
        PNode {
            id,
            incarnation,
            up: true,
            wiped: false,
            paused: false,
            life: 1,
            sm: Participant::new(id, incarnation, Limits::default()),
            log: Vec::new(),
            snapshot: None,
            next_heartbeat: now,
            next_resolve: now,
            copy: Copy::Idle,
            source: None,
            copy_asked: None,
            transfers: BTreeMap::new(),
            next_transfer: 1,
        }
    }

    fn renew_request(&self) -> RenewRequest {
        let catchup = match &self.copy {
            Copy::Idle => CatchupState::Idle,
            Copy::Running(cu) => CatchupState::Transferring {
                source: cu.source(),
                progress: cu.progress(),
            },
            Copy::Following { .. } if self.sm.is_out_of_sync() => CatchupState::Idle,
            Copy::Following { .. } => CatchupState::Following,
            Copy::Failed(s) => CatchupState::Failed { source: *s },
        };
        RenewRequest {
            cluster: CLUSTER,
            id: self.id,
            incarnation: self.incarnation,
            epoch: self.sm.view().epoch,
            applied: self.sm.store().applied(),
            digest: self.sm.store().digest(),
            pending: self.sm.pending().map(|p| p.batch.id),
            catchup,
            advertise: String::new(),
        }
    }
}

struct Settings {
    n: u32,
    /// Bytes of recent batches a member keeps for learners (small: copies
    /// then need a snapshot).
    window: usize,
    min: usize,
    lease: Duration,
    heartbeat: Duration,
    prepare_timeout: Duration,
}

/// The committed history, from the COMMIT records.
#[derive(Default)]
struct Oracle {
    proposed: BTreeMap<BatchId, Batch>,
    store: Store,
    ops: BTreeMap<Version, (Op, OpResult)>,
    digests: BTreeMap<Version, u128>,
    /// The view each batch was proposed in.
    views: BTreeMap<BatchId, View>,
    committed: BTreeSet<BatchId>,
}

/// Runs the scripts; see the module docs.
pub struct Runner {
    s: Settings,
    now: Time,
    coord: Option<Coordinator<u64>>,
    coord_gen: u32,
    coord_paused: bool,
    coord_log: Vec<coordinator::Record>,
    next_tick: Time,
    timers: Vec<(Time, BatchId)>,
    durable: Vec<coordinator::Record>,
    hold_durable: bool,
    /// Length of the decision log when `hold durable` began: a crash
    /// meanwhile loses what was appended after it.
    durable_len: Option<usize>,
    nodes: BTreeMap<NodeId, PNode>,
    net: Vec<Packet>,
    cut: BTreeSet<(Addr, Addr)>,
    holds: Vec<Filter>,
    next_token: u64,
    submitted: BTreeMap<u64, Op>,
    answered: BTreeMap<u64, Result<OpResult, Error>>,
    /// Clients whose coordinator died before answering.
    lost: BTreeSet<u64>,
    oracle: Oracle,
    highest_view: u64,
    durable_views: BTreeSet<u64>,
    resolves: BTreeMap<BatchId, Decision>,
    next_incarnation: u64,
    out: Vec<String>,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            s: Settings {
                n: 0,
                window: super::window::DEFAULT_BUDGET,
                min: 3,
                lease: Duration::from_secs(1),
                heartbeat: Duration::from_millis(100),
                prepare_timeout: Duration::from_millis(500),
            },
            now: Time(100_000),
            coord: None,
            coord_gen: 1,
            coord_paused: false,
            coord_log: Vec::new(),
            next_tick: Time(100_000),
            timers: Vec::new(),
            durable: Vec::new(),
            hold_durable: false,
            durable_len: None,
            nodes: BTreeMap::new(),
            net: Vec::new(),
            cut: BTreeSet::new(),
            holds: Vec::new(),
            next_token: 1,
            submitted: BTreeMap::new(),
            answered: BTreeMap::new(),
            lost: BTreeSet::new(),
            oracle: Oracle::default(),
            highest_view: 0,
            durable_views: BTreeSet::new(),
            resolves: BTreeMap::new(),
            next_incarnation: 0x100,
            out: Vec::new(),
        }
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn parse_duration(s: &str) -> Result<Duration, Box<dyn StdError>> {
    Ok(crate::duration::parse(s)?)
}

impl Runner {
    fn say(&mut self, line: String) {
        self.out.push(line);
    }

    fn t(&self) -> String {
        format!("{:>6}ms", self.now.0 - 100_000)
    }

    fn config(&self) -> coordinator::Config {
        coordinator::Config {
            lease: self.s.lease,
            heartbeat: self.s.heartbeat,
            min_members: self.s.min,
            queue_timeout: self.s.prepare_timeout * 4,
            ..coordinator::Config::new(CLUSTER, self.s.n)
        }
    }

    fn coord_up(&self) -> bool {
        self.coord.is_some()
    }

    // ---- the coordinator's driver ----

    fn exec(&mut self, actions: Vec<Action<u64>>) -> Result<(), Box<dyn StdError>> {
        for action in actions {
            match action {
                Action::Persist(record) => {
                    self.coord_log.push(record.clone());
                    if matches!(
                        record,
                        coordinator::Record::Commit { .. } | coordinator::Record::View(_)
                    ) {
                        self.durable.push(record);
                    }
                }
                Action::Send { to, msg } => {
                    if let Message::Prepare(req) = &msg {
                        if !self.durable_views.contains(&req.view.epoch) {
                            return Err(format!(
                                "invariant 7: prepare of {} before its view is durable",
                                req.batch.id
                            )
                            .into());
                        }
                        self.oracle
                            .proposed
                            .entry(req.batch.id)
                            .or_insert_with(|| req.batch.clone());
                        self.oracle
                            .views
                            .entry(req.batch.id)
                            .or_insert_with(|| req.view.clone());
                    }
                    self.send(Addr::C, Addr::P(to), self.coord_gen, Msg::Peer(msg));
                }
                Action::Reply { token, result } => {
                    let line = match &result {
                        Ok(r) => {
                            format!("{} client t{token}: ok, version {}", self.t(), r.version())
                        }
                        Err(e) => format!("{} client t{token}: {e}", self.t()),
                    };
                    self.say(line);
                    if self.answered.insert(token, result).is_some() {
                        return Err(format!("t{token} answered twice").into());
                    }
                }
                Action::ArmTimer(batch) => self
                    .timers
                    .push((self.now.plus(self.s.prepare_timeout), batch)),
                Action::Suspected { id, reason } => {
                    let line = format!("{} c: suspects {id}: {reason}", self.t());
                    self.say(line);
                }
                Action::ViewChanged { view, left, joined } => {
                    let left: Vec<String> = left.iter().map(|(id, _)| id.to_string()).collect();
                    let joined: Vec<String> = joined.iter().map(|(id, _)| id.to_string()).collect();
                    let line = format!(
                        "{} c: {view} (left [{}], joined [{}])",
                        self.t(),
                        left.join(","),
                        joined.join(",")
                    );
                    self.say(line);
                }
            }
        }
        if !self.hold_durable {
            self.report_durable()?;
        }
        Ok(())
    }

    fn report_durable(&mut self) -> Result<(), Box<dyn StdError>> {
        while !self.durable.is_empty() {
            let records = std::mem::take(&mut self.durable);
            for r in records {
                let now = self.now;
                let Some(c) = self.coord.as_mut() else {
                    return Ok(());
                };
                // The record is durable now: only from here is the batch
                // committed and the view in force.
                let actions = match r {
                    coordinator::Record::Commit {
                        batch,
                        first,
                        last,
                        digest,
                    } => {
                        let a = c.commit_durable(batch, now);
                        self.on_commit_record(batch, first, last, digest)?;
                        a
                    }
                    coordinator::Record::View(v) => {
                        if v.epoch <= self.highest_view {
                            return Err(format!(
                                "invariant 7: view {} follows view {}",
                                v.epoch, self.highest_view
                            )
                            .into());
                        }
                        self.highest_view = v.epoch;
                        self.durable_views.insert(v.epoch);
                        c.view_durable(v.epoch, now)
                    }
                    _ => Vec::new(),
                };
                self.exec(actions)?;
            }
        }
        Ok(())
    }

    fn on_commit_record(
        &mut self,
        id: BatchId,
        first: Version,
        last: Version,
        digest: u128,
    ) -> Result<(), Box<dyn StdError>> {
        let batch = self
            .oracle
            .proposed
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("COMMIT of unproposed batch {id}"))?;
        if (first, last) != (batch.first_version, batch.last_version())
            || first != self.oracle.store.applied() + 1
        {
            return Err(format!("COMMIT of {id} is not gap-free").into());
        }
        let view = self.oracle.views.get(&id).cloned().unwrap_or_default();
        if view.len() < self.s.min {
            return Err(format!("invariant 7: {id} committed by {} members", view.len()).into());
        }
        // Invariant 6: nobody outside the batch's view holds a live lease.
        for n in self.nodes.values() {
            if n.up && !view.contains(n.id, n.incarnation) && n.sm.lease_left(self.now).is_some() {
                return Err(format!(
                    "invariant 6: {id} commits in {view} while replica {} outside it holds a lease",
                    n.id
                )
                .into());
            }
        }
        let results = self.oracle.store.preview(&batch);
        for (i, (op, r)) in batch.ops.iter().zip(results).enumerate() {
            self.oracle.ops.insert(first + i as u64, (op.clone(), r));
        }
        self.oracle.store.apply(batch);
        if self.oracle.store.digest() != digest {
            return Err(format!("COMMIT of {id} names another digest").into());
        }
        self.oracle.digests.insert(last, digest);
        self.oracle.committed.insert(id);
        Ok(())
    }

    fn send(&mut self, from: Addr, to: Addr, life: u32, msg: Msg) {
        self.net.push(Packet {
            from,
            to,
            life,
            msg,
        });
    }

    fn held(&self, p: &Packet) -> bool {
        self.holds.iter().any(|f| f.matches(p))
    }

    fn paused(&self, a: Addr) -> bool {
        match a {
            Addr::C => self.coord_paused,
            Addr::P(id) => self.nodes.get(&id).is_some_and(|n| n.paused),
        }
    }

    fn alive(&self, a: Addr) -> bool {
        match a {
            Addr::C => self.coord.is_some(),
            Addr::P(id) => self.nodes.get(&id).is_some_and(|n| n.up),
        }
    }

    fn life_of(&self, a: Addr) -> u32 {
        match a {
            Addr::C => self.coord_gen,
            Addr::P(id) => self.nodes.get(&id).map_or(0, |n| n.life),
        }
    }

    /// Delivers everything deliverable until the network is quiet.
    fn settle(&mut self) -> Result<(), Box<dyn StdError>> {
        for _ in 0..100_000 {
            let Some(i) = self
                .net
                .iter()
                .position(|p| !self.held(p) && !self.paused(p.to) && !self.paused(p.from))
            else {
                return Ok(());
            };
            let p = self.net.remove(i);
            self.process(p)?;
        }
        Err("the network never went quiet".into())
    }

    fn process(&mut self, p: Packet) -> Result<(), Box<dyn StdError>> {
        if self.cut.contains(&(p.from, p.to)) {
            return Ok(());
        }
        if !self.alive(p.to) {
            if p.msg.is_request() && self.alive(p.from) && self.life_of(p.from) == p.life {
                self.refused(p)?;
            }
            return Ok(());
        }
        if !p.msg.is_request() && self.life_of(p.to) != p.life {
            // An answer to a process that restarted since it asked.
            return Ok(());
        }
        match p.to {
            Addr::C => self.at_coordinator(p),
            Addr::P(id) => self.at_participant(id, p),
        }
    }

    /// The receiver is down: the sender's call fails at once.
    fn refused(&mut self, p: Packet) -> Result<(), Box<dyn StdError>> {
        let why = format!("cannot connect to {}", p.to);
        match (p.from, p.msg) {
            (Addr::C, Msg::Peer(Message::Prepare(req))) => {
                let Addr::P(id) = p.to else { return Ok(()) };
                let now = self.now;
                if let Some(c) = self.coord.as_mut() {
                    let a = c.vote(id, req.batch.id, Err(why), now);
                    self.exec(a)?;
                }
            }
            (Addr::P(id), Msg::CuBegin(_) | Msg::CuChunk(_) | Msg::CuLog(_)) => {
                self.copy_failed(id, why);
            }
            _ => {}
        }
        Ok(())
    }

    fn at_coordinator(&mut self, p: Packet) -> Result<(), Box<dyn StdError>> {
        let Addr::P(from) = p.from else {
            return Ok(());
        };
        let now = self.now;
        let Some(c) = self.coord.as_mut() else {
            return Ok(());
        };
        let actions = match p.msg {
            Msg::Vote(batch, vote) => c.vote(from, batch, vote, now),
            Msg::Ack(batch) => c.acked(from, batch),
            Msg::Revoked(epoch) => c.revoked(from, epoch, now),
            Msg::Probed(epoch, reply) => {
                c.probed(from, epoch, reply);
                Vec::new()
            }
            Msg::Renew(req, t0) => {
                let (reply, actions) = c.renew(&req, now);
                if let Ok(reply) = reply {
                    self.send(
                        Addr::C,
                        p.from,
                        p.life,
                        Msg::RenewReply(Box::new(reply), t0),
                    );
                }
                actions
            }
            Msg::Resolve(batch, first) => {
                let answer = c
                    .resolve(batch, first)
                    .map_err(|e| format!("resolve of {batch} for {from}: {e}"))?;
                if matches!(answer, Decision::Commit | Decision::Abort) {
                    let old = self.resolves.insert(batch, answer);
                    if old.is_some_and(|o| o != answer) {
                        return Err(format!(
                            "invariant 9: resolve of {batch} said {old:?}, now {answer:?}"
                        )
                        .into());
                    }
                    let committed = self.oracle.committed.contains(&batch);
                    if committed != (answer == Decision::Commit) {
                        return Err(format!(
                            "resolve of {batch} says {answer:?} but the history has it {}",
                            if committed {
                                "committed"
                            } else {
                                "not committed"
                            }
                        )
                        .into());
                    }
                }
                self.send(Addr::C, p.from, p.life, Msg::Resolved(batch, answer));
                Vec::new()
            }
            _ => Vec::new(),
        };
        self.exec(actions)
    }

    fn at_participant(&mut self, id: NodeId, p: Packet) -> Result<(), Box<dyn StdError>> {
        let Some(n) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let mut reply: Option<(Addr, Msg)> = None;
        match p.msg {
            Msg::Peer(Message::Prepare(req)) => {
                let step = n.sm.prepare(&req);
                n.log.extend(step.persist);
                let vote = step.reply.map_err(|e| e.to_string());
                reply = Some((Addr::C, Msg::Vote(req.batch.id, vote)));
            }
            Msg::Peer(Message::Commit(d)) => {
                let step = n.sm.commit(d.cluster, d.to, d.batch);
                n.log.extend(step.persist);
                if step.reply.is_ok() {
                    reply = Some((Addr::C, Msg::Ack(d.batch)));
                }
            }
            Msg::Peer(Message::Abort(d)) => {
                let step = n.sm.abort(d.cluster, d.to, d.batch);
                n.log.extend(step.persist);
                if step.reply.is_ok() {
                    reply = Some((Addr::C, Msg::Ack(d.batch)));
                }
            }
            Msg::Peer(Message::Probe(r)) => {
                if let Ok(answer) = n.sm.probe(r.cluster, r.to) {
                    reply = Some((Addr::C, Msg::Probed(r.epoch, answer)));
                }
            }
            Msg::Peer(Message::Revoke(r)) if n.sm.revoke(r.incarnation, self.now).is_ok() => {
                reply = Some((Addr::C, Msg::Revoked(r.epoch)));
            }
            Msg::RenewReply(reply, t0) => {
                let was = n.sm.is_member();
                n.sm.granted(t0, &reply);
                if was && !n.sm.is_member() {
                    let line = format!("{} {id}: dropped from {}", self.t(), reply.view);
                    self.say(line);
                }
                self.after_grant(id, &reply);
                return Ok(());
            }
            Msg::Resolved(batch, decision) => {
                let step = n.sm.resolved(batch, decision);
                n.log.extend(step.persist);
                return Ok(());
            }
            Msg::CuBegin(req) => {
                let plan = Runner::serve_begin(n, req);
                reply = Some((p.from, Msg::CuPlan(plan)));
            }
            Msg::CuChunk(req) => {
                let chunk = match n.transfers.get_mut(&req.transfer) {
                    Some((Some(img), _)) => {
                        let (entries, last) = img
                            .store
                            .entries_after(req.after.as_deref(), req.max_bytes as usize);
                        let chunk = SnapshotChunk { entries, last };
                        if last && let Some(t) = n.transfers.get_mut(&req.transfer) {
                            t.0 = None;
                        }
                        Ok(chunk)
                    }
                    _ => Err(Error::Unavailable(format!(
                        "transfer {} is gone",
                        req.transfer
                    ))),
                };
                reply = Some((p.from, Msg::CuChunkReply(chunk)));
            }
            Msg::CuLog(req) => {
                let chunk = match req.transfer {
                    Some(t) if !n.sm.is_pinned(t) => {
                        Err(Error::Unavailable(format!("transfer {t} is gone")))
                    }
                    _ => n.sm.log_after(req.after, req.max_bytes as usize),
                };
                if let (Ok(c), Some(t)) = (&chunk, req.transfer) {
                    let reached = c
                        .batches
                        .last()
                        .map_or(req.after, |b| b.batch.last_version());
                    if reached >= c.source_applied {
                        n.transfers.remove(&t);
                        n.sm.unpin(t);
                    }
                }
                reply = Some((p.from, Msg::CuLogReply(chunk)));
            }
            Msg::CuPlan(plan) => return self.copy_step(id, CopyAnswer::Plan(plan)),
            Msg::CuChunkReply(c) => return self.copy_step(id, CopyAnswer::Chunk(c)),
            Msg::CuLogReply(c) => return self.copy_step(id, CopyAnswer::Log(c)),
            _ => {}
        }
        if let Some((to, msg)) = reply {
            self.send(Addr::P(id), to, p.life, msg);
        }
        Ok(())
    }

    fn serve_begin(n: &mut PNode, req: CatchupRequest) -> Result<CatchupPlan, Error> {
        if !n.sm.is_member() || n.sm.is_catching_up() {
            return Err(Error::Unavailable(format!("{} is not a member", n.id)));
        }
        if n.sm.can_serve_log(req.applied, req.digest) {
            return Ok(CatchupPlan::Log);
        }
        let img = n.sm.image();
        let t = n.next_transfer;
        n.next_transfer += 1;
        n.sm.pin(t, img.store.applied());
        let offer = SnapshotOffer {
            transfer: t,
            applied: img.store.applied(),
            digest: img.store.digest(),
            last_committed: img.last_committed,
            highest_seen: img.highest_seen,
            keys: img.store.len() as u64,
            bytes: img.store.bytes(),
            checksum: img.store.checksum(),
        };
        n.transfers.insert(t, (Some(img), req.from));
        Ok(CatchupPlan::Snapshot(offer))
    }

    /// The participant driver's reaction to a heartbeat answer.
    fn after_grant(&mut self, id: NodeId, reply: &RenewReply) {
        let t = self.t();
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        match &reply.role {
            Role::Member => {
                if matches!(n.copy, Copy::Following { .. } | Copy::Failed(_)) {
                    n.copy = Copy::Idle;
                    self.out.push(format!("{t} {id}: joined as a member"));
                }
            }
            Role::Learner { source } => {
                let behind = n.sm.pending().is_none() && n.sm.store().applied() < reply.committed;
                let start = match &mut n.copy {
                    Copy::Idle | Copy::Failed(_) => true,
                    Copy::Running(_) => false,
                    Copy::Following { behind: count } => {
                        *count = if behind { *count + 1 } else { 0 };
                        n.sm.is_out_of_sync() || *count >= 2
                    }
                };
                let Some(src) = source.as_ref().map(|s| s.id) else {
                    return;
                };
                if start {
                    let step = n.sm.begin_catch_up();
                    n.log.extend(step.persist);
                    n.copy = Copy::Running(Box::new(CatchUp::start(src, self.now)));
                    n.source = Some(src);
                    let req = CatchupRequest {
                        cluster: CLUSTER,
                        from: id,
                        applied: n.sm.store().applied(),
                        digest: n.sm.store().digest(),
                    };
                    let life = n.life;
                    n.copy_asked = Some(self.now);
                    self.out.push(format!("{t} {id}: copies from {src}"));
                    self.send(Addr::P(id), Addr::P(src), life, Msg::CuBegin(req));
                }
            }
        }
    }

    fn copy_failed(&mut self, id: NodeId, why: String) {
        let t = self.t();
        if let Some(n) = self.nodes.get_mut(&id)
            && let Copy::Running(cu) = &n.copy
        {
            let src = cu.source();
            n.copy = Copy::Failed(src);
            self.out
                .push(format!("{t} {id}: copy from {src} failed: {why}"));
        }
    }

    fn copy_step(&mut self, id: NodeId, answer: CopyAnswer) -> Result<(), Box<dyn StdError>> {
        let t = self.t();
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        n.copy_asked = None;
        let Copy::Running(cu) = &mut n.copy else {
            return Ok(());
        };
        let next = match answer {
            CopyAnswer::Plan(Ok(plan)) => cu.plan(plan, &n.sm),
            CopyAnswer::Chunk(Ok(c)) => cu.chunk(c),
            CopyAnswer::Log(Ok(c)) => {
                let (records, next) = cu.log(c, &mut n.sm);
                n.log.extend(records);
                next
            }
            CopyAnswer::Plan(Err(e)) | CopyAnswer::Chunk(Err(e)) | CopyAnswer::Log(Err(e)) => {
                Next::Failed(e.to_string())
            }
        };
        let next = match next {
            Next::Install(snap) => {
                let mut snap = *snap;
                snap.view = n.sm.durable_view().cloned();
                n.snapshot = Some(snap.clone());
                n.log.clear();
                n.sm.install(snap);
                cu.installed(&n.sm)
            }
            other => other,
        };
        let src = cu.source();
        let life = n.life;
        let msg = match next {
            Next::Ask => None,
            Next::Chunk { transfer, after } => Some(Msg::CuChunk(ChunkRequest {
                cluster: CLUSTER,
                transfer,
                after,
                max_bytes: SIM_CHUNK,
            })),
            Next::Log { transfer, after } => Some(Msg::CuLog(LogRequest {
                cluster: CLUSTER,
                transfer,
                after,
                max_bytes: SIM_CHUNK,
            })),
            Next::Install(_) => return Err("install twice".into()),
            Next::Done => {
                let p = cu.progress();
                n.sm.finish_catch_up();
                n.copy = Copy::Following { behind: 0 };
                self.out.push(format!(
                    "{t} {id}: caught up from {src} at version {} ({} keys copied, {} batches)",
                    n.sm.store().applied(),
                    p.keys_done,
                    p.batches
                ));
                None
            }
            Next::Failed(why) => {
                n.copy = Copy::Failed(src);
                self.out
                    .push(format!("{t} {id}: copy from {src} failed: {why}"));
                None
            }
        };
        if let Some(msg) = msg {
            n.copy_asked = Some(now);
            self.send(Addr::P(id), Addr::P(src), life, msg);
        }
        Ok(())
    }

    // ---- time ----

    fn step_time(&mut self) -> Result<(), Box<dyn StdError>> {
        self.now = self.now.plus(STEP);
        let now = self.now;
        // Participant timers.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let Some(n) = self.nodes.get_mut(&id) else {
                continue;
            };
            if !n.up || n.paused || n.sm.cluster().is_none() {
                continue;
            }
            if matches!(n.copy, Copy::Running(_))
                && n.copy_asked
                    .is_some_and(|t| now.since(t) >= COPY_CALL_TIMEOUT)
            {
                self.copy_failed(id, "no answer in time".into());
            }
            let Some(n) = self.nodes.get_mut(&id) else {
                continue;
            };
            if now >= n.next_heartbeat {
                n.next_heartbeat = now.plus(self.s.heartbeat);
                let req = n.renew_request();
                let life = n.life;
                self.send(Addr::P(id), Addr::C, life, Msg::Renew(Box::new(req), now));
            }
            let Some(n) = self.nodes.get_mut(&id) else {
                continue;
            };
            if now >= n.next_resolve {
                n.next_resolve = now.plus(RESOLVE_EVERY);
                if let Some(p) = n.sm.pending() {
                    let (b, first, life) = (p.batch.id, p.batch.first_version, n.life);
                    self.send(Addr::P(id), Addr::C, life, Msg::Resolve(b, first));
                }
            }
        }
        // Coordinator timers.
        if self.coord_up() && !self.coord_paused {
            let due: Vec<BatchId> = self
                .timers
                .iter()
                .filter(|(at, _)| *at <= now)
                .map(|(_, b)| *b)
                .collect();
            self.timers.retain(|(at, _)| *at > now);
            for b in due {
                let a = self
                    .coord
                    .as_mut()
                    .map(|c| c.prepare_timeout(b, now))
                    .unwrap_or_default();
                self.exec(a)?;
            }
            if now >= self.next_tick {
                self.next_tick = now.plus(self.s.heartbeat / 2);
                let a = self.coord.as_mut().map(|c| c.tick(now)).unwrap_or_default();
                self.exec(a)?;
            }
        }
        self.settle()
    }

    fn run_for(&mut self, d: Duration) -> Result<(), Box<dyn StdError>> {
        let end = self.now.plus(d);
        while self.now < end {
            self.step_time()?;
            self.check()?;
        }
        Ok(())
    }

    // ---- nodes ----

    fn start_coordinator(&mut self, takeover_wait: Duration) -> Result<(), Box<dyn StdError>> {
        let recovered = Recovered::replay(self.coord_log.clone());
        let config = coordinator::Config {
            takeover_wait,
            ..self.config()
        };
        let (c, actions) = Coordinator::start(config, recovered, self.now);
        self.coord = Some(c);
        self.coord_gen += 1;
        self.timers.clear();
        self.durable.clear();
        for id in 1..=self.s.n {
            self.coord.as_mut().map(|c| c.register(id, id.to_string()));
        }
        self.exec(actions)
    }

    fn restart_participant(&mut self, id: NodeId) -> Result<(), Box<dyn StdError>> {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else {
            return Err(format!("no participant {id}").into());
        };
        let incarnation = if n.wiped {
            self.next_incarnation += 1;
            self.next_incarnation
        } else {
            n.incarnation
        };
        let mut sm = Participant::restore(
            id,
            incarnation,
            Limits::default(),
            n.snapshot.clone(),
            n.log.clone(),
        )
        .map_err(|e| format!("participant {id} cannot restore: {e}"))?;
        sm.registered(CLUSTER, 0);
        sm.set_window(self.s.window, self.s.window * 4);
        let life = n.life + 1;
        let (log, snapshot, transfers) = (
            std::mem::take(&mut n.log),
            n.snapshot.take(),
            BTreeMap::new(),
        );
        *n = PNode {
            life,
            log,
            snapshot,
            transfers,
            sm,
            ..PNode::fresh(id, incarnation, now)
        };
        Ok(())
    }

    fn read(&self, id: NodeId, key: &str, level: ReadLevel) -> Result<String, Box<dyn StdError>> {
        let n = self.nodes.get(&id).ok_or("no such participant")?;
        if !n.up {
            return Ok(format!("{id} get {key}: unreachable (down)"));
        }
        if n.paused {
            return Ok(format!("{id} get {key}: no answer (paused)"));
        }
        Ok(match n.sm.read(key.as_bytes(), level, self.now) {
            Ok(Read::Value(v)) => {
                if level == ReadLevel::Linearizable {
                    let want = self
                        .oracle
                        .store
                        .get(key.as_bytes())
                        .map(|e| (e.value.clone(), e.version));
                    if v != want {
                        return Err(format!(
                            "invariant 3: replica {id} served a stale linearizable read of {key}: {v:?}, committed {want:?}"
                        )
                        .into());
                    }
                }
                match v {
                    Some((v, ver)) => format!(
                        "{id} get {key}: {:?} (version {ver})",
                        String::from_utf8_lossy(&v)
                    ),
                    None => format!("{id} get {key}: not found"),
                }
            }
            Ok(Read::Blocked(b)) => format!("{id} get {key}: waits for batch {b}"),
            Err(e) => format!("{id} get {key}: refused, {}", e.label()),
        })
    }

    // ---- invariants ----

    fn check(&self) -> Result<(), Box<dyn StdError>> {
        for n in self.nodes.values() {
            let st = n.sm.store();
            if st.applied() > 0 && self.oracle.digests.get(&st.applied()) != Some(&st.digest()) {
                return Err(format!(
                    "invariant 2: replica {} at version {} does not hold the committed history",
                    n.id,
                    st.applied()
                )
                .into());
            }
            if st.applied() > self.oracle.store.applied() {
                return Err(format!("replica {} applied beyond the history", n.id).into());
            }
        }
        for (token, reply) in &self.answered {
            let op = &self.submitted[token];
            match reply {
                Ok(r) => {
                    if self.oracle.ops.get(&r.version()) != Some(&(op.clone(), *r)) {
                        return Err(format!(
                            "invariant 1: t{token} was told {r:?}, the history disagrees"
                        )
                        .into());
                    }
                }
                Err(e) if !e.surely_not_applied() => {}
                Err(_) => {
                    if let Op::Put { value, .. } = op
                        && self
                            .oracle
                            .ops
                            .values()
                            .any(|(o, _)| matches!(o, Op::Put { value: v, .. } if v == value))
                    {
                        return Err(format!("t{token} failed but its write committed").into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Invariant 8, checked on every view the coordinator proposes.
    fn check_joins(&self, before: &View) -> Result<(), Box<dyn StdError>> {
        let Some(c) = &self.coord else { return Ok(()) };
        let view = c.view();
        for m in &view.members {
            if before.contains(m.id, m.incarnation) {
                continue;
            }
            // A member whose data dir was replaced since it qualified is a
            // member that died right after joining; its state is gone.
            let Some(n) = self
                .nodes
                .get(&m.id)
                .filter(|n| n.incarnation == m.incarnation)
            else {
                continue;
            };
            let applied_ok = n.sm.store().applied() == self.oracle.store.applied()
                && n.sm.store().digest() == self.oracle.store.digest();
            let holds_last =
                n.sm.pending()
                    .is_some_and(|p| Some(p.batch.id) == c.last_committed());
            if !(applied_ok || holds_last) {
                return Err(format!(
                    "invariant 8: replica {} joined {view} at version {} (committed {})",
                    m.id,
                    n.sm.store().applied(),
                    self.oracle.store.applied()
                )
                .into());
            }
        }
        Ok(())
    }

    fn status(&self) -> String {
        let mut s = String::new();
        match &self.coord {
            Some(c) => {
                let st = c.status(self.now);
                let _ = writeln!(
                    s,
                    "c: {} committed {} queued {} in flight {}",
                    st.view,
                    st.committed,
                    st.queued,
                    st.in_flight.map_or("-".into(), |b| b.to_string())
                );
            }
            None => {
                let _ = writeln!(s, "c: down");
            }
        }
        for n in self.nodes.values() {
            let role = if !n.up {
                "down".to_string()
            } else if n.sm.is_member() && !n.sm.is_catching_up() {
                "member".to_string()
            } else {
                match &n.copy {
                    Copy::Running(_) => "copying".into(),
                    Copy::Following { .. } => "learner".into(),
                    _ => "out".into(),
                }
            };
            let lease =
                n.sm.lease_left(self.now)
                    .map_or("no lease".into(), |d| format!("lease {}ms", ms(d)));
            let _ = writeln!(
                s,
                "{}: {role}{} applied {} pending {} {lease}",
                n.id,
                if n.paused { " (paused)" } else { "" },
                n.sm.store().applied(),
                n.sm.pending()
                    .map_or("-".into(), |p| p.batch.id.to_string()),
            );
        }
        s.trim_end().to_string()
    }

    fn heal_all(&mut self) -> Result<(), Box<dyn StdError>> {
        self.cut.clear();
        self.holds.clear();
        self.hold_durable = false;
        self.durable_len = None;
        self.coord_paused = false;
        if self.coord.is_none() {
            self.start_coordinator(Duration::ZERO)?;
        }
        for id in 1..=self.s.n {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.paused = false;
                if !n.up {
                    self.restart_participant(id)?;
                }
            }
        }
        self.report_durable()
    }

    fn converged(&self) -> bool {
        let Some(c) = &self.coord else { return false };
        c.is_idle()
            && c.view().len() == self.s.n as usize
            && self.nodes.values().all(|n| {
                n.sm.is_member()
                    && !n.sm.is_catching_up()
                    && n.sm.pending().is_none()
                    && n.sm.store() == &self.oracle.store
            })
    }
}

enum CopyAnswer {
    Plan(Result<CatchupPlan, Error>),
    Chunk(Result<SnapshotChunk, Error>),
    Log(Result<LogChunk, Error>),
}

impl goldenscript::Runner for Runner {
    type Command = goldenscript::Command;

    fn run(&mut self, cmd: &goldenscript::Command, _: &goldenscript::Context) -> R {
        self.out.clear();
        let before = self
            .coord
            .as_ref()
            .map(|c| c.view().clone())
            .unwrap_or_default();
        let mut args = cmd.consume_args();
        let mut extra = String::new();
        match cmd.name.as_str() {
            "cluster" => {
                let n: u32 = args.next_pos().ok_or("cluster N")?.parse()?;
                self.s.n = n;
                self.s.min = 3.min(n as usize);
                while let Some((k, v)) = args.next_key() {
                    match k {
                        "min" => self.s.min = v.parse()?,
                        "lease" => self.s.lease = parse_duration(v)?,
                        "heartbeat" => self.s.heartbeat = parse_duration(v)?,
                        "prepare_timeout" => self.s.prepare_timeout = parse_duration(v)?,
                        "window" => self.s.window = v.parse()?,
                        other => return Err(format!("unknown cluster option {other}").into()),
                    }
                }
                args.reject_next()?;
                for id in 1..=n {
                    self.next_incarnation += 1;
                    let mut p = PNode::fresh(id, self.next_incarnation, self.now);
                    p.sm.registered(CLUSTER, 0);
                    p.sm.set_window(self.s.window, self.s.window * 4);
                    self.nodes.insert(id, p);
                }
                self.start_coordinator(Duration::ZERO)?;
                for _ in 0..100 {
                    self.step_time()?;
                    if self
                        .nodes
                        .values()
                        .all(|n| n.sm.lease_left(self.now).is_some())
                    {
                        break;
                    }
                }
                extra = self.status();
            }
            "put" | "delete" => {
                let key = args.next_pos().ok_or("key")?.to_string();
                let op = if cmd.name == "put" {
                    let value = args.next_pos().ok_or("value")?.to_string();
                    Op::Put {
                        key: key.into_bytes(),
                        value: value.into_bytes(),
                    }
                } else {
                    Op::Delete {
                        key: key.into_bytes(),
                    }
                };
                args.reject_next()?;
                let token = self.next_token;
                self.next_token += 1;
                self.submitted.insert(token, op.clone());
                let now = self.now;
                if self.coord_paused {
                    return Err("the coordinator is paused".into());
                }
                match self.coord.as_mut() {
                    Some(c) => {
                        let a = c.submit(op, token, now);
                        let line = format!("{} client t{token}: {} submitted", self.t(), cmd.name);
                        self.say(line);
                        self.exec(a)?;
                        self.settle()?;
                    }
                    None => {
                        let line = format!("client t{token}: coordinator unreachable");
                        self.say(line);
                    }
                }
            }
            "get" => {
                let id: NodeId = args.next_pos().ok_or("get NODE KEY")?.parse()?;
                let key = args.next_pos().ok_or("get NODE KEY")?.to_string();
                let level = match args.next_pos() {
                    Some("serializable") => ReadLevel::Serializable,
                    None => ReadLevel::Linearizable,
                    Some(o) => return Err(format!("unknown read level {o}").into()),
                };
                args.reject_next()?;
                extra = self.read(id, &key, level)?;
            }
            "run" => {
                let d = parse_duration(args.next_pos().ok_or("run DURATION")?)?;
                args.reject_next()?;
                self.run_for(d)?;
            }
            "stabilize" => {
                args.reject_next()?;
                self.settle()?;
            }
            "status" => {
                args.reject_next()?;
                extra = self.status();
            }
            "crash" | "wipe" | "restart" | "pause" | "resume" => {
                let a = parse_addr(args.next_pos().ok_or("which node")?)?;
                let takeover = args
                    .take_key("takeover")
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or_default();
                args.reject_next()?;
                match (cmd.name.as_str(), a) {
                    ("crash", Addr::C) => {
                        self.coord = None;
                        self.coord_paused = false;
                        // What was appended but never made durable is lost.
                        if let Some(n) = self.durable_len.take() {
                            let lost = self.coord_log.len().saturating_sub(n);
                            self.coord_log.truncate(n);
                            self.durable.clear();
                            self.hold_durable = false;
                            if lost > 0 {
                                let line = format!(
                                    "{} c: {lost} record(s) not yet durable are lost",
                                    self.t()
                                );
                                self.say(line);
                            }
                        }
                        let lost: Vec<u64> = self
                            .submitted
                            .keys()
                            .filter(|t| !self.answered.contains_key(t) && !self.lost.contains(t))
                            .copied()
                            .collect();
                        self.lost.extend(&lost);
                        let lost: Vec<String> = lost.iter().map(|t| format!("t{t}")).collect();
                        if !lost.is_empty() {
                            let line = format!(
                                "{} client {}: no answer, outcome unknown",
                                self.t(),
                                lost.join(",")
                            );
                            self.say(line);
                        }
                    }
                    ("restart", Addr::C) => self.start_coordinator(takeover)?,
                    ("pause", Addr::C) => self.coord_paused = true,
                    ("resume", Addr::C) => self.coord_paused = false,
                    ("crash", Addr::P(id)) => {
                        let n = self.nodes.get_mut(&id).ok_or("no such node")?;
                        n.up = false;
                        n.paused = false;
                    }
                    ("wipe", Addr::P(id)) => {
                        let now = self.now;
                        let n = self.nodes.get_mut(&id).ok_or("no such node")?;
                        let life = n.life;
                        *n = PNode {
                            up: false,
                            wiped: true,
                            life,
                            ..PNode::fresh(id, 0, now)
                        };
                    }
                    ("restart", Addr::P(id)) => self.restart_participant(id)?,
                    ("pause", Addr::P(id)) => {
                        self.nodes.get_mut(&id).ok_or("no such node")?.paused = true
                    }
                    ("resume", Addr::P(id)) => {
                        self.nodes.get_mut(&id).ok_or("no such node")?.paused = false
                    }
                    (c, a) => return Err(format!("cannot {c} {a}").into()),
                }
                let line = format!("{} {a}: {}", self.t(), cmd.name);
                self.say(line);
                self.settle()?;
            }
            "compact" => {
                args.reject_next()?;
                if self.hold_durable {
                    return Err("compact while records are held is not modelled".into());
                }
                let c = self.coord.as_ref().ok_or("the coordinator is down")?;
                self.coord_log = vec![c.checkpoint()];
                let line = format!("{} c: decision log compacted to a checkpoint", self.t());
                self.say(line);
            }
            "cut" => {
                let a = parse_addr(args.next_pos().ok_or("cut A B")?)?;
                let b = parse_addr(args.next_pos().ok_or("cut A B")?)?;
                let oneway = matches!(args.next_pos(), Some("oneway"));
                args.reject_next()?;
                self.cut.insert((a, b));
                if !oneway {
                    self.cut.insert((b, a));
                }
            }
            "heal" => {
                args.reject_next()?;
                self.cut.clear();
            }
            "hold" => {
                if cmd
                    .args
                    .iter()
                    .any(|a| matches!(a, goldenscript::Argument::Positional(p) if p == "durable"))
                {
                    self.hold_durable = true;
                    self.durable_len.get_or_insert(self.coord_log.len());
                } else {
                    self.holds.push(Filter::parse(cmd)?);
                }
            }
            "release" => {
                args.reject_next()?;
                self.holds.clear();
                self.hold_durable = false;
                self.durable_len = None;
                self.report_durable()?;
                self.settle()?;
            }
            "deliver" | "drop" => {
                let f = Filter::parse(cmd)?;
                let (picked, rest): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.net)
                    .into_iter()
                    .partition(|p| f.matches(p));
                self.net = rest;
                let line = format!("{} {} {} packet(s)", self.t(), cmd.name, picked.len());
                self.say(line);
                if cmd.name == "deliver" {
                    for p in picked {
                        self.process(p)?;
                    }
                    self.settle()?;
                }
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        self.check()?;
        self.check_joins(&before)?;
        let mut out = self.out.join("\n");
        if !extra.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&extra);
        }
        Ok(out + "\n")
    }

    fn end_script(&mut self) -> Result<(), Box<dyn StdError>> {
        if self.s.n == 0 {
            return Ok(());
        }
        self.heal_all()?;
        for _ in 0..3000 {
            self.step_time()?;
            self.check()?;
            if self.converged() {
                return Ok(());
            }
        }
        Err(format!(
            "the cluster did not converge after healing:\n{}",
            self.status()
        )
        .into())
    }
}

#[test]
fn testscripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/testscripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("testscripts dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scripts in {}", dir.display());
    for path in paths {
        goldenscript::run(&mut Runner::default(), &path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
