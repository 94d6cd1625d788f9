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
    /// Address to serve participants on.
    #[arg(long, env = "QUINTET_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: String,

    /// Participant addresses, comma-separated; their order gives the ids 1..=N.
    #[arg(
        long,
        env = "QUINTET_PARTICIPANTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703,127.0.0.1:7704,127.0.0.1:7705"
    )]
    pub participants: Vec<String>,

    /// Data directory.
    #[arg(
        long,
        env = "QUINTET_DATA_DIR",
        default_value = "./quintet-data/coordinator"
    )]
    pub data_dir: PathBuf,

    /// How long a round waits for every vote before aborting.
    #[arg(long, env = "QUINTET_PREPARE_TIMEOUT", default_value = "2s", value_parser = quintet_common::duration::parse)]
    pub prepare_timeout: Duration,

    /// Most writes in one batch.
    #[arg(long, env = "QUINTET_MAX_BATCH_OPS", default_value_t = 1024)]
    pub max_batch_ops: usize,

    /// Start a new log segment (and drop older ones) after this many MiB.
    #[arg(long, env = "QUINTET_COMPACT_MIB", default_value_t = 64)]
    pub compact_mib: u64,

    /// Log format.
    #[arg(long, env = "QUINTET_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let n = self.participants.len();
        if n == 0 || n > MAX_PARTICIPANTS {
            anyhow::bail!("--participants lists {n} addresses; give 1 to {MAX_PARTICIPANTS}");
        }
        if let Some(empty) = self.participants.iter().position(|p| p.trim().is_empty()) {
            anyhow::bail!("--participants entry {} is empty", empty + 1);
        }
        if self.max_batch_ops == 0 {
            anyhow::bail!("--max-batch-ops must be at least 1");
        }
        Ok(())
    }
}
