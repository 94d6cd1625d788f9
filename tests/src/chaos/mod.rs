//! `quintet-chaos`: the workload engine against a cluster while a nemesis
//! injects faults, then three checks of the design's invariants.
//!
//! # A run
//!
//! 1. **Cluster.** The [`backend::Backend`] provides a running six-node
//!    cluster: [`local::LocalBackend`] starts one, [`docker::DockerBackend`]
//!    finds the compose project's containers.
//! 2. **Workload and nemesis, concurrently, for `--duration`.** The shared
//!    engine ([`quintet_client::workload::run`]) runs `--clients` closed-loop
//!    clients over a small key space (`--keys`, so keys see contention) with
//!    puts of values unique in the run, linearizable gets and deletes; every
//!    operation goes to one replica chosen round-robin, with no failover, so
//!    the history says which replica answered. Keys carry a per-run prefix,
//!    so a cluster that already holds data (a compose cluster reused across
//!    runs) still starts the history from absent keys. Meanwhile the
//!    [`nemesis::Nemesis`] draws one fault at a time from the seeded
//!    schedule, injects it, holds it 1–4 s (so most outlast the 1 s lease
//!    and the node is dropped from the view) and heals it, logging each
//!    step with its time since the start of the run. The kinds: kill,
//!    pause, partition (docker only), partition-coordinator (one or two
//!    participants cut off the coordinator only, both ways or one way, while
//!    clients and the other participants still reach them), wipe (a
//!    participant killed, its data deleted, started empty) and restart-all.
//!    A heal returns once the nodes it brought back answer `health` as
//!    ready; for a participant that means caught up, a member again and
//!    holding a lease, and how long that took is its rejoin time.
//! 3. **Heal.** At `--duration` the workload stops issuing (operations in
//!    flight finish or time out after `--op-timeout`), the nemesis stops,
//!    and [`backend::Backend::heal_all`] brings every node back.
//! 4. **Converge.** Bounded by `--converge-timeout`: every replica answers
//!    status with the same applied version and digest and no pending batch,
//!    and the coordinator has no queued write or round in flight (so no
//!    unknown write can still land after the final reads).
//! 5. **Read back.** Every key of the key space at every replica
//!    (serializable reads: after convergence they are exact), then status
//!    again to make sure nothing moved in between.
//! 6. **Availability.** From the history's completion times, for every
//!    fault: the longest stretch with no successful write, and the longest
//!    with no successful linearizable read at a live member (a replica the
//!    fault did not hit), within the window from the injection to 2 s
//!    after the heal; and the longest of each over the whole run
//!    ([`report::fault_gaps`]). They are figures, not checks.
//! 7. **Check.** (1) [`crate::checker::check_history`]: the whole history is
//!    linearizable per key (an inconclusive key counts as a failure and is
//!    named); (2) [`crate::checker::check_final_state`]: every final value at
//!    every replica is explained by the history, i.e. no acknowledged write
//!    was lost and no failed write appeared; (3) convergence as in step 4.
//!
//! The history is written as JSON lines (`--history`) right after the
//! workload, before anything can fail, so a failing run can be re-checked
//! offline. The report ([`report::ChaosReport`]) names the key and the
//! operations of each violation with the faults active around them, and
//! the binary exits non-zero when any check fails. With `--report-json`
//! the report is also written as one JSON document.

pub mod backend;
pub mod docker;
pub mod local;
pub mod nemesis;
pub mod proxy;
pub mod report;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use quintet_client::Client;
use quintet_client::workload::{self, KeyDist, Mix, OpRecord, Stop, Target, WorkloadSpec};
use quintet_common::rpc::ParticipantStatus;
use quintet_common::types::ReadLevel;
use tokio::sync::watch;

use crate::checker::{self, FinalRead};
use backend::Backend;
use nemesis::{FaultKind, FaultRecord, Nemesis, Timing};
use report::{ChaosReport, Check};

/// Which cluster to run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Six processes started by the runner on 127.0.0.1.
    Local,
    /// The compose project's containers, on 127.0.0.1:7700-7705.
    Docker,
}

/// quintet-chaos: drive a workload against a quintet cluster while faults
/// are injected, then check linearizability, lost writes and convergence.
///
/// Exit codes: 0 every check passed; 1 a check failed (a violation); 2 the
/// run could not be done (bad arguments, cluster not reachable, ...).
#[derive(Parser, Debug, Clone)]
#[command(name = "quintet-chaos", version)]
pub struct Args {
    /// Where the cluster runs.
    #[arg(long, value_enum, default_value = "local")]
    pub backend: BackendKind,
    /// How long the workload and the nemesis run, e.g. 60s, 2m, 1m30s.
    #[arg(long, default_value = "60s", value_parser = quintet_common::duration::parse)]
    pub duration: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Faults to draw from: any of kill, pause, partition,
    /// partition-coordinator, wipe, restart-all (comma-separated), or all,
    /// or none. partition is docker only; partition-coordinator cuts one or
    /// two participants off the coordinator alone (docker: iptables, needs
    /// root); wipe restarts a participant with its data deleted.
    #[arg(long, default_value = "all", value_parser = parse_nemesis_list)]
    pub nemesis: NemesisList,
    /// Seed of the workload and the fault schedule [default: from the clock, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where to write the history (JSON lines).
    #[arg(long, default_value = "chaos-history.jsonl")]
    pub history: PathBuf,
    /// Also write the report, availability figures included, as JSON here.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Size of the key space (small, so keys see contention).
    #[arg(long, default_value_t = 20)]
    pub keys: u64,
    /// Operation mix.
    #[arg(long, default_value = "put=45,get=40,delete=15")]
    pub mix: Mix,
    /// Per-request timeout of the clients; a write without an answer by then is "unknown".
    #[arg(long, default_value = "3s", value_parser = quintet_common::duration::parse)]
    pub op_timeout: Duration,
    /// How long to wait for the replicas to converge after healing.
    #[arg(long, default_value = "60s", value_parser = quintet_common::duration::parse)]
    pub converge_timeout: Duration,
    /// Docker: the compose file (used by --up).
    #[arg(long, default_value = "deploy/compose.yaml")]
    pub compose_file: PathBuf,
    /// Docker: the compose project name.
    #[arg(long, default_value = "quintet")]
    pub project: String,
    /// Docker: bring the compose cluster up first (`docker compose up -d --wait`).
    #[arg(long)]
    pub up: bool,
    /// Local: where the server binaries are [default: next to this executable].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Local: data and log directory [default: a temporary one, kept on failure].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the nominal fault schedule for this seed and exit (no cluster needed).
    #[arg(long)]
    pub dry_run: bool,
}

impl Args {
    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.keys == 0 {
            bail!("--keys must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.op_timeout.is_zero() {
            bail!("--op-timeout must be positive");
        }
        Ok(())
    }
}

/// The fault kinds of `--nemesis`, sorted, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NemesisList(pub Vec<FaultKind>);

fn parse_nemesis_list(s: &str) -> Result<NemesisList, String> {
    nemesis::parse_nemeses(s).map(NemesisList)
}

/// Runs the whole thing as described in the module docs; the report says
/// whether the checks passed. Errors are for runs that could not be done.
pub async fn run(args: &Args) -> anyhow::Result<ChaosReport> {
    args.validate()?;
    match args.backend {
        BackendKind::Local => {
            let mut b = local::LocalBackend::start(args.bin_dir.clone(), args.dir.clone()).await?;
            println!("local cluster up in {}", b.dir().display());
            run_with(args, &mut b).await
        }
        BackendKind::Docker => {
            if args.up {
                println!(
                    "bringing up compose project {} from {}",
                    args.project,
                    args.compose_file.display()
                );
                docker::DockerBackend::up(&args.compose_file, &args.project).await?;
            }
            let mut b = docker::DockerBackend::connect(&args.project, &args.compose_file).await?;
            run_with(args, &mut b).await
        }
    }
}

/// The nominal schedule of a run: the fault kinds that backend supports,
/// drawn with the run's seed, assuming instant injections and heals.
pub fn plan(args: &Args, seed: u64) -> Vec<nemesis::PlannedFault> {
    let kinds: Vec<FaultKind> = args
        .nemesis
        .0
        .iter()
        .copied()
        .filter(|k| args.backend != BackendKind::Local || local::supports(*k))
        .collect();
    Nemesis::new(seed, &kinds, Timing::default()).plan(args.duration)
}

/// The seed of a run: `--seed`, else one from the clock.
pub fn seed_of(args: &Args) -> u64 {
    args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// Seconds since `t0`, for log lines.
fn stamp(t0: Instant) -> String {
    format!("[{:8.3}s]", t0.elapsed().as_secs_f64())
}

/// Executes the seeded schedule until `end`: gap, inject, hold, heal.
async fn run_nemesis<B: Backend>(
    backend: &mut B,
    mut nemesis: Nemesis,
    t0: Instant,
    end: Instant,
) -> Vec<FaultRecord> {
    let mut log = Vec::new();
    while let Some(f) = nemesis.next_fault() {
        let at = Instant::now() + f.gap;
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let mut rec = FaultRecord {
            fault: f.fault.clone(),
            injected: t0.elapsed(),
            healed: None,
            rejoins: Vec::new(),
            errors: Vec::new(),
        };
        println!("{} inject {}", stamp(t0), f.fault);
        if let Err(e) = backend.inject(&f.fault).await {
            println!("{} inject {} failed: {e:#}", stamp(t0), f.fault);
            rec.errors.push(format!("inject: {e:#}"));
        }
        let heal_at = (Instant::now() + f.hold).min(end);
        tokio::time::sleep_until(heal_at.into()).await;
        match backend.heal(&f.fault).await {
            Ok(rejoins) => {
                rec.healed = Some(t0.elapsed());
                let ready: Vec<String> = rejoins
                    .iter()
                    .map(|r| format!("{} {:.3}s", r.node, r.after.as_secs_f64()))
                    .collect();
                println!(
                    "{} healed {}; ready after: {}",
                    stamp(t0),
                    f.fault,
                    ready.join(", ")
                );
                rec.rejoins = rejoins;
            }
            Err(e) => {
                println!("{} heal {} failed: {e:#}", stamp(t0), f.fault);
                rec.errors.push(format!("heal: {e:#}"));
            }
        }
        log.push(rec);
    }
    log
}

/// Describes replica statuses, one per line.
fn describe(all: &[Result<ParticipantStatus, quintet_client::ClientError>]) -> String {
    all.iter()
        .enumerate()
        .map(|(i, s)| match s {
            Ok(s) => format!(
                "replica {}: applied {} digest {} pending {:?} current {}",
                s.id, s.applied, s.digest, s.pending, s.current
            ),
            Err(e) => format!("replica {}: {e}", i + 1),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until every replica is at the same version and digest with
/// nothing pending, and the coordinator is idle. `Err` describes the last
/// state seen.
async fn wait_converged(
    client: &Client,
    timeout: Duration,
) -> Result<Vec<ParticipantStatus>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = client.status_all().await;
        let coord = client.coordinator_status().await;
        let ok: Vec<&ParticipantStatus> = all.iter().flatten().collect();
        let same = ok.len() == all.len()
            && ok.iter().all(|s| {
                s.pending.is_empty() && s.applied == ok[0].applied && s.digest == ok[0].digest
            });
        let idle = matches!(&coord, Ok(c) if c.queued == 0 && c.in_flight.is_none());
        if same && idle {
            return Ok(ok.into_iter().cloned().collect());
        }
        if Instant::now() >= deadline {
            let c = match coord {
                Ok(c) => format!(
                    "coordinator: epoch {} committed {} queued {} in flight {:?}",
                    c.epoch, c.committed, c.queued, c.in_flight
                ),
                Err(e) => format!("coordinator: {e}"),
            };
            return Err(format!("{}; {c}", describe(&all)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads every key at every replica (serializable, retried a few times).
async fn read_back(
    client: &Client,
    spec: &WorkloadSpec,
    replicas: usize,
) -> Result<Vec<FinalRead>, String> {
    let mut finals = Vec::new();
    for k in 0..spec.keys {
        let key = spec.key(k);
        for r in 0..replicas {
            let mut attempt = 0;
            let reply = loop {
                match client
                    .get_at(r, key.as_bytes(), ReadLevel::Serializable)
                    .await
                {
                    Ok(reply) => break reply,
                    Err(e) if attempt >= 5 => {
                        return Err(format!("reading {key} at replica {}: {e}", r + 1));
                    }
                    Err(_) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            };
            let value = reply
                .value
                .map(|(v, ver)| (String::from_utf8_lossy(&v).into_owned(), ver));
            finals.push((r as u32 + 1, key.clone(), value));
        }
    }
    Ok(finals)
}

/// The run, on any backend.
pub async fn run_with<B: Backend>(args: &Args, backend: &mut B) -> anyhow::Result<ChaosReport> {
    let seed = seed_of(args);
    let mut report = ChaosReport {
        backend: backend.name().to_string(),
        seed,
        clients: args.clients,
        keys: args.keys,
        history: args.history.clone(),
        logs: backend.logs_hint(),
        ..ChaosReport::default()
    };
    let mut kinds = Vec::new();
    for &k in &args.nemesis.0 {
        match backend.unsupported(k) {
            Some(why) => {
                println!("note: {why}");
                report.skipped.push(k);
            }
            None => kinds.push(k),
        }
    }
    let endpoints = backend.endpoints();
    let client = Client::new(&endpoints, args.op_timeout).map_err(anyhow::Error::msg)?;
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let spec = WorkloadSpec {
        clients: args.clients,
        mix: args.mix,
        keys: args.keys,
        key_dist: KeyDist::Uniform,
        value_size: 16,
        read_level: ReadLevel::Linearizable,
        stop: Stop::Duration(args.duration),
        warmup: Duration::ZERO,
        seed,
        key_prefix: format!("chaos-{run_id}-"),
        target: Target::RoundRobinReplica,
        error_backoff: Duration::from_millis(20),
    };
    let kind_names: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    println!(
        "quintet-chaos: backend {}, seed {seed}, {:?}, {} clients, {} keys ({}*), nemesis [{}]",
        backend.name(),
        args.duration,
        args.clients,
        args.keys,
        spec.key_prefix,
        kind_names.join(",")
    );

    let records: Arc<Mutex<Vec<OpRecord>>> = Arc::default();
    let sink = records.clone();
    let observer: workload::Observer = Arc::new(move |r: &OpRecord| {
        if let Ok(mut v) = sink.lock() {
            v.push(r.clone());
        }
    });
    let (cancel, cancel_rx) = watch::channel(false);
    let nemesis = Nemesis::new(seed, &kinds, Timing::default());
    let t0 = Instant::now();
    let end = t0 + args.duration;
    let (summary, faults) = tokio::join!(
        workload::run(&client, &spec, Some(observer), cancel_rx),
        async {
            let log = run_nemesis(backend, nemesis, t0, end).await;
            // The workload stops by itself at the same time; this is a backstop.
            tokio::time::sleep_until(end.into()).await;
            let _ = cancel.send(true);
            log
        }
    );
    let summary = summary.map_err(anyhow::Error::msg)?;
    report.ran = t0.elapsed();
    report.errors = summary.errors.clone();
    report.faults = faults;
    println!("{} workload stopped; healing everything", stamp(t0));

    let records = match records.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(_) => bail!("the history recorder panicked"),
    };
    let history = report::history_of(&records);
    if let Some(parent) = args.history.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    history
        .write_jsonl(&args.history)
        .with_context(|| format!("writing the history to {}", args.history.display()))?;
    report.history_len = history.len();
    report.count_ops(&history);
    report.measure_availability(&history, args.duration.min(report.ran));

    match backend.heal_all().await {
        Ok(w) => report.warnings.extend(w),
        Err(e) => report.warnings.push(format!("healing failed: {e:#}")),
    }
    for w in &report.warnings {
        println!("{} warning: {w}", stamp(t0));
    }

    // Convergence, then the final reads, then the same state again.
    let mut converged = wait_converged(&client, args.converge_timeout).await;
    let mut finals = Err("replicas did not converge".to_string());
    for _ in 0..3 {
        let Ok(before) = &converged else { break };
        finals = read_back(&client, &spec, endpoints.len()).await;
        let after = wait_converged(&client, args.converge_timeout).await;
        let same = matches!(&after, Ok(a) if a.iter().zip(before).all(|(x, y)| x.applied == y.applied && x.digest == y.digest));
        converged = after;
        if same {
            break;
        }
        finals = Err("the replicas' state changed during the final reads".to_string());
    }
    println!("{} converged; checking", stamp(t0));

    // (1) Linearizability of the whole history.
    let lin = checker::check_history(&history);
    let mut detail = lin.to_string();
    if !lin.is_linearizable() {
        let all: Vec<_> = lin
            .violations
            .iter()
            .chain(&lin.inconclusive)
            .cloned()
            .collect();
        detail = format!(
            "{}{}",
            detail.lines().next().unwrap_or_default(),
            report::describe_violations(&all, &history, &report.faults)
        );
    }
    report.checks.push(Check {
        name: "linearizability",
        passed: lin.is_linearizable(),
        detail,
    });

    // (2) No acknowledged write lost: final values explained by the history.
    let (passed, detail) = match &finals {
        Ok(finals) => {
            let v = checker::check_final_state(&history, finals);
            if v.is_empty() {
                (
                    true,
                    format!(
                        "{} keys x {} replicas read back, every value explained by the history",
                        spec.keys,
                        endpoints.len()
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "{} violation(s):{}",
                        v.len(),
                        report::describe_violations(&v, &history, &report.faults)
                    ),
                )
            }
        }
        Err(e) => (false, format!("not checked: {e}")),
    };
    report.checks.push(Check {
        name: "no acknowledged write lost",
        passed,
        detail,
    });

    // (3) Convergence.
    let (passed, detail) = match &converged {
        Ok(s) => (
            true,
            format!(
                "{} replicas at version {} with digest {}",
                s.len(),
                s.first().map_or(0, |s| s.applied),
                s.first().map_or("-", |s| s.digest.as_str())
            ),
        ),
        Err(e) => (
            false,
            format!("not converged within {:?}: {e}", args.converge_timeout),
        ),
    };
    report.checks.push(Check {
        name: "convergence",
        passed,
        detail,
    });

    if !report.passed() {
        let dir = args.history.with_extension("logs");
        match backend.keep_logs(&dir).await {
            Ok(where_) => report.logs = where_,
            Err(e) => report.logs = format!("{} (saving them failed: {e:#})", report.logs),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_plans_the_new_kinds_where_the_backend_has_them() {
        let args = |backend: &str| {
            Args::try_parse_from([
                "quintet-chaos",
                "--backend",
                backend,
                "--duration",
                "10m",
                "--nemesis",
                "all",
            ])
            .expect("valid arguments")
        };
        let local = plan(&args("local"), 3);
        let docker = plan(&args("docker"), 3);
        for k in [FaultKind::PartitionCoordinator, FaultKind::Wipe] {
            assert!(
                local.iter().any(|f| f.fault.kind == k),
                "{k} not planned locally"
            );
            assert!(
                docker.iter().any(|f| f.fault.kind == k),
                "{k} not planned on docker"
            );
        }
        assert!(!local.iter().any(|f| f.fault.kind == FaultKind::Partition));
        assert!(docker.iter().any(|f| f.fault.kind == FaultKind::Partition));
    }

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from([
            "quintet-chaos",
            "--backend",
            "docker",
            "--duration",
            "2m",
            "--clients",
            "4",
            "--nemesis",
            "kill,pause,partition,partition-coordinator,wipe,restart-all",
            "--seed",
            "7",
            "--history",
            "h.jsonl",
            "--keys",
            "10",
            "--compose-file",
            "x/compose.yaml",
        ])
        .expect("valid arguments");
        assert_eq!(a.backend, BackendKind::Docker);
        assert_eq!(a.duration, Duration::from_secs(120));
        assert_eq!(a.clients, 4);
        assert_eq!(a.nemesis.0, FaultKind::ALL.to_vec());
        assert_eq!(a.seed, Some(7));
        assert_eq!(a.history, PathBuf::from("h.jsonl"));
        assert_eq!(a.keys, 10);
        assert_eq!(a.compose_file, PathBuf::from("x/compose.yaml"));
        assert!(a.validate().is_ok());

        let d = Args::try_parse_from(["quintet-chaos"]).expect("defaults");
        assert_eq!(d.backend, BackendKind::Local);
        assert_eq!(d.duration, Duration::from_secs(60));
        assert_eq!((d.clients, d.keys, d.seed), (8, 20, None));
        assert_eq!(d.nemesis.0, FaultKind::ALL.to_vec());
        let n = Args::try_parse_from(["quintet-chaos", "--nemesis", "none"]).expect("none");
        assert!(n.nemesis.0.is_empty());
        let ci = Args::try_parse_from([
            "quintet-chaos",
            "--nemesis",
            "kill,pause,partition-coordinator,wipe,restart-all",
            "--report-json",
            "r.json",
        ])
        .expect("the local CI list");
        assert_eq!(
            ci.nemesis.0,
            [
                FaultKind::Kill,
                FaultKind::Pause,
                FaultKind::PartitionCoordinator,
                FaultKind::Wipe,
                FaultKind::RestartAll
            ]
        );
        assert_eq!(ci.report_json, Some(PathBuf::from("r.json")));

        for bad in [
            &["quintet-chaos", "--backend", "k8s"][..],
            &["quintet-chaos", "--nemesis", "kill,flood"],
            &["quintet-chaos", "--nemesis", "partition-coordinator,wiped"],
            &["quintet-chaos", "--duration", "soon"],
            &["quintet-chaos", "--clients", "-1"],
            &["quintet-chaos", "--mix", "scan=1"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let zero = Args::try_parse_from(["quintet-chaos", "--clients", "0"]).expect("parses");
        assert!(zero.validate().is_err());
    }
}
