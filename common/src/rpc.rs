//! The wire: every tarpc service and the types its methods carry.
//!
//! Four traits, each one audience:
//! - [`Kv`]: what clients call on a participant (get/put/delete/status);
//! - [`Peer`]: what the coordinator calls on a participant (2PC, lease
//!   revocation) and what a catching-up participant calls on its source;
//! - [`Coord`]: what participants call on the coordinator (register, submit,
//!   resolve, lease renewal);
//! - [`CoordPeer`]: what coordinator replicas call on each other (Raft);
//! - [`Admin`]: health, answered by every server.
//!
//! A participant serves `Admin` and `Kv` on its client port (`--listen`)
//! and `Admin` and `Peer` on its peer port (`--peer-listen`), as etcd splits
//! client and peer ports; the coordinator serves `Admin`, `Coord` and
//! `CoordPeer` on its one port. Callers send one envelope enum per server
//! ([`ParticipantRequest`], [`CoordinatorRequest`]) whose variant says which
//! trait a call belongs to. A participant's two ports each decode their own
//! envelope with the same variant numbers ([`ClientPortRequest`],
//! [`PeerPortRequest`]), in which the other port's variant does not exist:
//! a 2PC call sent to the client port (or a client call sent to the peer
//! port) fails to decode and its connection is dropped, so no client can
//! ever reach `prepare` through the client port. `Admin` is variant 0 of
//! every envelope: [`AdminOnlyRequest`] encodes identically, which is what
//! lets `quintet health` probe any port without knowing its role.
//!
//! Methods return `Result<T, Error>`; callers see `Result<Result<T, Error>,
//! RpcError>` and must keep transport failures (outcome may be unknown) apart
//! from domain errors (the server said what happened).

use serde::{Deserialize, Serialize};
use tarpc::client::{Channel, RpcError, stub::Stub};
use tarpc::context;
use tarpc::server::Serve;
use tarpc::{RequestName, ServerError};

use crate::error::Error;
use crate::protocol::view::{Incarnation, View};
use crate::store::Entry;
use crate::types::{Batch, BatchId, ClusterId, NodeId, Op, OpResult, ReadLevel, Version};

/// Client-facing service of a participant.
#[tarpc::service]
pub trait Kv {
    /// Reads `key` at the given level. Every method takes the client's
    /// token (`None` without one), checked when the replica has an auth
    /// file: reads and status need the `read` role, writes `readwrite`.
    async fn get(token: Token, key: Vec<u8>, level: ReadLevel) -> Result<GetReply, Error>;
    /// Forwards a write to the coordinator and waits for its decision.
    async fn write(token: Token, op: Op) -> Result<WriteReply, Error>;
    /// This replica's state.
    async fn status(token: Token) -> Result<ParticipantStatus, Error>;
    /// The coordinator's state, as seen through this replica.
    async fn coordinator_status(token: Token) -> Result<CoordinatorStatus, Error>;
}

/// A client's bearer token, if it has one.
pub type Token = Option<String>;

/// Peer service of a participant: 2PC and leases from the coordinator,
/// catch-up from other participants.
#[tarpc::service]
pub trait Peer {
    /// Phase 1: check and durably prepare a batch, then vote.
    async fn prepare(req: PrepareRequest) -> Result<Vote, Error>;
    /// Phase 2: apply a committed batch. Ok only once COMMITTED is durable.
    async fn commit(req: DecisionRequest) -> Result<(), Error>;
    /// Phase 2: drop an aborted batch.
    async fn abort(req: DecisionRequest) -> Result<(), Error>;
    /// Ends this replica's lease at once; Ok means it serves no more
    /// linearizable reads until granted a new one.
    async fn revoke(req: RevokeRequest) -> Result<(), Error>;
    /// The coordinator asks a learner where it stands before it joins: an
    /// answer proves the coordinator can reach it.
    async fn probe(req: ProbeRequest) -> Result<ProbeReply, Error>;
    /// A learner asks this member how it can catch up: the log after its
    /// applied version, or a pinned snapshot first.
    async fn catchup_begin(req: CatchupRequest) -> Result<CatchupPlan, Error>;
    /// The next entries of a pinned snapshot, in key order.
    async fn catchup_chunk(req: ChunkRequest) -> Result<SnapshotChunk, Error>;
    /// Committed batches after a version, in order.
    async fn catchup_log(req: LogRequest) -> Result<LogChunk, Error>;
}

/// The coordinator's service; participants call it.
#[tarpc::service]
pub trait Coord {
    /// First contact of a participant: checks identities, returns the cluster's.
    async fn register(req: RegisterRequest) -> Result<RegisterReply, Error>;
    /// Queues a write for the next batch and waits for the decision.
    async fn submit(op: Op) -> Result<OpResult, Error>;
    /// The decision for a batch a participant holds prepared.
    async fn resolve(req: ResolveRequest) -> Result<Decision, Error>;
    /// A participant's heartbeat: renews a member's lease, reports a
    /// learner's catch-up, and tells either its role in the current view.
    async fn renew(req: RenewRequest) -> Result<RenewReply, Error>;
    /// The coordinator's state.
    async fn status() -> Result<CoordinatorStatus, Error>;
}

/// Raft between coordinator replicas.
#[tarpc::service]
pub trait CoordPeer {
    /// Raft messages from replica `from` (protobuf-encoded) of the group
    /// that runs `cluster` (0 while the sender does not know it yet); a
    /// replica of another cluster drops them.
    async fn raft(from: u64, cluster: u64, msgs: Vec<Vec<u8>>) -> Result<(), Error>;
    /// The last index of the answering replica's log (0: it holds nothing),
    /// asked by a replica that starts with an empty log, to tell a new
    /// group from a wiped member of a running one.
    async fn survey(from: u64) -> Result<u64, Error>;
    /// Replica `id`, reached at `address`, asks to join the group. The
    /// leader adds it as a learner and answers once that is committed (or
    /// at once if it is a member already); it becomes a voter when it has
    /// caught up. The answer gives every member's id and address.
    async fn join(id: u64, address: String) -> Result<Vec<(u64, String)>, Error>;
}

/// Served by every quintet server.
#[tarpc::service]
pub trait Admin {
    /// Whether the node is up and ready to serve.
    async fn health() -> Result<Health, Error>;
}

/// Answer to a get.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct GetReply {
    /// The value and the version of its last write, if the key exists.
    pub value: Option<(Vec<u8>, Version)>,
    /// The replica's applied version when it answered.
    pub applied: Version,
}

/// Answer to a put or delete.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct WriteReply {
    /// What the write did, with its version.
    pub result: OpResult,
}

/// Phase 1 message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct PrepareRequest {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The participant the message is meant for.
    pub to: NodeId,
    /// The batch to prepare.
    pub batch: Batch,
    /// The last batch the coordinator committed before this one. It decides
    /// any batch the participant still holds prepared: committed if it is this
    /// one, aborted if the new batch reuses its versions.
    pub last_committed: Option<BatchId>,
    /// The view the batch belongs to. A participant that is not a member
    /// prepares it as a learner: its vote does not count.
    pub view: View,
    /// For a learner only: the batch `last_committed` names, so a learner one
    /// batch behind can apply it and keep up without another fetch.
    pub prev: Option<Batch>,
}

/// A participant's answer to prepare.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Vote {
    /// Durably prepared, with the results the batch will have and the state
    /// digest after it; every member must report the same ones.
    Yes {
        /// One result per operation.
        results: Vec<OpResult>,
        /// The replica's digest once the batch is applied.
        digest: u128,
        /// The voter's incarnation: a vote counts only for the incarnation
        /// the view (or the learner record) names.
        incarnation: Incarnation,
    },
    /// Refused because of the batch (a limit, a stale id); nothing is wrong
    /// with the replica.
    No(String),
    /// Refused because of the replica: it is behind, ahead, or catching up,
    /// and cannot vote until it has caught up from a peer.
    OutOfSync(String),
}

/// Phase 2 message (commit or abort).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct DecisionRequest {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The participant the message is meant for.
    pub to: NodeId,
    /// The decided batch.
    pub batch: BatchId,
}

/// A participant asks for the fate of a batch it holds prepared.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ResolveRequest {
    /// The asker's cluster.
    pub cluster: ClusterId,
    /// The asker.
    pub from: NodeId,
    /// The asker's incarnation.
    pub incarnation: Incarnation,
    /// The batch in doubt.
    pub batch: BatchId,
    /// Its first version: an old batch starting beyond the committed
    /// version cannot have committed.
    pub first_version: Version,
}

/// The coordinator's decision for a batch.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Decision {
    /// Apply it.
    Commit,
    /// Drop it.
    Abort,
    /// Not decided yet; ask again.
    Pending,
    /// The coordinator no longer knows the batch and cannot presume it
    /// aborted: it may have been committed without the asker. Catch up from
    /// a member instead.
    Unknown,
}

/// Lease revocation.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct RevokeRequest {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The participant the message is meant for.
    pub to: NodeId,
    /// The incarnation whose lease ends.
    pub incarnation: Incarnation,
    /// The coordinator's epoch.
    pub epoch: u64,
}

/// The coordinator asks a learner where it stands.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ProbeRequest {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The participant the message is meant for.
    pub to: NodeId,
    /// The coordinator's epoch.
    pub epoch: u64,
}

/// Where a learner stands.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ProbeReply {
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its applied version.
    pub applied: Version,
    /// Its digest at `applied`.
    pub digest: u128,
    /// Whether it holds a batch undecided, or is copying.
    pub busy: bool,
}

/// A participant introduces itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct RegisterRequest {
    /// The participant's `--id`.
    pub id: NodeId,
    /// The cluster it joined before, if any.
    pub cluster: Option<ClusterId>,
    /// Its data dir's incarnation.
    pub incarnation: Incarnation,
    /// Its applied version.
    pub applied: Version,
    /// The address other participants reach its peer service on (for
    /// catch-up), or empty to use the coordinator's address for it.
    pub advertise: String,
}

/// How far a learner's catch-up has come.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub struct Progress {
    /// Snapshot bytes received.
    pub bytes_done: u64,
    /// Snapshot bytes in all (0 when only the log is fetched).
    pub bytes_total: u64,
    /// Keys received.
    pub keys_done: u64,
    /// Keys in the snapshot.
    pub keys_total: u64,
    /// Committed batches fetched from the log so far.
    pub batches: u64,
}

/// A participant's catch-up, as it reports it in each heartbeat.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub enum CatchupState {
    /// Not catching up (a member, or a learner waiting for a source).
    #[default]
    Idle,
    /// Fetching from `source`.
    Transferring {
        /// The member it copies.
        source: NodeId,
        /// How far it has come.
        progress: Progress,
    },
    /// Caught up with its source; prepares it as a non-voter until it joins.
    Following,
    /// The last attempt with `source` failed; it wants another source.
    Failed {
        /// The member it could not copy.
        source: NodeId,
    },
}

/// A participant's heartbeat.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct RenewRequest {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The sender.
    pub id: NodeId,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// The highest view epoch it knows.
    pub epoch: u64,
    /// Its applied version.
    pub applied: Version,
    /// Its digest at `applied`.
    pub digest: u128,
    /// The batch it holds prepared, if any.
    pub pending: Option<BatchId>,
    /// Its catch-up.
    pub catchup: CatchupState,
    /// The address other participants reach it on, as in register (so a
    /// restarted coordinator knows it without a new registration).
    pub advertise: String,
}

/// Where a learner copies from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Source {
    /// The member's id.
    pub id: NodeId,
    /// Its peer address.
    pub addr: String,
}

/// What a participant is in the current view.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Role {
    /// A voting member.
    Member,
    /// Not a member: catch up from `source` (none while no member can serve).
    Learner {
        /// The member to copy.
        source: Option<Source>,
    },
}

/// The coordinator's answer to a heartbeat.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct RenewReply {
    /// The current view.
    pub view: View,
    /// The lease granted, `D` in ms; none for a learner or a suspect member.
    pub lease_ms: Option<u64>,
    /// Highest committed version when the lease was granted.
    pub committed: Version,
    /// The sender's role.
    pub role: Role,
}

/// A learner asks a member how to catch up.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct CatchupRequest {
    /// The asker's cluster.
    pub cluster: ClusterId,
    /// The asker.
    pub from: NodeId,
    /// Its applied version.
    pub applied: Version,
    /// Its digest at `applied`.
    pub digest: u128,
}

/// A pinned snapshot a learner may copy.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SnapshotOffer {
    /// Names the transfer in later calls.
    pub transfer: u64,
    /// Version the snapshot holds everything up to.
    pub applied: Version,
    /// Digest at `applied`.
    pub digest: u128,
    /// Last batch it includes.
    pub last_committed: Option<BatchId>,
    /// Highest batch id the source had seen.
    pub highest_seen: Option<BatchId>,
    /// Live keys.
    pub keys: u64,
    /// Approximate bytes of keys and values.
    pub bytes: u64,
    /// xxh3 of every entry in key order, to check the copy.
    pub checksum: u64,
}

/// How a learner catches up.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum CatchupPlan {
    /// The source still holds the log after the learner's applied version
    /// and agrees on its digest there: fetch only the log.
    Log,
    /// Copy this snapshot first, then the log after it.
    Snapshot(SnapshotOffer),
}

/// The next piece of a snapshot.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ChunkRequest {
    /// The asker's cluster.
    pub cluster: ClusterId,
    /// The transfer.
    pub transfer: u64,
    /// Entries come after this key (none: from the first).
    pub after: Option<Vec<u8>>,
    /// Most bytes in the answer.
    pub max_bytes: u64,
}

/// Entries of a snapshot.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SnapshotChunk {
    /// The next entries in key order.
    pub entries: Vec<(Vec<u8>, Entry)>,
    /// True when these are the last ones.
    pub last: bool,
}

/// Committed batches after a version.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct LogRequest {
    /// The asker's cluster.
    pub cluster: ClusterId,
    /// The transfer whose pin keeps the log, if the learner copied a snapshot.
    pub transfer: Option<u64>,
    /// The learner's applied version.
    pub after: Version,
    /// Most bytes in the answer.
    pub max_bytes: u64,
}

/// A committed batch and the digest after it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct LearnedBatch {
    /// The batch.
    pub batch: Batch,
    /// The source's digest once it was applied.
    pub digest: u128,
}

/// The next committed batches.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct LogChunk {
    /// In version order, starting right after the asked version.
    pub batches: Vec<LearnedBatch>,
    /// The source's applied version when it answered.
    pub source_applied: Version,
    /// The source's digest at `source_applied`.
    pub source_digest: u128,
}

/// The coordinator's answer to register.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct RegisterReply {
    /// The cluster id to record.
    pub cluster: ClusterId,
    /// The coordinator's epoch.
    pub epoch: u64,
    /// Highest committed version.
    pub committed: Version,
}

/// A participant's catch-up, for status.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct CatchupStatus {
    /// The member it copies.
    pub source: NodeId,
    /// `snapshot` or `log`.
    pub phase: String,
    /// How far it has come.
    pub progress: Progress,
}

/// What `status` reports for a participant.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ParticipantStatus {
    /// Its id.
    pub id: NodeId,
    /// Its cluster, once registered.
    pub cluster: Option<ClusterId>,
    /// Last applied version.
    pub applied: Version,
    /// State digest at `applied`, hex.
    pub digest: String,
    /// Batches prepared and not yet decided.
    pub pending: Vec<BatchId>,
    /// Number of live keys.
    pub keys: u64,
    /// Whether it can prove it is current (serves linearizable reads).
    pub current: bool,
    /// Its data dir's incarnation.
    pub incarnation: Incarnation,
    /// The highest view epoch it knows.
    pub epoch: u64,
    /// Whether it is a member of that view.
    pub member: bool,
    /// Milliseconds left on its lease (none when it holds none).
    pub lease_ms: Option<u64>,
    /// Its catch-up, while it runs.
    pub catchup: Option<CatchupStatus>,
}

/// A member as the coordinator sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct MemberStatus {
    /// Participant id.
    pub id: NodeId,
    /// Incarnation recorded in the view.
    pub incarnation: Incarnation,
    /// How long the coordinator must still count its lease as live (ms).
    pub lease_ms: u64,
    /// Why it is suspect, if it is.
    pub suspect: Option<String>,
}

/// A learner as the coordinator sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct LearnerStatus {
    /// Participant id.
    pub id: NodeId,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its applied version, as last reported.
    pub applied: Version,
    /// Its catch-up, as last reported.
    pub catchup: CatchupState,
}

/// What `status` reports for the coordinator.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct CoordinatorStatus {
    /// Its cluster id.
    pub cluster: ClusterId,
    /// Current epoch.
    pub epoch: u64,
    /// Highest committed version.
    pub committed: Version,
    /// Writes waiting for the next batch.
    pub queued: u64,
    /// Round in flight, if any.
    pub in_flight: Option<BatchId>,
    /// The current view.
    pub view: View,
    /// Fewest members writes go on with (`--min-participants`).
    pub min_participants: u32,
    /// The members, in id order.
    pub members: Vec<MemberStatus>,
    /// The learners it knows of.
    pub learners: Vec<LearnerStatus>,
    /// Every coordinator replica, as the leader sees it.
    pub replicas: Vec<ReplicaStatus>,
}

/// A coordinator replica, as the leader sees it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ReplicaStatus {
    /// Its id (position in `--coordinators`).
    pub id: u32,
    /// Its address.
    pub address: String,
    /// Whether the leader heard from it within the last election timeout.
    pub reachable: bool,
    /// `leader` or `follower`.
    pub role: String,
    /// The leader's Raft term.
    pub term: u64,
    /// Highest log index known applied there (for a follower: replicated).
    pub applied: u64,
}

/// Answer to a health probe.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Health {
    /// "coordinator" or "participant".
    pub role: String,
    /// Participant id (0 for the coordinator).
    pub id: NodeId,
    /// True when the node serves requests.
    pub ready: bool,
    /// Why it is not ready, if it is not.
    pub detail: String,
}

/// What callers send a participant: client calls to its client port, 2PC
/// and catch-up calls to its peer port. Each port decodes only its own
/// variants ([`ClientPortRequest`], [`PeerPortRequest`]).
#[derive(Serialize, Deserialize, Debug)]
pub enum ParticipantRequest {
    /// Health probes (variant 0 on every port).
    Admin(AdminRequest),
    /// Client calls (client port only).
    Kv(KvRequest),
    /// Coordinator and catch-up calls (peer port only).
    Peer(PeerRequest),
}

/// What a participant's ports answer.
#[derive(Serialize, Deserialize, Debug)]
pub enum ParticipantResponse {
    /// Health answers.
    Admin(AdminResponse),
    /// Client answers.
    Kv(KvResponse),
    /// 2PC answers.
    Peer(PeerResponse),
}

/// A variant a port does not serve: it has no value, so a request that
/// names it fails to decode and the connection is dropped unread.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub enum NotServed {}

/// What a participant's client port (`--listen`) decodes: variants 0 and 1
/// of [`ParticipantRequest`]. Variant 2 (`Peer`) does not exist here.
#[derive(Serialize, Deserialize, Debug)]
pub enum ClientPortRequest {
    /// Health probes.
    Admin(AdminRequest),
    /// Client calls.
    Kv(KvRequest),
}

/// What a participant's client port answers (decodes as [`ParticipantResponse`]).
#[derive(Serialize, Deserialize, Debug)]
pub enum ClientPortResponse {
    /// Health answers.
    Admin(AdminResponse),
    /// Client answers.
    Kv(KvResponse),
}

/// What a participant's peer port (`--peer-listen`) decodes: variants 0
/// and 2 of [`ParticipantRequest`]; variant 1 (`Kv`) cannot be decoded.
#[derive(Serialize, Deserialize, Debug)]
pub enum PeerPortRequest {
    /// Health probes.
    Admin(AdminRequest),
    /// The client port's variant, never served here.
    Kv(NotServed),
    /// Coordinator and catch-up calls.
    Peer(PeerRequest),
}

/// What a participant's peer port answers (decodes as [`ParticipantResponse`]).
#[derive(Serialize, Deserialize, Debug)]
pub enum PeerPortResponse {
    /// Health answers.
    Admin(AdminResponse),
    /// Never sent.
    Kv(NotServed),
    /// 2PC and catch-up answers.
    Peer(PeerResponse),
}

/// Everything the coordinator's port accepts.
#[derive(Serialize, Deserialize, Debug)]
pub enum CoordinatorRequest {
    /// Health probes (variant 0 on every port).
    Admin(AdminRequest),
    /// Participant calls.
    Coord(CoordRequest),
    /// Raft from other coordinator replicas.
    Raft(CoordPeerRequest),
}

/// Everything the coordinator's port answers.
#[derive(Serialize, Deserialize, Debug)]
pub enum CoordinatorResponse {
    /// Health answers.
    Admin(AdminResponse),
    /// Coordinator answers.
    Coord(CoordResponse),
    /// Raft answers.
    Raft(CoordPeerResponse),
}

/// The envelope a role-agnostic health probe sends; encodes like variant 0
/// of every server's envelope.
#[derive(Serialize, Deserialize, Debug)]
pub enum AdminOnlyRequest {
    /// Health probe.
    Admin(AdminRequest),
}

/// What a health probe decodes.
#[derive(Serialize, Deserialize, Debug)]
pub enum AdminOnlyResponse {
    /// Health answer.
    Admin(AdminResponse),
}

macro_rules! request_name {
    ($($t:ident { $($v:ident),* })*) => {$(
        impl RequestName for $t {
            fn name(&self) -> &str {
                match self { $($t::$v(r) => r.name(),)* }
            }
        }
    )*};
}
request_name! {
    ParticipantRequest { Admin, Kv, Peer }
    ClientPortRequest { Admin, Kv }
    CoordinatorRequest { Admin, Coord, Raft }
    AdminOnlyRequest { Admin }
}

impl RequestName for PeerPortRequest {
    fn name(&self) -> &str {
        match self {
            PeerPortRequest::Admin(r) => r.name(),
            PeerPortRequest::Kv(never) => match *never {},
            PeerPortRequest::Peer(r) => r.name(),
        }
    }
}

/// A client stub for one service carried inside an envelope channel.
pub struct Lane<OReq, OResp, Req, Resp> {
    channel: Channel<OReq, OResp>,
    wrap: fn(Req) -> OReq,
    unwrap: fn(OResp) -> Option<Resp>,
}

impl<OReq, OResp, Req, Resp> Clone for Lane<OReq, OResp, Req, Resp> {
    fn clone(&self) -> Self {
        Lane {
            channel: self.channel.clone(),
            wrap: self.wrap,
            unwrap: self.unwrap,
        }
    }
}

impl<OReq: RequestName, OResp, Req: RequestName, Resp> Stub for Lane<OReq, OResp, Req, Resp> {
    type Req = Req;
    type Resp = Resp;

    async fn call(&self, ctx: context::Context, request: Req) -> Result<Resp, RpcError> {
        let resp = self.channel.call(ctx, (self.wrap)(request)).await?;
        (self.unwrap)(resp).ok_or_else(|| {
            RpcError::Server(ServerError::new(
                std::io::ErrorKind::InvalidData,
                "the server answered for another service".into(),
            ))
        })
    }
}

/// Channel to a participant.
pub type ParticipantChannel = Channel<ParticipantRequest, ParticipantResponse>;
/// Channel to the coordinator.
pub type CoordinatorChannel = Channel<CoordinatorRequest, CoordinatorResponse>;

/// Client of a participant's client service.
pub type KvConn = KvClient<Lane<ParticipantRequest, ParticipantResponse, KvRequest, KvResponse>>;
/// Client of a participant's 2PC service.
pub type PeerConn =
    PeerClient<Lane<ParticipantRequest, ParticipantResponse, PeerRequest, PeerResponse>>;
/// Client of the coordinator's service.
pub type CoordConn =
    CoordClient<Lane<CoordinatorRequest, CoordinatorResponse, CoordRequest, CoordResponse>>;
/// Client of another coordinator replica's Raft service.
pub type CoordPeerConn = CoordPeerClient<
    Lane<CoordinatorRequest, CoordinatorResponse, CoordPeerRequest, CoordPeerResponse>,
>;
/// Client of the admin service on any server.
pub type AdminConn =
    AdminClient<Lane<AdminOnlyRequest, AdminOnlyResponse, AdminRequest, AdminResponse>>;

/// The client service of a participant channel.
pub fn kv_conn(channel: ParticipantChannel) -> KvConn {
    KvClient::from(Lane {
        channel,
        wrap: ParticipantRequest::Kv,
        unwrap: |r| match r {
            ParticipantResponse::Kv(r) => Some(r),
            _ => None,
        },
    })
}

/// The 2PC service of a participant channel.
pub fn peer_conn(channel: ParticipantChannel) -> PeerConn {
    PeerClient::from(Lane {
        channel,
        wrap: ParticipantRequest::Peer,
        unwrap: |r| match r {
            ParticipantResponse::Peer(r) => Some(r),
            _ => None,
        },
    })
}

/// The coordinator service of a coordinator channel.
pub fn coord_conn(channel: CoordinatorChannel) -> CoordConn {
    CoordClient::from(Lane {
        channel,
        wrap: CoordinatorRequest::Coord,
        unwrap: |r| match r {
            CoordinatorResponse::Coord(r) => Some(r),
            _ => None,
        },
    })
}

/// The Raft service of a coordinator channel.
pub fn coord_peer_conn(channel: CoordinatorChannel) -> CoordPeerConn {
    CoordPeerClient::from(Lane {
        channel,
        wrap: CoordinatorRequest::Raft,
        unwrap: |r| match r {
            CoordinatorResponse::Raft(r) => Some(r),
            _ => None,
        },
    })
}

/// The admin service of any server's channel.
pub fn admin_conn(channel: Channel<AdminOnlyRequest, AdminOnlyResponse>) -> AdminConn {
    AdminClient::from(Lane {
        channel,
        wrap: AdminOnlyRequest::Admin,
        unwrap: |r| match r {
            AdminOnlyResponse::Admin(r) => Some(r),
        },
    })
}

/// Serves a participant's client port: health and client calls.
#[derive(Clone)]
pub struct ClientPortServe<A, K> {
    /// Health.
    pub admin: ServeAdmin<A>,
    /// Client calls.
    pub kv: ServeKv<K>,
}

impl<A: Admin, K: Kv> Serve for ClientPortServe<A, K> {
    type Req = ClientPortRequest;
    type Resp = ClientPortResponse;

    async fn serve(
        self,
        ctx: context::Context,
        req: ClientPortRequest,
    ) -> Result<ClientPortResponse, ServerError> {
        match req {
            ClientPortRequest::Admin(r) => self
                .admin
                .serve(ctx, r)
                .await
                .map(ClientPortResponse::Admin),
            ClientPortRequest::Kv(r) => self.kv.serve(ctx, r).await.map(ClientPortResponse::Kv),
        }
    }
}

/// Serves a participant's peer port: health, 2PC and catch-up.
#[derive(Clone)]
pub struct PeerPortServe<A, P> {
    /// Health.
    pub admin: ServeAdmin<A>,
    /// 2PC and catch-up calls.
    pub peer: ServePeer<P>,
}

impl<A: Admin, P: Peer> Serve for PeerPortServe<A, P> {
    type Req = PeerPortRequest;
    type Resp = PeerPortResponse;

    async fn serve(
        self,
        ctx: context::Context,
        req: PeerPortRequest,
    ) -> Result<PeerPortResponse, ServerError> {
        match req {
            PeerPortRequest::Admin(r) => {
                self.admin.serve(ctx, r).await.map(PeerPortResponse::Admin)
            }
            PeerPortRequest::Kv(never) => match never {},
            PeerPortRequest::Peer(r) => self.peer.serve(ctx, r).await.map(PeerPortResponse::Peer),
        }
    }
}

/// Serves the coordinator's three services on one port.
#[derive(Clone)]
pub struct CoordinatorServe<A, C, R> {
    /// Health.
    pub admin: ServeAdmin<A>,
    /// Participant calls.
    pub coord: ServeCoord<C>,
    /// Raft from other replicas.
    pub raft: ServeCoordPeer<R>,
}

impl<A: Admin, C: Coord, R: CoordPeer> Serve for CoordinatorServe<A, C, R> {
    type Req = CoordinatorRequest;
    type Resp = CoordinatorResponse;

    async fn serve(
        self,
        ctx: context::Context,
        req: CoordinatorRequest,
    ) -> Result<CoordinatorResponse, ServerError> {
        match req {
            CoordinatorRequest::Admin(r) => self
                .admin
                .serve(ctx, r)
                .await
                .map(CoordinatorResponse::Admin),
            CoordinatorRequest::Coord(r) => self
                .coord
                .serve(ctx, r)
                .await
                .map(CoordinatorResponse::Coord),
            CoordinatorRequest::Raft(r) => {
                self.raft.serve(ctx, r).await.map(CoordinatorResponse::Raft)
            }
        }
    }
}

/// One-line description of a transport failure for logs and CLI errors.
pub fn describe_rpc_error(e: &RpcError) -> String {
    match e {
        RpcError::DeadlineExceeded => "timed out waiting for the answer".into(),
        RpcError::Shutdown => "the connection is closed".into(),
        RpcError::Send(e) => format!("could not send the request: {e}"),
        RpcError::Channel(e) => format!("the connection failed: {e}"),
        RpcError::Server(e) => format!("the server aborted the request: {}", e.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_participant_port_decodes_only_its_own_calls() {
        let peer = ParticipantRequest::Peer(PeerRequest::Abort {
            req: DecisionRequest {
                cluster: ClusterId(7),
                to: 1,
                batch: BatchId { epoch: 1, seq: 1 },
            },
        });
        let kv = ParticipantRequest::Kv(KvRequest::Status { token: None });
        let health = ParticipantRequest::Admin(AdminRequest::Health {});
        let (peer, kv, health) = (
            bincode::serialize(&peer).unwrap(),
            bincode::serialize(&kv).unwrap(),
            bincode::serialize(&health).unwrap(),
        );
        assert!(bincode::deserialize::<ClientPortRequest>(&peer).is_err());
        assert!(bincode::deserialize::<ClientPortRequest>(&kv).is_ok());
        assert!(bincode::deserialize::<PeerPortRequest>(&kv).is_err());
        assert!(matches!(
            bincode::deserialize::<PeerPortRequest>(&peer),
            Ok(PeerPortRequest::Peer(PeerRequest::Abort { .. }))
        ));
        assert!(bincode::deserialize::<ClientPortRequest>(&health).is_ok());
        assert!(bincode::deserialize::<PeerPortRequest>(&health).is_ok());
        // What the ports answer decodes as the callers' envelope.
        let answer = PeerPortResponse::Peer(PeerResponse::Abort(Ok(())));
        let decoded: ParticipantResponse =
            bincode::deserialize(&bincode::serialize(&answer).unwrap()).unwrap();
        assert!(matches!(decoded, ParticipantResponse::Peer(_)));
    }

    #[test]
    fn admin_probe_encodes_like_every_envelope() {
        let probe = bincode::serialize(&AdminOnlyRequest::Admin(AdminRequest::Health {})).unwrap();
        let p = bincode::serialize(&ParticipantRequest::Admin(AdminRequest::Health {})).unwrap();
        let c = bincode::serialize(&CoordinatorRequest::Admin(AdminRequest::Health {})).unwrap();
        assert_eq!(probe, p);
        assert_eq!(probe, c);
        let health = Health {
            role: "participant".into(),
            id: 3,
            ready: true,
            detail: String::new(),
        };
        let answer = bincode::serialize(&ParticipantResponse::Admin(AdminResponse::Health(Ok(
            health.clone(),
        ))))
        .unwrap();
        let decoded: AdminOnlyResponse = bincode::deserialize(&answer).unwrap();
        let AdminOnlyResponse::Admin(AdminResponse::Health(Ok(h))) = decoded else {
            panic!("wrong decode")
        };
        assert_eq!(h, health);
    }
}
