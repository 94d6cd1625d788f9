//! Start-up and shutdown of a participant: open and replay the data dir,
//! register with the coordinator, renew the lease every heartbeat (which
//! also starts a catch-up when the coordinator says this is a learner),
//! serve until told to stop, flush.
//!
//! Two ports: the client port (`--listen`) serves `Admin` and `Kv`, the
//! peer port (`--peer-listen`) `Admin` and `Peer` (2PC and leases from the
//! coordinator, catch-up from learners: replica-to-replica traffic). Both
//! are bound before registering, so the coordinator can reach the peer
//! port as soon as it knows this replica.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use quintet_common::auth::Tokens;
use quintet_common::identity::{self, Identity};
use quintet_common::net::{self, LeaderLinks};
use quintet_common::protocol::participant::{Participant, Record, Snapshot};
use quintet_common::rpc::{Admin, ClientPortServe, Kv, Peer, PeerPortServe};
use quintet_common::storage::{snapshot, wal::Wal, writer::LogWriter};
use quintet_common::tls::{self, Caller, NodeTls};
use quintet_common::types::Limits;
use tracing::{info, warn};

use crate::config::Config;
use crate::node::{Node, Settings};
use crate::service::{Auth, Handler};

/// Largest WAL record: a full batch plus headroom.
const MAX_RECORD: usize = net::MAX_FRAME;

/// Connect timeout towards coordinator replicas. Short: a coordinator
/// host that died without refusing connections (a container gone from an
/// overlay network) must not hold up renewals for long, or the new leader
/// drops members that were only waiting on the old one.
const COORDINATOR_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Rebuilds the replica's state from its data dir.
pub fn open_state(
    dir: &Path,
    id: u32,
    limits: Limits,
) -> anyhow::Result<(Participant, LogWriter, Option<Identity>)> {
    let ident = identity::load(dir)?;
    if let Some(ident) = ident
        && ident.node != id
    {
        anyhow::bail!(
            "data dir {} belongs to participant {}, not {id}; pass --id {} or another --data-dir",
            dir.display(),
            ident.node,
            ident.node
        );
    }
    let snap = snapshot::load_latest(dir)?;
    let (first_segment, snapshot) = match snap {
        Some((seq, payload)) => {
            let s: Snapshot = bincode::deserialize(&payload).map_err(|e| {
                anyhow::anyhow!(
                    "snapshot {seq} in {} cannot be decoded ({e}); the data dir is damaged",
                    dir.display()
                )
            })?;
            (seq, Some(s))
        }
        None => (0, None),
    };
    let (wal, payloads) = Wal::open_from(dir, MAX_RECORD, first_segment)?;
    let mut records = Vec::with_capacity(payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        let r: Record = bincode::deserialize(p).map_err(|e| {
            anyhow::anyhow!(
                "log record {i} in {} cannot be decoded ({e}); the data dir is damaged",
                dir.display()
            )
        })?;
        records.push(r);
    }
    let count = records.len();
    // A data dir without an identity is new: it gets a new incarnation, so
    // the coordinator never takes it for the replica it replaces.
    let incarnation = match ident {
        Some(i) => i.incarnation,
        None => rand::random::<u64>() | 1,
    };
    let sm = Participant::restore(id, incarnation, limits, snapshot, records).map_err(|e| {
        anyhow::anyhow!(
            "the log in {} is inconsistent: {e}; the data dir is damaged",
            dir.display()
        )
    })?;
    info!(
        node = id,
        incarnation = %format!("{incarnation:016x}"),
        applied = sm.store().applied(),
        records = count,
        pending = ?sm.pending().map(|p| p.batch.id),
        "recovered from {}",
        dir.display()
    );
    Ok((sm, LogWriter::spawn(wal), ident))
}

/// Runs a participant until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    // Bad TLS files stop the start, with what to fix.
    let tls = NodeTls::from_flags(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        config.tls_ca.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(t) = &tls {
        t.require_own_name(&tls::participant_name(config.id))
            .map_err(anyhow::Error::msg)?;
    }
    // A bad auth file stops the start, before anything is opened.
    let auth: Auth = Arc::new(std::sync::RwLock::new(match &config.auth_file {
        Some(path) => {
            let tokens = Tokens::load(path).map_err(anyhow::Error::msg)?;
            info!(file = %path.display(), tokens = tokens.entries().len(), "client tokens loaded");
            Some(Arc::new(tokens))
        }
        None => None,
    }));
    let dir = config.data_dir();
    let limits = Limits {
        max_value_len: config.max_value_size,
    };
    let (mut sm, log, ident) = open_state(&dir, config.id, limits)?;
    let window = (config.catchup_log_mib << 20) as usize;
    sm.set_window(window, window.saturating_mul(16));
    if let Some(i) = ident {
        // Register under the recorded cluster so the coordinator checks it too.
        sm.registered(i.cluster, 0);
    }
    let listener = net::bind(&config.listen_addr()).await?;
    let peer_listener = net::bind(&config.peer_listen_addr())
        .await
        .map_err(|e| anyhow::anyhow!("{e} (the peer port: --peer-listen)"))?;
    let link = LeaderLinks::with_dial(
        &config.coordinator,
        COORDINATOR_CONNECT_TIMEOUT,
        tls::dial(&tls, tls::COORDINATOR),
    );
    let settings = Settings {
        id: config.id,
        limits,
        read_timeout: config.read_timeout,
        heartbeat: config.heartbeat,
        advertise: config.advertise_addr(),
        data_dir: dir.clone(),
        snapshot_bytes: config.snapshot_mib.max(1) << 20,
        min_free_bytes: config.min_free_mib << 20,
        tls: tls.clone(),
    };
    let node = Node::new(settings, sm, log, link);
    let reply = node
        .register(config.startup_timeout, config.advertise_addr())
        .await?;
    match ident {
        Some(i) if i.cluster != reply.cluster => anyhow::bail!(
            "data dir {} belongs to cluster {}, but the coordinator at {} runs cluster {}; point --coordinator at the right cluster",
            dir.display(),
            i.cluster,
            config.coordinator.join(","),
            reply.cluster
        ),
        Some(_) => {}
        None => identity::store(
            &dir,
            Identity {
                cluster: reply.cluster,
                node: config.id,
                incarnation: node.lock().sm.incarnation(),
            },
        )
        .context("cannot record the cluster id")?,
    }
    node.set_registered(true);
    info!(
        node = config.id,
        listen = %config.listen_addr(),
        peer_listen = %config.peer_listen_addr(),
        tls = tls.is_some(),
        cluster = %reply.cluster,
        epoch = reply.epoch,
        committed = reply.committed,
        "participant ready"
    );
    let resolver = tokio::spawn(node.clone().resolve_loop(Duration::from_millis(500)));
    let heartbeat = tokio::spawn(node.clone().heartbeat_loop());
    let reload = config
        .auth_file
        .clone()
        .map(|path| tokio::spawn(reload_on_sighup(path, auth.clone())));
    let handler = Handler(node.clone(), auth, Caller::Unverified);
    let (stop_peer, peer_stopped) = tokio::sync::oneshot::channel::<()>();
    let peer_handler = handler.clone();
    let peers = tokio::spawn(net::serve(
        peer_listener,
        tls.as_ref().map(|t| t.peer_server()),
        async move {
            let _ = peer_stopped.await;
        },
        move |transport, caller| {
            let h = Handler(peer_handler.0.clone(), peer_handler.1.clone(), caller);
            let service = PeerPortServe {
                admin: <Handler as Admin>::serve(h.clone()),
                peer: <Handler as Peer>::serve(h),
            };
            quintet_common::execute!(transport, service)
        },
    ));
    let client_tls = tls.as_ref().map(|t| t.client_server());
    net::serve(listener, client_tls, shutdown, move |transport, _caller| {
        // A client certificate, if presented, was checked against the CA;
        // what a client may do is up to its token.
        let service = ClientPortServe {
            admin: <Handler as Admin>::serve(handler.clone()),
            kv: <Handler as Kv>::serve(handler.clone()),
        };
        quintet_common::execute!(transport, service)
    })
    .await;
    let _ = stop_peer.send(());
    let _ = peers.await;
    node.set_registered(false);
    resolver.abort();
    heartbeat.abort();
    if let Some(r) = reload {
        r.abort();
    }
    node.flush().await;
    info!(node = config.id, "participant stopped");
    Ok(())
}

/// Reloads the auth file on every SIGHUP; a file that does not parse
/// leaves the tokens as they were, and says why.
async fn reload_on_sighup(path: std::path::PathBuf, auth: Auth) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; the auth file is not reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match Tokens::load(&path) {
            Ok(tokens) => {
                info!(file = %path.display(), tokens = tokens.entries().len(), "client tokens reloaded");
                match auth.write() {
                    Ok(mut g) => *g = Some(Arc::new(tokens)),
                    Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(tokens)),
                }
            }
            Err(e) => {
                warn!(error = %e, "auth file not reloaded; the previous tokens stay in force")
            }
        }
    }
}
