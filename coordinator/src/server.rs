//! Start-up and shutdown of the coordinator: identity, log replay, a new
//! durable view (epoch), then serving until told to stop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quintet_common::clock;
use quintet_common::identity::{self, Identity};
use quintet_common::net::{self, Link};
use quintet_common::protocol::coordinator::{self, BatchLimits, Coordinator, Record, Recovered};
use quintet_common::rpc::{Admin, Coord, CoordinatorServe};
use quintet_common::storage::{wal::Wal, writer::LogWriter};
use quintet_common::types::{ClusterId, NodeId};
use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::driver::{Driver, Event, Settings};
use crate::service::Handler;

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    let dir = config.data_dir.clone();
    let (wal, payloads) = Wal::open(&dir, 1 << 20)?;
    let mut records = Vec::with_capacity(payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        let r: Record = bincode::deserialize(p).map_err(|e| {
            anyhow::anyhow!(
                "decision log record {i} in {} cannot be decoded ({e}); the data dir is damaged",
                dir.display()
            )
        })?;
        records.push(r);
    }
    let cluster = match identity::load(&dir)? {
        Some(Identity {
            cluster, node: 0, ..
        }) => cluster,
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
            let cluster = ClusterId(rand::random::<u64>() | 1);
            identity::store(
                &dir,
                Identity {
                    cluster,
                    node: 0,
                    incarnation: 0,
                },
            )?;
            info!(%cluster, "created a new cluster");
            cluster
        }
    };
    let recovered = Recovered::replay(records);
    let ids: Vec<NodeId> = (1..=config.participants.len() as NodeId).collect();
    let cfg = coordinator::Config {
        cluster,
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
    };
    let (sm, actions) = Coordinator::start(cfg, recovered.clone(), clock::now());
    let epoch = sm.epoch();
    let view = sm.view().clone();
    let peers: BTreeMap<NodeId, Arc<_>> = ids
        .iter()
        .zip(&config.participants)
        .map(|(&id, addr)| {
            (
                id,
                Arc::new(Link::new(addr.clone(), Duration::from_secs(2))),
            )
        })
        .collect();
    let listener = net::bind(&config.listen).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let settings = Settings {
        peers,
        prepare_timeout: config.prepare_timeout,
        tick_every: (config.heartbeat / 2).max(Duration::from_millis(10)),
        dir: dir.clone(),
        compact_bytes: config.compact_mib.max(1) << 20,
    };
    let mut driver = Driver::new(sm, LogWriter::spawn(wal), tx.clone(), settings);
    driver.start(actions).await;
    info!(
        %cluster,
        epoch,
        members = ?view.ids().collect::<Vec<_>>(),
        min_participants = config.min_members(),
        committed = recovered.committed,
        unacked = recovered.unacked.len(),
        listen = %config.listen,
        "coordinator ready"
    );
    let driver_task = tokio::spawn(driver.run(rx));
    let ready = Arc::new(AtomicBool::new(true));
    let handler = Handler {
        events: tx.clone(),
        cluster,
        addresses: Arc::new(config.participants.clone()),
        ready: ready.clone(),
    };
    net::serve(listener, shutdown, move |transport| {
        let service = CoordinatorServe {
            admin: <Handler as Admin>::serve(handler.clone()),
            coord: <Handler as Coord>::serve(handler.clone()),
        };
        quintet_common::execute!(transport, service)
    })
    .await;
    ready.store(false, Ordering::Release);
    let _ = tx.send(Event::Stop);
    let _ = driver_task.await;
    Ok(())
}
