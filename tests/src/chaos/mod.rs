//! `quintet-chaos`: the workload engine against a cluster while a nemesis
//! injects faults, then three checks of the design's invariants.
//!
//! # A run
//!
//! 1. **Cluster.** The [`backend::Backend`] provides a running cluster of
//!    five participants and one coordinator, or (`--coordinators 3` or 5
//!    locally, 3 on docker: the compose profile `ha`) that many coordinator
//!    replicas keeping the decision log with Raft: [`local::LocalBackend`]
//!    starts one, [`docker::DockerBackend`] finds the compose project's
//!    containers.
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
//!    participant killed, its data deleted, started empty) and restart-all;
//!    with three or more coordinator replicas also kill-coordinator-leader,
//!    partition-coordinator-leader (the leader cut off the other replicas
//!    and the participants while it runs), isolate-coordinator-leader (the
//!    leader cut off the other replicas only: the participants still reach
//!    it) and wipe-coordinator (a replica, the leader or a follower,
//!    restarted with its data deleted). Those hit
//!    whoever leads at injection time: the runner asks the leader's status
//!    right before ([`backend::leader_replicas`]) and records which replica
//!    led before the injection and after the heal. A kind the backend or
//!    the number of replicas does not allow is named at start and left out.
//!    A heal that fails is recorded with its error and followed by a heal
//!    of the whole cluster, so the next fault again finds every node up.
//!    A heal returns once the nodes it brought back answer `health` as
//!    ready; for a participant that means caught up, a member again and
//!    holding a lease, for a coordinator replica the leader serving or a
//!    follower that knows the leader (a wiped one: also its log caught up
//!    with the leader's), and how long that took is its rejoin time.
//! 3. **Heal.** At `--duration` the workload stops issuing (operations in
//!    flight finish or time out after `--op-timeout`), the nemesis stops,
//!    and [`backend::Backend::heal_all`] brings every node back.
//! 4. **Converge.** Bounded by `--converge-timeout`: every replica answers
//!    status with the same applied version and digest and no pending batch,
//!    and the coordinator (its leader) has no queued write or round in
//!    flight (so no unknown write can still land after the final reads);
//!    with several coordinator replicas, the leader also reports every
//!    replica reachable with its log at the leader's applied index (a
//!    replica log that does not get there fails the convergence check but
//!    does not hold up the final reads).
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
use nemesis::{FaultKind, FaultRecord, Nemesis, PlannedFault, Timing};
use report::{ChaosReport, Check};

/// Which cluster to run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Processes started by the runner on 127.0.0.1: five participants and
    /// the coordinator replica(s).
    Local,
    /// The compose project's containers: participants on
    /// 127.0.0.1:7701-7705, the coordinator on 7700 (with the profile ha
    /// also 7710 and 7720).
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
    /// partition-coordinator, wipe, restart-all, kill-coordinator-leader,
    /// partition-coordinator-leader, wipe-coordinator,
    /// isolate-coordinator-leader (comma-separated), or all, or none.
    /// partition is docker only; partition-coordinator cuts one or two
    /// participants off the coordinator alone; wipe restarts a participant
    /// with its data deleted; the last four need --coordinators 3 or more
    /// (docker: 3, the compose profile ha) and kill the leading coordinator
    /// replica, cut it off the other replicas and the participants while
    /// it runs, restart a replica (the leader or a follower) with its data
    /// deleted, or cut the leader off the other replicas only. On docker
    /// the cuts are iptables rules in the containers' network namespaces
    /// (root, nsenter, iptables). Kinds not available are named and left
    /// out.
    #[arg(long, default_value = "all", value_parser = parse_nemesis_list)]
    pub nemesis: NemesisList,
    /// Coordinator replicas (Raft): 1, or 3 or 5 to survive losing one or
    /// two. Docker: 1, or 3 with the compose profile ha.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub coordinators: u32,
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
    /// Docker: bring the compose cluster up first (`docker compose up -d
    /// --wait`, with `--profile ha` for --coordinators 3).
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
        if self.backend == BackendKind::Docker
            && self.coordinators != 1
            && self.coordinators != docker::HA_COORDINATORS
        {
            bail!(
                "--coordinators {} cannot run on docker: the compose file runs 1 coordinator \
                 replica, or {} with the profile ha (use --backend local for other numbers)",
                self.coordinators,
                docker::HA_COORDINATORS
            );
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
            let mut b = local::LocalBackend::start(
                args.bin_dir.clone(),
                args.dir.clone(),
                args.coordinators,
            )
            .await?;
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
                docker::DockerBackend::up(&args.compose_file, &args.project, args.coordinators)
                    .await?;
            }
            let mut b = docker::DockerBackend::connect(
                &args.project,
                &args.compose_file,
                args.coordinators,
            )
            .await?;
            run_with(args, &mut b).await
        }
    }
}

/// Why a kind asked for is left out of the schedule before the cluster is
/// even looked at (the backend, the number of coordinator replicas), or
/// `None`. The docker backend may leave out more once it sees the host.
pub fn left_out(args: &Args, kind: FaultKind) -> Option<String> {
    match args.backend {
        BackendKind::Local => local::why_not(kind, args.coordinators),
        BackendKind::Docker => docker::why_not(kind, args.coordinators),
    }
}

/// The nominal schedule of a run: the fault kinds that backend supports,
/// drawn with the run's seed, assuming instant injections and heals (a
/// coordinator-replica fault names its pick, not a replica).
pub fn plan(args: &Args, seed: u64) -> Vec<nemesis::PlannedFault> {
    let kinds: Vec<FaultKind> = args
        .nemesis
        .0
        .iter()
        .copied()
        .filter(|k| left_out(args, *k).is_none())
        .collect();
    Nemesis::new(seed, &kinds, Timing::default())
        .with_coordinators(args.coordinators)
        .plan(args.duration)
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

/// How long the runner looks for the coordinator leader before a fault
/// that hits it (an election after the previous fault may still be on).
const FIND_LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long it looks for the leader just to record who led.
const NOTE_LEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The leading coordinator replica, for the record (several replicas only).
async fn note_leader(status: &Client, coordinators: u32) -> Option<quintet_client::local::Node> {
    if coordinators < 2 {
        return None;
    }
    let replicas = backend::leader_replicas(status, NOTE_LEADER_TIMEOUT)
        .await
        .ok()?;
    nemesis::leader_of(&replicas).map(quintet_client::local::Node::Coordinator)
}

/// Executes the seeded schedule until `end`: gap, inject, hold, heal. A
/// fault with a pick (the leader, a follower) gets its replica from the
/// leader's status (asked through `status`) right before its injection.
async fn run_nemesis<B: Backend>(
    backend: &mut B,
    mut nemesis: Nemesis,
    status: &Client,
    t0: Instant,
    end: Instant,
) -> Vec<FaultRecord> {
    let coordinators = backend.coordinators();
    let mut log = Vec::new();
    while let Some(f) = nemesis.next_fault() {
        let at = Instant::now() + f.gap;
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let mut fault = f.fault.clone();
        let mut leader_before = None;
        let mut resolve_error = None;
        if let Some(pick) = fault.pick.filter(|_| fault.targets.is_empty()) {
            match backend::leader_replicas(status, FIND_LEADER_TIMEOUT).await {
                Ok(replicas) => {
                    leader_before =
                        nemesis::leader_of(&replicas).map(quintet_client::local::Node::Coordinator);
                    match nemesis::pick_replica(&replicas, pick) {
                        Some(id) => {
                            fault.targets = vec![quintet_client::local::Node::Coordinator(id)]
                        }
                        None => {
                            resolve_error =
                                Some(format!("no replica is {pick} in the leader's status"))
                        }
                    }
                }
                Err(e) => resolve_error = Some(format!("{e:#}")),
            }
        } else {
            leader_before = note_leader(status, coordinators).await;
        }
        let mut rec = FaultRecord {
            fault: fault.clone(),
            leader_before,
            leader_after: None,
            injected: t0.elapsed(),
            healed: None,
            rejoins: Vec::new(),
            errors: Vec::new(),
        };
        if let Some(e) = resolve_error {
            // Nothing was injected: a fault of no length, not held.
            println!("{} cannot inject {fault}: {e}", stamp(t0));
            rec.errors.push(format!("finding its target: {e}"));
            rec.healed = Some(rec.injected);
            log.push(rec);
            continue;
        }
        println!("{} inject {fault}", stamp(t0));
        if let Err(e) = backend.inject(&fault).await {
            println!("{} inject {fault} failed: {e:#}", stamp(t0));
            rec.errors.push(format!("inject: {e:#}"));
        }
        let heal_at = (Instant::now() + f.hold).min(end);
        tokio::time::sleep_until(heal_at.into()).await;
        let f = PlannedFault { fault, ..f };
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
                // One fault at a time: bring the whole cluster back before
                // the next, so it is not measured against a node still down.
                println!("{} restoring the whole cluster", stamp(t0));
                match backend.heal_all().await {
                    Ok(warnings) => {
                        rec.healed = Some(t0.elapsed());
                        rec.errors
                            .extend(warnings.into_iter().map(|w| format!("restore: {w}")));
                        println!("{} cluster restored", stamp(t0));
                    }
                    Err(e) => {
                        println!("{} restoring the cluster failed: {e:#}", stamp(t0));
                        rec.errors.push(format!("restore: {e:#}"));
                    }
                }
            }
        }
        rec.leader_after = note_leader(status, coordinators).await;
        if rec.leader_before.is_some() || rec.leader_after.is_some() {
            let name = |l: Option<quintet_client::local::Node>| {
                l.map_or("unknown".to_string(), |n| n.to_string())
            };
            println!(
                "{} leader before {}, after {}",
                stamp(t0),
                name(rec.leader_before),
                name(rec.leader_after)
            );
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

/// Describes the coordinator replicas of a status (nothing for a lone one).
fn describe_replicas(replicas: &[quintet_common::rpc::ReplicaStatus]) -> String {
    if replicas.len() < 2 {
        return String::new();
    }
    let each: Vec<String> = replicas
        .iter()
        .map(|r| {
            format!(
                "{} {} at {}{}",
                r.id,
                r.role,
                r.applied,
                if r.reachable { "" } else { " unreachable" }
            )
        })
        .collect();
    format!(
        "; replicas (term {}): {}",
        replicas[0].term,
        each.join(", ")
    )
}

/// A converged cluster: the participants' statuses, and with several
/// coordinator replicas their decision log: `Ok(Some((replicas, index)))`
/// when every one is at the leader's index, `Err` describing them when
/// not (`Ok(None)`: a single coordinator).
type Converged = (Vec<ParticipantStatus>, Result<Option<(usize, u64)>, String>);

/// Waits until every replica is at the same version and digest with
/// nothing pending, and the coordinator is idle; with several coordinator
/// replicas also (when `wait_for_log`) until all of them are at the
/// leader's log index. Participants that converged with a replica log that
/// did not are `Ok` with the log's `Err`, so the final reads still happen;
/// `Err` describes the last state seen otherwise.
async fn wait_converged(
    client: &Client,
    timeout: Duration,
    wait_for_log: bool,
) -> Result<Converged, String> {
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
        // With several replicas, the decision log has converged too: the
        // leader hears every replica and has its log where its own is.
        let log = match &coord {
            Ok(c) if c.replicas.len() > 1 => {
                let leader = nemesis::leader_of(&c.replicas);
                let at = c
                    .replicas
                    .iter()
                    .find(|r| Some(r.id) == leader)
                    .map(|r| r.applied);
                match at {
                    Some(at) if c.replicas.iter().all(|r| r.reachable && r.applied == at) => {
                        Ok(Some((c.replicas.len(), at)))
                    }
                    _ => Err(format!(
                        "coordinator replicas not at one log index{}",
                        describe_replicas(&c.replicas)
                    )),
                }
            }
            _ => Ok(None),
        };
        let timed_out = Instant::now() >= deadline;
        if same && idle && (log.is_ok() || !wait_for_log || timed_out) {
            return Ok((ok.into_iter().cloned().collect(), log));
        }
        if timed_out {
            let c = match coord {
                Ok(c) => format!(
                    "coordinator: epoch {} committed {} queued {} in flight {:?}{}",
                    c.epoch,
                    c.committed,
                    c.queued,
                    c.in_flight,
                    describe_replicas(&c.replicas)
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
        coordinators: backend.coordinators(),
        seed,
        clients: args.clients,
        keys: args.keys,
        history: args.history.clone(),
        logs: backend.logs_hint(),
        ..ChaosReport::default()
    };
    let mut kinds = Vec::new();
    for &k in &args.nemesis.0 {
        match left_out(args, k).or_else(|| backend.unsupported(k)) {
            Some(why) => {
                println!("note: {why}");
                report.skipped.push(k);
            }
            None => kinds.push(k),
        }
    }
    let endpoints = backend.endpoints();
    let client = Client::new(&endpoints, args.op_timeout).map_err(anyhow::Error::msg)?;
    // The nemesis's look-ups of the leader: short timeouts, so a paused
    // participant costs a second, not an operation timeout.
    let status = Client::new(&endpoints, Duration::from_secs(1)).map_err(anyhow::Error::msg)?;
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
        "quintet-chaos: backend {}, {} coordinator replica(s), seed {seed}, {:?}, {} clients, {} keys ({}*), nemesis [{}]",
        backend.name(),
        backend.coordinators(),
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
    let nemesis =
        Nemesis::new(seed, &kinds, Timing::default()).with_coordinators(backend.coordinators());
    let t0 = Instant::now();
    let end = t0 + args.duration;
    let (summary, faults) = tokio::join!(
        workload::run(&client, &spec, Some(observer), cancel_rx),
        async {
            let log = run_nemesis(backend, nemesis, &status, t0, end).await;
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
    let mut converged = wait_converged(&client, args.converge_timeout, true).await;
    // The replica log as the first wait saw it (the later waits do not wait for it again).
    let log = match &converged {
        Ok((_, log)) => log.clone(),
        Err(_) => Ok(None),
    };
    let mut finals = Err("replicas did not converge".to_string());
    for _ in 0..3 {
        let Ok((before, _)) = &converged else { break };
        finals = read_back(&client, &spec, endpoints.len()).await;
        let after = wait_converged(&client, args.converge_timeout, false).await;
        let same = matches!(&after, Ok((a, _)) if a.iter().zip(before).all(|(x, y)| x.applied == y.applied && x.digest == y.digest));
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
        Ok((s, _)) => {
            let participants = format!(
                "{} replicas at version {} with digest {}",
                s.len(),
                s.first().map_or(0, |s| s.applied),
                s.first().map_or("-", |s| s.digest.as_str()),
            );
            match &log {
                Ok(None) => (true, participants),
                Ok(Some((n, at))) => (
                    true,
                    format!("{participants}; {n} coordinator replicas at log index {at}"),
                ),
                Err(e) => (
                    false,
                    format!(
                        "{participants}, but not within {:?}: {e}",
                        args.converge_timeout
                    ),
                ),
            }
        }
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
    fn all_includes_the_coordinator_replica_kinds_only_where_they_can_run() {
        let args = |extra: &[&str]| {
            let mut a = vec!["quintet-chaos", "--duration", "20m", "--nemesis", "all"];
            a.extend_from_slice(extra);
            Args::try_parse_from(a).expect("valid arguments")
        };
        let replica_kinds = [
            FaultKind::KillCoordinatorLeader,
            FaultKind::PartitionCoordinatorLeader,
            FaultKind::WipeCoordinator,
            FaultKind::IsolateCoordinatorLeader,
        ];
        // `all` names them; whether they run depends on the cluster.
        let one = args(&[]);
        for k in replica_kinds {
            assert!(one.nemesis.0.contains(&k), "{k}");
            let why = left_out(&one, k).expect("left out with one coordinator");
            assert!(why.contains("--coordinators 3"), "{why}");
        }
        let three = args(&["--coordinators", "3"]);
        assert_eq!(three.coordinators, 3);
        assert!(three.validate().is_ok());
        let planned_one = plan(&one, 11);
        let planned_three = plan(&three, 11);
        for k in replica_kinds {
            assert!(
                !planned_one.iter().any(|f| f.fault.kind == k),
                "{k} planned with 1"
            );
            assert!(
                planned_three.iter().any(|f| f.fault.kind == k),
                "{k} not planned with 3"
            );
            assert_eq!(left_out(&three, k), None, "{k}");
        }
        // The other kinds are the same either way; partition stays out locally.
        assert!(left_out(&three, FaultKind::Partition).is_some());
        assert_eq!(left_out(&three, FaultKind::Kill), None);
        // Two replicas are allowed but cannot lose one: the kinds stay out.
        let two = args(&["--coordinators", "2"]);
        assert!(left_out(&two, FaultKind::KillCoordinatorLeader).is_some());
        // Docker runs one coordinator, or three with the profile ha: the
        // kinds run with three only, and no other number is accepted.
        let docker = args(&["--backend", "docker"]);
        for k in replica_kinds {
            let why = left_out(&docker, k).expect("left out with one coordinator");
            assert!(why.contains("--coordinators 3"), "{why}");
        }
        let docker_ha = args(&["--backend", "docker", "--coordinators", "3"]);
        assert!(docker_ha.validate().is_ok());
        let planned = plan(&docker_ha, 11);
        for k in replica_kinds {
            assert_eq!(left_out(&docker_ha, k), None, "{k}");
            assert!(planned.iter().any(|f| f.fault.kind == k), "{k} not planned");
        }
        assert!(planned.iter().any(|f| f.fault.kind == FaultKind::Partition));
        for n in ["2", "5"] {
            assert!(
                args(&["--backend", "docker", "--coordinators", n])
                    .validate()
                    .is_err(),
                "{n}"
            );
        }
        for bad in ["0", "8", "three"] {
            assert!(
                Args::try_parse_from(["quintet-chaos", "--coordinators", bad]).is_err(),
                "{bad}"
            );
        }
        // The CI list parses.
        let ci = Args::try_parse_from([
            "quintet-chaos",
            "--coordinators",
            "3",
            "--nemesis",
            "kill-coordinator-leader,partition-coordinator-leader,wipe-coordinator,kill,pause",
        ])
        .expect("the CI list");
        assert_eq!(
            ci.nemesis.0,
            [
                FaultKind::Kill,
                FaultKind::Pause,
                FaultKind::KillCoordinatorLeader,
                FaultKind::PartitionCoordinatorLeader,
                FaultKind::WipeCoordinator
            ]
        );
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
        assert_eq!(a.nemesis.0, FaultKind::ALL[..6].to_vec());
        assert_eq!(a.coordinators, 1);
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
