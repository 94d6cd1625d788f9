//! [`LocalCluster`]: a coordinator and N participants as child processes on
//! 127.0.0.1, for `quintet local`, `quintet demo`, the end-to-end tests and
//! the local fault-injection backend.
//!
//! The server binaries are found next to the running executable (or one
//! directory up, where cargo puts binaries relative to test executables).
//! Each child's output goes to `DIR/logs/NAME.log`, appended across restarts,
//! so a failed test leaves a trail. Dropping the cluster kills every child it
//! started, so a panicking test leaves no process behind.

use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::health_with;

/// One process of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// Coordinator replica `id` (1-based; 1 is the only one by default).
    Coordinator(u32),
    /// Participant `id` (1-based).
    Participant(u32),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Coordinator(1) => write!(f, "coordinator"),
            Node::Coordinator(id) => write!(f, "coordinator-{id}"),
            Node::Participant(id) => write!(f, "participant-{id}"),
        }
    }
}

/// How to start a local cluster.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Data and log directory; `None` makes a temp dir removed on drop.
    pub dir: Option<PathBuf>,
    /// Coordinator port; participant i gets base + i for clients and base +
    /// 100 + i for peers ([`PEER_PORT_OFFSET`]), coordinator replica i > 1
    /// gets base + 10 (i - 1). `None` finds free ports.
    pub base_port: Option<u16>,
    /// Number of participants (1..=7).
    pub participants: u32,
    /// Number of coordinator replicas (1, 3 or 5).
    pub coordinators: u32,
    /// Extra arguments for the coordinator.
    pub coordinator_args: Vec<String>,
    /// Extra arguments for every participant.
    pub participant_args: Vec<String>,
    /// Where the server binaries are; `None` looks next to this executable.
    pub bin_dir: Option<PathBuf>,
    /// The addresses the coordinator's `--participants` names, participant
    /// 1 first (proxies in front of their peer ports, say); `None`: their
    /// own peer addresses. When set, or when
    /// `coordinator_addr_for_participants` is, every participant also gets
    /// `--advertise-peer` with its own peer address, so catch-up between
    /// participants goes straight to them.
    pub participant_addrs_for_coordinator: Option<Vec<String>>,
    /// The `--coordinator` address list (comma-separated) of each
    /// participant, participant 1 first; `None`: every coordinator
    /// replica's own address.
    pub coordinator_addr_for_participants: Option<Vec<String>>,
    /// Per coordinator replica (replica 1 first), the addresses its
    /// `--participants` names, participant 1 first; overrides
    /// `participant_addrs_for_coordinator` (and, like it, gives the
    /// participants `--advertise`). `None`: as that option says.
    pub participant_addrs_by_coordinator: Option<Vec<Vec<String>>>,
    /// Per coordinator replica (replica 1 first), the addresses its
    /// `--coordinators` names, one per replica in id order (proxies in
    /// front of its peers, say); its own entry is ignored and replaced by
    /// its real listen address. `None`: every replica's own address.
    pub peer_addrs_by_coordinator: Option<Vec<Vec<String>>>,
    /// TLS everywhere, with certificates from `quintet certs init` in
    /// `DIR/certs` (made there unless a CA is there already).
    pub tls: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            dir: None,
            base_port: None,
            participants: 5,
            coordinators: 1,
            coordinator_args: Vec::new(),
            participant_args: Vec::new(),
            bin_dir: None,
            participant_addrs_for_coordinator: None,
            coordinator_addr_for_participants: None,
            participant_addrs_by_coordinator: None,
            peer_addrs_by_coordinator: None,
            tls: false,
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    bin_dir: PathBuf,
    base_port: u16,
    opts: LocalOptions,
    children: Vec<(Node, Option<Child>)>,
    /// The client side of TLS (the CA and the client certificate), if on.
    client_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Finds the directory holding `quintet-coordinator` and `quintet-participant`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut candidates = Vec::new();
    if let Some(d) = exe.parent() {
        candidates.push(d.to_path_buf());
        if let Some(up) = d.parent() {
            candidates.push(up.to_path_buf());
        }
    }
    for d in &candidates {
        if d.join("quintet-coordinator").is_file() && d.join("quintet-participant").is_file() {
            return Ok(d.clone());
        }
    }
    bail!(
        "quintet-coordinator and quintet-participant were not found next to {}; build them with `cargo build --release` (or `cargo build --workspace`) and run target/release/quintet",
        exe.display()
    )
}

/// Participant i's peer port is its client port plus this (7801 for
/// participant 1 of a cluster on 7700, as `--peer-listen` defaults).
pub const PEER_PORT_OFFSET: u16 = 100;

/// Participant `i`'s peer address in a local cluster on `base_port`.
pub fn peer_addr(base_port: u16, i: u32) -> String {
    format!("127.0.0.1:{}", base_port + PEER_PORT_OFFSET + i as u16)
}

/// A port `p` such that `p..=p+n` are all free on 127.0.0.1 right now,
/// and so are the peer ports of seven participants above it.
pub fn free_base_port(n: u32) -> anyhow::Result<u16> {
    // Probe blocks of n+1 consecutive ports; a port we can bind now is very
    // likely still free a moment later when the child binds it.
    for _ in 0..200 {
        let base: u16 = rand::random_range(20_000..60_000);
        let peers = (1..=7).map(|i| PEER_PORT_OFFSET + i);
        let all_free = (0..=n as u16)
            .chain(peers)
            .all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!(
        "could not find {} free consecutive ports on 127.0.0.1",
        n + 1
    )
}

impl LocalCluster {
    /// Starts the coordinator, then the participants; returns once every
    /// node answers its health probe as ready (or fails after `timeout`).
    pub async fn start(opts: LocalOptions, timeout: Duration) -> anyhow::Result<LocalCluster> {
        if opts.participants == 0 || opts.participants > 7 {
            bail!("--participants must be 1 to 7, got {}", opts.participants);
        }
        for (what, list) in [
            (
                "participant_addrs_for_coordinator",
                &opts.participant_addrs_for_coordinator,
            ),
            (
                "coordinator_addr_for_participants",
                &opts.coordinator_addr_for_participants,
            ),
        ] {
            if let Some(l) = list
                && l.len() != opts.participants as usize
            {
                bail!(
                    "{what} lists {} addresses for {} participants",
                    l.len(),
                    opts.participants
                );
            }
        }
        for (what, lists, inner, per) in [
            (
                "participant_addrs_by_coordinator",
                &opts.participant_addrs_by_coordinator,
                opts.participants,
                "participants",
            ),
            (
                "peer_addrs_by_coordinator",
                &opts.peer_addrs_by_coordinator,
                opts.coordinators,
                "coordinator replicas",
            ),
        ] {
            let Some(lists) = lists else { continue };
            if lists.len() != opts.coordinators as usize {
                bail!(
                    "{what} has {} lists for {} coordinator replicas",
                    lists.len(),
                    opts.coordinators
                );
            }
            if let Some((i, l)) = lists
                .iter()
                .enumerate()
                .find(|(_, l)| l.len() != inner as usize)
            {
                bail!(
                    "{what} lists {} addresses for coordinator replica {} and {inner} {per}",
                    l.len(),
                    i + 1
                );
            }
        }
        let bin_dir = match &opts.bin_dir {
            Some(d) => d.clone(),
            None => find_bin_dir()?,
        };
        let (dir, temp) = match &opts.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("quintet-local-")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.join("logs").display()))?;
        if !(1..=7).contains(&opts.coordinators) {
            bail!(
                "coordinators must be 1 to 7 (3 or 5 to survive losing one or two), got {}",
                opts.coordinators
            );
        }
        let base_port = match opts.base_port {
            Some(p) => p,
            None => free_base_port(opts.participants.max(10 * (opts.coordinators - 1)))?,
        };
        let mut children: Vec<(Node, Option<Child>)> = (1..=opts.coordinators)
            .map(|i| (Node::Coordinator(i), None))
            .collect();
        children.extend((1..=opts.participants).map(|i| (Node::Participant(i), None)));
        let client_tls = if opts.tls {
            let certs = dir.join("certs");
            if !certs.join("ca.crt").exists() {
                crate::certs::init(&crate::certs::CertsOptions {
                    dir: certs.clone(),
                    participants: opts.participants,
                    coordinators: opts.coordinators,
                    ..crate::certs::CertsOptions::default()
                })?;
            }
            quintet_common::tls::client_config(
                Some(&certs.join("ca.crt")),
                Some(&certs.join("client.crt")),
                Some(&certs.join("client.key")),
            )
            .map_err(anyhow::Error::msg)?
        } else {
            None
        };
        let mut cluster = LocalCluster {
            dir,
            _temp: temp,
            bin_dir,
            base_port,
            opts,
            children,
            client_tls,
        };
        for i in 1..=cluster.opts.coordinators {
            cluster.start_node(Node::Coordinator(i))?;
        }
        for i in 1..=cluster.opts.coordinators {
            cluster.wait_ready(Node::Coordinator(i), timeout).await?;
        }
        for i in 1..=cluster.opts.participants {
            cluster.start_node(Node::Participant(i))?;
        }
        cluster.wait_all_ready(timeout).await?;
        Ok(cluster)
    }

    /// The data and log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Address of a node.
    pub fn addr(&self, node: Node) -> String {
        match node {
            Node::Coordinator(i) => {
                format!("127.0.0.1:{}", self.base_port + 10 * (i as u16 - 1))
            }
            Node::Participant(i) => format!("127.0.0.1:{}", self.base_port + i as u16),
        }
    }

    /// Where the TLS certificates are (with [`LocalOptions::tls`]).
    pub fn certs_dir(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.dir.join("certs"))
    }

    /// The TLS config clients of this cluster need (the CA and the client
    /// certificate), if it runs TLS.
    pub fn client_tls(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        self.client_tls.clone()
    }

    /// Participant `i`'s peer address (2PC and catch-up; not for clients).
    pub fn peer_addr(&self, i: u32) -> String {
        peer_addr(self.base_port, i)
    }

    /// Participant peer addresses, in id order.
    pub fn peer_endpoints(&self) -> Vec<String> {
        (1..=self.opts.participants)
            .map(|i| self.peer_addr(i))
            .collect()
    }

    /// Participant addresses, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        (1..=self.opts.participants)
            .map(|i| self.addr(Node::Participant(i)))
            .collect()
    }

    /// Coordinator replica addresses, in id order.
    pub fn coordinators(&self) -> Vec<String> {
        (1..=self.opts.coordinators)
            .map(|i| self.addr(Node::Coordinator(i)))
            .collect()
    }

    /// Every node, coordinators first.
    pub fn nodes(&self) -> Vec<Node> {
        self.children.iter().map(|(n, _)| *n).collect()
    }

    /// Data dir of a node.
    pub fn data_dir(&self, node: Node) -> PathBuf {
        self.dir.join(node.to_string())
    }

    /// Log file of a node.
    pub fn log_file(&self, node: Node) -> PathBuf {
        self.dir.join("logs").join(format!("{node}.log"))
    }

    fn slot(&mut self, node: Node) -> anyhow::Result<&mut Option<Child>> {
        self.children
            .iter_mut()
            .find(|(n, _)| *n == node)
            .map(|(_, c)| c)
            .with_context(|| format!("no {node} in this cluster"))
    }

    /// The pid of a running node.
    pub fn pid(&self, node: Node) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| *n == node)
            .and_then(|(_, c)| c.as_ref().map(|c| c.id()))
    }

    /// Starts (or restarts) one node; does not wait for readiness.
    pub fn start_node(&mut self, node: Node) -> anyhow::Result<()> {
        if self.pid(node).is_some() {
            bail!("{node} is already running");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(node))
            .with_context(|| format!("cannot open {}", self.log_file(node).display()))?;
        let data_dir = self.data_dir(node);
        let mut cmd = match node {
            Node::Coordinator(i) => {
                let mut c = Command::new(self.bin_dir.join("quintet-coordinator"));
                if self.opts.coordinators > 1 {
                    c.arg("--id").arg(i.to_string());
                }
                c.arg("--listen").arg(self.addr(node));
                if self.opts.coordinators > 1 {
                    let mut peers = self
                        .opts
                        .peer_addrs_by_coordinator
                        .as_ref()
                        .and_then(|by| by.get(i as usize - 1).cloned())
                        .unwrap_or_else(|| self.coordinators());
                    // Its own entry is where it listens, whatever was given.
                    if let Some(me) = peers.get_mut(i as usize - 1) {
                        *me = self.addr(node);
                    }
                    c.arg("--coordinators").arg(peers.join(","));
                }
                let participants = self
                    .opts
                    .participant_addrs_by_coordinator
                    .as_ref()
                    .and_then(|by| by.get(i as usize - 1).cloned())
                    .or_else(|| self.opts.participant_addrs_for_coordinator.clone())
                    .unwrap_or_else(|| self.peer_endpoints());
                c.arg("--participants").arg(participants.join(","));
                c.args(&self.opts.coordinator_args);
                c
            }
            Node::Participant(i) => {
                let mut c = Command::new(self.bin_dir.join("quintet-participant"));
                c.arg("--id").arg(i.to_string());
                c.arg("--listen").arg(self.addr(node));
                c.arg("--peer-listen").arg(self.peer_addr(i));
                let coordinator = self
                    .opts
                    .coordinator_addr_for_participants
                    .as_ref()
                    .and_then(|via| via.get(i as usize - 1).cloned())
                    .unwrap_or_else(|| self.coordinators().join(","));
                c.arg("--coordinator").arg(coordinator);
                if self.opts.participant_addrs_for_coordinator.is_some()
                    || self.opts.participant_addrs_by_coordinator.is_some()
                    || self.opts.coordinator_addr_for_participants.is_some()
                {
                    c.arg("--advertise-peer").arg(self.peer_addr(i));
                }
                c.args(&self.opts.participant_args);
                c
            }
        };
        cmd.arg("--data-dir").arg(&data_dir);
        if let Some(certs) = self.certs_dir() {
            let stem = match node {
                Node::Coordinator(1) => "coordinator".to_string(),
                other => other.to_string(),
            };
            cmd.arg("--tls-cert").arg(certs.join(format!("{stem}.crt")));
            cmd.arg("--tls-key").arg(certs.join(format!("{stem}.key")));
            cmd.arg("--tls-ca").arg(certs.join("ca.crt"));
        }
        // Flags are explicit; do not let a caller's QUINTET_* variables leak in.
        for (k, _) in std::env::vars() {
            if k.starts_with("QUINTET_") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {node} from {}", self.bin_dir.display()))?;
        *self.slot(node)? = Some(child);
        Ok(())
    }

    /// Waits until `node` answers its health probe as ready.
    pub async fn wait_ready(&mut self, node: Node, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = self.addr(node);
        loop {
            if let Some(child) = self.slot(node)?.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.slot(node)?.take();
                bail!(
                    "{node} exited with {status} during start-up; see {}",
                    self.log_file(node).display()
                );
            }
            if let Ok(h) =
                health_with(&addr, Duration::from_millis(500), self.client_tls.as_ref()).await
                && h.ready
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{node} at {addr} not ready after {timeout:?}; see {}",
                    self.log_file(node).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node is ready.
    pub async fn wait_all_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for node in self.nodes() {
            if self.pid(node).is_some() {
                self.wait_ready(node, timeout).await?;
            }
        }
        Ok(())
    }

    fn signal(&self, node: Node, sig: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid(node)
            .with_context(|| format!("{node} is not running"))?;
        kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("cannot send {sig} to {node}"))
    }

    /// kill -9 and reap.
    pub fn kill(&mut self, node: Node) -> anyhow::Result<()> {
        let _ = self.signal(node, Signal::SIGCONT);
        self.signal(node, Signal::SIGKILL)?;
        if let Some(mut c) = self.slot(node)?.take() {
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit (SIGKILL after `grace`); returns
    /// whether the node exited cleanly (status 0).
    pub fn stop(&mut self, node: Node, grace: Duration) -> anyhow::Result<bool> {
        let _ = self.signal(node, Signal::SIGCONT);
        self.signal(node, Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        let Some(mut child) = self.slot(node)?.take() else {
            return Ok(false);
        };
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&self, node: Node) -> anyhow::Result<()> {
        self.signal(node, Signal::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self, node: Node) -> anyhow::Result<()> {
        self.signal(node, Signal::SIGCONT)
    }

    /// Whether a node's process is running. A child found to have exited is
    /// reaped and forgotten, so its pid is never signalled again.
    pub fn is_running(&mut self, node: Node) -> bool {
        let Ok(slot) = self.slot(node) else {
            return false;
        };
        let running = match slot.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        };
        if !running {
            slot.take();
        }
        running
    }

    /// Stops every node with SIGTERM (participants first), then kills stragglers.
    pub fn shutdown(&mut self) {
        let mut order = self.nodes();
        order.reverse();
        for node in order {
            if self.pid(node).is_some() {
                let _ = self.stop(node, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Some(mut c) = child.take() {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
