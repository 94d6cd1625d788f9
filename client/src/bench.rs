//! `quintet bench`: drive a workload against a cluster and report throughput
//! and latency.
//!
//! A thin shell over the [`workload`] engine: the flags
//! become a [`WorkloadSpec`], an observer feeds a live progress line
//! (indicatif, on stderr, only on a terminal and never with
//! `--output json`), and the [`Summary`] is printed as a table or as JSON.
//!
//! Next to the client-side figures the bench samples the coordinator's status
//! every [`POLL`] while the run goes: the growth of `committed` (one version
//! per write) and of the in-flight batch number (one per 2PC round, within an
//! epoch) over the measured window give the number of group-commit rounds
//! and the average batch size, which is where a write's time goes.
//!
//! Exit status: 0 when the run completed (operation errors are reported, not
//! fatal), 2 for an invalid workload, 3 with an `error:` line when no replica
//! could be reached, 4 when pre-populating the keys failed with an unknown
//! outcome. Ctrl-C stops the clients early and still prints the summary.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quintet_common::rpc::CoordinatorStatus;
use quintet_common::types::ReadLevel;
use serde::Serialize;
use tokio::sync::watch;

use crate::client::{Client, ClientError};
use crate::workload::{
    self, KeyDist, Latency, Mix, Observer, OpKind, Stop, Summary, Target, WorkloadSpec,
};

/// How often the coordinator's status is sampled during a run.
pub const POLL: Duration = Duration::from_millis(250);

/// Where each operation goes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetArg {
    /// A random replica, failing over when it cannot be reached.
    #[default]
    Random,
    /// Replicas in turn, no failover.
    RoundRobin,
}

/// Flags of `quintet bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent closed-loop clients, each with its own connections.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Operation weights, e.g. put=50,get=50 or put=80,get=15,delete=5.
    #[arg(long, default_value = "put=50,get=50")]
    pub mix: Mix,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Key distribution: uniform, zipf (exponent 0.99) or zipf:S with 0 <= S < 1.
    #[arg(long, default_value = "uniform")]
    pub key_dist: KeyDist,
    /// Bytes per put value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Serializable reads (local, may be stale) instead of linearizable ones.
    #[arg(long)]
    pub serializable: bool,
    /// How long to measure, after the warm-up (default 10s).
    #[arg(long, value_parser = quintet_common::duration::parse, conflicts_with = "ops")]
    pub duration: Option<Duration>,
    /// Stop after this many operations (after the warm-up) instead.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Run this long before measuring; those operations are not counted.
    #[arg(long, value_parser = quintet_common::duration::parse, default_value = "2s")]
    pub warmup: Duration,
    /// Seed of the generators (random when not given; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prefix of every key.
    #[arg(long, default_value = "bench-")]
    pub key_prefix: String,
    /// Write every key once before the run, so reads find values.
    #[arg(long)]
    pub populate: bool,
    /// Where operations go.
    #[arg(long, value_enum, default_value_t = TargetArg::Random)]
    pub target: TargetArg,
}

impl BenchArgs {
    /// The workload these flags describe.
    pub fn spec(&self) -> WorkloadSpec {
        WorkloadSpec {
            clients: self.clients,
            mix: self.mix,
            keys: self.keys,
            key_dist: self.key_dist,
            value_size: self.value_size,
            read_level: if self.serializable {
                ReadLevel::Serializable
            } else {
                ReadLevel::Linearizable
            },
            stop: match (self.ops, self.duration) {
                (Some(n), _) => Stop::Ops(n),
                (None, d) => Stop::Duration(d.unwrap_or(Duration::from_secs(10))),
            },
            warmup: self.warmup,
            seed: self.seed.unwrap_or_else(rand::random),
            key_prefix: self.key_prefix.clone(),
            target: match self.target {
                TargetArg::Random => Target::Random,
                TargetArg::RoundRobin => Target::RoundRobinReplica,
            },
            error_backoff: Duration::ZERO,
        }
    }
}

/// The workload as reported.
#[derive(Serialize, Debug)]
struct SpecReport {
    endpoints: Vec<String>,
    clients: u32,
    mix: String,
    keys: u64,
    key_dist: String,
    value_size: usize,
    read_level: &'static str,
    duration_secs: Option<f64>,
    ops: Option<u64>,
    warmup_secs: f64,
    seed: u64,
    target: &'static str,
    populated: Option<u64>,
}

/// Group-commit figures from the coordinator's status over the measured window.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ServerReport {
    /// Seconds between the two samples compared.
    pub interval_secs: f64,
    /// Writes committed in that interval (growth of `committed`).
    pub writes: u64,
    /// 2PC rounds started in that interval (growth of the batch number).
    pub batches: u64,
    /// `writes / batches`.
    pub writes_per_batch: f64,
    /// `batches / interval`.
    pub batches_per_sec: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    spec: SpecReport,
    summary: Summary,
    server: Option<ServerReport>,
    cancelled: bool,
}

/// Runs `quintet bench` and returns the exit code. `json` selects
/// `--output json`.
pub async fn run(client: Client, args: BenchArgs, json: bool) -> anyhow::Result<i32> {
    let spec = args.spec();
    if let Err(e) = spec.validate() {
        eprintln!("error: {e}");
        return Ok(2);
    }

    // Nothing reachable at all is the one fatal case.
    let statuses = client.status_all().await;
    if statuses
        .iter()
        .all(|s| matches!(s, Err(ClientError::Unreachable { .. })))
    {
        let detail: Vec<String> = statuses
            .iter()
            .filter_map(|s| match s {
                Err(ClientError::Unreachable { detail }) => Some(detail.clone()),
                _ => None,
            })
            .collect();
        eprintln!("error: no replica reachable: {}", detail.join("; "));
        return Ok(3);
    }

    let populated = if args.populate {
        if !json {
            eprintln!("populating {} keys...", spec.keys);
        }
        match workload::populate(&client, &spec).await {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("error: populating the keys failed: {e}");
                return Ok(e.exit_code());
            }
        }
    } else {
        None
    };

    let (cancel_tx, cancel_rx) = watch::channel(false);
    let cancel_tx = Arc::new(cancel_tx);
    let ctrl_c = {
        let cancel_tx = cancel_tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = cancel_tx.send(true);
            }
        })
    };

    let counters = Arc::new(Counters::default());
    let observer: Observer = {
        let counters = counters.clone();
        Arc::new(move |r| {
            counters.ops.fetch_add(1, Ordering::Relaxed);
            if r.outcome.is_err() {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = tokio::spawn(progress_line(
        progress_bar(json),
        counters,
        spec.clone(),
        start,
        stop_rx.clone(),
    ));
    let poller = tokio::spawn(poll_coordinator(client.clone(), start, stop_rx));

    let summary = workload::run(&client, &spec, Some(observer), cancel_rx)
        .await
        .map_err(anyhow::Error::msg)?;
    let measured_end = start.elapsed();
    let _ = stop_tx.send(true);
    let _ = progress.await;
    let samples = poller.await.unwrap_or_default();
    ctrl_c.abort();
    let cancelled = *cancel_tx.borrow();

    let server = server_report(&samples, spec.warmup, measured_end);
    let report = Report {
        spec: spec_report(&client, &spec, args.target, populated),
        summary,
        server,
        cancelled,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }

    let s = &report.summary;
    if s.total.ok == 0 && s.total.ops > 0 && s.errors.keys().all(|k| k == "unreachable") {
        eprintln!("error: no replica could be reached during the run");
        return Ok(3);
    }
    Ok(0)
}

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
}

fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb
}

/// Updates the progress line every 200 ms until `stop` turns true.
async fn progress_line(
    pb: ProgressBar,
    counters: Arc<Counters>,
    spec: WorkloadSpec,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let tick = Duration::from_millis(200);
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => break,
        }
        let now = Instant::now();
        let elapsed = start.elapsed();
        let ops = counters.ops.load(Ordering::Relaxed);
        let errors = counters.errors.load(Ordering::Relaxed);
        let rate = (ops - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, ops);
        let phase = if elapsed < spec.warmup {
            "warm-up"
        } else {
            "measuring"
        };
        let of = match spec.stop {
            Stop::Duration(d) => format!("/{:.0}s", (spec.warmup + d).as_secs_f64()),
            Stop::Ops(n) => format!(" (stop after {n} ops)"),
        };
        pb.set_message(format!(
            "{phase} {:.1}s{of}  ops {ops}  {rate:.0} ops/s  errors {errors}",
            elapsed.as_secs_f64()
        ));
        pb.tick();
    }
    pb.finish_and_clear();
}

/// Samples the coordinator's status every [`POLL`] until `stop` turns true.
async fn poll_coordinator(
    client: Client,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<(Duration, CoordinatorStatus)> {
    let mut samples = Vec::new();
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(POLL, client.coordinator_status()).await {
            samples.push((start.elapsed(), s));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => break,
        }
    }
    samples
}

/// Rounds and writes between the first sample after the warm-up and the last
/// one before the end, both with a round in flight in the same epoch.
fn server_report(
    samples: &[(Duration, CoordinatorStatus)],
    warmup: Duration,
    end: Duration,
) -> Option<ServerReport> {
    let busy = |(t, s): &&(Duration, CoordinatorStatus)| {
        *t >= warmup && *t <= end && s.in_flight.is_some()
    };
    let (t0, first) = samples.iter().find(busy)?;
    let (t1, last) = samples.iter().rev().find(busy)?;
    let (b0, b1) = (first.in_flight?, last.in_flight?);
    if t1 <= t0 || b0.epoch != b1.epoch || first.epoch != last.epoch {
        return None;
    }
    let interval = (*t1 - *t0).as_secs_f64();
    let writes = last.committed.saturating_sub(first.committed);
    let batches = b1.seq.saturating_sub(b0.seq);
    Some(ServerReport {
        interval_secs: interval,
        writes,
        batches,
        writes_per_batch: if batches > 0 {
            writes as f64 / batches as f64
        } else {
            0.0
        },
        batches_per_sec: batches as f64 / interval,
    })
}

fn spec_report(
    client: &Client,
    spec: &WorkloadSpec,
    target: TargetArg,
    populated: Option<u64>,
) -> SpecReport {
    SpecReport {
        endpoints: client.endpoints(),
        clients: spec.clients,
        mix: spec.mix.to_string(),
        keys: spec.keys,
        key_dist: spec.key_dist.to_string(),
        value_size: spec.value_size,
        read_level: match spec.read_level {
            ReadLevel::Linearizable => "linearizable",
            ReadLevel::Serializable => "serializable",
        },
        duration_secs: match spec.stop {
            Stop::Duration(d) => Some(d.as_secs_f64()),
            Stop::Ops(_) => None,
        },
        ops: match spec.stop {
            Stop::Ops(n) => Some(n),
            Stop::Duration(_) => None,
        },
        warmup_secs: spec.warmup.as_secs_f64(),
        seed: spec.seed,
        target: match target {
            TargetArg::Random => "random",
            TargetArg::RoundRobin => "round-robin",
        },
        populated,
    }
}

/// A latency in microseconds, in a readable unit.
fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn print_table(r: &Report) {
    let s = &r.spec;
    let stop = match (s.duration_secs, s.ops) {
        (_, Some(n)) => format!("{n} ops"),
        (Some(d), _) => format!("{d}s"),
        _ => String::new(),
    };
    println!(
        "quintet bench: {} clients, mix {}, {} keys ({}), {}-byte values, {} reads, {} after {}s warm-up, seed {}{}",
        s.clients,
        s.mix,
        s.keys,
        s.key_dist,
        s.value_size,
        s.read_level,
        stop,
        s.warmup_secs,
        s.seed,
        if r.cancelled { " (stopped early)" } else { "" },
    );
    let sum = &r.summary;
    println!(
        "measured {:.2}s, {} ops ({} during warm-up not counted)",
        sum.elapsed_secs, sum.total.ops, sum.warmup_ops
    );
    println!();
    println!(
        "{:<7} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ops", "ok", "errors", "ops/s", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    let row = |name: &str, k: &workload::KindSummary| {
        let l: &Latency = &k.latency;
        println!(
            "{:<7} {:>9} {:>9} {:>7} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            name,
            k.ops,
            k.ok,
            k.errors,
            k.ops_per_sec,
            fmt_us(l.mean_us.round() as u64),
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
        );
    };
    for (kind, k) in &sum.by_kind {
        row(&kind.to_string(), k);
    }
    if sum.by_kind.len() > 1 {
        row("total", &sum.total);
    }
    if let Some(get) = sum.by_kind.get(&OpKind::Get).filter(|g| g.ok > 0) {
        println!("gets that found no value: {} of {}", get.misses, get.ok);
    }
    if !sum.ok_per_second.is_empty() {
        let warm = r.spec.warmup_secs.ceil() as usize;
        let secs: Vec<String> = sum
            .ok_per_second
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i == warm && warm > 0 {
                    format!("| {n}")
                } else {
                    n.to_string()
                }
            })
            .collect();
        println!(
            "ok ops in each second (warm-up | measured): {}",
            secs.join(" ")
        );
    }
    if !sum.errors.is_empty() {
        let errors: Vec<String> = sum.errors.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("errors by kind: {}", errors.join(" "));
    }
    if let Some(srv) = &r.server {
        println!(
            "coordinator: {} writes in {} 2PC rounds over {:.2}s ({:.1} writes/round, {:.0} rounds/s)",
            srv.writes, srv.batches, srv.interval_secs, srv.writes_per_batch, srv.batches_per_sec
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use quintet_common::types::BatchId;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn flags_parse_into_a_spec() {
        let cli = Cli::try_parse_from([
            "bench",
            "--clients",
            "4",
            "--mix",
            "put=10,delete=1",
            "--key-dist",
            "zipf:0.8",
            "--serializable",
            "--ops",
            "500",
            "--warmup",
            "0s",
            "--seed",
            "9",
        ])
        .unwrap();
        let spec = cli.bench.spec();
        assert_eq!(spec.clients, 4);
        assert_eq!(spec.mix, Mix::new(10, 0, 1).unwrap());
        assert_eq!(spec.key_dist, KeyDist::Zipf(0.8));
        assert_eq!(spec.read_level, ReadLevel::Serializable);
        assert_eq!(spec.stop, Stop::Ops(500));
        assert_eq!(spec.warmup, Duration::ZERO);
        assert_eq!(spec.seed, 9);

        let d = Cli::try_parse_from(["bench"]).unwrap().bench.spec();
        assert_eq!(d.stop, Stop::Duration(Duration::from_secs(10)));
        assert_eq!(d.warmup, Duration::from_secs(2));
        assert_eq!(d.mix, Mix::new(50, 50, 0).unwrap());

        assert!(Cli::try_parse_from(["bench", "--ops", "1", "--duration", "1s"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--mix", "scan=1"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--key-dist", "zipf:2"]).is_err());
    }

    fn status(committed: u64, seq: Option<u64>) -> CoordinatorStatus {
        CoordinatorStatus {
            cluster: quintet_common::types::ClusterId(1),
            epoch: 1,
            committed,
            queued: 0,
            in_flight: seq.map(|seq| BatchId { epoch: 1, seq }),
            view: Default::default(),
            min_participants: 3,
            members: Vec::new(),
            learners: Vec::new(),
            replicas: Vec::new(),
        }
    }

    #[test]
    fn server_report_counts_rounds_in_the_window() {
        let s = |ms, c, b| (Duration::from_millis(ms), status(c, b));
        let samples = vec![
            s(1000, 10, Some(2)), // warm-up
            s(2000, 100, None),   // idle, skipped
            s(2250, 120, Some(20)),
            s(3250, 520, Some(120)),
            s(4000, 600, Some(130)), // after the end
        ];
        let r = server_report(
            &samples,
            Duration::from_secs(2),
            Duration::from_millis(3500),
        )
        .unwrap();
        assert_eq!((r.writes, r.batches), (400, 100));
        assert!((r.interval_secs - 1.0).abs() < 1e-9);
        assert!((r.writes_per_batch - 4.0).abs() < 1e-9);
        assert!(server_report(&samples[..2], Duration::ZERO, Duration::from_secs(9)).is_none());
    }

    #[test]
    fn latencies_print_in_readable_units() {
        assert_eq!(fmt_us(850), "850us");
        assert_eq!(fmt_us(1_250), "1.25ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}
