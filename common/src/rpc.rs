//! The wire: every tarpc service and the types its methods carry.
//!
//! Four traits, each one audience:
//! - [`Kv`]: what clients call on a participant (get/put/delete/status);
//! - [`Peer`]: what only the coordinator calls on a participant (2PC);
//! - [`Coord`]: what participants call on the coordinator;
//! - [`Admin`]: health, answered by every server.
//!
//! A participant serves `Admin`, `Kv` and `Peer` on its one `--listen` port;
//! the coordinator serves `Admin` and `Coord`. Each port speaks one envelope
//! enum ([`ParticipantRequest`], [`CoordinatorRequest`]) whose variant says
//! which trait a call belongs to, so the traits stay separate in code and a
//! later change can move `Peer` to its own authenticated port (as etcd splits
//! client and peer ports) without touching a method. `Admin` is variant 0 of
//! every envelope: [`AdminOnlyRequest`] encodes identically, which is what
//! lets `quintet health` probe any server without knowing its role.
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
use crate::types::{Batch, BatchId, ClusterId, NodeId, Op, OpResult, ReadLevel, Version};

/// Client-facing service of a participant.
#[tarpc::service]
pub trait Kv {
    /// Reads `key` at the given level.
    async fn get(key: Vec<u8>, level: ReadLevel) -> Result<GetReply, Error>;
    /// Forwards a write to the coordinator and waits for its decision.
    async fn write(op: Op) -> Result<WriteReply, Error>;
    /// This replica's state.
    async fn status() -> Result<ParticipantStatus, Error>;
    /// The coordinator's state, as seen through this replica.
    async fn coordinator_status() -> Result<CoordinatorStatus, Error>;
}

/// 2PC service of a participant; only the coordinator calls it.
#[tarpc::service]
pub trait Peer {
    /// Phase 1: check and durably prepare a batch, then vote.
    async fn prepare(req: PrepareRequest) -> Result<Vote, Error>;
    /// Phase 2: apply a committed batch. Ok only once COMMITTED is durable.
    async fn commit(req: DecisionRequest) -> Result<(), Error>;
    /// Phase 2: drop an aborted batch.
    async fn abort(req: DecisionRequest) -> Result<(), Error>;
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
    /// The coordinator's state.
    async fn status() -> Result<CoordinatorStatus, Error>;
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
    /// one, aborted otherwise (rounds run one at a time).
    pub last_committed: Option<BatchId>,
}

/// A participant's answer to prepare.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Vote {
    /// Durably prepared; these are the results the batch will have.
    Yes(Vec<OpResult>),
    /// Refused, with the reason.
    No(String),
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
    /// The batch in doubt.
    pub batch: BatchId,
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
}

/// A participant introduces itself.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct RegisterRequest {
    /// The participant's `--id`.
    pub id: NodeId,
    /// The cluster it joined before, if any.
    pub cluster: Option<ClusterId>,
    /// Its applied version.
    pub applied: Version,
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

/// Everything a participant's port accepts.
#[derive(Serialize, Deserialize, Debug)]
pub enum ParticipantRequest {
    /// Health probes (variant 0 on every port).
    Admin(AdminRequest),
    /// Client calls.
    Kv(KvRequest),
    /// Coordinator calls.
    Peer(PeerRequest),
}

/// Everything a participant's port answers.
#[derive(Serialize, Deserialize, Debug)]
pub enum ParticipantResponse {
    /// Health answers.
    Admin(AdminResponse),
    /// Client answers.
    Kv(KvResponse),
    /// 2PC answers.
    Peer(PeerResponse),
}

/// Everything the coordinator's port accepts.
#[derive(Serialize, Deserialize, Debug)]
pub enum CoordinatorRequest {
    /// Health probes (variant 0 on every port).
    Admin(AdminRequest),
    /// Participant calls.
    Coord(CoordRequest),
}

/// Everything the coordinator's port answers.
#[derive(Serialize, Deserialize, Debug)]
pub enum CoordinatorResponse {
    /// Health answers.
    Admin(AdminResponse),
    /// Coordinator answers.
    Coord(CoordResponse),
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
    CoordinatorRequest { Admin, Coord }
    AdminOnlyRequest { Admin }
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

/// Serves a participant's three services on one port.
#[derive(Clone)]
pub struct ParticipantServe<A, K, P> {
    /// Health.
    pub admin: ServeAdmin<A>,
    /// Client calls.
    pub kv: ServeKv<K>,
    /// 2PC calls.
    pub peer: ServePeer<P>,
}

impl<A: Admin, K: Kv, P: Peer> Serve for ParticipantServe<A, K, P> {
    type Req = ParticipantRequest;
    type Resp = ParticipantResponse;

    async fn serve(
        self,
        ctx: context::Context,
        req: ParticipantRequest,
    ) -> Result<ParticipantResponse, ServerError> {
        match req {
            ParticipantRequest::Admin(r) => self
                .admin
                .serve(ctx, r)
                .await
                .map(ParticipantResponse::Admin),
            ParticipantRequest::Kv(r) => self.kv.serve(ctx, r).await.map(ParticipantResponse::Kv),
            ParticipantRequest::Peer(r) => {
                self.peer.serve(ctx, r).await.map(ParticipantResponse::Peer)
            }
        }
    }
}

/// Serves the coordinator's two services on one port.
#[derive(Clone)]
pub struct CoordinatorServe<A, C> {
    /// Health.
    pub admin: ServeAdmin<A>,
    /// Participant calls.
    pub coord: ServeCoord<C>,
}

impl<A: Admin, C: Coord> Serve for CoordinatorServe<A, C> {
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
