//! Start-up and shutdown of a coordinator replica: identity, the Raft log
//! replayed from the WAL, then serving (as leader or follower) until told
//! to stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quintet_common::identity::{self, Identity};
use quintet_common::net::{self, Link};
use quintet_common::protocol::coordinator::{self, BatchLimits};
use quintet_common::rpc::{
    Admin, Coord, CoordPeer, CoordinatorRequest, CoordinatorResponse, CoordinatorServe,
    coord_peer_conn,
};
use quintet_common::storage::{wal::Wal, writer::LogWriter};
use quintet_common::tls::{self, Caller, NodeTls};
use quintet_common::types::{ClusterId, NodeId};
use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::driver::{Driver, Event, Settings};
use crate::replica::node::{Replica, ReplicaState, Timing};
use crate::replica::store::{BOOTSTRAP_INDEX, RaftRecord, RaftStore};
use crate::service::Handler;

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    // Bad TLS files stop the start, with what to fix.
    let node_tls = NodeTls::from_flags(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        config.tls_ca.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(t) = &node_tls {
        t.require_own_name(tls::COORDINATOR)
            .and_then(|()| t.require_own_name(&tls::coordinator_replica_name(config.id as u64)))
            .map_err(anyhow::Error::msg)?;
    }
    let dir = config.data_dir.clone();
    let replicas = config.replicas();
    let (wal, payloads) = Wal::open(&dir, net::MAX_FRAME)?;
    let mut records = Vec::with_capacity(payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        let r: RaftRecord = bincode::deserialize(p).map_err(|e| {
            anyhow::anyhow!(
                "decision log record {i} in {} cannot be decoded ({e}); the data dir is damaged, or was written by a quintet from before replication: start from an empty data dir",
                dir.display()
            )
        })?;
        records.push(r);
    }
    // A lone coordinator keeps its cluster id in IDENTITY; replicas keep it
    // in the replicated log (IDENTITY then says cluster 0).
    let lone = replicas.len() == 1 && config.join.is_empty();
    let identity_cluster = match identity::load(&dir)? {
        Some(Identity {
            node: 0, cluster, ..
        }) => (cluster.0 != 0).then_some(cluster),
        Some(other) => anyhow::bail!(
            "data dir {} belongs to participant {}, not to a coordinator; pass another --data-dir",
            dir.display(),
            other.node
        ),
        None if !records.is_empty() => anyhow::bail!(
            "data dir {} has a decision log but no IDENTITY file; the data dir is damaged",
            dir.display()
        ),
        None => {
            let cluster = if lone {
                ClusterId(rand::random::<u64>() | 1)
            } else {
                ClusterId(0)
            };
            identity::store(
                &dir,
                Identity {
                    cluster,
                    node: 0,
                    incarnation: 0,
                },
            )?;
            (cluster.0 != 0).then_some(cluster)
        }
    };
    // A founding member's log starts from a snapshot of the members and
    // their addresses, written before anything else; a joining one's from
    // nothing (the leader's snapshot brings them).
    let mut join = Vec::new();
    let mut founded = None;
    let store = if !records.is_empty() {
        RaftStore::replay(RaftStore::new(), records).map_err(|e| {
            anyhow::anyhow!(
                "the decision log in {} is inconsistent: {e}; the data dir is damaged",
                dir.display()
            )
        })?
    } else if config.join.is_empty() || (config.id == 1 && !group_exists(&config, &node_tls).await)
    {
        let mut coordinators: BTreeMap<u64, String> = BTreeMap::new();
        if config.join.is_empty() {
            coordinators.extend(
                replicas
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (i as u64 + 1, a.clone())),
            );
        }
        coordinators.insert(config.id as u64, config.advertise());
        let voters = coordinators.keys().copied().collect();
        let state = ReplicaState {
            coordinators,
            ..ReplicaState::default()
        };
        let store = RaftStore::bootstrap(voters, state.encode());
        founded = Some(vec![
            RaftRecord::snapshot(store.latest_snapshot()),
            RaftRecord::hard_state(store.hard_state()),
        ]);
        store
    } else {
        join = config.join.clone();
        RaftStore::new()
    };
    let election_ticks = config.election_ticks();
    let timing = Timing {
        election_ticks,
        heartbeat_ticks: 1,
        max_election_ticks: 0,
    };
    let replica = Replica::new(config.id as u64, store, timing).map_err(anyhow::Error::msg)?;
    let tick_every = config.tick();
    // A new leader cannot know when its predecessor last granted a lease.
    // That one grants only while a majority answered it within the last
    // election timeout (by its own clock), and a follower stands for
    // election only an election timeout after it last heard a leader; so
    // the predecessor's last grant came at most about a round trip after
    // the newcomer's election began. The newcomer waits two election
    // timeouts, on top of D', before dropping anyone (docs/protocol.md).
    let takeover_wait = tick_every * (2 * election_ticks as u32);
    let ids: Vec<NodeId> = (1..=config.participants.len() as NodeId).collect();
    let sm_config = coordinator::Config {
        cluster: ClusterId(0),
        participants: ids.clone(),
        limits: BatchLimits {
            max_ops: config.max_batch_ops,
            ..BatchLimits::default()
        },
        lease: config.lease,
        heartbeat: config.heartbeat,
        min_members: config.min_members(),
        queue_timeout: config.prepare_timeout * 4,
        resend_every: Duration::from_secs(1),
        takeover_wait: Duration::ZERO,
    };
    let peers: BTreeMap<NodeId, Arc<_>> = ids
        .iter()
        .zip(&config.participants)
        .map(|(&id, addr)| {
            // The participant must prove it is participant `id`.
            let dial = tls::dial(&node_tls, &tls::participant_name(id));
            (
                id,
                Arc::new(Link::with_dial(addr.clone(), Duration::from_secs(2), dial)),
            )
        })
        .collect();
    let listener = net::bind(&config.listen).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let settings = Settings {
        id: config.id,
        advertise: config.advertise(),
        join,
        dial: if config.join.is_empty() {
            replicas
                .iter()
                .enumerate()
                .map(|(i, a)| (i as u64 + 1, a.clone()))
                .collect()
        } else {
            BTreeMap::new()
        },
        peers,
        config: sm_config,
        identity_cluster,
        prepare_timeout: config.prepare_timeout,
        tick_every,
        dir: dir.clone(),
        compact_bytes: config.compact_mib.max(1) << 20,
        compact_entries: config.compact_entries.max(1),
        takeover_wait,
        lease_guard: tick_every * election_ticks as u32,
        min_free_bytes: config.min_free_mib << 20,
        tls: node_tls.clone(),
    };
    info!(
        id = config.id,
        coordinators = ?replica.coordinators(),
        applied = replica.applied(),
        committed = replica.state().committed,
        listen = %config.listen,
        tls = node_tls.is_some(),
        min_participants = config.min_members(),
        "coordinator replica starting"
    );
    let mut log = LogWriter::spawn(wal);
    if let Some(bootstrap) = founded {
        for r in &bootstrap {
            log.append(crate::driver::encode(r));
        }
        log.wait_durable(log.last_lsn()).await?;
    }
    let driver = Driver::new(replica, log, tx.clone(), settings);
    let driver_task = tokio::spawn(driver.run(rx));
    let handler = Handler {
        events: tx.clone(),
        id: config.id,
        addresses: Arc::new(config.participants.clone()),
        caller: Caller::Unverified,
    };
    let server_tls = node_tls.as_ref().map(|t| t.peer_server());
    net::serve(listener, server_tls, shutdown, move |transport, caller| {
        let handler = Handler {
            caller,
            ..handler.clone()
        };
        let service = CoordinatorServe {
            admin: <Handler as Admin>::serve(handler.clone()),
            coord: <Handler as Coord>::serve(handler.clone()),
            raft: <Handler as CoordPeer>::serve(handler),
        };
        quintet_common::execute!(transport, service)
    })
    .await;
    let _ = tx.send(Event::Stop);
    let _ = driver_task.await;
    Ok(())
}

/// Whether any of the `--join` replicas holds a log (asked once, each with
/// a bound): replica 1 with an empty log founds a new group only when none
/// does, and otherwise joins (it was wiped).
async fn group_exists(config: &Config, node_tls: &Option<Arc<NodeTls>>) -> bool {
    let asks = config.join.iter().map(|addr| async move {
        let link: Link<CoordinatorRequest, CoordinatorResponse> = Link::with_dial(
            addr.trim(),
            Duration::from_millis(500),
            tls::dial(node_tls, tls::COORDINATOR),
        );
        let ctx = net::context_with_timeout(Duration::from_secs(1));
        let id = config.id as u64;
        let answer = link
            .call(|ch| async move { coord_peer_conn(ch).survey(ctx, id).await })
            .await;
        match answer {
            Ok(Ok(index)) => {
                info!(%addr, index, "asked a --join replica for its log");
                index > BOOTSTRAP_INDEX
            }
            Ok(Err(e)) => {
                info!(%addr, error = %e, "a --join replica did not say");
                false
            }
            Err(e) => {
                info!(%addr, error = %e, "a --join replica is not reachable");
                false
            }
        }
    });
    let exists = futures::future::join_all(asks).await.into_iter().any(|b| b);
    if exists {
        info!("a --join replica holds a log: joining its group");
    } else {
        info!("no --join replica holds a log: founding a new coordinator group");
    }
    exists
}
