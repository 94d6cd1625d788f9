//! Where the cluster under test runs, and how faults are done to it.
//!
//! The runner only knows this trait; [`super::local::LocalBackend`] does
//! faults with signals on processes it started itself,
//! [`super::docker::DockerBackend`] with the Docker CLI on the containers of
//! a compose project. Every method is bounded in time: a heal that cannot
//! bring a node back within its timeout returns an error (the runner logs
//! it, then tries [`Backend::heal_all`] before the next fault; a node that
//! stays down makes the final convergence check fail, naming the
//! replica).
//!
//! A heal waits until every node it brings back answers `health` as ready
//! (a participant: a member holding a lease, so after its catch-up and
//! rejoin) and says how long each took, measured from the start of the
//! heal; that is the rejoin time of the report.
//!
//! A fault that hits a coordinator replica picked by role (the leader, a
//! follower) names no target in the schedule: the runner finds who leads
//! right before the injection ([`leader_replicas`], the leader's status
//! asked through the participants) and hands the backend the fault with
//! its target filled in, so backends only ever see concrete nodes.
//!
//! Injections and heals are idempotent where that is cheap, and
//! [`Backend::heal_all`] looks at the actual state of every node (not at
//! what the nemesis believes it did), so the end of a run always leaves a
//! whole, running cluster behind.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use quintet_client::Client;
use quintet_client::client::health;
use quintet_client::local::Node;
use quintet_common::rpc::ReplicaStatus;

use super::nemesis::{Fault, FaultKind, Rejoin, leader_of};

/// A cluster the chaos runner can hurt and heal.
pub trait Backend: Send {
    /// `local` or `docker`.
    fn name(&self) -> &'static str;

    /// The participants' client addresses, participant 1 first.
    fn endpoints(&self) -> Vec<String>;

    /// How many coordinator replicas the cluster runs.
    fn coordinators(&self) -> u32;

    /// Why `kind` cannot be done here, or `None` when it can.
    fn unsupported(&self, kind: FaultKind) -> Option<String>;

    /// Injects `fault`. Returns once the fault is in effect.
    fn inject(&mut self, fault: &Fault) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Undoes an injected fault; returns once the node(s) answer as ready
    /// again (bounded), with how long each took from the start of the heal.
    fn heal(&mut self, fault: &Fault) -> impl Future<Output = anyhow::Result<Vec<Rejoin>>> + Send;

    /// Brings every node back to running, unpaused and connected (no cut
    /// or firewall rule left), whatever state it is in, and waits until all
    /// answer as ready (bounded). Also reports nodes that died without being
    /// told to (a server crash).
    fn heal_all(&mut self) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send;

    /// Where the node logs are, for the report.
    fn logs_hint(&self) -> String;

    /// Keeps the node logs for a failed run: copies them under `dir` when
    /// they would otherwise disappear. Returns where they are.
    fn keep_logs(&mut self, dir: &Path) -> impl Future<Output = anyhow::Result<String>> + Send;

    /// The address of a node, for health probes.
    fn addr(&self, node: Node) -> String;
}

/// Polls `health` at each `(node, address)` concurrently until every one
/// answers ready; returns when each first did, measured from `since`. Fails
/// naming the first node not ready after `timeout` (from now) and what it
/// last said.
pub async fn wait_ready_all(
    nodes: &[(Node, String)],
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Vec<Rejoin>> {
    let deadline = Instant::now() + timeout;
    let waits = nodes.iter().map(|(node, addr)| async move {
        loop {
            let last = match health(addr, Duration::from_millis(500)).await {
                Ok(h) if h.ready => {
                    return Ok(Rejoin {
                        node: *node,
                        after: since.elapsed(),
                    });
                }
                Ok(h) => format!("not ready: {}", h.detail),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("{node} at {addr} not ready after {timeout:?} ({last})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    futures::future::join_all(waits).await.into_iter().collect()
}

/// The coordinator replicas as the leader lists them (its status, asked
/// through the participants), retried until a status names exactly one
/// leader or `timeout` has passed; the error says what was last seen.
pub async fn leader_replicas(
    client: &Client,
    timeout: Duration,
) -> anyhow::Result<Vec<ReplicaStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.coordinator_status().await {
            Ok(s) if leader_of(&s.replicas).is_some() => return Ok(s.replicas),
            Ok(s) => format!(
                "the status names no single leader: {}",
                s.replicas
                    .iter()
                    .map(|r| format!("{} {}", r.id, r.role))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("no coordinator leader found within {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the leader reports coordinator replica `id` reachable with
/// its log at least where the leader's own was at the first look (or `id`
/// itself leads): a wiped replica's rejoin. Returns when, from `since`;
/// fails after `timeout` (from now) saying what the leader last reported.
pub async fn wait_log_caught_up(
    status: &Client,
    id: u32,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + timeout;
    let mut target = None;
    loop {
        let last = match leader_replicas(status, Duration::from_secs(2)).await {
            Ok(replicas) => {
                let leader = leader_of(&replicas);
                let leader_at = replicas
                    .iter()
                    .find(|r| Some(r.id) == leader)
                    .map_or(0, |r| r.applied);
                let want = *target.get_or_insert(leader_at);
                match replicas.iter().find(|r| r.id == id) {
                    Some(r) if r.role == "leader" => return Ok(since.elapsed()),
                    Some(r) if r.reachable && r.applied >= want => return Ok(since.elapsed()),
                    Some(r) => format!(
                        "the leader (replica {}) has it {}at log index {} of {want}",
                        leader.unwrap_or(0),
                        if r.reachable { "" } else { "unreachable, " },
                        r.applied
                    ),
                    None => format!("the leader's status does not list replica {id}"),
                }
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("coordinator replica {id} not caught up after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
