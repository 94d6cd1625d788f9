//! The participant's configuration: one struct, built by clap, every flag
//! with a `QUINTET_*` environment fallback.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quintet_common::telemetry::LogFormat;
use quintet_common::types::{DEFAULT_MAX_VALUE_LEN, MAX_PARTICIPANTS, NodeId};

/// A quintet replica: votes on and applies the coordinator's batches, serves reads.
#[derive(Parser, Debug, Clone)]
#[command(name = "quintet-participant", version)]
pub struct Config {
    /// This replica's id, 1..=7: its position in the coordinator's --participants list
    /// ('hostname': the N of a host name ending in -N, plus one, as in a StatefulSet).
    #[arg(long, env = "QUINTET_ID", value_parser = parse_id)]
    pub id: NodeId,

    /// Address to serve clients on [default: 127.0.0.1:770ID]. Only the
    /// client calls (get, put, delete, status) and health are served here.
    #[arg(long, env = "QUINTET_LISTEN")]
    pub listen: Option<String>,

    /// Address to serve the coordinator and other participants (2PC,
    /// leases, catch-up) on [default: 127.0.0.1:780ID]. Keep it on a
    /// network only the cluster's servers reach.
    #[arg(long, env = "QUINTET_PEER_LISTEN")]
    pub peer_listen: Option<String>,

    /// The coordinator's address, or every coordinator replica's,
    /// comma-separated (requests go to whichever leads).
    #[arg(
        long,
        env = "QUINTET_COORDINATOR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7700"
    )]
    pub coordinator: Vec<String>,

    /// The address of this replica's peer port as other participants reach
    /// it to catch up from it [default: --peer-listen, unless it listens on
    /// all interfaces; then the coordinator's --participants entry for it].
    #[arg(long, env = "QUINTET_ADVERTISE_PEER", alias = "advertise")]
    pub advertise_peer: Option<String>,

    /// How often to renew the lease with the coordinator (H). Must match
    /// the coordinator's --heartbeat.
    #[arg(long, env = "QUINTET_HEARTBEAT", default_value = "100ms", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Data directory [default: ./quintet-data/participant-ID].
    #[arg(long, env = "QUINTET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Largest value accepted, in bytes.
    #[arg(long, env = "QUINTET_MAX_VALUE_SIZE", default_value_t = DEFAULT_MAX_VALUE_LEN)]
    pub max_value_size: usize,

    /// Take a snapshot (and delete older log segments) after this many MiB of log.
    #[arg(long, env = "QUINTET_SNAPSHOT_MIB", default_value_t = 64)]
    pub snapshot_mib: u64,

    /// MiB of recently committed batches kept in memory, so a replica that
    /// returns (or a wiped one, while the history is short) catches up
    /// from the log instead of copying a snapshot; a copy in progress may
    /// pin up to 16 times this.
    #[arg(long, env = "QUINTET_CATCHUP_LOG_MIB", default_value_t = 16)]
    pub catchup_log_mib: u64,

    /// How long a linearizable read waits on an undecided write of its key.
    #[arg(long, env = "QUINTET_READ_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub read_timeout: Duration,

    /// How long to keep trying to reach the coordinator at start-up.
    #[arg(long, env = "QUINTET_STARTUP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub startup_timeout: Duration,

    /// Free space (MiB) kept on the data dir's file system: below it, the
    /// replica votes NO on writes ("disk full") and keeps serving reads;
    /// writes resume once space is freed.
    #[arg(long, env = "QUINTET_MIN_FREE_MIB", default_value_t = 32)]
    pub min_free_mib: u64,

    /// Client tokens and their roles (see `quintet auth add`): with it,
    /// every client request needs a known token (`read` for GET and
    /// status, `readwrite` to write). Reloaded on SIGHUP.
    #[arg(long, env = "QUINTET_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// This node's TLS certificate (PEM; `quintet certs init` makes
    /// DIR/participant-ID.crt): with --tls-key and --tls-ca, both ports
    /// speak TLS, the peer port requires a client certificate signed by
    /// the CA, and this replica presents it when it dials.
    #[arg(long, env = "QUINTET_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "QUINTET_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA (PEM; DIR/ca.crt): the certificates of the other
    /// servers and of clients must be signed by it.
    #[arg(long, env = "QUINTET_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "QUINTET_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Room a frame keeps besides one value: the key (at most 4 KiB), the
/// batch and envelope headers.
const FRAME_HEADROOM: usize = 64 << 10;

/// Largest `--max-value-size`: one write travels in one frame.
pub const MAX_VALUE_LIMIT: usize = quintet_common::net::MAX_FRAME - FRAME_HEADROOM;

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_value_size == 0 || self.max_value_size > MAX_VALUE_LIMIT {
            anyhow::bail!(
                "--max-value-size {} cannot work: a write travels in one frame of at most {} bytes with its key and headers; give 1 to {MAX_VALUE_LIMIT}",
                self.max_value_size,
                quintet_common::net::MAX_FRAME
            );
        }
        if self.listen_addr() == self.peer_listen_addr() {
            anyhow::bail!(
                "--listen and --peer-listen are both {}: clients and peers need separate ports; give another --peer-listen",
                self.listen_addr()
            );
        }
        Ok(())
    }

    /// The listen address after defaults.
    pub fn listen_addr(&self) -> String {
        self.listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", 7700 + self.id))
    }

    /// The peer listen address after defaults.
    pub fn peer_listen_addr(&self) -> String {
        self.peer_listen
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", 7800 + self.id))
    }

    /// The peer address to advertise for catch-up, or empty to let the
    /// coordinator use its own address for this replica's peer port.
    pub fn advertise_addr(&self) -> String {
        if let Some(a) = &self.advertise_peer {
            return a.clone();
        }
        let listen = self.peer_listen_addr();
        let host = listen.rsplit_once(':').map_or("", |(h, _)| h);
        match host.trim_matches(|c| c == '[' || c == ']') {
            "0.0.0.0" | "::" | "" => String::new(),
            _ => listen,
        }
    }

    /// The data dir after defaults.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("./quintet-data/participant-{}", self.id)))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    quintet_common::duration::parse(s)
}

fn parse_id(s: &str) -> Result<NodeId, String> {
    let id = quintet_common::server_id::parse(s)?;
    if id as usize > MAX_PARTICIPANTS {
        return Err(format!(
            "participant id {id} is out of range: give 1 to {MAX_PARTICIPANTS}"
        ));
    }
    Ok(id)
}
