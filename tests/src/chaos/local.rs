//! The local backend: a [`LocalCluster`] of processes this runner starts
//! itself on 127.0.0.1 (one or more coordinator replicas, `--coordinators`,
//! and five participants), hurt with signals, its data directories and
//! cuttable proxies.
//!
//! - kill: SIGKILL (the process is reaped), healed by starting it again on
//!   the same data dir and port;
//! - pause: SIGSTOP, healed by SIGCONT (its sockets stay open, so peers see
//!   a node that accepts connections and never answers: the nastiest kind
//!   of slow node);
//! - partition-coordinator: every link between two servers goes through a
//!   [`LinkProxy`], one per link and direction of connection: coordinator
//!   replica C's `--participants` names one proxy per participant,
//!   participant N's `--coordinator` one per replica, and replica C's
//!   `--coordinators` one per other replica (its own entry stays its real
//!   listen address). A cut freezes the proxies of the chosen direction(s)
//!   between the chosen participant(s) and every coordinator replica; a
//!   heal closes their frozen connections. Clients, health probes and
//!   catch-up (participants advertise their own addresses) never go
//!   through a proxy, so only the coordinator loses the node;
//! - wipe: SIGKILL a participant, delete its data directory, start it
//!   again empty (a new incarnation, which copies a member and rejoins);
//! - restart-all: SIGTERM to every node (participants first), healed by
//!   starting the coordinator replicas, then the participants;
//! - kill-coordinator-leader (three or more replicas): SIGKILL the replica
//!   that leads, healed by starting it again (it rejoins as a follower);
//! - partition-coordinator-leader (three or more): cut every proxy of the
//!   leading replica's links, to and from the other replicas (Raft) and to
//!   and from every participant, while it keeps running; healed by
//!   reconnecting them all;
//! - isolate-coordinator-leader (three or more): cut only the proxies of
//!   the leading replica's links to and from the other replicas, so the
//!   participants still reach it and it still hears their renewals (a
//!   deposed leader that kept granting leases would show here); healed by
//!   reconnecting them;
//! - wipe-coordinator (three or more): SIGKILL a replica (the leader or a
//!   follower), delete its data directory, start it again empty: it must
//!   rejoin from the leader's log or a snapshot with no operator step.
//!   Its heal waits until it answers ready and the leader reports its log
//!   caught up to where the leader's was when it turned ready; that is its
//!   rejoin time;
//! - partition: **not available**. Processes on one host share the loopback
//!   interface, and cutting one off from everything would need root
//!   (network namespaces or iptables). It is not emulated with SIGSTOP
//!   either (that is what pause already does, and calling it a partition
//!   would overstate what was tested): the runner says so at start and
//!   leaves it out of the schedule. The docker backend does real
//!   partitions.
//!
//! A leader's "not the leader" answer names the leader by the address in
//! the answering replica's own `--coordinators`, a proxy the participants
//! do not know; they then try their next replica instead of the named one
//! (a hop or two more than with real addresses, never a wrong answer).
//!
//! Every heal waits until the nodes it brought back answer `health` as
//! ready (a participant: caught up, a member, holding a lease; a
//! coordinator replica: the leader serving, or a follower that knows a
//! leader).
//!
//! The server binaries are taken from `--bin-dir`, else from next to the
//! running executable (where cargo puts `quintet-chaos`); a missing binary
//! is a clear error naming the build command. Data and logs live in a
//! temporary directory that is removed after a passing run and kept (its
//! path printed) after a failing one, or in `--dir` if given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quintet_client::Client;
use quintet_client::client::health;
use quintet_client::local::{LocalCluster, LocalOptions, Node, PEER_PORT_OFFSET, free_base_port};

use super::backend::{Backend, wait_log_caught_up, wait_ready_all};
use super::nemesis::{Cut, Fault, FaultKind, PARTICIPANTS, Rejoin};
use super::proxy::LinkProxy;

/// How long a node may take to answer as ready after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether the local backend can do `kind` with `coordinators` coordinator
/// replicas: everything but partition, the coordinator-replica kinds with
/// three or more.
pub fn supports(kind: FaultKind, coordinators: u32) -> bool {
    why_not(kind, coordinators).is_none()
}

/// Why the local backend cannot do `kind` with `coordinators` replicas.
pub fn why_not(kind: FaultKind, coordinators: u32) -> Option<String> {
    if kind == FaultKind::Partition {
        return Some(
            "partition is not available on the local backend (one loopback interface, no root); \
             it is left out of the schedule, use --backend docker for partitions \
             (partition-coordinator works on both)"
                .to_string(),
        );
    }
    (coordinators < kind.min_coordinators()).then(|| {
        format!(
            "{kind} needs at least {} coordinator replicas (so a majority is left without \
             the one it hits) and this run has {coordinators}; it is left out of the \
             schedule, pass --coordinators 3 or 5 to run it",
            kind.min_coordinators()
        )
    })
}

/// Where coordinator replica `i` listens, for a cluster on `base_port`
/// (as [`LocalCluster::addr`] lays them out: base + 10 (i - 1)).
fn replica_addr(base_port: u16, i: u32) -> String {
    format!("127.0.0.1:{}", base_port + 10 * (i as u16 - 1))
}

/// The ports the servers of a cluster on `base_port` listen on: the
/// coordinator replicas', the participants' client and peer ports.
fn cluster_ports(base_port: u16, coordinators: u32) -> Vec<u16> {
    let replicas = (1..=coordinators).map(|i| base_port + 10 * (i as u16 - 1));
    let participants =
        (1..=PARTICIPANTS as u16).flat_map(|n| [base_port + n, base_port + PEER_PORT_OFFSET + n]);
    replicas.chain(participants).collect()
}

/// Every link between two servers of the cluster, each through its own
/// cuttable proxy, one per direction of connection.
struct Proxies {
    /// Coordinator replica C dials participant N through `[(C, N)]`.
    to_participant: BTreeMap<(u32, u32), LinkProxy>,
    /// Participant N dials coordinator replica C through `[(N, C)]`.
    to_coordinator: BTreeMap<(u32, u32), LinkProxy>,
    /// Coordinator replica A dials replica B (A != B) through `[(A, B)]`.
    raft: BTreeMap<(u32, u32), LinkProxy>,
}

impl Proxies {
    /// Proxies for `coordinators` replicas and the participants of a
    /// cluster on `base_port`.
    async fn start(base_port: u16, coordinators: u32) -> anyhow::Result<Proxies> {
        // The coordinator dials participants at their peer ports.
        let participant = |n: u32| quintet_client::local::peer_addr(base_port, n);
        let mut p = Proxies {
            to_participant: BTreeMap::new(),
            to_coordinator: BTreeMap::new(),
            raft: BTreeMap::new(),
        };
        for c in 1..=coordinators {
            for n in 1..=PARTICIPANTS {
                p.to_participant
                    .insert((c, n), LinkProxy::start(participant(n)).await?);
                p.to_coordinator
                    .insert((n, c), LinkProxy::start(replica_addr(base_port, c)).await?);
            }
            for other in (1..=coordinators).filter(|&o| o != c) {
                p.raft.insert(
                    (c, other),
                    LinkProxy::start(replica_addr(base_port, other)).await?,
                );
            }
        }
        Ok(p)
    }

    /// The ports the proxies listen on.
    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.to_participant
            .values()
            .chain(self.to_coordinator.values())
            .chain(self.raft.values())
            .filter_map(|l| l.addr().rsplit_once(':')?.1.parse().ok())
    }

    /// Each replica's `--participants`, replica 1 first.
    fn participants_by_replica(&self, coordinators: u32) -> Vec<Vec<String>> {
        (1..=coordinators)
            .map(|c| {
                (1..=PARTICIPANTS)
                    .filter_map(|n| self.to_participant.get(&(c, n)).map(LinkProxy::addr))
                    .collect()
            })
            .collect()
    }

    /// Each participant's `--coordinator` list, participant 1 first.
    fn coordinators_by_participant(&self, coordinators: u32) -> Vec<String> {
        (1..=PARTICIPANTS)
            .map(|n| {
                (1..=coordinators)
                    .filter_map(|c| self.to_coordinator.get(&(n, c)).map(LinkProxy::addr))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    /// Each replica's `--coordinators`, replica 1 first; its own entry is
    /// empty here (the cluster puts its listen address there).
    fn peers_by_replica(&self, coordinators: u32) -> Vec<Vec<String>> {
        (1..=coordinators)
            .map(|c| {
                (1..=coordinators)
                    .map(|o| {
                        self.raft
                            .get(&(c, o))
                            .map(LinkProxy::addr)
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
    }

    /// Cuts participant `n` off every coordinator replica, in the directions of `cut`.
    fn cut_participant(&self, n: u32, cut: Cut) {
        for (&(_, p), proxy) in &self.to_participant {
            if p == n && cut.to_participant() {
                proxy.cut();
            }
        }
        for (&(p, _), proxy) in &self.to_coordinator {
            if p == n && cut.to_coordinator() {
                proxy.cut();
            }
        }
    }

    /// Heals every link of participant `n`.
    fn heal_participant(&self, n: u32) {
        self.links_of_participant(n).for_each(LinkProxy::heal);
    }

    fn links_of_participant(&self, n: u32) -> impl Iterator<Item = &LinkProxy> {
        let to = self
            .to_participant
            .iter()
            .filter(move |((_, p), _)| *p == n);
        let from = self
            .to_coordinator
            .iter()
            .filter(move |((p, _), _)| *p == n);
        to.chain(from).map(|(_, l)| l)
    }

    /// Every link of coordinator replica `c`: to and from the other
    /// replicas, to and from every participant.
    fn links_of_replica(&self, c: u32) -> impl Iterator<Item = &LinkProxy> {
        let raft = self
            .raft
            .iter()
            .filter(move |((a, b), _)| *a == c || *b == c);
        let to = self
            .to_participant
            .iter()
            .filter(move |((r, _), _)| *r == c);
        let from = self
            .to_coordinator
            .iter()
            .filter(move |((_, r), _)| *r == c);
        raft.chain(to).chain(from).map(|(_, l)| l)
    }

    /// Cuts replica `c` off everything (but clients and health probes).
    fn isolate_replica(&self, c: u32) {
        self.links_of_replica(c).for_each(LinkProxy::cut);
    }

    /// The links between replica `c` and the other replicas (Raft), both
    /// directions of connection.
    fn raft_links_of_replica(&self, c: u32) -> impl Iterator<Item = &LinkProxy> {
        self.raft
            .iter()
            .filter(move |((a, b), _)| *a == c || *b == c)
            .map(|(_, l)| l)
    }

    /// Cuts replica `c` off the other replicas only.
    fn isolate_from_replicas(&self, c: u32) {
        self.raft_links_of_replica(c).for_each(LinkProxy::cut);
    }

    /// Heals every link of replica `c`.
    fn reconnect_replica(&self, c: u32) {
        self.links_of_replica(c).for_each(LinkProxy::heal);
    }

    /// The proxies that forward to `node` (their upstream is its port).
    fn in_front_of(&self, node: Node) -> Vec<&LinkProxy> {
        match node {
            Node::Participant(n) => self
                .to_participant
                .iter()
                .filter(|((_, p), _)| *p == n)
                .map(|(_, l)| l)
                .collect(),
            Node::Coordinator(c) => {
                let from_participants = self.to_coordinator.iter().filter(|((_, r), _)| *r == c);
                let from_replicas = self.raft.iter().filter(|((_, b), _)| *b == c);
                from_participants
                    .chain(from_replicas)
                    .map(|(_, l)| l)
                    .collect()
            }
        }
    }

    /// `node` is going down: the proxies in front of it refuse connections.
    async fn refuse(&self, node: Node) -> anyhow::Result<()> {
        for l in self.in_front_of(node) {
            l.refuse().await?;
        }
        Ok(())
    }

    /// `node` listens again: so do the proxies in front of it.
    async fn accept(&self, node: Node) -> anyhow::Result<()> {
        for l in self.in_front_of(node) {
            l.accept().await?;
        }
        Ok(())
    }

    /// Heals every link.
    fn heal_all(&self) {
        self.to_participant
            .values()
            .chain(self.to_coordinator.values())
            .chain(self.raft.values())
            .for_each(LinkProxy::heal);
    }
}

/// A local cluster driven by signals.
pub struct LocalBackend {
    cluster: LocalCluster,
    proxies: Proxies,
    coordinators: u32,
    /// For the leader's status (a wiped replica's catch-up), with short timeouts.
    status: Client,
    temp: Option<tempfile::TempDir>,
}

impl LocalBackend {
    /// Starts `coordinators` coordinator replicas and five participants;
    /// `bin_dir` holds the server binaries (`None`: next to this
    /// executable), `dir` the data and logs (`None`: a temporary directory).
    pub async fn start(
        bin_dir: Option<PathBuf>,
        dir: Option<PathBuf>,
        coordinators: u32,
    ) -> anyhow::Result<Self> {
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
        if !(1..=7).contains(&coordinators) {
            bail!("--coordinators must be 1 to 7 (3 or 5 to lose one or two), got {coordinators}");
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
        // The ports first, so the proxies know where to forward. A proxy
        // listens on a port the system picks, which may be one the cluster
        // is about to use: then the whole lot is picked again.
        let mut tries = 0;
        let (base_port, proxies) = loop {
            let base_port = free_base_port(PARTICIPANTS.max(10 * (coordinators - 1)))?;
            let proxies = Proxies::start(base_port, coordinators).await?;
            let taken = cluster_ports(base_port, coordinators);
            let clash = proxies.ports().find(|p| taken.contains(p));
            match clash {
                None => break (base_port, proxies),
                Some(p) if tries >= 20 => {
                    bail!("a link proxy keeps getting port {p}, one of the cluster's own")
                }
                Some(_) => tries += 1,
            }
        };
        let opts = LocalOptions {
            dir: Some(dir),
            base_port: Some(base_port),
            participants: PARTICIPANTS,
            coordinators,
            bin_dir: Some(bin_dir),
            participant_addrs_by_coordinator: Some(proxies.participants_by_replica(coordinators)),
            coordinator_addr_for_participants: Some(
                proxies.coordinators_by_participant(coordinators),
            ),
            peer_addrs_by_coordinator: (coordinators > 1)
                .then(|| proxies.peers_by_replica(coordinators)),
            ..LocalOptions::default()
        };
        let cluster = match LocalCluster::start(opts, Duration::from_secs(60)).await {
            Ok(c) => c,
            Err(e) => {
                // Keep the logs the error points at.
                let kept = temp.map(tempfile::TempDir::keep);
                let e = e.context("starting the local cluster");
                return Err(match kept {
                    Some(d) => e.context(format!("data and logs kept in {}", d.display())),
                    None => e,
                });
            }
        };
        let status = Client::new(&cluster.endpoints(), Duration::from_secs(1))
            .map_err(anyhow::Error::msg)?;
        Ok(LocalBackend {
            cluster,
            proxies,
            coordinators,
            status,
            temp,
        })
    }

    /// The data and log directory.
    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    /// SIGKILL `node`; the proxies in front of it refuse connections
    /// first, as its own port will.
    async fn kill(&mut self, node: Node) -> anyhow::Result<()> {
        self.proxies.refuse(node).await?;
        self.cluster.kill(node)
    }

    /// Starts `node` if it is down; once it listens (answers a health
    /// probe, ready or not), so do the proxies in front of it. Does not
    /// wait for readiness.
    async fn start_node(&mut self, node: Node) -> anyhow::Result<()> {
        if self.cluster.pid(node).is_some() && self.cluster.is_running(node) {
            return self.proxies.accept(node).await;
        }
        // Refusing already unless it died by itself.
        self.proxies.refuse(node).await?;
        self.cluster
            .start_node(node)
            .with_context(|| format!("starting {node}"))?;
        let addr = self.addr(node);
        let deadline = Instant::now() + READY_TIMEOUT;
        while health(&addr, Duration::from_millis(500)).await.is_err() {
            if !self.cluster.is_running(node) {
                bail!(
                    "{node} exited during start-up; see {}",
                    self.cluster.log_file(node).display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{node} at {addr} does not listen after {READY_TIMEOUT:?}; see {}",
                    self.cluster.log_file(node).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.proxies.accept(node).await
    }

    /// Starts `node` (reaping it first if it died) and waits until it is ready.
    async fn bring_up(&mut self, node: Node) -> anyhow::Result<Rejoin> {
        let since = Instant::now();
        self.start_node(node).await?;
        self.cluster.wait_ready(node, READY_TIMEOUT).await?;
        Ok(Rejoin {
            node,
            after: since.elapsed(),
        })
    }

    /// Starts every one of `nodes` that is down, then waits until each is
    /// ready, timing each from `since`: replicas that need each other for
    /// an election all come up before any is waited for.
    async fn bring_up_all(
        &mut self,
        nodes: &[Node],
        since: Instant,
    ) -> anyhow::Result<Vec<Rejoin>> {
        for &node in nodes {
            self.start_node(node).await?;
        }
        let mut ready = Vec::new();
        for &node in nodes {
            self.cluster.wait_ready(node, READY_TIMEOUT).await?;
            ready.push(Rejoin {
                node,
                after: since.elapsed(),
            });
        }
        Ok(ready)
    }

    /// Waits until every one of `nodes` is ready, concurrently, timing each from `since`.
    async fn wait_ready(&self, nodes: &[Node], since: Instant) -> anyhow::Result<Vec<Rejoin>> {
        let probes: Vec<(Node, String)> = nodes.iter().map(|&n| (n, self.addr(n))).collect();
        wait_ready_all(&probes, since, READY_TIMEOUT)
            .await
            .with_context(|| format!("node logs in {}", self.logs_hint()))
    }

    /// SIGKILL `node` if it runs, then delete its data directory.
    async fn wipe(&mut self, node: Node) -> anyhow::Result<()> {
        if self.cluster.pid(node).is_some() {
            self.kill(node).await?;
        }
        let data = self.cluster.data_dir(node);
        match std::fs::remove_dir_all(&data) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {}", data.display())),
        }
    }

    fn all_nodes(&self) -> Vec<Node> {
        self.cluster.nodes()
    }

    /// The coordinator replicas, then the participants (as `nodes()` lists them).
    fn split_nodes(&self) -> (Vec<Node>, Vec<Node>) {
        self.all_nodes()
            .into_iter()
            .partition(|n| matches!(n, Node::Coordinator(_)))
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    fn coordinators(&self) -> u32 {
        self.coordinators
    }

    fn unsupported(&self, kind: FaultKind) -> Option<String> {
        why_not(kind, self.coordinators)
    }

    async fn inject(&mut self, fault: &Fault) -> anyhow::Result<()> {
        match (fault.kind, fault.targets.as_slice()) {
            (FaultKind::Kill | FaultKind::KillCoordinatorLeader, &[node]) => self.kill(node).await,
            (FaultKind::Pause, &[node]) => self.cluster.pause(node),
            (FaultKind::PartitionCoordinator, targets) if !targets.is_empty() => {
                let cut = fault.cut.unwrap_or(Cut::Both);
                for &node in targets {
                    let Node::Participant(n) = node else {
                        bail!("partition-coordinator cuts participants, not {node}");
                    };
                    self.proxies.cut_participant(n, cut);
                }
                Ok(())
            }
            (FaultKind::PartitionCoordinatorLeader, &[Node::Coordinator(c)]) => {
                self.proxies.isolate_replica(c);
                Ok(())
            }
            (FaultKind::IsolateCoordinatorLeader, &[Node::Coordinator(c)]) => {
                self.proxies.isolate_from_replicas(c);
                Ok(())
            }
            (FaultKind::Wipe, &[node @ Node::Participant(_)])
            | (FaultKind::WipeCoordinator, &[node @ Node::Coordinator(_)]) => self.wipe(node).await,
            (FaultKind::RestartAll, _) => {
                let mut order = self.all_nodes();
                order.reverse(); // participants first, the coordinators last
                for node in order {
                    if self.cluster.pid(node).is_some() {
                        self.proxies.refuse(node).await?;
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
            (FaultKind::Kill | FaultKind::Wipe | FaultKind::KillCoordinatorLeader, &[node]) => {
                Ok(vec![self.bring_up(node).await?])
            }
            (FaultKind::WipeCoordinator, &[node @ Node::Coordinator(id)]) => {
                let since = Instant::now();
                self.bring_up(node).await?;
                let after = wait_log_caught_up(&self.status, id, since, READY_TIMEOUT)
                    .await
                    .with_context(|| format!("node logs in {}", self.logs_hint()))?;
                Ok(vec![Rejoin { node, after }])
            }
            (FaultKind::Pause, &[node]) => {
                let since = Instant::now();
                self.cluster.resume(node)?;
                self.wait_ready(&[node], since).await
            }
            (FaultKind::PartitionCoordinator, targets) if !targets.is_empty() => {
                let since = Instant::now();
                for &node in targets {
                    if let Node::Participant(n) = node {
                        self.proxies.heal_participant(n);
                    }
                }
                self.wait_ready(targets, since).await
            }
            (
                FaultKind::PartitionCoordinatorLeader | FaultKind::IsolateCoordinatorLeader,
                &[node @ Node::Coordinator(c)],
            ) => {
                let since = Instant::now();
                self.proxies.reconnect_replica(c);
                self.wait_ready(&[node], since).await
            }
            (FaultKind::RestartAll, _) => {
                let since = Instant::now();
                // The coordinator replicas first (together: they elect a
                // leader among them), then the participants, which
                // register with the leader as they start.
                let (coordinators, participants) = self.split_nodes();
                let mut all = self.bring_up_all(&coordinators, since).await?;
                for &node in &participants {
                    self.start_node(node).await?;
                }
                all.extend(self.wait_ready(&participants, since).await?);
                Ok(all)
            }
            _ => bail!("cannot heal {fault} on the local backend"),
        }
    }

    async fn heal_all(&mut self) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        self.proxies.heal_all();
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
        let (coordinators, participants) = self.split_nodes();
        let since = Instant::now();
        self.bring_up_all(&coordinators, since)
            .await
            .context("bringing the coordinator replicas back")?;
        self.bring_up_all(&participants, since)
            .await
            .context("bringing the participants back")?;
        // A node whose process was never down may still be catching up or
        // rejoining; wait for the whole cluster.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The cuts of a replica, as (Raft links cut, participant links cut).
    fn cut_links(p: &Proxies, c: u32) -> (usize, usize) {
        let raft = p.raft_links_of_replica(c).filter(|l| l.is_cut()).count();
        let participants = p
            .to_participant
            .iter()
            .filter(|((r, _), _)| *r == c)
            .chain(p.to_coordinator.iter().filter(|((_, r), _)| *r == c))
            .filter(|(_, l)| l.is_cut())
            .count();
        (raft, participants)
    }

    #[test]
    fn cluster_ports_are_the_replicas_and_both_ports_of_every_participant() {
        let mut ports = cluster_ports(30_000, 3);
        ports.sort_unstable();
        let mut want = vec![30_000, 30_010, 30_020];
        want.extend((1..=5).map(|n| 30_000 + n));
        want.extend((1..=5).map(|n| 30_000 + PEER_PORT_OFFSET + n));
        want.sort_unstable();
        assert_eq!(ports, want);
    }

    #[tokio::test]
    async fn isolating_a_replica_cuts_its_raft_links_only_and_a_partition_cuts_everything() {
        // Nothing is dialed: the upstreams need not exist.
        let p = Proxies::start(1, 3).await.expect("proxies");
        // Replicas 2 and 3: their links to the participants and to each other.
        let others_untouched = |p: &Proxies| {
            (2..=3).all(|o| cut_links(p, o).1 == 0)
                && [(2, 3), (3, 2)]
                    .iter()
                    .all(|k| p.raft.get(k).is_some_and(|l| !l.is_cut()))
        };
        // isolate-coordinator-leader: 1 -> 2, 1 -> 3, 2 -> 1, 3 -> 1.
        p.isolate_from_replicas(1);
        assert_eq!(cut_links(&p, 1), (4, 0));
        assert!(others_untouched(&p));
        p.reconnect_replica(1);
        assert_eq!(cut_links(&p, 1), (0, 0));
        // partition-coordinator-leader: those and both ways to every participant.
        p.isolate_replica(1);
        assert_eq!(cut_links(&p, 1), (4, 2 * PARTICIPANTS as usize));
        assert!(others_untouched(&p));
        p.reconnect_replica(1);
        assert_eq!(cut_links(&p, 1), (0, 0));
    }
}
