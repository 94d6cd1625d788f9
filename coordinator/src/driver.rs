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
use std::sync::atomic::{AtomicU64, Ordering};
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
use quintet_common::tls::{self, NodeTls};
use quintet_common::types::{BatchId, ClusterId, NodeId, Op, OpResult, Version};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::replica::node::{Applied, Io, Replica, RoleChange};
use crate::replica::store::{BOOTSTRAP_INDEX, RaftRecord};

/// A waiting client's reply handle.
pub type Reply = oneshot::Sender<Result<OpResult, Error>>;

/// Link to one participant.
pub type PeerLink = Link<ParticipantRequest, ParticipantResponse>;

/// Link to another coordinator replica.
pub type ReplicaLink = Link<CoordinatorRequest, CoordinatorResponse>;

/// Most queued inputs handled before a tick, so a flood cannot starve it.
const MAX_BEFORE_TICK: usize = 4096;

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
    /// Raft messages from another replica (its id and cluster).
    Raft(u64, u64, Vec<raft::eraftpb::Message>),
    /// Raft messages to this replica could not be delivered.
    Unreachable(u64),
    /// Replica `from`, whose log is empty, asks for this one's last index.
    Survey(u64, oneshot::Sender<u64>),
    /// This replica, started with an empty log, heard enough from the
    /// others to know whether the group is new.
    Surveyed(Survey),
    /// A replica asks to be added to the group.
    Join(u64, String, oneshot::Sender<JoinAnswer>),
    /// The group's leader added this replica; these are the members.
    Joined(Vec<(u64, String)>),
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

/// A leader's answer to a joining replica: every member's id and address.
pub type JoinAnswer = Result<Vec<(u64, String)>, Error>;

/// What the driver needs besides the replica and its log.
pub struct Settings {
    /// This replica's id.
    pub id: u32,
    /// The address the other replicas reach this one at.
    pub advertise: String,
    /// Replicas of a running group to ask to be added to, when the log is
    /// empty (`--join`); empty for a founding member.
    pub join: Vec<String>,
    /// Addresses given on the command line (`--coordinators`), by id: this
    /// replica dials these rather than the ones recorded in the log (which
    /// are the founding or joining replica's own view).
    pub dial: BTreeMap<u64, String>,
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
    /// Compact after this many entries.
    pub compact_entries: usize,
    /// How long a new leader of a group of several voters waits before
    /// dropping a member (see `coordinator::Config::takeover_wait`).
    pub takeover_wait: Duration,
    /// A leader grants leases only while a quorum answered it within this
    /// (the election timeout).
    pub lease_guard: Duration,
    /// New writes are refused while the data dir's file system has less
    /// free than this.
    pub min_free_bytes: u64,
    /// TLS towards the other replicas, if on (participant links come
    /// ready-made in `peers`).
    pub tls: Option<Arc<NodeTls>>,
}

/// The queue of encoded Raft messages to one peer's sender task.
type RaftOut = mpsc::UnboundedSender<Vec<Vec<u8>>>;

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
    /// Per other member: the address its sender dials, and the sender.
    raft_out: BTreeMap<u64, (String, RaftOut)>,
    applied: Watermark,
    generation: u64,
    stopping: bool,
    surveying: bool,
    /// Members as a join answer gave them (see [`Driver::sync_peers`]).
    bootstrap_peers: BTreeMap<u64, String>,
    /// The cluster id this group runs, for the Raft senders (0: unknown).
    cluster_tag: Arc<AtomicU64>,
    /// When Raft messages of another cluster were last reported.
    last_foreign: Option<Instant>,
    /// The free space kept on the data dir's file system.
    space: quintet_common::storage::space::Reserve,
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
        let (applied, _) = watch::channel((0, replica.applied()));
        let space = quintet_common::storage::space::Reserve::new(&s.dir, s.min_free_bytes);
        let mut driver = Driver {
            cluster: replica.state().cluster.or(s.identity_cluster),
            s,
            replica,
            sm: None,
            log,
            tx,
            raft_out: BTreeMap::new(),
            applied,
            generation: 0,
            stopping: false,
            surveying: false,
            bootstrap_peers: BTreeMap::new(),
            cluster_tag: Arc::new(AtomicU64::new(0)),
            last_foreign: None,
            space,
        };
        driver.sync_peers();
        driver
    }

    /// Keeps one sender task per other member, at its current address.
    fn sync_peers(&mut self) {
        let me = self.s.id as u64;
        // Until its snapshot arrives, a joining replica knows the members
        // from the leader's answer only.
        let mut members = self.bootstrap_peers.clone();
        members.extend(self.replica.coordinators().clone());
        for (id, addr) in members.iter_mut() {
            if let Some(given) = self.s.dial.get(id) {
                addr.clone_from(given);
            }
        }
        self.raft_out
            .retain(|id, (addr, _)| members.get(id).is_some_and(|a| a == addr));
        for (&to, addr) in &members {
            if to == me || self.raft_out.contains_key(&to) {
                continue;
            }
            let (out, rx) = mpsc::unbounded_channel();
            let link = Arc::new(ReplicaLink::with_dial(
                addr.clone(),
                Duration::from_millis(500),
                tls::dial(&self.s.tls, &tls::coordinator_replica_name(to)),
            ));
            tokio::spawn(raft_sender(
                me,
                to,
                self.cluster_tag.clone(),
                link,
                rx,
                self.tx.clone(),
            ));
            self.raft_out.insert(to, (addr.clone(), out));
        }
    }

    /// The cluster id this group runs, once known (0 before).
    fn known_cluster(&self) -> u64 {
        let c = self
            .replica
            .state()
            .cluster
            .or(self.cluster)
            .map_or(0, |c| c.0);
        self.cluster_tag.store(c, Ordering::Relaxed);
        c
    }

    /// The address of member `id`, if known.
    fn address_of(&self, id: u64) -> Option<&str> {
        self.replica
            .coordinators()
            .get(&id)
            .or_else(|| self.bootstrap_peers.get(&id))
            .map(|a| a.as_str())
    }

    /// Runs until [`Event::Stop`] and the round in flight is over.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        if self.replica.is_empty() && !self.s.join.is_empty() {
            self.begin_join();
        } else if self.replica.is_empty() && self.replica.voters().len() > 1 {
            self.begin_survey();
        }
        self.drive().await;
        // Only now, with every committed membership change applied, does
        // this replica know whether it is alone.
        self.replica.campaign_if_alone();
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
                    let now = clock::now();
                    self.replica.tick();
                    self.replica.confirm(now);
                    self.maybe_promote();
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
            .replica
            .coordinators()
            .iter()
            .filter(|(id, _)| **id != self.s.id as u64)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        tokio::spawn(survey(
            self.s.id as u64,
            peers,
            self.s.tls.clone(),
            self.tx.clone(),
        ));
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

    /// Asks a running group (`--join`) to add this empty replica; it copies
    /// the log as a learner and votes once promoted and caught up.
    fn begin_join(&mut self) {
        info!(
            id = self.s.id,
            join = ?self.s.join,
            advertise = %self.s.advertise,
            "the decision log is empty; asking the running coordinator replicas to add this one"
        );
        self.replica.withhold_votes(true);
        tokio::spawn(join(
            self.s.id as u64,
            self.s.join.clone(),
            self.s.advertise.clone(),
            tls::dial(&self.s.tls, tls::COORDINATOR),
            self.tx.clone(),
        ));
    }

    /// A replica asks to join (on the leader): adds it as a learner, and
    /// answers once that is applied.
    fn join(&mut self, id: u64, address: String, reply: oneshot::Sender<JoinAnswer>) {
        if self.sm.is_none() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if id == self.s.id as u64 {
            let _ = reply.send(Err(Error::ClusterMismatch(format!(
                "coordinator id {id} is this replica (the leader at {}); give the joining replica another --id",
                self.s.advertise
            ))));
            return;
        }
        let mut members: Vec<(u64, String)> = self
            .replica
            .coordinators()
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        if let Some(known) = self.address_of(id) {
            let answer = if known == address {
                // A member asks to join only with an empty log (wiped).
                self.replica.peer_emptied(id);
                Ok(members)
            } else {
                Err(Error::ClusterMismatch(format!(
                    "coordinator id {id} is already the replica at {known}; give the one at {address} another --id"
                )))
            };
            let _ = reply.send(answer);
            return;
        }
        if self.replica.changing_members() {
            let _ = reply.send(Err(Error::Unavailable(
                "another coordinator membership change is in progress; retry shortly".into(),
            )));
            return;
        }
        match self.replica.propose_member(id, &address, false) {
            Ok(index) => {
                info!(replica = id, %address, index, "adding coordinator replica as a learner");
                let applied = self.wait_applied(index);
                let not_leader = self.not_leader();
                members.push((id, address));
                tokio::spawn(async move {
                    let answer = if applied.await {
                        Ok(members)
                    } else {
                        Err(not_leader)
                    };
                    let _ = reply.send(answer);
                });
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Unavailable(e)));
            }
        }
    }

    /// Promotes learners that have caught up (on the leader, one at a time).
    fn maybe_promote(&mut self) {
        if self.sm.is_none() {
            return;
        }
        let Some(id) = self.replica.learners_caught_up().into_iter().next() else {
            return;
        };
        let address = self.address_of(id).unwrap_or_default().to_string();
        match self.replica.propose_member(id, &address, true) {
            Ok(index) => info!(
                replica = id,
                %address,
                index,
                "coordinator replica caught up; making it a voter"
            ),
            Err(e) => warn!(replica = id, error = %e, "cannot promote the coordinator replica yet"),
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
        let addr = self.address_of(leader).unwrap_or_default().to_string();
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
            Event::Raft(from, cluster, msgs) => {
                let mine = self.known_cluster();
                if cluster != 0 && mine != 0 && cluster != mine {
                    if self
                        .last_foreign
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                    {
                        self.last_foreign = Some(Instant::now());
                        warn!(
                            from,
                            theirs = %ClusterId(cluster),
                            ours = %ClusterId(mine),
                            "dropping Raft messages from a coordinator replica of another cluster; check --coordinators/--join and the data dirs"
                        );
                    }
                    return;
                }
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
            Event::Join(id, address, reply) => {
                self.join(id, address, reply);
                Vec::new()
            }
            Event::Joined(members) => {
                self.bootstrap_peers = members.into_iter().collect();
                self.sync_peers();
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
            Event::Submit(_, reply) if self.sm.is_some() && self.disk_short().is_some() => {
                let why = self.disk_short().unwrap_or_default();
                let _ = reply.send(Err(Error::Unavailable(format!(
                    "the coordinator's {why}; nothing was applied"
                ))));
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
                        let (mut answer, actions) = sm.renew(&req, now);
                        // The machine counts the renewal (and, to be safe,
                        // a grant); the lease itself goes out only while a
                        // quorum confirms this leader.
                        if let Ok(r) = answer.as_mut()
                            && !self.replica.leadership_confirmed(now, self.s.lease_guard)
                            && r.lease_ms.take().is_some()
                        {
                            debug!(
                                node = req.id,
                                "no quorum answered this leader lately; renewal answered without a lease"
                            );
                        }
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

    /// Why writes must be refused for lack of disk space (checked at most
    /// every `space::RECHECK`); says so when it starts and when it ends.
    fn disk_short(&self) -> Option<String> {
        use quintet_common::storage::space::Change;
        let (why, change) = self.space.check();
        match (&why, change) {
            (Some(w), Some(Change::Short)) => {
                warn!(why = %w, "refusing new writes until disk space is freed")
            }
            (_, Some(Change::Recovered)) => {
                info!("disk space is back above the reserve; taking writes again")
            }
            _ => {}
        }
        why
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
        let learners = self.replica.learners();
        self.replica
            .coordinators()
            .iter()
            .map(|(&id, addr)| {
                let me = id == self.s.id as u64;
                let p = progress.iter().find(|p| p.id == id);
                let role = if me {
                    "leader"
                } else if learners.contains(&id) {
                    "learner"
                } else {
                    "follower"
                };
                ReplicaStatus {
                    id: id as u32,
                    address: addr.clone(),
                    reachable: me || p.is_some_and(|p| p.active),
                    role: role.into(),
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
                members_changed,
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
            if members_changed || io.members_changed {
                self.sync_peers();
            }
            self.known_cluster();
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
            if let Some((_, out)) = self.raft_out.get(&to) {
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
        // A lone voter has no predecessor that could still be granting.
        let takeover_wait = if self.replica.voters().len() > 1 {
            self.s.takeover_wait
        } else {
            Duration::ZERO
        };
        let cfg = coordinator::Config {
            cluster,
            takeover_wait,
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
        let limit = if by_bytes { 0 } else { self.s.compact_entries };
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
async fn survey(
    me: u64,
    peers: Vec<(u64, String)>,
    node_tls: Option<Arc<NodeTls>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let links: Vec<(u64, Arc<ReplicaLink>)> = peers
        .into_iter()
        .map(|(id, a)| {
            let dial = tls::dial(&node_tls, &tls::coordinator_replica_name(id));
            let link = ReplicaLink::with_dial(a, Duration::from_millis(500), dial);
            (id, Arc::new(link))
        })
        .collect();
    let group = links.len() + 1;
    let needed = group / 2;
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
        if let Some(outcome) = survey_outcome(&answers, group) {
            let _ = events.send(Event::Surveyed(outcome));
            return;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            warn!(
                heard = answers.iter().filter(|(_, a)| a.is_some()).count(),
                needed,
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

/// Asks the replicas at `addrs` (following redirects to their leader) to
/// add this one, until the leader says it is a member. A refusal that
/// retrying cannot fix (the id is taken) stops the process.
async fn join(
    me: u64,
    addrs: Vec<String>,
    advertise: String,
    dial: quintet_common::net::Dial,
    events: mpsc::UnboundedSender<Event>,
) {
    let links =
        quintet_common::net::LeaderLinks::<CoordinatorRequest, CoordinatorResponse>::with_dial(
            &addrs,
            Duration::from_millis(500),
            dial,
        );
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let answer = links
            .call(|ch| {
                let advertise = advertise.clone();
                async move {
                    coord_peer_conn(ch)
                        .join(context_with_timeout(Duration::from_secs(5)), me, advertise)
                        .await
                }
            })
            .await;
        let why = match answer {
            Ok(Ok(members)) => {
                info!(
                    id = me,
                    leader = %links.current_addr(),
                    ?members,
                    "the coordinator group's leader counts this replica in; copying its log"
                );
                let _ = events.send(Event::Joined(members));
                return;
            }
            Ok(Err(e @ (Error::ClusterMismatch(_) | Error::InvalidArgument(_)))) => {
                error!(error = %e, "the coordinator group refused this replica");
                std::process::exit(2);
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            warn!(
                join = ?addrs,
                waited_s = started.elapsed().as_secs(),
                error = %why,
                "cannot join the coordinator group yet; retrying"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What one survey round's answers (each other replica's last index, or
/// none) say, for a group of `group` replicas: someone holds entries past
/// the bootstrap snapshot ([`Survey::Rejoin`]), or a majority counting
/// this replica hold none ([`Survey::New`]), or not enough is known yet.
fn survey_outcome(answers: &[(u64, Option<u64>)], group: usize) -> Option<Survey> {
    if let Some((from, index)) = answers
        .iter()
        .filter_map(|(id, a)| a.filter(|&i| i > BOOTSTRAP_INDEX).map(|i| (*id, i)))
        .max_by_key(|&(_, i)| i)
    {
        return Some(Survey::Rejoin { from, index });
    }
    let empty = answers
        .iter()
        .filter(|(_, a)| a.is_some_and(|i| i <= BOOTSTRAP_INDEX))
        .count()
        + 1;
    (empty > group / 2).then_some(Survey::New)
}

/// Sends Raft batches to one peer in order, one call at a time, folding
/// batches queued meanwhile into the next call.
async fn raft_sender(
    from: u64,
    to: u64,
    cluster: Arc<AtomicU64>,
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
        let tag = cluster.load(Ordering::Relaxed);
        let sent = link
            .call(|ch| async move { coord_peer_conn(ch).raft(ctx, from, tag, msgs).await })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_survey_tells_a_new_group_from_a_wiped_member() {
        // Fresh founding members hold only the bootstrap snapshot.
        let fresh = [(2, Some(BOOTSTRAP_INDEX)), (3, None)];
        assert_eq!(survey_outcome(&fresh, 3), Some(Survey::New));
        // One answer is not a majority of five.
        let few = [(2, Some(BOOTSTRAP_INDEX)), (3, None), (4, None), (5, None)];
        assert_eq!(survey_outcome(&few, 5), None);
        // Anyone past the bootstrap snapshot means this replica was wiped.
        let wiped = [
            (2, Some(BOOTSTRAP_INDEX)),
            (3, Some(40)),
            (4, Some(38)),
            (5, None),
        ];
        assert_eq!(
            survey_outcome(&wiped, 5),
            Some(Survey::Rejoin { from: 3, index: 40 })
        );
        assert_eq!(survey_outcome(&[(2, None), (3, None)], 3), None);
    }
}
