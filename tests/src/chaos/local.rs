//! The local backend: a [`LocalCluster`] of six processes this runner
//! starts itself on 127.0.0.1, hurt with signals.
//!
//! - kill: SIGKILL (the process is reaped), healed by starting it again on
//!   the same data dir and port and waiting until it answers as ready;
//! - pause: SIGSTOP, healed by SIGCONT (its sockets stay open, so peers see
//!   a node that accepts connections and never answers: the nastiest kind
//!   of slow node);
//! - restart-all: SIGTERM to all six (participants first), healed by
//!   starting the coordinator, then the participants;
//! - partition: **not available**. Processes on one host share the loopback
//!   interface, and cutting one off would need root (network namespaces or
//!   iptables). It is not emulated with SIGSTOP either (that is what pause
//!   already does, and calling it a partition would overstate what was
//!   tested): the runner says so at start and leaves it out of the schedule.
//!   The docker backend does real partitions.
//!
//! The server binaries are taken from `--bin-dir`, else from next to the
//! running executable (where cargo puts `quintet-chaos`); a missing binary
//! is a clear error naming the build command. Data and logs live in a
//! temporary directory that is removed after a passing run and kept (its
//! path printed) after a failing one, or in `--dir` if given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use quintet_client::local::{LocalCluster, LocalOptions, Node};

use super::backend::Backend;
use super::nemesis::FaultKind;

/// How long a node may take to answer as ready after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Whether the local backend can do `kind` (everything but partition).
pub fn supports(kind: FaultKind) -> bool {
    kind != FaultKind::Partition
}

/// A local cluster driven by signals.
pub struct LocalBackend {
    cluster: LocalCluster,
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
        let opts = LocalOptions {
            dir: Some(dir),
            participants: super::nemesis::PARTICIPANTS,
            bin_dir: Some(bin_dir),
            ..LocalOptions::default()
        };
        let cluster = LocalCluster::start(opts, Duration::from_secs(60))
            .await
            .context("starting the local cluster")?;
        Ok(LocalBackend { cluster, temp })
    }

    /// The data and log directory.
    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    /// Starts `node` (reaping it first if it died) and waits until it is ready.
    async fn bring_up(&mut self, node: Node) -> anyhow::Result<()> {
        if self.cluster.pid(node).is_none() {
            self.cluster.start_node(node)?;
        }
        self.cluster.wait_ready(node, READY_TIMEOUT).await
    }

    fn all_nodes(&self) -> Vec<Node> {
        self.cluster.nodes()
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    fn unsupported(&self, kind: FaultKind) -> Option<&'static str> {
        (!supports(kind)).then_some(
            "partition is not available on the local backend (one loopback interface, no root); \
             it is left out of the schedule, use --backend docker for partitions",
        )
    }

    async fn inject(&mut self, kind: FaultKind, target: Option<Node>) -> anyhow::Result<()> {
        match (kind, target) {
            (FaultKind::Kill, Some(node)) => self.cluster.kill(node),
            (FaultKind::Pause, Some(node)) => self.cluster.pause(node),
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
            (kind, target) => bail!("cannot inject {kind} at {target:?} on the local backend"),
        }
    }

    async fn heal(&mut self, kind: FaultKind, target: Option<Node>) -> anyhow::Result<()> {
        match (kind, target) {
            (FaultKind::Kill, Some(node)) => self.bring_up(node).await,
            (FaultKind::Pause, Some(node)) => self.cluster.resume(node),
            (FaultKind::RestartAll, _) => {
                for node in self.all_nodes() {
                    // The coordinator comes first in `nodes()`: participants
                    // register with it as they start.
                    self.bring_up(node).await?;
                }
                Ok(())
            }
            (kind, target) => bail!("cannot heal {kind} at {target:?} on the local backend"),
        }
    }

    async fn heal_all(&mut self) -> anyhow::Result<Vec<String>> {
        let mut warnings = Vec::new();
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
        // (LocalCluster's own drop would SIGKILL them anyway).
        self.cluster.shutdown();
    }
}
