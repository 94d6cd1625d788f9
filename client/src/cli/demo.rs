//! `quintet demo`: the assignment workload, checked, on a cluster of its own
//! (or the one given with --endpoints / QUINTET_ENDPOINTS).
//!
//! It writes 10 keys, then does 5 PUTs, 5 GETs and 5 DELETEs, rotating the
//! replica it talks to for every operation. After every write it reads the
//! key back at *every* replica with a linearizable `get_at`, and requires the
//! same value and version everywhere: that is the replication claim, shown
//! rather than asserted. A GET is checked against what the demo wrote. It
//! ends with the status table (digests equal?) and a throughput line from a
//! short sequential loop, and exits 0 only if every check held.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quintet_client::local::{LocalCluster, LocalOptions};
use quintet_client::{Client, ClientError};
use quintet_common::types::{Op, OpResult, ReadLevel, Version};
use serde_json::json;

use super::commands::{Ctx, Failure};
use super::output::{Output, StatusReport, lossy};
use super::{EXIT_FAILED, EXIT_OK};

/// Keys written before the checked operations.
const PREPOPULATE: usize = 10;
/// PUTs, GETs and DELETEs each.
const EACH: usize = 5;
/// Length of each timed loop.
const LOOP: Duration = Duration::from_secs(2);

/// One row of the demo table.
struct Step {
    n: usize,
    op: &'static str,
    key: String,
    replica: usize,
    address: String,
    result: String,
    version: Option<Version>,
    latency_ms: f64,
    check: Result<(), String>,
}

/// What the demo expects a key to hold.
type Model = BTreeMap<String, Option<(Vec<u8>, Version)>>;

struct Demo {
    client: Client,
    endpoints: Vec<String>,
    output: Output,
    model: Model,
    steps: Vec<Step>,
    rotation: usize,
}

/// Runs the demo; returns the exit code.
pub async fn run(ctx: &Ctx) -> Result<i32, Failure> {
    let text = ctx.output == Output::Text;
    let cluster = if ctx.explicit_endpoints {
        None
    } else {
        if text {
            println!(
                "starting a local cluster (free ports, temp dir; pass --endpoints to use yours) ..."
            );
        }
        let c = LocalCluster::start(LocalOptions::default(), Duration::from_secs(30))
            .await
            .map_err(|e| {
                Failure::failed(format!(
                    "cannot start the demo cluster: {}",
                    quintet_common::telemetry::error_line(&e)
                ))
            })?;
        Some(c)
    };
    let endpoints = match &cluster {
        Some(c) => c.endpoints(),
        None => ctx.endpoints.clone(),
    };
    let client = Client::new(&endpoints, ctx.timeout).map_err(Failure::usage)?;
    if text {
        println!(
            "replicas: {}  (every write is read back at all {} replicas)\n",
            endpoints.join(", "),
            endpoints.len()
        );
        println!("{}", row_header());
    }
    let mut demo = Demo {
        client,
        endpoints,
        output: ctx.output,
        model: Model::new(),
        steps: Vec::new(),
        rotation: 0,
    };
    demo.workload().await;
    if text {
        println!(
            "\nmeasuring: {:.0} s of sequential puts, then {:.0} s of sequential gets ...",
            LOOP.as_secs_f64(),
            LOOP.as_secs_f64()
        );
    }

    let (writes_per_s, reads_per_s) = demo.throughput().await;
    let report = demo.settled_status().await;
    let failed: Vec<&Step> = demo.steps.iter().filter(|s| s.check.is_err()).collect();
    let failed_count = failed.len();
    let statuses_ok = report.all_reachable() && report.digests_agree();
    let ok = failed.is_empty() && statuses_ok;
    let measured = format!(
        "measured: {writes_per_s:.0} writes/s, {reads_per_s:.0} reads/s (one client, one request at a time: {:.0} s of sequential puts, then {:.0} s of sequential linearizable gets, each to a random replica)",
        LOOP.as_secs_f64(),
        LOOP.as_secs_f64()
    );
    if text {
        println!();
        for s in &failed {
            if let Err(e) = &s.check {
                println!("step {} failed its check: {e}", s.n);
            }
        }
        println!("{}", report.text());
        println!("{measured}");
    } else {
        let steps: Vec<_> = demo
            .steps
            .iter()
            .map(|s| {
                json!({
                    "step": s.n, "operation": s.op, "key": s.key,
                    "replica": s.replica, "address": s.address,
                    "result": s.result, "version": s.version,
                    "latency_ms": s.latency_ms,
                    "check": s.check.is_ok(),
                    "error": s.check.as_ref().err(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "ok": ok,
                "steps": steps,
                "status": report.json(),
                "writes_per_sec": writes_per_s,
                "reads_per_sec": reads_per_s,
            })
        );
    }
    if let Some(mut c) = cluster {
        tokio::task::block_in_place(|| c.shutdown());
    }
    if ok {
        if text {
            println!("all {} checks held", demo_checks_count());
        }
        Ok(EXIT_OK)
    } else {
        let mut why = Vec::new();
        if failed_count > 0 {
            why.push(format!("{failed_count} step(s) failed their check"));
        }
        if !report.all_reachable() {
            why.push(format!("{} unreachable", report.unreachable().join(", ")));
        }
        if !report.digests_agree() {
            why.push("replica digests differ at the same applied version".into());
        }
        Err(Failure {
            code: EXIT_FAILED,
            message: format!(
                "demo checks failed: {}; see the table above",
                why.join("; ")
            ),
        })
    }
}

fn demo_checks_count() -> usize {
    PREPOPULATE + 3 * EACH + 1
}

fn row_header() -> String {
    format!(
        "{:>4}  {:<6}  {:<8}  {:<21}  {:<18}  {:>7}  {:>8}  CHECK",
        "STEP", "OP", "KEY", "REPLICA", "RESULT", "VERSION", "MS"
    )
}

fn row(s: &Step) -> String {
    let mark = if s.check.is_ok() { "✓" } else { "✗" };
    let mut result = s.result.clone();
    if result.chars().count() > 18 {
        result = result.chars().take(17).collect::<String>() + "…";
    }
    format!(
        "{:>4}  {:<6}  {:<8}  {:<21}  {:<18}  {:>7}  {:>8.1}  {mark}",
        s.n,
        s.op,
        s.key,
        format!("{} {}", s.replica, s.address),
        result,
        s.version.map_or("-".into(), |v| v.to_string()),
        s.latency_ms,
    )
}

fn describe(e: &ClientError) -> String {
    format!("error ({})", e.kind())
}

impl Demo {
    fn next_replica(&mut self) -> usize {
        let i = self.rotation % self.endpoints.len();
        self.rotation += 1;
        i
    }

    fn record(&mut self, step: Step) {
        if self.output == Output::Text {
            println!("{}", row(&step));
        }
        self.steps.push(step);
    }

    async fn workload(&mut self) {
        for k in 1..=PREPOPULATE {
            let key = format!("key-{k:02}");
            self.write("seed", key, Some(format!("seed-{k}"))).await;
        }
        for k in 1..=EACH {
            let key = format!("key-{k:02}");
            self.write("PUT", key, Some(format!("updated-{k}"))).await;
        }
        for k in 1..=EACH {
            self.read(format!("key-{k:02}")).await;
        }
        for k in EACH + 1..=EACH * 2 {
            self.write("DELETE", format!("key-{k:02}"), None).await;
        }
    }

    /// A put (value given) or delete at the next replica, then the all-replica check.
    async fn write(&mut self, op: &'static str, key: String, value: Option<String>) {
        let i = self.next_replica();
        let wire = match &value {
            Some(v) => Op::Put {
                key: key.clone().into_bytes(),
                value: v.clone().into_bytes(),
            },
            None => Op::Delete {
                key: key.clone().into_bytes(),
            },
        };
        let started = Instant::now();
        let answer = self.client.write_at(i, wire).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (result, version, check) = match answer {
            Ok(r) => {
                let expected = value.map(|v| (v.into_bytes(), r.version()));
                self.model.insert(key.clone(), expected.clone());
                let result = match r {
                    OpResult::Put { .. } => "OK".to_string(),
                    OpResult::Delete { deleted: true, .. } => "deleted".to_string(),
                    OpResult::Delete { deleted: false, .. } => "absent (no-op)".to_string(),
                };
                let check = self.check_everywhere(&key, &expected).await;
                (result, Some(r.version()), check)
            }
            Err(e) => {
                let check = Err(format!("{op} {key} failed: {e}"));
                (describe(&e), None, check)
            }
        };
        self.record(Step {
            n: self.steps.len() + 1,
            op,
            key,
            replica: i + 1,
            address: self.endpoints[i].clone(),
            result,
            version,
            latency_ms,
            check,
        });
    }

    /// A linearizable get at the next replica, checked against what was written.
    async fn read(&mut self, key: String) {
        let i = self.next_replica();
        let started = Instant::now();
        let answer = self
            .client
            .get_at(i, key.as_bytes(), ReadLevel::Linearizable)
            .await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let expected = self.model.get(&key).cloned().flatten();
        let (result, version, check) = match answer {
            Ok(r) => {
                let check = if r.value == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "GET {key} at replica {} returned {}, expected {}",
                        i + 1,
                        show(&r.value),
                        show(&expected)
                    ))
                };
                let result = r
                    .value
                    .as_ref()
                    .map_or("(not found)".into(), |(v, _)| lossy(v));
                (result, r.value.map(|(_, v)| v), check)
            }
            Err(e) => (
                describe(&e),
                None,
                Err(format!("GET {key} at replica {} failed: {e}", i + 1)),
            ),
        };
        self.record(Step {
            n: self.steps.len() + 1,
            op: "GET",
            key,
            replica: i + 1,
            address: self.endpoints[i].clone(),
            result,
            version,
            latency_ms,
            check,
        });
    }

    /// Reads `key` at every replica; all must return `expected` (value and version).
    async fn check_everywhere(
        &self,
        key: &str,
        expected: &Option<(Vec<u8>, Version)>,
    ) -> Result<(), String> {
        let reads = futures::future::join_all((0..self.endpoints.len()).map(|j| {
            self.client
                .get_at(j, key.as_bytes(), ReadLevel::Linearizable)
        }))
        .await;
        let mut wrong = Vec::new();
        for (j, r) in reads.into_iter().enumerate() {
            match r {
                Ok(r) if &r.value == expected => {}
                Ok(r) => wrong.push(format!("replica {} has {}", j + 1, show(&r.value))),
                Err(e) => wrong.push(format!("replica {} failed: {e}", j + 1)),
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{key}: expected {} everywhere, but {}",
                show(expected),
                wrong.join("; ")
            ))
        }
    }

    /// Sequential puts, then sequential gets, for [`LOOP`] each: (writes/s, reads/s).
    async fn throughput(&self) -> (f64, f64) {
        let mut done = 0u64;
        let started = Instant::now();
        while started.elapsed() < LOOP {
            let key = format!("bench-{:03}", done % 100);
            if self.client.put(key.as_bytes(), b"x").await.is_ok() {
                done += 1;
            }
        }
        let writes = done as f64 / started.elapsed().as_secs_f64();
        let mut done = 0u64;
        let started = Instant::now();
        while started.elapsed() < LOOP {
            let key = format!("bench-{:03}", done % 100);
            if self
                .client
                .get(key.as_bytes(), ReadLevel::Linearizable)
                .await
                .is_ok()
            {
                done += 1;
            }
        }
        let reads = done as f64 / started.elapsed().as_secs_f64();
        (writes, reads)
    }

    /// The status once every reachable replica has applied the same version
    /// (commits reach replicas just after the client's ack), or after 3 s.
    async fn settled_status(&self) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let report = StatusReport::gather(&self.client).await;
            let applied: Vec<u64> = report
                .participants
                .iter()
                .filter_map(|r| r.status.as_ref().ok().map(|s| s.applied))
                .collect();
            let settled = applied.windows(2).all(|w| w[0] == w[1]);
            if settled || Instant::now() >= deadline {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn show(v: &Option<(Vec<u8>, Version)>) -> String {
    match v {
        Some((value, version)) => format!("{:?}@{version}", lossy(value)),
        None => "nothing".into(),
    }
}
