//! The workload engine: C closed-loop clients driving a mix of puts, gets and
//! deletes against a cluster, recording every operation.
//!
//! `quintet bench` and the fault-injection runner (`quintet-chaos`) are both
//! built on [`run`]. The design:
//!
//! - **Clients.** Each of the [`WorkloadSpec::clients`] clients is its own
//!   tokio task with its own [`Client`] (so its own TCP connections; nothing
//!   is multiplexed between clients). A client issues one operation, waits
//!   for its outcome, and issues the next at once (a closed loop: offered load
//!   follows the cluster's speed, and latency is service time, not queueing
//!   in the generator).
//! - **Operations.** Each operation's kind is drawn from the [`Mix`] weights
//!   and its key from the key space `0..keys` ([`KeyDist::Uniform`] or
//!   [`KeyDist::Zipf`]), named `"{key_prefix}{index}"`. Put values are unique
//!   within a run: `"c{client}-{seq}-"` padded with `x` to `value_size` bytes
//!   (longer when `value_size` is too small to hold the prefix), which lets a
//!   history checker tell which put a read observed.
//! - **Determinism.** Every client has its own [`SmallRng`] seeded from
//!   [`WorkloadSpec::seed`] and the client id, so the sequence of kinds, keys
//!   and values each client issues is a function of the seed (the interleaving
//!   and the outcomes are not, of course).
//! - **Targets.** [`Target::Random`] uses the client's failover
//!   ([`Client::get`], [`Client::put`], [`Client::delete`]): the replica is
//!   chosen at random and not recorded. [`Target::RoundRobinReplica`] sends
//!   operation `seq` of client `c` to replica `(c + seq) % n` with no failover
//!   and records which one, which is what a per-replica history needs.
//! - **Recording.** Every completed operation becomes an [`OpRecord`] (times
//!   are offsets from the start of the run, from one monotonic clock). The
//!   optional observer sees each record as it completes (on the client's
//!   task, so it should be quick: push to a channel, bump a counter). The
//!   engine also folds records into a [`Recorder`] per client; the recorders
//!   are merged into the [`Summary`] at the end. Operations invoked during
//!   the warm-up are recorded (with `warmup: true`) but left out of the
//!   figures.
//! - **Stopping.** [`Stop::Duration`] stops issuing operations once the
//!   warm-up plus that duration has elapsed; [`Stop::Ops`] stops after that
//!   many operations invoked after the warm-up, across all clients. The cancel
//!   signal stops every client before its next operation. In every case an
//!   operation in flight is allowed to finish (it is bounded by the client's
//!   timeout), so every invoked operation has a record.
//!
//! Latencies are kept in HdrHistograms at microsecond resolution with 3
//! significant digits, one per operation kind; only successful operations go
//! into them. Errors are counted by [`ClientError::kind`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quintet_common::types::{Op, OpResult, ReadLevel};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::sync::watch;

use crate::client::{Client, ClientError};

/// Relative weights of the three operation kinds.
///
/// Parsed from `put=50,get=50` (any subset of `put`, `get`, `delete`, each at
/// most once; weights are non-negative integers, at least one positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    put: u32,
    get: u32,
    delete: u32,
}

impl Mix {
    /// A mix with these weights; fails when all are zero or their sum
    /// overflows.
    pub fn new(put: u32, get: u32, delete: u32) -> Result<Mix, String> {
        let total = put
            .checked_add(get)
            .and_then(|s| s.checked_add(delete))
            .ok_or("mix weights are too large")?;
        if total == 0 {
            return Err("mix needs at least one positive weight, e.g. put=50,get=50".into());
        }
        Ok(Mix { put, get, delete })
    }

    /// Weight of puts.
    pub fn put(&self) -> u32 {
        self.put
    }

    /// Weight of gets.
    pub fn get(&self) -> u32 {
        self.get
    }

    /// Weight of deletes.
    pub fn delete(&self) -> u32 {
        self.delete
    }

    /// Draws an operation kind with probability proportional to its weight.
    pub fn pick<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> OpKind {
        let r = rng.random_range(0..self.put + self.get + self.delete);
        if r < self.put {
            OpKind::Put
        } else if r < self.put + self.get {
            OpKind::Get
        } else {
            OpKind::Delete
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut weights: [Option<u32>; 3] = [None; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid mix entry {part:?}: expected NAME=WEIGHT"))?;
            let slot = match name.trim() {
                "put" => 0,
                "get" => 1,
                "delete" => 2,
                other => {
                    return Err(format!(
                        "unknown operation {other:?} in mix: use put, get or delete"
                    ));
                }
            };
            let w: u32 = weight.trim().parse().map_err(|_| {
                format!("invalid weight {weight:?} for {name}: expected a non-negative integer")
            })?;
            if weights[slot].replace(w).is_some() {
                return Err(format!("{name} appears twice in the mix"));
            }
        }
        Mix::new(
            weights[0].unwrap_or(0),
            weights[1].unwrap_or(0),
            weights[2].unwrap_or(0),
        )
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            ("put", self.put),
            ("get", self.get),
            ("delete", self.delete),
        ]
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(n, w)| format!("{n}={w}"))
        .collect();
        f.write_str(&parts.join(","))
    }
}

/// How keys are drawn from `0..keys`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with exponent `s` in `[0, 1)`: key `i` (0-based) has
    /// probability proportional to `1 / (i + 1)^s`, so key 0 is the hottest.
    Zipf(f64),
}

/// The default zipfian exponent, as in YCSB.
pub const DEFAULT_ZIPF_S: f64 = 0.99;

impl FromStr for KeyDist {
    type Err = String;

    /// Parses `uniform`, `zipf` (s = 0.99) or `zipf:S`.
    fn from_str(s: &str) -> Result<KeyDist, String> {
        let s = s.trim();
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        let rest = s.strip_prefix("zipf").ok_or_else(|| {
            format!("unknown key distribution {s:?}: use uniform, zipf or zipf:S")
        })?;
        let exponent = if rest.is_empty() {
            DEFAULT_ZIPF_S
        } else {
            let v = rest
                .strip_prefix(':')
                .ok_or_else(|| format!("invalid key distribution {s:?}: use zipf:S"))?;
            v.parse::<f64>()
                .map_err(|_| format!("invalid zipf exponent {v:?}: expected e.g. 0.99"))?
        };
        check_zipf_exponent(exponent)?;
        Ok(KeyDist::Zipf(exponent))
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => f.write_str("uniform"),
            KeyDist::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

fn check_zipf_exponent(s: f64) -> Result<(), String> {
    if s.is_finite() && (0.0..1.0).contains(&s) {
        Ok(())
    } else {
        Err(format!(
            "zipf exponent must be at least 0 and below 1 (got {s})"
        ))
    }
}

/// A zipfian generator over `0..n` (Gray et al., "Quickly generating
/// billion-record synthetic databases", SIGMOD 1994; the method YCSB uses).
///
/// Construction computes `zeta(n, s)` in O(n); sampling is O(1). Ranks 0 and
/// 1 get their exact probabilities; the tail follows the continuous
/// approximation of the method.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    /// A generator over `0..n` with exponent `s` in `[0, 1)`.
    pub fn new(n: u64, s: f64) -> Result<Zipf, String> {
        if n == 0 {
            return Err("the key space is empty".into());
        }
        check_zipf_exponent(s)?;
        let zetan = zeta(n, s);
        let zeta2 = zeta(2.min(n), s);
        let eta = if n <= 2 {
            // Never used: u * zetan < zeta2 always holds when n <= 2.
            1.0
        } else {
            (1.0 - (2.0 / n as f64).powf(1.0 - s)) / (1.0 - zeta2 / zetan)
        };
        Ok(Zipf {
            n,
            theta: s,
            alpha: 1.0 / (1.0 - s),
            zetan,
            eta,
        })
    }

    /// The size of the key space.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The exact probability of rank `i` under the zipfian law.
    pub fn probability(&self, i: u64) -> f64 {
        if i >= self.n {
            return 0.0;
        }
        1.0 / ((i + 1) as f64).powf(self.theta) / self.zetan
    }

    /// Draws a rank in `0..n`.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if self.n > 1 && uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }
}

/// `sum_{i=1..n} 1 / i^s`.
fn zeta(n: u64, s: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(s)).sum()
}

/// When a run stops issuing operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long, counted from the end of the warm-up.
    Duration(Duration),
    /// After this many operations invoked after the warm-up, in total.
    Ops(u64),
}

/// Where each operation is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Target {
    /// A random replica, with the client's failover; not recorded.
    #[default]
    Random,
    /// Operation `seq` of client `c` goes to replica `(c + seq) % n`, with
    /// no failover; recorded in [`OpRecord::replica`].
    RoundRobinReplica,
}

/// Everything that defines a workload.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// Number of concurrent closed-loop clients (tasks, each with its own
    /// connections).
    pub clients: u32,
    /// Operation kinds and their weights.
    pub mix: Mix,
    /// Size of the key space: keys are `key_prefix` + `0..keys`.
    pub keys: u64,
    /// How keys are drawn.
    pub key_dist: KeyDist,
    /// Length of put values in bytes (at least the unique prefix).
    pub value_size: usize,
    /// Read level of gets.
    pub read_level: ReadLevel,
    /// When to stop.
    pub stop: Stop,
    /// Operations invoked during this initial period are recorded with
    /// `warmup: true` and left out of the summary.
    pub warmup: Duration,
    /// Seed of the per-client generators.
    pub seed: u64,
    /// Prefix of every key, to keep runs apart.
    pub key_prefix: String,
    /// Where operations are sent.
    pub target: Target,
    /// Pause after an operation that surely failed (e.g. its replica is
    /// down), so a client does not spin on instant failures. Zero for
    /// benchmarks of a healthy cluster; fault-injection runs set it.
    pub error_backoff: Duration,
}

impl Default for WorkloadSpec {
    /// 16 clients, 50% puts and 50% gets, 10 000 uniform keys, 100-byte
    /// values, linearizable reads, 10 s after a 2 s warm-up, seed 0, prefix
    /// `bench-`, random replicas.
    fn default() -> Self {
        WorkloadSpec {
            clients: 16,
            mix: Mix {
                put: 50,
                get: 50,
                delete: 0,
            },
            keys: 10_000,
            key_dist: KeyDist::Uniform,
            value_size: 100,
            read_level: ReadLevel::Linearizable,
            stop: Stop::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(2),
            seed: 0,
            key_prefix: "bench-".into(),
            target: Target::Random,
            error_backoff: Duration::ZERO,
        }
    }
}

impl WorkloadSpec {
    /// Checks the parts the types do not: a non-empty key space, at least
    /// one client, a valid zipf exponent.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 {
            return Err("need at least one client".into());
        }
        if self.keys == 0 {
            return Err("need at least one key".into());
        }
        if let KeyDist::Zipf(s) = self.key_dist {
            check_zipf_exponent(s)?;
        }
        Ok(())
    }

    /// The name of key `i`.
    pub fn key(&self, i: u64) -> String {
        format!("{}{i}", self.key_prefix)
    }
}

/// The value put number `seq` of `client` writes: unique within a run.
pub fn put_value(client: u32, seq: u64, value_size: usize) -> String {
    pad(format!("c{client}-{seq}-"), value_size)
}

fn pad(mut s: String, size: usize) -> String {
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Draws key indexes according to a [`KeyDist`].
#[derive(Clone, Debug)]
pub enum KeyGen {
    /// Uniform over `0..n`.
    Uniform(u64),
    /// Zipfian.
    Zipf(Zipf),
}

impl KeyGen {
    /// A generator over `0..keys`.
    pub fn new(keys: u64, dist: KeyDist) -> Result<KeyGen, String> {
        if keys == 0 {
            return Err("the key space is empty".into());
        }
        Ok(match dist {
            KeyDist::Uniform => KeyGen::Uniform(keys),
            KeyDist::Zipf(s) => KeyGen::Zipf(Zipf::new(keys, s)?),
        })
    }

    /// Draws a key index.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeyGen::Uniform(n) => rng.random_range(0..*n),
            KeyGen::Zipf(z) => z.sample(rng),
        }
    }
}

/// The three operation kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Write a value.
    Put,
    /// Read a value.
    Get,
    /// Remove a key.
    Delete,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Delete => "delete",
        })
    }
}

/// What a successful operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutput {
    /// The put took `version`.
    Put {
        /// Version of the new value.
        version: u64,
    },
    /// The value read (lossily decoded as UTF-8) and its version, if any.
    Get {
        /// Value and version of its last write; `None` when the key is absent.
        value: Option<(String, u64)>,
    },
    /// The delete took `version`; `deleted` tells whether the key existed.
    Delete {
        /// Whether a value was removed.
        deleted: bool,
        /// Version taken by the delete.
        version: u64,
    },
}

/// One completed operation.
#[derive(Clone, Debug)]
pub struct OpRecord {
    /// The client (0-based) that issued it.
    pub client: u32,
    /// Its position in that client's sequence (0-based, warm-up included).
    pub seq: u64,
    /// The replica (index into the endpoints) it was sent to, with
    /// [`Target::RoundRobinReplica`]; `None` with [`Target::Random`].
    pub replica: Option<usize>,
    /// What it was.
    pub kind: OpKind,
    /// The key.
    pub key: String,
    /// The value, for a put.
    pub value: Option<String>,
    /// When it was invoked, since the start of the run.
    pub invoke: Duration,
    /// When its outcome was known, since the start of the run.
    pub complete: Duration,
    /// What it returned; use [`ClientError::surely_not_applied`] to tell a
    /// failure from an unknown outcome.
    pub outcome: Result<OpOutput, ClientError>,
    /// Invoked during the warm-up (not in the summary).
    pub warmup: bool,
}

impl OpRecord {
    /// `complete - invoke`.
    pub fn latency(&self) -> Duration {
        self.complete.saturating_sub(self.invoke)
    }
}

/// Called with every record as it completes, on the issuing client's task.
pub type Observer = Arc<dyn Fn(&OpRecord) + Send + Sync>;

/// Latency figures in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Figures for one operation kind (or all of them), warm-up excluded.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KindSummary {
    /// Operations completed (ok or not).
    pub ops: u64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed or whose outcome is unknown.
    pub errors: u64,
    /// Successful gets that found no value, and deletes of absent keys.
    pub misses: u64,
    /// Successful operations per second of the measured window.
    pub ops_per_sec: f64,
    /// Latency of successful operations.
    pub latency: Latency,
}

/// What a run did, warm-up excluded.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Length of the measured window in seconds: from the end of the
    /// warm-up to the last completion of a measured operation.
    pub elapsed_secs: f64,
    /// All kinds together.
    pub total: KindSummary,
    /// Per operation kind (only kinds that ran).
    pub by_kind: BTreeMap<OpKind, KindSummary>,
    /// Failed or unknown operations by [`ClientError::kind`].
    pub errors: BTreeMap<String, u64>,
    /// Operations invoked during the warm-up (not counted above).
    pub warmup_ops: u64,
    /// Successful operations completed in each whole second since the start
    /// of the run, warm-up included: shows stalls and warm-up effects that
    /// averages hide.
    pub ok_per_second: Vec<u64>,
}

/// Latency histogram bounds: 1 µs to 1 hour, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Clone)]
struct KindAcc {
    ops: u64,
    ok: u64,
    misses: u64,
    hist: Histogram<u64>,
}

impl KindAcc {
    fn new() -> KindAcc {
        KindAcc {
            ops: 0,
            ok: 0,
            misses: 0,
            hist: new_histogram(),
        }
    }

    fn merge(&mut self, other: &KindAcc) {
        self.ops += other.ops;
        self.ok += other.ok;
        self.misses += other.misses;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    fn summary(&self, elapsed: f64) -> KindSummary {
        KindSummary {
            ops: self.ops,
            ok: self.ok,
            errors: self.ops - self.ok,
            misses: self.misses,
            ops_per_sec: if elapsed > 0.0 {
                self.ok as f64 / elapsed
            } else {
                0.0
            },
            latency: Latency::of(&self.hist),
        }
    }
}

/// The per-second timeline stops after this many seconds (a day).
const MAX_TIMELINE_SECS: usize = 86_400;

/// Folds [`OpRecord`]s into the figures of a [`Summary`]. The engine keeps
/// one per client and merges them; other drivers may use it directly.
#[derive(Clone, Default)]
pub struct Recorder {
    kinds: BTreeMap<OpKind, KindAcc>,
    errors: BTreeMap<String, u64>,
    warmup_ops: u64,
    last_complete: Option<Duration>,
    ok_per_second: Vec<u64>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Counts one record (warm-up records only in `warmup_ops`).
    pub fn record(&mut self, r: &OpRecord) {
        if r.outcome.is_ok() {
            let second = usize::try_from(r.complete.as_secs()).unwrap_or(usize::MAX);
            if second < MAX_TIMELINE_SECS {
                if self.ok_per_second.len() <= second {
                    self.ok_per_second.resize(second + 1, 0);
                }
                self.ok_per_second[second] += 1;
            }
        }
        if r.warmup {
            self.warmup_ops += 1;
            return;
        }
        self.last_complete = Some(self.last_complete.map_or(r.complete, |c| c.max(r.complete)));
        let acc = self.kinds.entry(r.kind).or_insert_with(KindAcc::new);
        acc.ops += 1;
        match &r.outcome {
            Ok(out) => {
                acc.ok += 1;
                let us = u64::try_from(r.latency().as_micros()).unwrap_or(u64::MAX);
                acc.hist.saturating_record(us.max(1));
                if matches!(
                    out,
                    OpOutput::Get { value: None } | OpOutput::Delete { deleted: false, .. }
                ) {
                    acc.misses += 1;
                }
            }
            Err(e) => *self.errors.entry(e.kind().to_string()).or_default() += 1,
        }
    }

    /// Adds another recorder's counts to this one.
    pub fn merge(&mut self, other: &Recorder) {
        for (k, acc) in &other.kinds {
            self.kinds.entry(*k).or_insert_with(KindAcc::new).merge(acc);
        }
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        self.warmup_ops += other.warmup_ops;
        if self.ok_per_second.len() < other.ok_per_second.len() {
            self.ok_per_second.resize(other.ok_per_second.len(), 0);
        }
        for (mine, theirs) in self.ok_per_second.iter_mut().zip(&other.ok_per_second) {
            *mine += theirs;
        }
        self.last_complete = match (self.last_complete, other.last_complete) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// The summary, for a measured window that began `window_start` after
    /// the start of the run (the warm-up length) and ends at the last
    /// completion recorded.
    pub fn summary(&self, window_start: Duration) -> Summary {
        let elapsed = self
            .last_complete
            .map_or(0.0, |c| c.saturating_sub(window_start).as_secs_f64());
        let mut all = KindAcc::new();
        for acc in self.kinds.values() {
            all.merge(acc);
        }
        Summary {
            elapsed_secs: elapsed,
            total: all.summary(elapsed),
            by_kind: self
                .kinds
                .iter()
                .map(|(k, acc)| (*k, acc.summary(elapsed)))
                .collect(),
            errors: self.errors.clone(),
            warmup_ops: self.warmup_ops,
            ok_per_second: self.ok_per_second.clone(),
        }
    }
}

/// State shared by the clients of one run.
struct Shared {
    spec: WorkloadSpec,
    keys: KeyGen,
    endpoints: Vec<String>,
    timeout: Duration,
    token: Option<String>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    start: Instant,
    /// Operations claimed after the warm-up, for [`Stop::Ops`].
    claimed: AtomicU64,
    observer: Option<Observer>,
}

/// Runs the workload against the cluster `client` points at and returns its
/// summary.
///
/// Each client task makes its own [`Client`] with `client`'s endpoints,
/// timeout and token. `observer` sees every record (warm-up included) as it completes.
/// When `cancel` holds `true` the clients stop before their next operation;
/// pass the receiver of a `watch::channel(false)` whose sender you keep (or
/// drop, for no cancellation). Fails only on an invalid spec: operation
/// errors are counted in the summary.
pub async fn run(
    client: &Client,
    spec: &WorkloadSpec,
    observer: Option<Observer>,
    cancel: watch::Receiver<bool>,
) -> Result<Summary, String> {
    spec.validate()?;
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        keys: KeyGen::new(spec.keys, spec.key_dist)?,
        endpoints: client.endpoints(),
        timeout: client.timeout(),
        token: client.token().map(String::from),
        tls: client.tls().cloned(),
        start: Instant::now(),
        claimed: AtomicU64::new(0),
        observer,
    });
    let tasks: Vec<_> = (0..spec.clients)
        .map(|id| tokio::spawn(client_loop(id, shared.clone(), cancel.clone())))
        .collect();
    let mut total = Recorder::new();
    for t in tasks {
        match t.await {
            Ok(r) => total.merge(&r),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    Ok(total.summary(spec.warmup))
}

/// A per-client seed: the run seed mixed with the client id (splitmix64).
fn client_seed(seed: u64, client: u32) -> u64 {
    let mut z = seed ^ (u64::from(client) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn client_loop(id: u32, shared: Arc<Shared>, cancel: watch::Receiver<bool>) -> Recorder {
    let spec = &shared.spec;
    let mut recorder = Recorder::new();
    // Only fails on empty endpoints, which `client` already ruled out.
    let Ok(client) = Client::new(&shared.endpoints, shared.timeout) else {
        return recorder;
    };
    let Ok(client) = client
        .with_token(shared.token.clone())
        .with_tls(shared.tls.clone())
    else {
        return recorder;
    };
    let replicas = shared.endpoints.len();
    let mut rng = SmallRng::seed_from_u64(client_seed(spec.seed, id));
    for seq in 0u64.. {
        if *cancel.borrow() {
            break;
        }
        let now = shared.start.elapsed();
        let warmup = now < spec.warmup;
        match spec.stop {
            Stop::Duration(d) if now >= spec.warmup + d => break,
            Stop::Ops(n) if !warmup && shared.claimed.fetch_add(1, Ordering::Relaxed) >= n => {
                break;
            }
            _ => {}
        }
        let kind = spec.mix.pick(&mut rng);
        let key = spec.key(shared.keys.sample(&mut rng));
        let value = (kind == OpKind::Put).then(|| put_value(id, seq, spec.value_size));
        let replica = match spec.target {
            Target::Random => None,
            Target::RoundRobinReplica => Some((id as usize + seq as usize) % replicas),
        };
        let invoke = shared.start.elapsed();
        let outcome = execute(
            &client,
            replica,
            kind,
            &key,
            value.as_deref(),
            spec.read_level,
        )
        .await;
        let complete = shared.start.elapsed();
        let record = OpRecord {
            client: id,
            seq,
            replica,
            kind,
            key,
            value,
            invoke,
            complete,
            outcome,
            warmup: invoke < spec.warmup,
        };
        if let Some(observe) = &shared.observer {
            observe(&record);
        }
        let back_off = !spec.error_backoff.is_zero()
            && record
                .outcome
                .as_ref()
                .is_err_and(ClientError::surely_not_applied);
        recorder.record(&record);
        if back_off {
            tokio::time::sleep(spec.error_backoff).await;
        }
    }
    recorder
}

/// Runs one operation, at `replica` (no failover) or with failover.
async fn execute(
    client: &Client,
    replica: Option<usize>,
    kind: OpKind,
    key: &str,
    value: Option<&str>,
    level: ReadLevel,
) -> Result<OpOutput, ClientError> {
    let key = key.as_bytes();
    match kind {
        OpKind::Get => {
            let reply = match replica {
                Some(i) => client.get_at(i, key, level).await?,
                None => client.get(key, level).await?,
            };
            Ok(OpOutput::Get {
                value: reply
                    .value
                    .map(|(v, ver)| (String::from_utf8_lossy(&v).into_owned(), ver)),
            })
        }
        OpKind::Put | OpKind::Delete => {
            let value = value.unwrap_or_default().as_bytes();
            let result = match (kind, replica) {
                (OpKind::Put, Some(i)) => {
                    client
                        .write_at(
                            i,
                            Op::Put {
                                key: key.to_vec(),
                                value: value.to_vec(),
                            },
                        )
                        .await?
                }
                (OpKind::Put, None) => client.put(key, value).await?,
                (_, Some(i)) => client.write_at(i, Op::Delete { key: key.to_vec() }).await?,
                (_, None) => client.delete(key).await?,
            };
            Ok(match result {
                OpResult::Put { version } => OpOutput::Put { version },
                OpResult::Delete { deleted, version } => OpOutput::Delete { deleted, version },
            })
        }
    }
}

/// Writes every key of the spec's key space once (value `"p-{i}-"` padded to
/// `value_size`), with `spec.clients` concurrent clients, so that a
/// read-heavy run finds values. Returns the number of keys written; stops at
/// the first error.
pub async fn populate(client: &Client, spec: &WorkloadSpec) -> Result<u64, ClientError> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..spec.clients.max(1))
        .map(|_| {
            let next = next.clone();
            let spec = spec.clone();
            let client = client.like(&client.endpoints());
            tokio::spawn(async move {
                let Ok(client) = client else { return Ok(0) };
                let mut written = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.keys {
                        return Ok(written);
                    }
                    let value = pad(format!("p-{i}-"), spec.value_size);
                    if let Err(e) = client.put(spec.key(i).as_bytes(), value.as_bytes()).await {
                        // Stop the others too.
                        next.store(u64::MAX / 2, Ordering::Relaxed);
                        return Err(e);
                    }
                    written += 1;
                }
            })
        })
        .collect();
    let mut written = 0;
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(written),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quintet_common::error::Error;

    #[test]
    fn mix_parses_and_rejects() {
        assert_eq!("put=50,get=50".parse(), Mix::new(50, 50, 0));
        assert_eq!(" get=100 ".parse(), Mix::new(0, 100, 0));
        assert_eq!("put=1, get=2 ,delete=3".parse(), Mix::new(1, 2, 3));
        assert_eq!("delete=1,put=0".parse(), Mix::new(0, 0, 1));
        for bad in [
            "",
            "put=0",
            "put=0,get=0",
            "put",
            "put=x",
            "put=-1",
            "scan=1",
            "put=1,put=2",
            "put=4294967295,get=1",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} should be rejected");
        }
        let m: Mix = "put=1,delete=2".parse().unwrap();
        assert_eq!(m.to_string(), "put=1,delete=2");
    }

    #[test]
    fn mix_picks_by_weight() {
        let m = Mix::new(1, 3, 0).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = BTreeMap::new();
        for _ in 0..40_000 {
            *counts.entry(m.pick(&mut rng)).or_insert(0u32) += 1;
        }
        assert_eq!(counts.get(&OpKind::Delete), None);
        let puts = counts[&OpKind::Put] as f64 / 40_000.0;
        assert!((puts - 0.25).abs() < 0.02, "put share {puts}");
    }

    #[test]
    fn key_dist_parses() {
        assert_eq!("uniform".parse(), Ok(KeyDist::Uniform));
        assert_eq!("zipf".parse(), Ok(KeyDist::Zipf(0.99)));
        assert_eq!("zipf:0.5".parse(), Ok(KeyDist::Zipf(0.5)));
        for bad in [
            "zipf:1",
            "zipf:1.2",
            "zipf:-0.1",
            "zipf:x",
            "zipf0.5",
            "normal",
        ] {
            assert!(bad.parse::<KeyDist>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zipf_stays_in_range_and_is_skewed() {
        let n = 1000;
        let z = Zipf::new(n, 0.99).unwrap();
        let mut rng = SmallRng::seed_from_u64(42);
        let samples = 200_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..samples {
            let k = z.sample(&mut rng);
            assert!(k < n);
            counts[k as usize] += 1;
        }
        // Ranks 0 and 1 are exact in Gray's method.
        for (i, &count) in counts.iter().enumerate().take(2) {
            let seen = count as f64 / samples as f64;
            let want = z.probability(i as u64);
            assert!(
                (seen - want).abs() < 0.05 * want,
                "rank {i}: seen {seen}, want {want}"
            );
        }
        // The head is much hotter than the tail, and the 10 hottest keys
        // take roughly their share under the law.
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
        let head: u64 = counts[..10].iter().sum();
        let head_share = head as f64 / samples as f64;
        let want: f64 = (0..10).map(|i| z.probability(i)).sum();
        assert!(
            (head_share - want).abs() < 0.1 * want,
            "top-10 share {head_share}, law {want}"
        );
        // The whole range is reachable.
        assert!(counts[900..].iter().sum::<u64>() > 0);
    }

    #[test]
    fn zipf_zero_exponent_is_uniform_and_small_spaces_work() {
        let z = Zipf::new(10, 0.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0u32; 10];
        for _ in 0..50_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        for c in counts {
            assert!((4_000..6_000).contains(&c), "{counts:?}");
        }
        for n in 1..=3 {
            let z = Zipf::new(n, 0.99).unwrap();
            for _ in 0..1000 {
                assert!(z.sample(&mut rng) < n);
            }
        }
        assert!(Zipf::new(0, 0.5).is_err());
        assert!(Zipf::new(10, 1.0).is_err());
    }

    #[test]
    fn generators_are_deterministic_per_seed() {
        let g = KeyGen::new(10_000, KeyDist::Zipf(0.9)).unwrap();
        let draw = |seed| {
            let mut rng = SmallRng::seed_from_u64(client_seed(seed, 3));
            (0..100).map(|_| g.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn put_values_are_unique_and_padded() {
        assert_eq!(put_value(3, 17, 10), "c3-17-xxxx");
        assert_eq!(put_value(3, 17, 2), "c3-17-");
        assert_eq!(put_value(0, 0, 100).len(), 100);
        assert_ne!(put_value(1, 23, 100), put_value(12, 3, 100));
    }

    fn rec(
        kind: OpKind,
        invoke_ms: u64,
        latency_us: u64,
        outcome: Result<OpOutput, ClientError>,
    ) -> OpRecord {
        let invoke = Duration::from_millis(invoke_ms);
        OpRecord {
            client: 0,
            seq: 0,
            replica: None,
            kind,
            key: "k".into(),
            value: None,
            invoke,
            complete: invoke + Duration::from_micros(latency_us),
            outcome,
            warmup: invoke < Duration::from_secs(1),
        }
    }

    #[test]
    fn summary_math() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        // Warm-up: counted apart.
        a.record(&rec(
            OpKind::Put,
            500,
            99_999,
            Ok(OpOutput::Put { version: 1 }),
        ));
        // 100 puts of 1..=100 ms latency, split over two recorders.
        for i in 1..=100u64 {
            let r = rec(
                OpKind::Put,
                1000 + i,
                i * 1000,
                Ok(OpOutput::Put { version: i }),
            );
            if i % 2 == 0 {
                a.record(&r)
            } else {
                b.record(&r)
            }
        }
        b.record(&rec(
            OpKind::Get,
            1500,
            10,
            Ok(OpOutput::Get { value: None }),
        ));
        b.record(&rec(
            OpKind::Get,
            1600,
            20,
            Ok(OpOutput::Get {
                value: Some(("v".into(), 3)),
            }),
        ));
        let unknown = ClientError::Unknown {
            endpoint: "e".into(),
            detail: "d".into(),
        };
        let aborted = ClientError::Server {
            endpoint: "e".into(),
            error: Error::Aborted("x".into()),
        };
        a.record(&rec(OpKind::Put, 1700, 5, Err(unknown)));
        a.record(&rec(OpKind::Delete, 1800, 5, Err(aborted)));
        // The last completion: 3 s after start, so a 2 s window.
        a.record(&rec(
            OpKind::Get,
            2999,
            1000,
            Ok(OpOutput::Get { value: None }),
        ));
        a.merge(&b);
        let s = a.summary(Duration::from_secs(1));

        assert!((s.elapsed_secs - 2.0).abs() < 1e-9, "{}", s.elapsed_secs);
        assert_eq!(s.warmup_ops, 1);
        let put = &s.by_kind[&OpKind::Put];
        assert_eq!((put.ops, put.ok, put.errors, put.misses), (101, 100, 1, 0));
        assert!((put.ops_per_sec - 50.0).abs() < 1e-9);
        // Percentiles within HdrHistogram's 3 significant digits.
        let close =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(close(put.latency.p50_us, 50_000), "{:?}", put.latency);
        assert!(close(put.latency.p90_us, 90_000), "{:?}", put.latency);
        assert!(close(put.latency.p99_us, 99_000), "{:?}", put.latency);
        assert!(close(put.latency.p999_us, 100_000), "{:?}", put.latency);
        assert!(close(put.latency.max_us, 100_000), "{:?}", put.latency);
        assert!((put.latency.mean_us - 50_500.0).abs() < 100.0);
        let get = &s.by_kind[&OpKind::Get];
        assert_eq!((get.ops, get.ok, get.misses), (3, 3, 2));
        let del = &s.by_kind[&OpKind::Delete];
        assert_eq!((del.ops, del.ok, del.errors), (1, 0, 1));
        assert_eq!(del.latency, Latency::default());
        assert_eq!((s.total.ops, s.total.ok, s.total.errors), (105, 103, 2));
        assert_eq!(s.errors.get("timeout"), Some(&1));
        assert_eq!(s.errors.get("aborted"), Some(&1));
        assert_eq!(s.total.latency.max_us, put.latency.max_us);
        // Ok completions by second since the start: the warm-up put at
        // 0.6 s, 100 puts and 2 gets in [1 s, 2 s), the last get at 3.0 s.
        assert_eq!(s.ok_per_second, vec![1, 102, 0, 1]);
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = Recorder::new().summary(Duration::from_secs(2));
        assert_eq!(s, Summary::default());
    }
}
