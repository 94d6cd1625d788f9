//! Where the cluster under test runs, and how faults are done to it.
//!
//! The runner only knows this trait; [`super::local::LocalBackend`] does
//! faults with signals on processes it started itself,
//! [`super::docker::DockerBackend`] with the Docker CLI on the containers of
//! a compose project. Every method is bounded in time: a heal that cannot
//! bring a node back within its timeout returns an error (the runner logs
//! it and goes on; the final convergence check then fails, naming the
//! replica).
//!
//! Injections and heals are idempotent where that is cheap, and
//! [`Backend::heal_all`] looks at the actual state of every node (not at
//! what the nemesis believes it did), so the end of a run always leaves a
//! whole, running cluster behind.

use std::future::Future;
use std::path::Path;

use quintet_client::local::Node;

use super::nemesis::FaultKind;

/// A cluster the chaos runner can hurt and heal.
pub trait Backend: Send {
    /// `local` or `docker`.
    fn name(&self) -> &'static str;

    /// The participants' client addresses, participant 1 first.
    fn endpoints(&self) -> Vec<String>;

    /// Why `kind` cannot be done here, or `None` when it can.
    fn unsupported(&self, kind: FaultKind) -> Option<&'static str>;

    /// Injects `kind` at `target` (`None`: every node). Returns once the
    /// fault is in effect.
    fn inject(
        &mut self,
        kind: FaultKind,
        target: Option<Node>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Undoes an injected fault; returns once the node(s) answer as ready
    /// again (bounded).
    fn heal(
        &mut self,
        kind: FaultKind,
        target: Option<Node>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Brings every node back to running, unpaused and connected, whatever
    /// state it is in, and waits until all answer as ready (bounded). Also
    /// reports nodes that died without being told to (a server crash).
    fn heal_all(&mut self) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send;

    /// Where the node logs are, for the report.
    fn logs_hint(&self) -> String;

    /// Keeps the node logs for a failed run: copies them under `dir` when
    /// they would otherwise disappear. Returns where they are.
    fn keep_logs(&mut self, dir: &Path) -> impl Future<Output = anyhow::Result<String>> + Send;

    /// The address of a node, for health probes.
    fn addr(&self, node: Node) -> String;
}
