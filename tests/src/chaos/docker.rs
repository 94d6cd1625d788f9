//! The docker backend: the containers of the compose project `quintet`
//! (deploy/compose.yaml), hurt with the Docker CLI: the six of the default
//! profile, or with `--coordinators 3` the eight of the `ha` profile (the
//! coordinator and its two standbys, `coordinator-2` and `coordinator-3`,
//! one Raft group).
//!
//! The cluster must be up already (CI brings it up), or `--up` runs
//! `docker compose -f FILE -p PROJECT [--profile ha] up -d --wait` first.
//! Containers are found by the labels compose puts on them
//! (`com.docker.compose.project`, `com.docker.compose.service`), so the
//! runner does not depend on the compose version's naming scheme, and only
//! ever touches containers of that one project. The workload talks to the
//! ports published on the host, 127.0.0.1:7701..7705 (the coordinator
//! replicas, on 7700, 7710 and 7720, are only probed for health).
//!
//! - kill: `docker kill` (SIGKILL), healed by `docker start`;
//! - pause: `docker pause` (cgroup freezer), healed by `docker unpause`;
//! - partition: `docker network disconnect` of one container from the
//!   project's network, healed by `docker network connect` with the same
//!   DNS aliases (the service name: peers find `coordinator`,
//!   `participant-N` by it). While disconnected, the node's published port
//!   is unreachable from the host too, so clients see it as down;
//! - partition-coordinator: iptables DROP rules inside the participant
//!   container's network namespace, entered from the host with
//!   `nsenter -t PID -n iptables ...` (PID from
//!   `docker inspect -f {{.State.Pid}}`), matching every coordinator
//!   replica's address: coordinator to participant is
//!   `INPUT -s COORDINATOR -p tcp ! --sport 7700` (every connection the
//!   coordinator opened, whatever participant port it dialed; only the
//!   answers on the participant's own connections to it pass), participant
//!   to coordinator is `OUTPUT -d COORDINATOR -p tcp --dport 7700`, both
//!   ways is both.
//!   Rules match every packet, not only new connections, so open
//!   connections freeze like on a real partition; clients (through the
//!   published port, from the host's bridge address) and other
//!   participants still reach the node. Every rule added is recorded and
//!   deleted on heal, in [`Backend::heal_all`] (which also deletes any rule
//!   carrying this runner's comment, left by an earlier run) and on drop,
//!   so an error or Ctrl-C leaves none behind. This needs root, `nsenter`
//!   and `iptables` on the host (`apt-get install iptables`); without them
//!   the kinds that need rules are left out of the schedule with a note
//!   saying what is missing;
//! - wipe: `docker kill` of the participant, `docker rm` of its container,
//!   `docker volume rm` of its data volume, then
//!   `docker compose -f FILE -p PROJECT up --no-start --no-deps SERVICE`
//!   recreates both, the volume empty, and the heal starts it (the image
//!   is FROM scratch, so no throwaway container of it could delete files,
//!   and no other image can be pulled). Needs the compose file
//!   (`--compose-file`); without it the kind is left out of the schedule;
//! - restart-all: `docker stop` of the participants, then of the
//!   coordinator replicas (SIGTERM, 10 s grace), healed by `docker start`
//!   of the coordinator replicas (together: they elect a leader among
//!   them), then of the participants;
//! - kill-coordinator-leader (`--coordinators 3`): `docker kill` of the
//!   replica that leads, healed by `docker start` (it rejoins as a
//!   follower);
//! - partition-coordinator-leader: DROP rules in the leading replica's own
//!   namespace for every packet from or to the other replicas' and the
//!   participants' addresses (`INPUT -s ADDR`, `OUTPUT -d ADDR`), so it
//!   runs on, cut off from the whole cluster, while the health probes
//!   (through its published port) still reach it;
//! - isolate-coordinator-leader: the same rules for the other replicas'
//!   addresses only: the participants still reach the deposed leader and
//!   it still hears their renewals, and it must stop granting leases by
//!   itself;
//! - wipe-coordinator: as wipe, for a coordinator replica (the leader or a
//!   follower); the heal starts it empty and waits until it is ready and
//!   the leader reports its log caught up, which is its rejoin time.
//!
//! A container's address is read when a rule is added (a restart may give
//! it another); the rules of one fault are added and deleted together.
//! Every heal waits until the nodes it brought back answer `health` as
//! ready on their host ports (a participant: caught up, a member, holding
//! a lease; a coordinator replica: the leader serving, or a follower that
//! knows it). Every docker command runs with a timeout and is killed if it
//! overruns; its stderr is part of the error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quintet_client::Client;
use quintet_client::client::health;
use quintet_client::local::Node;

use super::backend::{Backend, wait_log_caught_up, wait_ready_all};
use super::nemesis::{Cut, Fault, FaultKind, PARTICIPANTS, Rejoin};

/// Bound on one ordinary docker command.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node may take to answer as ready after a heal.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The host the compose file publishes ports on.
const HOST: &str = "127.0.0.1";

/// Host port of the coordinator; participant N is on `BASE_PORT + N`,
/// coordinator replica C on `BASE_PORT + 10 (C - 1)`. Inside the project
/// network every coordinator replica listens on `BASE_PORT`.
const BASE_PORT: u16 = 7700;

/// How many coordinator replicas the compose file's `ha` profile runs.
pub const HA_COORDINATORS: u32 = 3;

/// The comment on every firewall rule this runner adds, so a leftover can
/// be told from anyone else's.
const RULE_COMMENT: &str = "quintet-chaos";

/// Why the docker backend cannot do `kind` with `coordinators` replicas
/// (whatever the host has), or `None`: the coordinator-replica kinds need
/// the `ha` profile's three.
pub fn why_not(kind: FaultKind, coordinators: u32) -> Option<String> {
    (coordinators < kind.min_coordinators()).then(|| {
        format!(
            "{kind} needs {} coordinator replicas and this run has {coordinators}; it is left \
             out of the schedule, pass --coordinators 3 (the compose profile ha, brought up by \
             --up or `docker compose -f deploy/compose.yaml --profile ha up -d --wait`)",
            kind.min_coordinators()
        )
    })
}

/// The compose profiles a run with `coordinators` replicas needs.
fn profiles(coordinators: u32) -> Vec<String> {
    if coordinators > 1 {
        vec!["--profile".into(), "ha".into()]
    } else {
        Vec::new()
    }
}

/// One container of the project.
#[derive(Clone, Debug)]
struct Container {
    id: String,
    /// DNS aliases on the project network, restored on reconnect.
    aliases: Vec<String>,
}

/// One firewall rule added in a node's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// The node whose namespace holds it.
    node: Node,
    /// The pid the namespace was entered through.
    pid: String,
    /// `INPUT` or `OUTPUT`.
    chain: &'static str,
    /// The match and target, as iptables arguments after the chain.
    spec: Vec<String>,
}

/// The containers of one compose project.
pub struct DockerBackend {
    project: String,
    network: String,
    containers: BTreeMap<Node, Container>,
    /// How many coordinator replicas run (1, or 3 with the `ha` profile).
    coordinators: u32,
    /// For the leader's status (a wiped replica's catch-up), with short timeouts.
    status: Client,
    /// The compose file, for recreating a wiped node.
    compose_file: PathBuf,
    /// Why the kinds that add firewall rules cannot be done here, if they cannot.
    no_firewall: Option<String>,
    /// Why wipe cannot be done here, if it cannot.
    no_wipe: Option<String>,
    /// Every firewall rule added and not yet deleted.
    rules: Vec<Rule>,
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

/// The id of the one container of `service` in compose project `project`.
async fn container_of(project: &str, service: &str) -> anyhow::Result<String> {
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
    match ids.as_slice() {
        [id] => Ok(id.to_string()),
        [] => bail!(
            "no container for service {service} of compose project {project:?}: \
             bring the cluster up first (`docker compose -f deploy/compose.yaml up -d --wait`) \
             or pass --up"
        ),
        _ => bail!(
            "{} containers for service {service} of compose project {project:?}; expected one",
            ids.len()
        ),
    }
}

/// `iptables -w ARGS` in the network namespace of process `pid`.
async fn nsenter_iptables(pid: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-t", pid, "-n", "iptables", "-w"];
    all.extend_from_slice(args);
    run_cmd("nsenter", &all, CMD_TIMEOUT).await
}

/// Deletes one recorded rule.
async fn delete_rule(rule: &Rule) -> anyhow::Result<()> {
    let mut args = vec!["-D", rule.chain];
    args.extend(rule.spec.iter().map(String::as_str));
    nsenter_iptables(&rule.pid, &args).await.map(drop)
}

impl DockerBackend {
    /// Brings the project up from `compose_file` (`docker compose up -d
    /// --wait`, with the `ha` profile for more than one coordinator replica).
    pub async fn up(compose_file: &Path, project: &str, coordinators: u32) -> anyhow::Result<()> {
        let file = compose_file.to_string_lossy().into_owned();
        let (program, mut args) = compose_program().await;
        args.extend(["-f", &file, "-p", project].map(String::from));
        args.extend(profiles(coordinators));
        args.extend(["up", "-d"].map(String::from));
        if program == "docker" {
            args.extend(["--wait", "--wait-timeout", "180"].map(String::from));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cmd(&program, &args, Duration::from_secs(240))
            .await
            .context("bringing the compose cluster up")?;
        Ok(())
    }

    /// Finds the containers of `project` (`coordinators` replicas: 1, or
    /// 3 with the `ha` profile) and waits until all answer as ready;
    /// `compose_file` is what recreates a wiped node. Also finds out
    /// whether firewall rules and wipes can be done here.
    pub async fn connect(
        project: &str,
        compose_file: &Path,
        coordinators: u32,
    ) -> anyhow::Result<Self> {
        if coordinators != 1 && coordinators != HA_COORDINATORS {
            bail!(
                "the compose file runs 1 coordinator replica, or {HA_COORDINATORS} with the \
                 profile ha; --coordinators {coordinators} cannot run on docker"
            );
        }
        let mut containers = BTreeMap::new();
        let mut network: Option<String> = None;
        let nodes = (1..=coordinators)
            .map(Node::Coordinator)
            .chain((1..=PARTICIPANTS).map(Node::Participant));
        for node in nodes {
            let service = node.to_string();
            let id = container_of(project, &service).await.with_context(|| {
                if matches!(node, Node::Coordinator(c) if c > 1) {
                    format!(
                        "--coordinators {coordinators} needs the standbys of the compose \
                         profile ha: `docker compose -f deploy/compose.yaml --profile ha up -d \
                         --wait`, or pass --up"
                    )
                } else {
                    format!("finding {service}")
                }
            })?;
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
        let endpoints: Vec<String> = (1..=PARTICIPANTS)
            .map(|i| format!("{HOST}:{}", BASE_PORT + i as u16))
            .collect();
        let status = Client::new(&endpoints, Duration::from_secs(1)).map_err(anyhow::Error::msg)?;
        let mut backend = DockerBackend {
            project: project.to_string(),
            network,
            containers,
            coordinators,
            status,
            compose_file: compose_file.to_path_buf(),
            no_firewall: None,
            no_wipe: None,
            rules: Vec::new(),
        };
        for node in backend.containers.keys() {
            wait_healthy(&node.to_string(), &backend.addr(*node), READY_TIMEOUT).await?;
        }
        backend.no_firewall = backend.firewall_problem().await;
        backend.no_wipe = (!compose_file.is_file()).then(|| {
            format!(
                "wipe and wipe-coordinator need the compose file to recreate a node, and {} is \
                 not a file (pass --compose-file); they are left out of the schedule",
                compose_file.display()
            )
        });
        Ok(backend)
    }

    /// Why firewall rules cannot be added in the containers' network
    /// namespaces, or `None` when they can: the tools are there, and
    /// listing participant 1's rules through nsenter works (it does not
    /// without root).
    async fn firewall_problem(&self) -> Option<String> {
        let why = |what: String| {
            Some(format!(
                "partition-coordinator, partition-coordinator-leader and \
                 isolate-coordinator-leader on the docker backend need root, nsenter and \
                 iptables on the host (apt-get install iptables); {what}; they are left out of \
                 the schedule"
            ))
        };
        for tool in ["nsenter", "iptables"] {
            if let Err(e) = run_cmd(tool, &["--version"], CMD_TIMEOUT).await {
                return why(format!("`{tool} --version` failed: {e:#}"));
            }
        }
        let node = Node::Participant(1);
        let pid = match self.pid(node).await {
            Ok(p) => p,
            Err(e) => return why(format!("{e:#}")),
        };
        match nsenter_iptables(&pid, &["-S", "INPUT"]).await {
            Ok(_) => None,
            Err(e) => why(format!("listing {node}'s rules failed: {e:#}")),
        }
    }

    /// The host pid of a running container's init process.
    async fn pid(&self, node: Node) -> anyhow::Result<String> {
        let out = docker(&["inspect", "-f", "{{.State.Pid}}", self.id(node)?]).await?;
        let pid = out.trim().to_string();
        if pid == "0" || pid.parse::<u32>().is_err() {
            bail!(
                "{node} is not running (pid {pid:?}), so its network namespace cannot be entered"
            );
        }
        Ok(pid)
    }

    /// A container's address on the project network.
    async fn ip_of(&self, node: Node) -> anyhow::Result<String> {
        let out = docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
                self.network
            ),
            self.id(node)?,
        ])
        .await?;
        let ip = out.trim().to_string();
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            bail!(
                "{node} has no IPv4 address on network {} ({ip:?})",
                self.network
            );
        }
        Ok(ip)
    }

    /// The addresses of those of `nodes` that run (one that is down has
    /// none, and nothing to cut); fails if none does.
    async fn running_ips(&self, nodes: &[Node]) -> anyhow::Result<Vec<String>> {
        let mut ips = Vec::new();
        for &n in nodes {
            match self.ip_of(n).await {
                Ok(ip) => ips.push(ip),
                Err(_) if !self.state(n).await.is_ok_and(|(running, _, _)| running) => {}
                Err(e) => return Err(e),
            }
        }
        if ips.is_empty() {
            bail!(
                "none of {} runs",
                nodes
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(ips)
    }

    /// The coordinator replicas.
    fn replicas(&self) -> Vec<Node> {
        (1..=self.coordinators).map(Node::Coordinator).collect()
    }

    /// Adds DROP rules (`(chain, match)`) in `node`'s network namespace,
    /// recording each as it goes in, so a failure half-way leaves nothing
    /// unrecorded.
    async fn add_rules(
        &mut self,
        node: Node,
        wanted: Vec<(&'static str, Vec<String>)>,
    ) -> anyhow::Result<()> {
        let pid = self.pid(node).await?;
        for (chain, m) in wanted {
            let mut spec = m;
            spec.extend(
                ["-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"].map(String::from),
            );
            let rule = Rule {
                node,
                pid: pid.clone(),
                chain,
                spec,
            };
            let mut args = vec!["-I", chain];
            args.extend(rule.spec.iter().map(String::as_str));
            nsenter_iptables(&pid, &args).await?;
            self.rules.push(rule);
        }
        Ok(())
    }

    /// Cuts participant `node` off every coordinator replica in the
    /// directions of `cut`.
    async fn cut(&mut self, node: Node, cut: Cut) -> anyhow::Result<()> {
        if !matches!(node, Node::Participant(_)) {
            bail!("only a participant can be cut off the coordinator, not {node}");
        }
        let port = BASE_PORT.to_string();
        let mut wanted = Vec::new();
        for ip in self.running_ips(&self.replicas()).await? {
            if cut.to_participant() {
                // Everything but the answers on the participant's own
                // connections to the coordinator's port, whichever
                // participant port the coordinator dialed.
                wanted.push((
                    "INPUT",
                    ["-s", &ip, "-p", "tcp", "!", "--sport", &port]
                        .map(String::from)
                        .to_vec(),
                ));
            }
            if cut.to_coordinator() {
                wanted.push((
                    "OUTPUT",
                    ["-d", &ip, "-p", "tcp", "--dport", &port]
                        .map(String::from)
                        .to_vec(),
                ));
            }
        }
        self.add_rules(node, wanted)
            .await
            .with_context(|| format!("cutting {node} off the coordinator"))
    }

    /// Cuts coordinator replica `node` off `peers`, both ways, every
    /// packet, with rules in its own namespace: the host (clients, health
    /// probes through the published port) still reaches it.
    async fn cut_replica(&mut self, node: Node, peers: &[Node]) -> anyhow::Result<()> {
        let mut wanted = Vec::new();
        for ip in self.running_ips(peers).await? {
            wanted.push(("INPUT", vec!["-s".to_string(), ip.clone()]));
            wanted.push(("OUTPUT", vec!["-d".to_string(), ip]));
        }
        self.add_rules(node, wanted)
            .await
            .with_context(|| format!("cutting {node} off its peers"))
    }

    /// Deletes every recorded rule of `node` (of every node when `None`).
    /// A rule whose namespace is gone (the container stopped) is gone too.
    async fn uncut(&mut self, node: Option<Node>) -> anyhow::Result<()> {
        let mut first_error = None;
        let mut kept = Vec::new();
        for rule in std::mem::take(&mut self.rules) {
            if node.is_some_and(|n| n != rule.node) {
                kept.push(rule);
                continue;
            }
            if let Err(e) = delete_rule(&rule).await {
                // Gone with its namespace is fine; anything else is reported.
                if self.pid(rule.node).await.ok().as_ref() == Some(&rule.pid) {
                    first_error.get_or_insert(e);
                    kept.push(rule);
                }
            }
        }
        self.rules = kept;
        match first_error {
            Some(e) => Err(e.context("removing a firewall rule")),
            None => Ok(()),
        }
    }

    /// Deletes any rule with this runner's comment in a running
    /// participant's namespace (left by a run that was killed outright).
    async fn sweep_rules(&self, node: Node) -> anyhow::Result<usize> {
        let Ok(pid) = self.pid(node).await else {
            return Ok(0);
        };
        let listing = nsenter_iptables(&pid, &["-S"]).await?;
        let mut n = 0;
        for line in listing.lines().filter(|l| l.contains(RULE_COMMENT)) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["-A", chain, rest @ ..] = words.as_slice() {
                let mut args = vec!["-D", chain];
                args.extend(rest.iter().map(|w| w.trim_matches('"')));
                nsenter_iptables(&pid, &args).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Kills `node` (a participant or a coordinator replica), removes its
    /// container and its data volume, and recreates both (the volume
    /// empty, the container not started) with compose.
    async fn wipe(&mut self, node: Node) -> anyhow::Result<()> {
        if let Some(why) = &self.no_wipe {
            bail!("{why}");
        }
        let id = self.id(node)?.to_string();
        let volume = docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{if eq .Destination \"/data\"}}{{.Name}}{{end}}{{end}}",
            &id,
        ])
        .await?;
        let volume = volume.trim().to_string();
        if volume.is_empty() {
            bail!("{node} has no named volume on /data to wipe");
        }
        let (running, _, _) = self.state(node).await?;
        if running {
            docker(&["kill", &id]).await?;
        }
        // Its rules went with its network namespace.
        self.rules.retain(|r| r.node != node);
        docker(&["rm", "-f", &id]).await?;
        docker(&["volume", "rm", &volume]).await?;
        self.recreate(node).await
    }

    /// `docker compose up --no-start --no-deps SERVICE` (a new container and
    /// volume, not started), then finds the new container.
    async fn recreate(&mut self, node: Node) -> anyhow::Result<()> {
        let service = node.to_string();
        let file = self.compose_file.to_string_lossy().into_owned();
        let (program, mut args) = compose_program().await;
        args.extend(["-f", &file, "-p", &self.project].map(String::from));
        args.extend(profiles(self.coordinators));
        args.extend(["up", "--no-start", "--no-deps", &service].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cmd(&program, &args, Duration::from_secs(120))
            .await
            .with_context(|| format!("recreating {service}"))?;
        let id = container_of(&self.project, &service).await?;
        match self.containers.get_mut(&node) {
            Some(c) => c.id = id,
            None => bail!("no container for {node}"),
        }
        Ok(())
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

    /// Waits until every one of `nodes` is ready, concurrently, timing each from `since`.
    async fn wait_ready(&self, nodes: &[Node], since: Instant) -> anyhow::Result<Vec<Rejoin>> {
        let probes: Vec<(Node, String)> = nodes.iter().map(|&n| (n, self.addr(n))).collect();
        wait_ready_all(&probes, since, READY_TIMEOUT).await
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

    fn coordinators(&self) -> u32 {
        self.coordinators
    }

    fn unsupported(&self, kind: FaultKind) -> Option<String> {
        if let Some(why) = why_not(kind, self.coordinators) {
            return Some(why);
        }
        match kind {
            FaultKind::PartitionCoordinator
            | FaultKind::PartitionCoordinatorLeader
            | FaultKind::IsolateCoordinatorLeader => self.no_firewall.clone(),
            FaultKind::Wipe | FaultKind::WipeCoordinator => self.no_wipe.clone(),
            _ => None,
        }
    }

    async fn inject(&mut self, fault: &Fault) -> anyhow::Result<()> {
        match (fault.kind, fault.targets.as_slice()) {
            (FaultKind::Kill | FaultKind::KillCoordinatorLeader, &[n]) => {
                docker(&["kill", self.id(n)?]).await.map(drop)
            }
            (FaultKind::Pause, &[n]) => docker(&["pause", self.id(n)?]).await.map(drop),
            (FaultKind::Partition, &[n]) => {
                docker(&["network", "disconnect", &self.network, self.id(n)?])
                    .await
                    .map(drop)
            }
            (FaultKind::PartitionCoordinator, targets) if !targets.is_empty() => {
                let cut = fault.cut.unwrap_or(Cut::Both);
                for &n in targets {
                    self.cut(n, cut).await?;
                }
                Ok(())
            }
            (FaultKind::Wipe, &[n @ Node::Participant(_)])
            | (FaultKind::WipeCoordinator, &[n @ Node::Coordinator(_)]) => self.wipe(n).await,
            (FaultKind::PartitionCoordinatorLeader, &[n @ Node::Coordinator(_)]) => {
                let peers: Vec<Node> = self
                    .containers
                    .keys()
                    .copied()
                    .filter(|&p| p != n)
                    .collect();
                self.cut_replica(n, &peers).await
            }
            (FaultKind::IsolateCoordinatorLeader, &[n @ Node::Coordinator(_)]) => {
                let peers: Vec<Node> = self.replicas().into_iter().filter(|&p| p != n).collect();
                self.cut_replica(n, &peers).await
            }
            (FaultKind::RestartAll, _) => {
                // The participants first, then the coordinator replicas, as
                // the local backend does (one `docker stop` stops its
                // containers in parallel).
                let participants = (1..=PARTICIPANTS).map(Node::Participant);
                for group in [self.ids(participants)?, self.ids(self.replicas())?] {
                    let mut args = vec!["stop", "-t", "10"];
                    args.extend(group.iter().map(String::as_str));
                    run_cmd("docker", &args, Duration::from_secs(60)).await?;
                }
                Ok(())
            }
            _ => bail!("cannot inject {fault} on the docker backend"),
        }
    }

    async fn heal(&mut self, fault: &Fault) -> anyhow::Result<Vec<Rejoin>> {
        let since = Instant::now();
        match (fault.kind, fault.targets.as_slice()) {
            (FaultKind::Kill | FaultKind::KillCoordinatorLeader, &[n]) => {
                docker(&["start", self.id(n)?]).await?;
                self.wait_ready(&[n], since).await
            }
            (FaultKind::Pause, &[n]) => {
                docker(&["unpause", self.id(n)?]).await?;
                self.wait_ready(&[n], since).await
            }
            (FaultKind::Partition, &[n]) => {
                self.reconnect(n).await?;
                self.wait_ready(&[n], since).await
            }
            (FaultKind::PartitionCoordinator, targets) if !targets.is_empty() => {
                for &n in targets {
                    self.uncut(Some(n)).await?;
                }
                self.wait_ready(targets, since).await
            }
            (FaultKind::PartitionCoordinatorLeader | FaultKind::IsolateCoordinatorLeader, &[n]) => {
                self.uncut(Some(n)).await?;
                self.wait_ready(&[n], since).await
            }
            (FaultKind::WipeCoordinator, &[n @ Node::Coordinator(id)]) => {
                docker(&["start", self.id(n)?]).await?;
                self.wait_ready(&[n], since).await?;
                let after = wait_log_caught_up(&self.status, id, since, READY_TIMEOUT)
                    .await
                    .with_context(|| format!("see `docker logs {}`", self.id(n).unwrap_or("?")))?;
                Ok(vec![Rejoin { node: n, after }])
            }
            (FaultKind::Wipe, &[n]) => {
                // Recreated empty, but kept stopped for the hold, like a
                // killed node; started here, so catch-up is timed alone.
                docker(&["start", self.id(n)?]).await?;
                self.wait_ready(&[n], since).await
            }
            (FaultKind::RestartAll, _) => {
                let replicas = self.replicas();
                let ids = self.ids(replicas.iter().copied())?;
                let mut args = vec!["start"];
                args.extend(ids.iter().map(String::as_str));
                docker(&args).await?;
                let mut all = self.wait_ready(&replicas, since).await?;
                let participants: Vec<Node> = (1..=PARTICIPANTS).map(Node::Participant).collect();
                let ids = self.ids(participants.iter().copied())?;
                let mut args = vec!["start"];
                args.extend(ids.iter().map(String::as_str));
                docker(&args).await?;
                all.extend(self.wait_ready(&participants, since).await?);
                Ok(all)
            }
            _ => bail!("cannot heal {fault} on the docker backend"),
        }
    }

    async fn heal_all(&mut self) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
        self.uncut(None).await?;
        let nodes: Vec<Node> = self.containers.keys().copied().collect();
        for &node in &nodes {
            let (running, paused, connected) = match self.state(node).await {
                Ok(s) => s,
                // A wipe that failed between removing the container and
                // recreating it: recreate it (empty) now.
                Err(e) if self.no_wipe.is_none() => {
                    warnings.push(format!("{node} had no container ({e:#}); recreated it"));
                    self.recreate(node).await?;
                    self.state(node).await?
                }
                Err(e) => return Err(e),
            };
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
            if self.no_firewall.is_none() {
                match self.sweep_rules(node).await {
                    Ok(0) => {}
                    Ok(n) => warnings.push(format!(
                        "removed {n} leftover firewall rule(s) of an earlier run from {node}"
                    )),
                    Err(e) => warnings.push(format!(
                        "could not look for leftover firewall rules in {node}: {e:#}"
                    )),
                }
            }
        }
        self.wait_ready(&nodes, Instant::now()).await?;
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
            Node::Coordinator(c) => format!("{HOST}:{}", BASE_PORT + 10 * (c as u16 - 1)),
            Node::Participant(i) => format!("{HOST}:{}", BASE_PORT + i as u16),
        }
    }
}

impl Drop for DockerBackend {
    /// The last resort for firewall rules (a run that failed, or was
    /// interrupted, between a cut and its heal): deleted with blocking
    /// commands, since there may be no runtime left to await on.
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            let mut args = vec![
                "-t",
                rule.pid.as_str(),
                "-n",
                "iptables",
                "-w",
                "-D",
                rule.chain,
            ];
            args.extend(rule.spec.iter().map(String::as_str));
            let _ = std::process::Command::new("nsenter")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
