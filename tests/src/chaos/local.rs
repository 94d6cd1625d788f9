//! The local backend: a [`LocalCluster`] of six processes this runner
//! starts itself on 127.0.0.1, hurt with signals, its data directories and
//! cuttable proxies.
//!
//! - kill: SIGKILL (the process is reaped), healed by starting it again on
//!   the same data dir and port;
//! - pause: SIGSTOP, healed by SIGCONT (its sockets stay open, so peers see
//!   a node that accepts connections and never answers: the nastiest kind
//!   of slow node);
//! - partition-coordinator: the coordinator's `--participants` and each
//!   participant's `--coordinator` name [`LinkProxy`]s, one per link and
//!   direction of connection (coordinator to participant N, participant N
//!   to coordinator); a cut freezes the proxies of the chosen direction(s)
//!   of the chosen participant(s), a heal closes their frozen connections.
//!   Clients, health probes and catch-up (participants advertise their own
//!   addresses) never go through a proxy, so only the coordinator loses
//!   the node;
//! - wipe: SIGKILL a participant, delete its data directory, start it
//!   again empty (a new incarnation, which copies a member and rejoins);
//! - restart-all: SIGTERM to all six (participants first), healed by
//!   starting the coordinator, then the participants;
//! - partition: **not available**. Processes on one host share the loopback
//!   interface, and cutting one off from everything would need root
//!   (network namespaces or iptables). It is not emulated with SIGSTOP
//!   either (that is what pause already does, and calling it a partition
//!   would overstate what was tested): the runner says so at start and
//!   leaves it out of the schedule. The docker backend does real
//!   partitions.
//!
//! Every heal waits until the nodes it brought back answer `health` as
//! ready (a participant: caught up, a member, holding a lease).
//!
//! The server binaries are taken from `--bin-dir`, else from next to the
//! running executable (where cargo puts `quintet-chaos`); a missing binary
//! is a clear error naming the build command. Data and logs live in a
//! temporary directory that is removed after a passing run and kept (its
//! path printed) after a failing one, or in `--dir` if given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quintet_client::local::{LocalCluster, LocalOptions, Node, free_base_port};

use super::backend::{Backend, wait_ready_all};
use super::nemesis::{Cut, Fault, FaultKind, PARTICIPANTS, Rejoin};
use super::proxy::LinkProxy;

/// How long a node may take to answer as ready after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether the local backend can do `kind` (everything but partition).
pub fn supports(kind: FaultKind) -> bool {
    kind != FaultKind::Partition
}

/// The two proxies of one participant's links with the coordinator.
struct Links {
    /// The coordinator dials the participant through this one.
    to_participant: LinkProxy,
    /// The participant dials the coordinator through this one.
    to_coordinator: LinkProxy,
}

/// A local cluster driven by signals.
pub struct LocalBackend {
    cluster: LocalCluster,
    /// Participant N's links at index N - 1.
    links: Vec<Links>,
    temp: Option<tempfile::TempDir>,
}

impl LocalBackend {
    /// Starts a coordinator and five participants; `bin_dir` holds the
    /// server binaries (`None`: next to this executable), `dir` the data
    /// and logs (`None`: a temporary directory).
    pub async fn start(bin_dir: Option<PathBuf>, dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let bin_dir = match bin_dir {
            Some(d) => d,
            None => quintet_client::local::find_bin_dir()?,
        };
        for b in ["quintet-coordinator", "quintet-participant"] {
            if !bin_dir.join(b).is_file() {
                bail!(
                    "{} is missing; build the servers first with `cargo build --bins` \
                     (add --release for a release chaos binary) or pass --bin-dir",
                    bin_dir.join(b).display()
                );
            }
        }
        let (dir, temp) = match dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("quintet-chaos-")
                    .tempdir()
                    .context("cannot create a temporary directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        // The ports first, so the proxies know where to forward.
        let base_port = free_base_port(PARTICIPANTS)?;
        let coordinator = format!("127.0.0.1:{base_port}");
        let mut links = Vec::new();
        for i in 1..=PARTICIPANTS {
            links.push(Links {
                to_participant: LinkProxy::start(format!("127.0.0.1:{}", base_port + i as u16))
                    .await?,
                to_coordinator: LinkProxy::start(coordinator.clone()).await?,
            });
        }
        let opts = LocalOptions {
            dir: Some(dir),
            base_port: Some(base_port),
            participants: PARTICIPANTS,
            bin_dir: Some(bin_dir),
            participant_addrs_for_coordinator: Some(
                links.iter().map(|l| l.to_participant.addr()).collect(),
            ),
            coordinator_addr_for_participants: Some(
                links.iter().map(|l| l.to_coordinator.addr()).collect(),
            ),
            ..LocalOptions::default()
        };
        let cluster = LocalCluster::start(opts, Duration::from_secs(60))
            .await
            .context("starting the local cluster")?;
        Ok(LocalBackend {
            cluster,
            links,
            temp,
        })
    }

    /// The data and log directory.
    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    /// Starts `node` (reaping it first if it died) and waits until it is ready.
    async fn bring_up(&mut self, node: Node) -> anyhow::Result<Rejoin> {
        let since = Instant::now();
        if self.cluster.pid(node).is_none() {
            self.cluster.start_node(node)?;
        }
        self.cluster.wait_ready(node, READY_TIMEOUT).await?;
        Ok(Rejoin {
            node,
            after: since.elapsed(),
        })
    }

    /// Waits until every one of `nodes` is ready, concurrently, timing each from `since`.
    async fn wait_ready(&self, nodes: &[Node], since: Instant) -> anyhow::Result<Vec<Rejoin>> {
        let probes: Vec<(Node, String)> = nodes.iter().map(|&n| (n, self.addr(n))).collect();
        wait_ready_all(&probes, since, READY_TIMEOUT)
            .await
            .with_context(|| format!("node logs in {}", self.logs_hint()))
    }

    fn all_nodes(&self) -> Vec<Node> {
        self.cluster.nodes()
    }

    /// The proxies of participant `node`'s links.
    fn links(&self, node: Node) -> anyhow::Result<&Links> {
        match node {
            Node::Participant(i) => self
                .links
                .get(i as usize - 1)
                .with_context(|| format!("no links for {node}")),
            Node::Coordinator(_) => bail!("a coordinator has no link to itself"),
        }
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    fn unsupported(&self, kind: FaultKind) -> Option<String> {
        (!supports(kind)).then(|| {
            "partition is not available on the local backend (one loopback interface, no root); \
             it is left out of the schedule, use --backend docker for partitions \
             (partition-coordinator works on both)"
                .to_string()
        })
    }

    async fn inject(&mut self, fault: &Fault) -> anyhow::Result<()> {
        match (fault.kind, fault.targets.as_slice()) {
            (FaultKind::Kill, &[node]) => self.cluster.kill(node),
            (FaultKind::Pause, &[node]) => self.cluster.pause(node),
            (FaultKind::PartitionCoordinator, targets) if !targets.is_empty() => {
                let cut = fault.cut.unwrap_or(Cut::Both);
                for &node in targets {
                    let l = self.links(node)?;
                    if cut.to_participant() {
                        l.to_participant.cut();
                    }
                    if cut.to_coordinator() {
                        l.to_coordinator.cut();
                    }
                }
                Ok(())
            }
            (FaultKind::Wipe, &[node @ Node::Participant(_)]) => {
                if self.cluster.pid(node).is_some() {
                    self.cluster.kill(node)?;
                }
                let data = self.cluster.data_dir(node);
                match std::fs::remove_dir_all(&data) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("deleting {}", data.display())),
                }
            }
            (FaultKind::RestartAll, _) => {
                let mut order = self.all_nodes();
                order.reverse(); // participants first, the coordinator last
                for node in order {
                    if self.cluster.pid(node).is_some() {
                        self.cluster.stop(node, STOP_GRACE)?;
                    }
                }
                Ok(())
            }
            _ => bail!("cannot inject {fault} on the local backend"),
        }
    }

    async fn heal(&mut self, fault: &Fault) -> anyhow::Result<Vec<Rejoin>> {
        match (fault.kind, fault.targets.as_slice()) {
            (FaultKind::Kill | FaultKind::Wipe, &[node]) => Ok(vec![self.bring_up(node).await?]),
            (FaultKind::Pause, &[node]) => {
                let since = Instant::now();
                self.cluster.resume(node)?;
                self.wait_ready(&[node], since).await
            }
            (FaultKind::PartitionCoordinator, targets) if !targets.is_empty() => {
                let since = Instant::now();
                for &node in targets {
                    let l = self.links(node)?;
                    l.to_participant.heal();
                    l.to_coordinator.heal();
                }
                self.wait_ready(targets, since).await
            }
            (FaultKind::RestartAll, _) => {
                let since = Instant::now();
                // The coordinator comes first in `nodes()`: participants
                // register with it as they start.
                let coordinator = self.bring_up(Node::Coordinator(1)).await?;
                let participants: Vec<Node> = self
                    .all_nodes()
                    .into_iter()
                    .filter(|n| *n != Node::Coordinator(1))
                    .collect();
                for &node in &participants {
                    if self.cluster.pid(node).is_none() {
                        self.cluster.start_node(node)?;
                    }
                }
                let mut all = vec![coordinator];
                all.extend(self.wait_ready(&participants, since).await?);
                Ok(all)
            }
            _ => bail!("cannot heal {fault} on the local backend"),
        }
    }

    async fn heal_all(&mut self) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        for l in &self.links {
            l.to_participant.heal();
            l.to_coordinator.heal();
        }
        for node in self.all_nodes() {
            if self.cluster.pid(node).is_some() {
                if self.cluster.is_running(node) {
                    // Harmless when it is not stopped.
                    self.cluster.resume(node)?;
                } else {
                    warnings.push(format!(
                        "{node} exited on its own during the run; see {}",
                        self.cluster.log_file(node).display()
                    ));
                    // Reaps the dead child (and reports it as an error we expect).
                    let _ = self
                        .cluster
                        .wait_ready(node, Duration::from_millis(1))
                        .await;
                }
            }
        }
        for node in self.all_nodes() {
            self.bring_up(node)
                .await
                .with_context(|| format!("bringing {node} back"))?;
        }
        // A participant whose process was never down may still be catching
        // up or rejoining; wait for the whole cluster.
        let nodes = self.all_nodes();
        self.wait_ready(&nodes, Instant::now()).await?;
        Ok(warnings)
    }

    fn logs_hint(&self) -> String {
        format!("{}", self.cluster.dir().join("logs").display())
    }

    async fn keep_logs(&mut self, _dir: &Path) -> anyhow::Result<String> {
        if let Some(t) = self.temp.take() {
            // Not removed on drop any more.
            let _ = t.keep();
        }
        Ok(format!(
            "node logs and data kept in {}",
            self.cluster.dir().display()
        ))
    }

    fn addr(&self, node: Node) -> String {
        self.cluster.addr(node)
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        // Stop every process before the temporary directory goes away
        // (LocalCluster's own drop would SIGKILL them anyway); the proxies
        // go after them, with their tasks and sockets.
        self.cluster.shutdown();
    }
}
