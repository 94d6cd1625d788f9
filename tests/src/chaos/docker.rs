//! The docker backend: the six containers of the compose project `quintet`
//! (deploy/compose.yaml), hurt with the Docker CLI.
//!
//! The cluster must be up already (CI brings it up), or `--up` runs
//! `docker compose -f FILE -p PROJECT up -d --wait` first. Containers are
//! found by the labels compose puts on them
//! (`com.docker.compose.project`, `com.docker.compose.service`), so the
//! runner does not depend on the compose version's naming scheme, and only
//! ever touches containers of that one project. The workload talks to the
//! ports published on the host, 127.0.0.1:7701..7705 (the coordinator on
//! 7700 is only probed for health).
//!
//! - kill: `docker kill` (SIGKILL), healed by `docker start`;
//! - pause: `docker pause` (cgroup freezer), healed by `docker unpause`;
//! - partition: `docker network disconnect` of one container from the
//!   project's network, healed by `docker network connect` with the same
//!   DNS aliases (the service name: peers find `coordinator`,
//!   `participant-N` by it). While disconnected, the node's published port
//!   is unreachable from the host too, so clients see it as down;
//! - restart-all: `docker stop` of all six (SIGTERM, 10 s grace), healed by
//!   `docker start` of the coordinator, then of the participants.
//!
//! Every heal waits until the node answers `health` as ready on its host
//! port. Every docker command runs with a timeout and is killed if it
//! overruns; its stderr is part of the error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quintet_client::client::health;
use quintet_client::local::Node;

use super::backend::Backend;
use super::nemesis::{FaultKind, PARTICIPANTS};

/// Bound on one ordinary docker command.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node may take to answer as ready after a heal.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The host the compose file publishes ports on.
const HOST: &str = "127.0.0.1";

/// Host port of the coordinator; participant N is on `BASE_PORT + N`.
const BASE_PORT: u16 = 7700;

/// One container of the project.
#[derive(Clone, Debug)]
struct Container {
    id: String,
    /// DNS aliases on the project network, restored on reconnect.
    aliases: Vec<String>,
}

/// The containers of one compose project.
pub struct DockerBackend {
    project: String,
    network: String,
    containers: BTreeMap<Node, Container>,
}

/// Runs `program args`, bounded by `timeout`; returns stdout, or an error
/// with stderr.
async fn run_cmd(program: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| anyhow::anyhow!("`{shown}` did not finish within {timeout:?}"))?
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run_cmd("docker", args, CMD_TIMEOUT).await
}

/// The compose command: `docker compose` (v2+) if present, else `docker-compose`.
async fn compose_program() -> (String, Vec<String>) {
    if run_cmd("docker", &["compose", "version"], CMD_TIMEOUT)
        .await
        .is_ok()
    {
        ("docker".into(), vec!["compose".into()])
    } else {
        ("docker-compose".into(), Vec::new())
    }
}

/// Waits until the server at `addr` answers health as ready.
async fn wait_healthy(what: &str, addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match health(addr, Duration::from_millis(800)).await {
            Ok(h) if h.ready => return Ok(()),
            Ok(h) => format!("not ready: {}", h.detail),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{what} at {addr} not ready after {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl DockerBackend {
    /// Brings the project up from `compose_file` (`docker compose up -d --wait`).
    pub async fn up(compose_file: &Path, project: &str) -> anyhow::Result<()> {
        let file = compose_file.to_string_lossy().into_owned();
        let (program, mut args) = compose_program().await;
        args.extend(["-f", &file, "-p", project, "up", "-d"].map(String::from));
        if program == "docker" {
            args.extend(["--wait", "--wait-timeout", "180"].map(String::from));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cmd(&program, &args, Duration::from_secs(240))
            .await
            .context("bringing the compose cluster up")?;
        Ok(())
    }

    /// Finds the six containers of `project` and waits until all answer as ready.
    pub async fn connect(project: &str) -> anyhow::Result<Self> {
        let mut containers = BTreeMap::new();
        let mut network: Option<String> = None;
        let nodes =
            std::iter::once(Node::Coordinator).chain((1..=PARTICIPANTS).map(Node::Participant));
        for node in nodes {
            let service = node.to_string();
            let ids = docker(&[
                "ps",
                "-aq",
                "--no-trunc",
                "--filter",
                &format!("label=com.docker.compose.project={project}"),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
            ])
            .await?;
            let ids: Vec<&str> = ids.split_whitespace().collect();
            let id = match ids.as_slice() {
                [id] => id.to_string(),
                [] => bail!(
                    "no container for service {service} of compose project {project:?}: \
                     bring the cluster up first (`docker compose -f deploy/compose.yaml up -d --wait`) \
                     or pass --up"
                ),
                _ => bail!(
                    "{} containers for service {service} of compose project {project:?}; expected one",
                    ids.len()
                ),
            };
            let json =
                docker(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", &id]).await?;
            let nets: BTreeMap<String, serde_json::Value> = serde_json::from_str(json.trim())
                .with_context(|| format!("unexpected `docker inspect` output for {service}"))?;
            let (net, settings) = match nets.into_iter().next() {
                Some(n) => n,
                None => bail!(
                    "{service} is on no network (is it disconnected from an earlier run? \
                     recreate it with `docker compose up -d`)"
                ),
            };
            match &network {
                None => network = Some(net.clone()),
                Some(n) if *n != net => {
                    bail!("{service} is on network {net}, the coordinator on {n}")
                }
                Some(_) => {}
            }
            let aliases = settings
                .get("Aliases")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        // Docker adds the short id by itself.
                        .filter(|a| !id.starts_with(a))
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| vec![service.clone()]);
            containers.insert(node, Container { id, aliases });
        }
        let network = network.context("no network found")?;
        let backend = DockerBackend {
            project: project.to_string(),
            network,
            containers,
        };
        for node in backend.containers.keys() {
            wait_healthy(&node.to_string(), &backend.addr(*node), READY_TIMEOUT).await?;
        }
        Ok(backend)
    }

    fn id(&self, node: Node) -> anyhow::Result<&str> {
        self.containers
            .get(&node)
            .map(|c| c.id.as_str())
            .with_context(|| format!("no container for {node}"))
    }

    /// `(running, paused, connected to the project network)` of a container.
    async fn state(&self, node: Node) -> anyhow::Result<(bool, bool, bool)> {
        let out = docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{.State.Running}}}} {{{{.State.Paused}}}} {{{{if index .NetworkSettings.Networks \"{}\"}}}}true{{{{else}}}}false{{{{end}}}}",
                self.network
            ),
            self.id(node)?,
        ])
        .await?;
        let f: Vec<&str> = out.split_whitespace().collect();
        match f.as_slice() {
            [r, p, c] => Ok((*r == "true", *p == "true", *c == "true")),
            _ => bail!("unexpected `docker inspect` output for {node}: {out:?}"),
        }
    }

    async fn wait_ready(&self, node: Node) -> anyhow::Result<()> {
        wait_healthy(&node.to_string(), &self.addr(node), READY_TIMEOUT).await
    }

    async fn reconnect(&self, node: Node) -> anyhow::Result<()> {
        let c = self
            .containers
            .get(&node)
            .with_context(|| format!("no container for {node}"))?;
        let mut args = vec!["network", "connect"];
        for a in &c.aliases {
            args.extend(["--alias", a.as_str()]);
        }
        args.extend([self.network.as_str(), c.id.as_str()]);
        docker(&args).await.map(drop)
    }

    fn ids(&self, nodes: impl IntoIterator<Item = Node>) -> anyhow::Result<Vec<String>> {
        nodes
            .into_iter()
            .map(|n| self.id(n).map(String::from))
            .collect()
    }
}

impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn endpoints(&self) -> Vec<String> {
        (1..=PARTICIPANTS)
            .map(|i| self.addr(Node::Participant(i)))
            .collect()
    }

    fn unsupported(&self, _kind: FaultKind) -> Option<&'static str> {
        None
    }

    async fn inject(&mut self, kind: FaultKind, target: Option<Node>) -> anyhow::Result<()> {
        match (kind, target) {
            (FaultKind::Kill, Some(n)) => docker(&["kill", self.id(n)?]).await.map(drop),
            (FaultKind::Pause, Some(n)) => docker(&["pause", self.id(n)?]).await.map(drop),
            (FaultKind::Partition, Some(n)) => {
                docker(&["network", "disconnect", &self.network, self.id(n)?])
                    .await
                    .map(drop)
            }
            (FaultKind::RestartAll, _) => {
                let ids = self.ids(self.containers.keys().copied())?;
                let mut args = vec!["stop", "-t", "10"];
                args.extend(ids.iter().map(String::as_str));
                run_cmd("docker", &args, Duration::from_secs(60))
                    .await
                    .map(drop)
            }
            (kind, target) => bail!("cannot inject {kind} at {target:?}"),
        }
    }

    async fn heal(&mut self, kind: FaultKind, target: Option<Node>) -> anyhow::Result<()> {
        match (kind, target) {
            (FaultKind::Kill, Some(n)) => {
                docker(&["start", self.id(n)?]).await?;
                self.wait_ready(n).await
            }
            (FaultKind::Pause, Some(n)) => {
                docker(&["unpause", self.id(n)?]).await?;
                self.wait_ready(n).await
            }
            (FaultKind::Partition, Some(n)) => {
                self.reconnect(n).await?;
                self.wait_ready(n).await
            }
            (FaultKind::RestartAll, _) => {
                docker(&["start", self.id(Node::Coordinator)?]).await?;
                self.wait_ready(Node::Coordinator).await?;
                let ids = self.ids((1..=PARTICIPANTS).map(Node::Participant))?;
                let mut args = vec!["start"];
                args.extend(ids.iter().map(String::as_str));
                docker(&args).await?;
                for i in 1..=PARTICIPANTS {
                    self.wait_ready(Node::Participant(i)).await?;
                }
                Ok(())
            }
            (kind, target) => bail!("cannot heal {kind} at {target:?}"),
        }
    }

    async fn heal_all(&mut self) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        let nodes: Vec<Node> = self.containers.keys().copied().collect();
        for &node in &nodes {
            let (running, paused, connected) = self.state(node).await?;
            if paused {
                docker(&["unpause", self.id(node)?]).await?;
            }
            if !connected {
                self.reconnect(node).await?;
            }
            if !running {
                warnings.push(format!(
                    "{node} was not running when the run ended (crashed, or a heal failed); \
                     see `docker logs {}`",
                    self.id(node)?
                ));
                docker(&["start", self.id(node)?]).await?;
            }
        }
        for node in nodes {
            self.wait_ready(node).await?;
        }
        Ok(warnings)
    }

    fn logs_hint(&self) -> String {
        format!("docker compose -p {} logs", self.project)
    }

    async fn keep_logs(&mut self, dir: &Path) -> anyhow::Result<String> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (node, c) in &self.containers {
            let path: PathBuf = dir.join(format!("{node}.log"));
            let out = tokio::process::Command::new("docker")
                .args(["logs", "-t", &c.id])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(CMD_TIMEOUT, out)
                .await
                .map_err(|_| anyhow::anyhow!("`docker logs {}` timed out", c.id))??;
            // Servers log to stderr; keep both streams.
            let mut text = out.stdout;
            text.extend_from_slice(&out.stderr);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(format!("node logs saved in {}", dir.display()))
    }

    fn addr(&self, node: Node) -> String {
        match node {
            Node::Coordinator => format!("{HOST}:{BASE_PORT}"),
            Node::Participant(i) => format!("{HOST}:{}", BASE_PORT + i as u16),
        }
    }
}
