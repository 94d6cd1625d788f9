//! The coordinator driver: one task owns the Raft replica, the 2PC state
//! machine (while this replica leads) and the write-ahead log, and executes
//! what they return.
//!
//! Everything reaches them as an [`Event`] on one channel: client submits,
//! heartbeats, votes and acks coming back from send tasks, Raft messages
//! from the other replicas, timers. A single owner means no lock and a total
//! order of inputs, which is what the scenario tests replay. The boot clock
//! is read once per event and handed in.
//!
//! The Raft side follows raft-rs's Ready cycle after every input: send what
//! may go at once, append the Ready's records to the WAL and wait for the
//! fsync, send what depended on them, advance. A decision record the 2PC
//! machine asks to persist is *proposed*; it is durable once applied from
//! the Raft log (committed on a majority), which is when the machine hears
//! `commit_durable` / `view_durable`, and when sends that followed it in
//! the same batch of actions leave. Losing leadership drops the 2PC machine:
//! its waiting clients learn that their outcome is unknown, and sends still
//! waiting for a record are cancelled.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use quintet_common::clock;
use quintet_common::error::Error;
use quintet_common::net::{Link, LinkError, context_with_timeout};
use quintet_common::protocol::coordinator::{self, Action, Coordinator, Message, Record};
use quintet_common::rpc::{
    CoordinatorRequest, CoordinatorResponse, CoordinatorStatus, Decision, Health,
    ParticipantRequest, ParticipantResponse, RenewReply, RenewRequest, ReplicaStatus, Vote,
    coord_peer_conn, peer_conn,
};
use quintet_common::storage::{wal, writer::LogWriter};
use quintet_common::types::{BatchId, ClusterId, NodeId, Op, OpResult, Version};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::replica::node::{Applied, Io, Replica, RoleChange};
use crate::replica::store::RaftRecord;

/// A waiting client's reply handle.
pub type Reply = oneshot::Sender<Result<OpResult, Error>>;

/// Link to one participant.
pub type PeerLink = Link<ParticipantRequest, ParticipantResponse>;

/// Link to another coordinator replica.
pub type ReplicaLink = Link<CoordinatorRequest, CoordinatorResponse>;

/// Most queued inputs handled before a tick, so a flood cannot starve it.
const MAX_BEFORE_TICK: usize = 4096;

/// Compact the Raft log beyond this many entries.
const COMPACT_ENTRIES: usize = 50_000;

/// Inputs of the driver loop.
pub enum Event {
    /// A client write.
    Submit(Op, Reply),
    /// A prepare answer (or transport failure).
    Vote(NodeId, BatchId, Result<Vote, String>),
    /// A commit or abort acknowledgement.
    Acked(NodeId, BatchId),
    /// A suspect member acknowledged the revoke of its lease in an epoch.
    Revoked(NodeId, u64),
    /// A learner answered a probe sent in an epoch.
    Probed(NodeId, u64, quintet_common::rpc::ProbeReply),
    /// The prepare timer of a batch fired (for the 2PC machine started in
    /// the given generation).
    Timeout(u64, BatchId),
    /// A participant introduces itself with its peer address.
    Register(
        NodeId,
        String,
        oneshot::Sender<Result<CoordinatorStatus, Error>>,
    ),
    /// A participant's heartbeat.
    Renew(
        Box<RenewRequest>,
        oneshot::Sender<Result<RenewReply, Error>>,
    ),
    /// A participant asks for a batch's fate (given its first version).
    Resolve(BatchId, Version, oneshot::Sender<Result<Decision, Error>>),
    /// Status request.
    Status(oneshot::Sender<Result<CoordinatorStatus, Error>>),
    /// Health request.
    Health(oneshot::Sender<Health>),
    /// Raft messages from another replica.
    Raft(Vec<raft::eraftpb::Message>),
    /// Raft messages to this replica could not be delivered.
    Unreachable(u64),
    /// Replica `from`, whose log is empty, asks for this one's last index.
    Survey(u64, oneshot::Sender<u64>),
    /// This replica, started with an empty log, heard enough from the
    /// others to know whether the group is new.
    Surveyed(Survey),
    /// Stop taking writes, finish the round in flight, flush and return.
    Stop,
}

/// What a replica that starts with an empty log learns from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Survey {
    /// A majority (counting this one) hold nothing: a new group, whose
    /// members may vote from the start.
    New,
    /// Replica `from` holds entries up to `index`: this one was wiped (or
    /// joins late) and votes only once it has caught up.
    Rejoin { from: u64, index: u64 },
}

/// What the driver needs besides the replica and its log.
pub struct Settings {
    /// This replica's id.
    pub id: u32,
    /// Every replica's address, in id order.
    pub replicas: Vec<String>,
    /// Links to the participants.
    pub peers: BTreeMap<NodeId, Arc<PeerLink>>,
    /// The 2PC machine's configuration; its cluster is filled in from the
    /// log or `IDENTITY`.
    pub config: coordinator::Config,
    /// A cluster id to use when the log holds none (a lone coordinator's
    /// `IDENTITY`); replicas choose one in the log.
    pub identity_cluster: Option<ClusterId>,
    /// Bound on one prepare.
    pub prepare_timeout: Duration,
    /// How often the replica and the state machine are ticked.
    pub tick_every: Duration,
    /// The data dir, for compaction.
    pub dir: PathBuf,
    /// Compact after this many bytes of log.
    pub compact_bytes: u64,
}

/// Tells waiting sends when the record they follow is applied; the
/// generation changes when leadership is lost, cancelling them.
type Watermark = watch::Sender<(u64, u64)>;

/// The loop's state.
pub struct Driver {
    s: Settings,
    replica: Replica,
    sm: Option<Coordinator<Reply>>,
    cluster: Option<ClusterId>,
    log: LogWriter,
    tx: mpsc::UnboundedSender<Event>,
    raft_out: BTreeMap<u64, mpsc::UnboundedSender<Vec<Vec<u8>>>>,
    applied: Watermark,
    generation: u64,
    stopping: bool,
    surveying: bool,
}

pub(crate) fn encode(record: &RaftRecord) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    bincode::serialize(record).unwrap_or_default()
}

fn fatal(e: impl std::fmt::Display) -> ! {
    error!(error = %e, "the decision log failed; stopping to protect the data");
    std::process::exit(1);
}

impl Driver {
    /// A driver over a replica restored from its log.
    pub fn new(
        replica: Replica,
        log: LogWriter,
        tx: mpsc::UnboundedSender<Event>,
        s: Settings,
    ) -> Self {
        let mut raft_out = BTreeMap::new();
        for (i, addr) in s.replicas.iter().enumerate() {
            let to = i as u64 + 1;
            if to == s.id as u64 {
                continue;
            }
            let (out, rx) = mpsc::unbounded_channel();
            let link = Arc::new(ReplicaLink::new(addr.clone(), Duration::from_millis(500)));
            tokio::spawn(raft_sender(s.id as u64, to, link, rx, tx.clone()));
            raft_out.insert(to, out);
        }
        let (applied, _) = watch::channel((0, replica.applied()));
        Driver {
            cluster: replica.state().cluster.or(s.identity_cluster),
            s,
            replica,
            sm: None,
            log,
            tx,
            raft_out,
            applied,
            generation: 0,
            stopping: false,
            surveying: false,
        }
    }

    /// Runs until [`Event::Stop`] and the round in flight is over.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        if self.replica.is_empty() && self.s.replicas.len() > 1 {
            self.begin_survey();
        }
        self.drive().await;
        let mut tick = tokio::time::interval(self.s.tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_deadline: Option<Instant> = None;
        loop {
            if let Some(deadline) = stop_deadline
                && (self.sm.as_ref().is_none_or(|sm| sm.is_idle()) || Instant::now() >= deadline)
            {
                break;
            }
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Stop) | None => self.begin_stop(&mut stop_deadline),
                    Some(ev) => self.handle(ev),
                },
                _ = tick.tick() => {
                    // Inputs already waiting go first: after the process was
                    // paused, the renewals queued meanwhile must count before
                    // a tick decides who stopped renewing.
                    for _ in 0..MAX_BEFORE_TICK {
                        match rx.try_recv() {
                            Ok(Event::Stop) => {
                                self.begin_stop(&mut stop_deadline);
                                break;
                            }
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                    self.replica.tick();
                    let now = clock::now();
                    let actions = self.sm.as_mut().map(|sm| sm.tick(now)).unwrap_or_default();
                    self.execute(actions);
                }
            }
            self.drive().await;
        }
        if let Err(e) = self.log.wait_durable(self.log.last_lsn()).await {
            error!(error = %e, "final log flush failed");
        }
        info!(
            term = self.replica.term(),
            applied = self.replica.applied(),
            committed = self.replica.state().committed,
            "coordinator stopped"
        );
    }

    /// Asks the other replicas for their logs before this empty one may
    /// vote; see [`survey`].
    fn begin_survey(&mut self) {
        info!(
            id = self.s.id,
            "the decision log is empty; asking the other coordinator replicas whether the group is new before voting"
        );
        self.surveying = true;
        self.replica.withhold_votes(true);
        let peers: Vec<(u64, String)> = self
            .s
            .replicas
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, a.clone()))
            .filter(|(id, _)| *id != self.s.id as u64)
            .collect();
        tokio::spawn(survey(self.s.id as u64, peers, self.tx.clone()));
    }

    fn surveyed(&mut self, outcome: Survey) {
        if !self.surveying {
            return;
        }
        self.surveying = false;
        match outcome {
            Survey::New => {
                info!(
                    id = self.s.id,
                    "a majority of coordinator replicas hold no log: a new group, voting from the start"
                );
                self.replica.withhold_votes(false);
            }
            Survey::Rejoin { from, index } => {
                if self.replica.is_withholding() {
                    info!(
                        id = self.s.id,
                        from,
                        index,
                        "coordinator {from} holds a log up to {index} and this replica none: rejoining as a follower, voting again once caught up"
                    );
                }
            }
        }
    }

    /// Refuses new writes and gives the round in flight a bounded time to
    /// finish (once).
    fn begin_stop(&mut self, stop_deadline: &mut Option<Instant>) {
        if stop_deadline.is_none() {
            info!("stopping: refusing new writes, finishing the round in flight");
            self.stopping = true;
            let actions = self.sm.as_mut().map(|sm| sm.stop()).unwrap_or_default();
            self.execute(actions);
            *stop_deadline = Some(Instant::now() + self.s.prepare_timeout * 2);
        }
    }

    fn not_leader(&self) -> Error {
        let leader = self.replica.leader();
        let addr = (leader > 0)
            .then(|| self.s.replicas.get(leader as usize - 1).cloned())
            .flatten()
            .unwrap_or_default();
        let detail = if self.replica.is_leader() {
            format!(
                "coordinator {} was just elected and is still applying the log; retry",
                self.s.id
            )
        } else if addr.is_empty() {
            format!(
                "coordinator {} is a follower and no leader is known yet; retry shortly",
                self.s.id
            )
        } else {
            format!(
                "coordinator {} is a follower; the leader is coordinator {leader} at {addr}",
                self.s.id
            )
        };
        Error::NotLeader {
            leader: addr,
            detail,
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = clock::now();
        let generation = self.generation;
        let actions = match ev {
            Event::Raft(msgs) => {
                for m in msgs {
                    self.replica.step(m);
                }
                Vec::new()
            }
            Event::Unreachable(id) => {
                self.replica.unreachable(id);
                Vec::new()
            }
            Event::Health(reply) => {
                let _ = reply.send(self.health());
                Vec::new()
            }
            Event::Survey(from, reply) => {
                self.replica.peer_emptied(from);
                let _ = reply.send(self.replica.last_index());
                Vec::new()
            }
            Event::Surveyed(outcome) => {
                self.surveyed(outcome);
                Vec::new()
            }
            Event::Status(reply) => {
                let answer = match &self.sm {
                    Some(sm) => {
                        let mut st = sm.status(now);
                        st.replicas = self.replicas_status();
                        Ok(st)
                    }
                    None => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
                Vec::new()
            }
            ev => {
                if self.sm.is_none() {
                    reply_not_leader(ev, self.not_leader());
                    return;
                }
                let Some(sm) = self.sm.as_mut() else {
                    return;
                };
                match ev {
                    Event::Submit(op, reply) => sm.submit(op, reply, now),
                    Event::Vote(from, batch, vote) => sm.vote(from, batch, vote, now),
                    Event::Acked(from, batch) => sm.acked(from, batch),
                    Event::Revoked(from, epoch) => sm.revoked(from, epoch, now),
                    Event::Probed(from, epoch, reply) => {
                        sm.probed(from, epoch, reply);
                        Vec::new()
                    }
                    Event::Timeout(g, batch) if g == generation => sm.prepare_timeout(batch, now),
                    Event::Register(id, advertise, reply) => {
                        let answer = sm.register(id, advertise).map(|()| sm.status(now));
                        let _ = reply.send(answer);
                        Vec::new()
                    }
                    Event::Renew(req, reply) => {
                        let (answer, actions) = sm.renew(&req, now);
                        let _ = reply.send(answer);
                        actions
                    }
                    Event::Resolve(batch, first_version, reply) => {
                        let _ = reply.send(sm.resolve(batch, first_version));
                        Vec::new()
                    }
                    _ => Vec::new(),
                }
            }
        };
        self.execute(actions);
    }

    fn health(&self) -> Health {
        let serving = self.sm.is_some();
        let leader = self.replica.leader();
        let detail = if self.stopping {
            "stopping".to_string()
        } else if self.surveying {
            "empty log: asking the other coordinator replicas whether the group is new".to_string()
        } else if serving {
            String::new()
        } else if self.replica.is_leader() {
            "elected leader, applying the log".to_string()
        } else if leader == 0 {
            "no leader known yet".to_string()
        } else {
            String::new()
        };
        Health {
            role: "coordinator".into(),
            id: self.s.id,
            ready: detail.is_empty(),
            detail: if detail.is_empty() && !serving {
                format!("follower of coordinator {leader}")
            } else {
                detail
            },
        }
    }

    fn replicas_status(&self) -> Vec<ReplicaStatus> {
        let term = self.replica.term();
        let progress = self.replica.progress();
        self.s
            .replicas
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let id = i as u64 + 1;
                let me = id == self.s.id as u64;
                let p = progress.iter().find(|p| p.id == id);
                ReplicaStatus {
                    id: id as u32,
                    address: addr.clone(),
                    reachable: me || p.is_some_and(|p| p.active),
                    role: if me { "leader" } else { "follower" }.into(),
                    term,
                    applied: if me {
                        self.replica.applied()
                    } else {
                        p.map_or(0, |p| p.matched)
                    },
                }
            })
            .collect()
    }

    /// Processes every Ready raft has, persisting before the sends that
    /// need it, then starts the 2PC machine if this replica now may serve.
    async fn drive(&mut self) {
        while let Some((rd, io)) = self.replica.ready() {
            let Io {
                send_now,
                persist,
                send_after,
                applied,
                role,
            } = io;
            self.send_raft(send_now);
            if !persist.is_empty() {
                for r in &persist {
                    self.log.append(encode(r));
                }
                if let Err(e) = self.log.wait_durable(self.log.last_lsn()).await {
                    fatal(e);
                }
            }
            self.send_raft(send_after);
            if let Some(role) = role {
                self.role_changed(role);
            }
            self.on_applied(applied);
            let io = self.replica.advance(rd);
            for r in &io.persist {
                self.log.append(encode(r));
            }
            self.send_raft(io.send_now);
            self.on_applied(io.applied);
            self.maybe_serve();
        }
        self.maybe_compact();
    }

    fn send_raft(&self, msgs: Vec<raft::eraftpb::Message>) {
        let mut by_peer: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for m in msgs {
            let bytes = m.write_to_bytes().unwrap_or_default();
            by_peer.entry(m.to).or_default().push(bytes);
        }
        for (to, batch) in by_peer {
            if let Some(out) = self.raft_out.get(&to) {
                let _ = out.send(batch);
            }
        }
    }

    fn role_changed(&mut self, role: RoleChange) {
        match role {
            RoleChange::BecameLeader { term } => {
                info!(
                    id = self.s.id,
                    term, "elected coordinator leader; applying the log before serving"
                );
            }
            RoleChange::SteppedDown { term } => {
                self.generation += 1;
                let gen_now = self.generation;
                self.applied
                    .send_modify(|w| *w = (gen_now, self.replica.applied()));
                if let Some(sm) = self.sm.take() {
                    warn!(
                        id = self.s.id,
                        term,
                        queued = sm.status(clock::now()).queued,
                        "lost the coordinator leadership; writes waiting here learn their outcome is unknown"
                    );
                }
            }
        }
    }

    /// Starts the 2PC machine once this replica leads with the whole log
    /// applied: a new epoch, and no drop before a deposed leader's grants
    /// can have run out.
    fn maybe_serve(&mut self) {
        if self.sm.is_some() || !self.replica.is_serving() || self.stopping {
            return;
        }
        let cluster = match self.replica.state().cluster.or(self.cluster) {
            Some(c) => c,
            None => {
                let c = ClusterId(rand::random::<u64>() | 1);
                info!(%c, "created a new cluster");
                c
            }
        };
        if self.replica.state().cluster != Some(cluster) {
            // Recorded in the replicated log, so every replica agrees.
            if let Err(e) = self.replica.propose(&Record::Cluster(cluster)) {
                warn!(error = %e, "cannot record the cluster id yet");
                return;
            }
        }
        self.cluster = Some(cluster);
        let cfg = coordinator::Config {
            cluster,
            ..self.s.config.clone()
        };
        let recovered = self.replica.state().clone();
        let (sm, actions) = Coordinator::start(cfg, recovered, clock::now());
        info!(
            id = self.s.id,
            term = self.replica.term(),
            epoch = sm.epoch(),
            members = ?sm.view().ids().collect::<Vec<_>>(),
            committed = sm.committed(),
            "coordinator serving"
        );
        self.sm = Some(sm);
        self.execute(actions);
    }

    fn on_applied(&mut self, applied: Vec<Applied>) {
        let now = clock::now();
        for a in applied {
            if !a.ours {
                continue;
            }
            let Some(sm) = self.sm.as_mut() else {
                continue;
            };
            let actions = match a.record {
                Record::Commit { batch, .. } => sm.commit_durable(batch, now),
                Record::View(v) => sm.view_durable(v.epoch, now),
                _ => Vec::new(),
            };
            self.execute(actions);
        }
        let (generation, index) = (self.generation, self.replica.applied());
        self.applied.send_if_modified(|w| {
            let changed = *w != (generation, index);
            *w = (generation, index);
            changed
        });
    }

    fn execute(&mut self, actions: Vec<Action<Reply>>) {
        let mut barrier: Option<u64> = None;
        for action in actions {
            match action {
                Action::Persist(record) => {
                    if let Record::Commit {
                        batch, first, last, ..
                    } = &record
                    {
                        debug!(%batch, first, last, "proposing commit");
                    }
                    match self.replica.propose(&record) {
                        Ok(index) => barrier = Some(index),
                        Err(e) => warn!(error = %e, "a decision record could not be proposed"),
                    }
                }
                Action::Send { to, msg } => {
                    let Some(link) = self.s.peers.get(&to).cloned() else {
                        warn!(node = to, "no address for participant");
                        continue;
                    };
                    let wait = barrier.map(|index| self.wait_applied(index));
                    let tx = self.tx.clone();
                    let timeout = self.s.prepare_timeout;
                    tokio::spawn(async move {
                        if let Some(wait) = wait
                            && !wait.await
                        {
                            return;
                        }
                        send(link, to, msg, timeout, tx).await;
                    });
                }
                Action::Reply { token, result } => {
                    let _ = token.send(result);
                }
                Action::ArmTimer(batch) => {
                    let tx = self.tx.clone();
                    let timeout = self.s.prepare_timeout;
                    let generation = self.generation;
                    tokio::spawn(async move {
                        tokio::time::sleep(timeout).await;
                        let _ = tx.send(Event::Timeout(generation, batch));
                    });
                }
                Action::Suspected { id, reason } => {
                    warn!(node = id, %reason, "member suspect; no more leases for it");
                }
                Action::ViewChanged { view, left, joined } => {
                    let list = |v: &[(NodeId, String)]| {
                        if v.is_empty() {
                            return "-".to_string();
                        }
                        v.iter()
                            .map(|(id, why)| format!("{id} ({why})"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    info!(
                        epoch = view.epoch,
                        members = ?view.ids().collect::<Vec<_>>(),
                        left = %list(&left),
                        joined = %list(&joined),
                        "view change"
                    );
                }
            }
        }
    }

    /// Resolves true once `index` is applied in this leadership, false if
    /// leadership is lost first.
    fn wait_applied(&self, index: u64) -> impl Future<Output = bool> + Send + 'static {
        let mut rx = self.applied.subscribe();
        let generation = self.generation;
        async move {
            match rx
                .wait_for(|&(g, applied)| g != generation || applied >= index)
                .await
            {
                Ok(w) => w.0 == generation,
                Err(_) => false,
            }
        }
    }

    fn maybe_compact(&mut self) {
        let by_bytes = self.log.bytes_since_rotate() >= self.s.compact_bytes;
        let limit = if by_bytes { 0 } else { COMPACT_ENTRIES };
        let Some(carry) = self.replica.maybe_compact(limit) else {
            return;
        };
        let (segment, lsn) = self.log.rotate(carry.iter().map(encode).collect());
        let durable = self.log.wait_durable(lsn);
        let dir = self.s.dir.clone();
        let index = self.replica.applied();
        tokio::spawn(async move {
            if let Err(e) = durable.await {
                fatal(e);
            }
            match tokio::task::spawn_blocking(move || wal::remove_segments_before(&dir, segment))
                .await
            {
                Ok(Ok(removed)) => info!(
                    segment,
                    removed, index, "decision log compacted to a snapshot"
                ),
                Ok(Err(e)) => warn!(error = %e, "could not delete old log segments"),
                Err(e) => warn!(error = %e, "log compaction task failed"),
            }
        });
    }
}

/// Answers a request for the 2PC machine on a replica that does not run it.
fn reply_not_leader(ev: Event, e: Error) {
    match ev {
        Event::Submit(_, reply) => {
            let _ = reply.send(Err(e));
        }
        Event::Register(_, _, reply) => {
            let _ = reply.send(Err(e));
        }
        Event::Renew(_, reply) => {
            let _ = reply.send(Err(e));
        }
        Event::Resolve(_, _, reply) => {
            let _ = reply.send(Err(e));
        }
        _ => {}
    }
}

/// Asks every other replica for its last log index, in rounds, until one
/// holds entries ([`Survey::Rejoin`]) or a majority counting this replica
/// hold none ([`Survey::New`]). A round waits for every answer (or its
/// timeout), so a live replica with a log is heard before a new group is
/// declared by the empty ones.
async fn survey(me: u64, peers: Vec<(u64, String)>, events: mpsc::UnboundedSender<Event>) {
    let links: Vec<(u64, Arc<ReplicaLink>)> = peers
        .into_iter()
        .map(|(id, a)| {
            (
                id,
                Arc::new(ReplicaLink::new(a, Duration::from_millis(500))),
            )
        })
        .collect();
    let group = links.len() + 1;
    let majority = group / 2 + 1;
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let answers = futures::future::join_all(links.iter().map(|(id, link)| {
            let link = link.clone();
            async move {
                let ctx = context_with_timeout(Duration::from_secs(1));
                let got = link
                    .call(|ch| async move { coord_peer_conn(ch).survey(ctx, me).await })
                    .await;
                let index = match got {
                    Ok(Ok(index)) => Some(index),
                    _ => None,
                };
                (*id, index)
            }
        }))
        .await;
        if let Some((from, index)) = answers
            .iter()
            .filter_map(|(id, a)| a.filter(|&i| i > 0).map(|i| (*id, i)))
            .max_by_key(|&(_, i)| i)
        {
            let _ = events.send(Event::Surveyed(Survey::Rejoin { from, index }));
            return;
        }
        let empty = 1 + answers.iter().filter(|(_, a)| *a == Some(0)).count();
        if empty >= majority {
            let _ = events.send(Event::Surveyed(Survey::New));
            return;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            warn!(
                heard = empty - 1,
                needed = majority - 1,
                waited_s = started.elapsed().as_secs(),
                "waiting for more coordinator replicas to answer before this empty one may vote"
            );
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends Raft batches to one peer in order, one call at a time, folding
/// batches queued meanwhile into the next call.
async fn raft_sender(
    from: u64,
    to: u64,
    link: Arc<ReplicaLink>,
    mut rx: mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(mut msgs) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            msgs.extend(more);
            if msgs.len() >= 4096 {
                break;
            }
        }
        let ctx = context_with_timeout(Duration::from_secs(1));
        let sent = link
            .call(|ch| async move { coord_peer_conn(ch).raft(ctx, from, msgs).await })
            .await;
        if !matches!(sent, Ok(Ok(()))) {
            let _ = events.send(Event::Unreachable(to));
        }
    }
}

async fn send(
    link: Arc<PeerLink>,
    to: NodeId,
    msg: Message,
    timeout: Duration,
    tx: mpsc::UnboundedSender<Event>,
) {
    let ctx = context_with_timeout(timeout);
    let is_commit = matches!(msg, Message::Commit(_));
    match msg {
        Message::Prepare(req) => {
            let batch = req.batch.id;
            let answer = link
                .call(|ch| async move { peer_conn(ch).prepare(ctx, req).await })
                .await;
            let vote = match answer {
                Ok(Ok(vote)) => Ok(vote),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(describe(&e)),
            };
            let _ = tx.send(Event::Vote(to, batch, vote));
        }
        Message::Revoke(req) => {
            let epoch = req.epoch;
            let answer = link
                .call(|ch| async move { peer_conn(ch).revoke(ctx, req).await })
                .await;
            match answer {
                Ok(Ok(())) => {
                    let _ = tx.send(Event::Revoked(to, epoch));
                }
                Ok(Err(e)) => debug!(node = to, error = %e, "revoke refused"),
                Err(e) => debug!(node = to, error = %describe(&e), "revoke not delivered"),
            }
        }
        Message::Probe(req) => {
            let epoch = req.epoch;
            let answer = link
                .call(|ch| async move { peer_conn(ch).probe(ctx, req).await })
                .await;
            match answer {
                Ok(Ok(reply)) => {
                    let _ = tx.send(Event::Probed(to, epoch, reply));
                }
                Ok(Err(e)) => debug!(node = to, error = %e, "probe refused"),
                Err(e) => debug!(node = to, error = %describe(&e), "probe not delivered"),
            }
        }
        Message::Commit(req) | Message::Abort(req) => {
            let batch = req.batch;
            let answer = link
                .call(|ch| async move {
                    let peer = peer_conn(ch);
                    if is_commit {
                        peer.commit(ctx, req).await
                    } else {
                        peer.abort(ctx, req).await
                    }
                })
                .await;
            match answer {
                Ok(Ok(())) => {
                    let _ = tx.send(Event::Acked(to, batch));
                }
                Ok(Err(e)) => {
                    warn!(node = to, %batch, error = %e, "participant refused the decision; will resend")
                }
                Err(e) => {
                    debug!(node = to, %batch, error = %describe(&e), "decision not delivered; will resend")
                }
            }
        }
    }
}

fn describe(e: &LinkError) -> String {
    e.to_string()
}
