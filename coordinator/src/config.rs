//! The coordinator's configuration: one struct, built by clap, every flag
//! with a `QUINTET_*` environment fallback.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quintet_common::telemetry::LogFormat;
use quintet_common::types::MAX_PARTICIPANTS;

/// The quintet coordinator: sequences every write and decides each batch with 2PC.
#[derive(Parser, Debug, Clone)]
#[command(name = "quintet-coordinator", version)]
pub struct Config {
    /// Address to serve participants (and the other coordinator replicas) on.
    #[arg(long, env = "QUINTET_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: String,

    /// This replica's id: its position (from 1) in --coordinators
    /// ('hostname': the N of a host name ending in -N, plus one, as in a StatefulSet).
    #[arg(long, env = "QUINTET_COORDINATOR_ID", default_value = "1", value_parser = quintet_common::server_id::parse)]
    pub id: u32,

    /// Every coordinator replica's address, comma-separated, in id order:
    /// 1, 3 or 5 of them replicate the decision log with Raft, on the same
    /// port as --listen [default: this replica alone, at --listen].
    #[arg(long, env = "QUINTET_COORDINATORS", value_delimiter = ',')]
    pub coordinators: Vec<String>,

    /// Addresses of running coordinator replicas, comma-separated: with an
    /// empty data dir, this replica asks their leader to add it to the
    /// group (it copies the log, then votes); with a log, it is a member
    /// already and this is ignored. Instead of --coordinators.
    #[arg(
        long,
        env = "QUINTET_JOIN",
        value_delimiter = ',',
        conflicts_with = "coordinators"
    )]
    pub join: Vec<String>,

    /// The address the other coordinator replicas (and tools) reach this
    /// one at [default: its entry in --coordinators, else --listen].
    #[arg(long, env = "QUINTET_ADVERTISE")]
    pub advertise: Option<String>,

    /// The participants' peer addresses (their --peer-listen, not the
    /// client port), comma-separated; their order gives the ids 1..=N.
    #[arg(
        long,
        env = "QUINTET_PARTICIPANTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7801,127.0.0.1:7802,127.0.0.1:7803,127.0.0.1:7804,127.0.0.1:7805"
    )]
    pub participants: Vec<String>,

    /// Data directory.
    #[arg(
        long,
        env = "QUINTET_DATA_DIR",
        default_value = "./quintet-data/coordinator"
    )]
    pub data_dir: PathBuf,

    /// How long a round waits for every member's vote; a member that misses
    /// it is suspect and, once its lease is surely over, dropped from the view.
    #[arg(long, env = "QUINTET_PREPARE_TIMEOUT", default_value = "500ms", value_parser = quintet_common::duration::parse)]
    pub prepare_timeout: Duration,

    /// The lease granted to members (D): how long a member may serve
    /// linearizable reads after asking, and about how long writes pause
    /// when one dies.
    #[arg(long, env = "QUINTET_LEASE", default_value = "1s", value_parser = quintet_common::duration::parse)]
    pub lease: Duration,

    /// How often participants renew their lease (H); a member silent for
    /// 3 H is suspect. Must match the participants' --heartbeat.
    #[arg(long, env = "QUINTET_HEARTBEAT", default_value = "100ms", value_parser = quintet_common::duration::parse)]
    pub heartbeat: Duration,

    /// How long coordinator replicas go without hearing a leader before one
    /// stands for election (randomized up to twice that). A new leader
    /// serves within about this after the old one dies; keep it well under
    /// --lease so members' leases, and linearizable reads, outlast a
    /// failover. Rounded to ticks of --heartbeat/2, at least three.
    #[arg(long, env = "QUINTET_ELECTION_TIMEOUT", default_value = "300ms", value_parser = quintet_common::duration::parse)]
    pub election_timeout: Duration,

    /// Fewest members writes go on with: a member is never dropped below
    /// this, and with fewer members writes stop rather than commit on too
    /// few copies [default: 3, or every participant when there are fewer].
    #[arg(long, env = "QUINTET_MIN_PARTICIPANTS")]
    pub min_participants: Option<usize>,

    /// Most writes in one batch.
    #[arg(long, env = "QUINTET_MAX_BATCH_OPS", default_value_t = 1024)]
    pub max_batch_ops: usize,

    /// Start a new log segment (and drop older ones) after this many MiB.
    #[arg(long, env = "QUINTET_COMPACT_MIB", default_value_t = 64)]
    pub compact_mib: u64,

    /// Also compact the Raft log (to a snapshot) once it holds this many
    /// entries.
    #[arg(long, env = "QUINTET_COMPACT_ENTRIES", default_value_t = 50_000)]
    pub compact_entries: usize,

    /// Free space (MiB) kept on the data dir's file system: below it, the
    /// leader refuses new writes ("unavailable", nothing applied); they
    /// resume once space is freed.
    #[arg(long, env = "QUINTET_MIN_FREE_MIB", default_value_t = 32)]
    pub min_free_mib: u64,

    /// This replica's TLS certificate (PEM; `quintet certs init` makes
    /// DIR/coordinator.crt for replica 1 and DIR/coordinator-N.crt for
    /// the others): with --tls-key and --tls-ca, the port requires mutual
    /// TLS, and this replica presents it when it dials participants and
    /// the other replicas.
    #[arg(long, env = "QUINTET_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "QUINTET_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA (PEM; DIR/ca.crt): participants and the other
    /// replicas must present certificates signed by it.
    #[arg(long, env = "QUINTET_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "QUINTET_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The replicas' addresses after defaults.
    pub fn replicas(&self) -> Vec<String> {
        if self.coordinators.is_empty() {
            vec![self.listen.clone()]
        } else {
            self.coordinators
                .iter()
                .map(|a| a.trim().to_string())
                .collect()
        }
    }

    /// The driver's tick: half a heartbeat.
    pub fn tick(&self) -> Duration {
        (self.heartbeat / 2).max(Duration::from_millis(10))
    }

    /// The election timeout in ticks.
    pub fn election_ticks(&self) -> usize {
        let tick = self.tick().as_millis().max(1);
        ((self.election_timeout.as_millis() + tick / 2) / tick).max(3) as usize
    }

    /// The address this replica is reached at, after defaults.
    pub fn advertise(&self) -> String {
        if let Some(a) = &self.advertise {
            return a.trim().to_string();
        }
        self.replicas()
            .get((self.id as usize).wrapping_sub(1))
            .cloned()
            .unwrap_or_else(|| self.listen.clone())
    }

    /// `--min-participants` after its default.
    pub fn min_members(&self) -> usize {
        self.min_participants
            .unwrap_or(3)
            .min(self.participants.len())
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let n = self.participants.len();
        if n == 0 || n > MAX_PARTICIPANTS {
            anyhow::bail!("--participants lists {n} addresses; give 1 to {MAX_PARTICIPANTS}");
        }
        if let Some(empty) = self.participants.iter().position(|p| p.trim().is_empty()) {
            anyhow::bail!("--participants entry {} is empty", empty + 1);
        }
        let r = self.replicas();
        if r.is_empty() || r.len() > 7 {
            anyhow::bail!(
                "--coordinators lists {} addresses; give 1 to 7 (3 or 5 to survive the loss of one or two)",
                r.len()
            );
        }
        if let Some(empty) = r.iter().position(|a| a.is_empty()) {
            anyhow::bail!("--coordinators entry {} is empty", empty + 1);
        }
        if !self.join.is_empty() {
            if let Some(empty) = self.join.iter().position(|a| a.trim().is_empty()) {
                anyhow::bail!("--join entry {} is empty", empty + 1);
            }
            if self.id == 0 || self.id > 7 {
                anyhow::bail!("--id {} is out of range: give 1 to 7", self.id);
            }
            let unspecified = ["0.0.0.0", "[::]", "::"];
            if self.advertise.is_none() && unspecified.iter().any(|u| self.listen.starts_with(u)) {
                anyhow::bail!(
                    "--join needs --advertise: the address the other coordinator replicas reach this one at (--listen {} is not one)",
                    self.listen
                );
            }
        } else if self.id == 0 || self.id as usize > r.len() {
            anyhow::bail!(
                "--id {} is out of range: --coordinators lists {} replicas, numbered from 1",
                self.id,
                r.len()
            );
        }
        if let Some(a) = &self.advertise
            && r.len() > 1
            && r[self.id as usize - 1] != a.trim()
        {
            anyhow::bail!(
                "--advertise {a} differs from this replica's entry {} in --coordinators; drop one of them",
                r[self.id as usize - 1]
            );
        }
        if self.max_batch_ops == 0 {
            anyhow::bail!("--max-batch-ops must be at least 1");
        }
        if let Some(m) = self.min_participants
            && (m == 0 || m > n)
        {
            anyhow::bail!(
                "--min-participants {m} is out of range: give 1 to {n} (the number of --participants)"
            );
        }
        if self.heartbeat.is_zero() || self.lease < self.heartbeat * 3 {
            anyhow::bail!(
                "--lease {:?} must be at least three --heartbeat intervals ({:?}) so a member can renew in time",
                self.lease,
                self.heartbeat
            );
        }
        if self.election_timeout >= self.lease {
            anyhow::bail!(
                "--election-timeout {:?} must be shorter than --lease {:?}, or members' leases run out during every coordinator failover",
                self.election_timeout,
                self.lease
            );
        }
        if self.prepare_timeout.is_zero() {
            anyhow::bail!("--prepare-timeout must be positive");
        }
        Ok(())
    }
}
