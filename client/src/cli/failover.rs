//! `quintet demo --failover`: what five replicas are for, shown on a local
//! cluster of the demo's own.
//!
//! A writer puts a fresh key per write through any replica, and a reader
//! reads back, linearizably and at any replica, the last write acknowledged
//! before the read started, so a stale read shows up as a missing key. Both
//! run throughout. The demo kills a participant (SIGKILL), reports the
//! longest pause each of them saw while it was dropped from the view, wipes
//! its data dir and starts it again, narrates its catch-up from `status`
//! (learner, copy progress, member again under a new incarnation), then
//! stops the load and checks: writes kept committing while it was down,
//! no read was stale, every acknowledged write is at every replica, it came
//! back as a new incarnation and rejoined, and the digests are equal.
//! Exit 0 only if every check held.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quintet_client::Client;
use quintet_client::local::{LocalCluster, LocalOptions, Node};
use quintet_common::types::{OpResult, ReadLevel, Version};
use serde_json::json;

use super::commands::{Ctx, Failure};
use super::output::{Output, StatusReport};
use super::{EXIT_FAILED, EXIT_OK};

/// The participant the demo kills and wipes.
const VICTIM: u32 = 3;
/// Keys written before the fault, so the rebuild has something to copy.
const SEED: usize = 2000;
/// How long the victim stays down.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// How long it may take to rejoin before the demo gives up.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// An acknowledged write: key, value, version, when the ack came.
type Acked = (String, String, Version, Instant);

#[derive(Default)]
struct Shared {
    acked: Mutex<Vec<Acked>>,
    read_ok: Mutex<Vec<Instant>>,
    stale: Mutex<Vec<String>>,
    write_failures: AtomicU64,
    read_refusals: AtomicU64,
    stop: AtomicBool,
}

/// Runs the failover demo; returns the exit code.
pub async fn run(ctx: &Ctx) -> Result<i32, Failure> {
    if ctx.explicit_endpoints {
        return Err(Failure::usage(
            "demo --failover kills and wipes a replica, so it runs on a local cluster of its own; run it without --endpoints / QUINTET_ENDPOINTS",
        ));
    }
    let text = ctx.output == Output::Text;
    let say = |line: String| {
        if text {
            println!("{line}");
        }
    };
    say("starting a local cluster (free ports, temp dir) ...".into());
    let mut cluster = LocalCluster::start(LocalOptions::default(), Duration::from_secs(30))
        .await
        .map_err(|e| {
            Failure::failed(format!(
                "cannot start the demo cluster: {}",
                quintet_common::telemetry::error_line(&e)
            ))
        })?;
    let endpoints = cluster.endpoints();
    let client = Client::new(&endpoints, ctx.timeout).map_err(Failure::usage)?;
    say(format!("replicas: {}", endpoints.join(", ")));

    say(format!("seeding {SEED} keys ..."));
    seed(&client).await?;
    let victim = Node::Participant(VICTIM);
    let before = StatusReport::gather(&client).await;
    let old_incarnation = before
        .participants
        .iter()
        .find_map(|r| r.status.as_ref().ok().filter(|s| s.id == VICTIM))
        .map(|s| s.incarnation);

    let shared = Arc::new(Shared::default());
    let writer = tokio::spawn(write_loop(client.clone(), shared.clone()));
    let reader = tokio::spawn(read_loop(client.clone(), shared.clone()));
    say("a writer (a fresh key per put, any replica) and a linearizable reader (the last acked key, any replica) are running".into());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t0 = Instant::now();
    let stamp = |t: Instant| format!("[{:6.2}s]", t.duration_since(t0).as_secs_f64());
    cluster
        .kill(victim)
        .map_err(|e| Failure::failed(format!("cannot kill {victim}: {e:#}")))?;
    say(format!("{} kill -9 {victim}", stamp(Instant::now())));
    let acked_at_kill = shared.acked.lock().map(|a| a.len()).unwrap_or(0);
    tokio::time::sleep(DOWN_FOR).await;
    let down_end = Instant::now();
    let (write_pause, writes_while_down) = {
        let acked = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
        let times: Vec<Instant> = acked.iter().map(|a| a.3).collect();
        (
            longest_gap(&times, t0, down_end),
            acked.len().saturating_sub(acked_at_kill),
        )
    };
    let read_pause = {
        let times = shared.read_ok.lock().map(|r| r.clone()).unwrap_or_default();
        longest_gap(&times, t0, down_end)
    };
    let view = client.coordinator_status().await.ok().map(|c| c.view);
    say(format!(
        "{} while {victim} was down: {writes_while_down} writes committed at the other replicas (longest write pause {:.2} s, lease 1 s), reads went on (longest read pause {:.2} s); view now {}",
        stamp(down_end),
        write_pause.as_secs_f64(),
        read_pause.as_secs_f64(),
        view.as_ref()
            .map_or("unknown".to_string(), |v| v.to_string())
    ));

    let dir = cluster.data_dir(victim);
    std::fs::remove_dir_all(&dir)
        .map_err(|e| Failure::failed(format!("cannot wipe {}: {e}", dir.display())))?;
    cluster
        .start_node(victim)
        .map_err(|e| Failure::failed(format!("cannot start {victim} again: {e:#}")))?;
    let restarted = Instant::now();
    say(format!(
        "{} wiped {victim}'s data dir ({}) and started it again",
        stamp(restarted),
        dir.display()
    ));
    let (rejoined, new_incarnation) = follow_rejoin(&client, &stamp, text).await;
    let rejoin_time = rejoined.map(|t| t.duration_since(restarted));
    match rejoin_time {
        Some(d) => say(format!(
            "{} {victim} is a member again, {:.2} s after it started with an empty data dir",
            stamp(Instant::now()),
            d.as_secs_f64()
        )),
        None => say(format!(
            "{victim} did not rejoin within {}s",
            REJOIN_TIMEOUT.as_secs()
        )),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::Release);
    let _ = writer.await;
    let _ = reader.await;

    // Final checks.
    let acked = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let stale = shared.stale.lock().map(|s| s.clone()).unwrap_or_default();
    let reads = shared.read_ok.lock().map(|r| r.len()).unwrap_or(0);
    let report = settle(&client).await;
    let missing = verify_everywhere(&client, &acked, endpoints.len()).await;
    let checks = vec![
        (
            format!("writes kept committing while {victim} was down ({writes_while_down} writes)"),
            writes_while_down > 0,
        ),
        (
            format!(
                "no linearizable read was stale ({reads} reads, {} refused and retried elsewhere)",
                shared.read_refusals.load(Ordering::Acquire)
            ),
            stale.is_empty(),
        ),
        (
            format!(
                "every acknowledged write is at every replica ({} writes x {} replicas)",
                acked.len(),
                endpoints.len()
            ),
            missing.is_empty(),
        ),
        (
            format!("{victim} came back as a new incarnation and rejoined"),
            rejoined.is_some() && new_incarnation.is_some() && new_incarnation != old_incarnation,
        ),
        (
            "every replica is a member at the same applied version and digest".into(),
            report.all_reachable()
                && report.digests_agree()
                && report
                    .participants
                    .iter()
                    .all(|r| r.status.as_ref().is_ok_and(|s| report.role(s) == "member")),
        ),
    ];
    let ok = checks.iter().all(|(_, held)| *held);
    if text {
        println!("{}", report.text());
        for (what, held) in &checks {
            println!("{} {what}", if *held { "✓" } else { "✗" });
        }
        for s in stale.iter().take(5) {
            println!("  stale read: {s}");
        }
        for m in missing.iter().take(5) {
            println!("  missing: {m}");
        }
    } else {
        println!(
            "{}",
            json!({
                "ok": ok,
                "victim": VICTIM,
                "writes_while_down": writes_while_down,
                "longest_write_pause_ms": write_pause.as_millis() as u64,
                "longest_read_pause_ms": read_pause.as_millis() as u64,
                "rejoin_ms": rejoin_time.map(|d| d.as_millis() as u64),
                "acked_writes": acked.len(),
                "reads": reads,
                "stale_reads": stale,
                "missing": missing,
                "checks": checks.iter().map(|(w, h)| json!({"check": w, "held": h})).collect::<Vec<_>>(),
                "status": report.json(),
            })
        );
    }
    tokio::task::block_in_place(|| cluster.shutdown());
    if ok {
        if text {
            println!("all {} checks held", checks.len());
        }
        Ok(EXIT_OK)
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            message: format!(
                "demo --failover: {} of {} checks failed; see above",
                checks.iter().filter(|(_, h)| !h).count(),
                checks.len()
            ),
        })
    }
}

async fn seed(client: &Client) -> Result<(), Failure> {
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (w..SEED).step_by(16) {
                    let key = format!("seed-{i:05}");
                    client
                        .put(
                            key.as_bytes(),
                            format!("{key}-{}", "x".repeat(64)).as_bytes(),
                        )
                        .await
                        .map_err(|e| format!("seeding {key}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| Failure::failed(format!("seeding failed: {e}")))?
            .map_err(Failure::failed)?;
    }
    Ok(())
}

async fn write_loop(client: Client, shared: Arc<Shared>) {
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("fo-{n:06}");
        let value = format!("written {n}");
        match client.put(key.as_bytes(), value.as_bytes()).await {
            Ok(OpResult::Put { version }) => {
                if let Ok(mut a) = shared.acked.lock() {
                    a.push((key, value, version, Instant::now()));
                }
            }
            _ => {
                shared.write_failures.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn read_loop(client: Client, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        let last = shared.acked.lock().ok().and_then(|a| a.last().cloned());
        let Some((key, value, version, _)) = last else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match client.get(key.as_bytes(), ReadLevel::Linearizable).await {
            Ok(r) => {
                if r.value != Some((value.clone().into_bytes(), version)) {
                    if let Ok(mut s) = shared.stale.lock() {
                        s.push(format!(
                            "{key}: acked at version {version} before the read, the read returned {:?}",
                            r.value.map(|v| v.1)
                        ));
                    }
                } else if let Ok(mut t) = shared.read_ok.lock() {
                    t.push(Instant::now());
                }
            }
            Err(_) => {
                shared.read_refusals.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The longest stretch within `[from, to]` without a success in `times`.
fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &t in times.iter().filter(|t| **t >= from && **t <= to) {
        longest = longest.max(t.duration_since(last));
        last = t;
    }
    longest.max(to.duration_since(last))
}

/// Polls status and prints the victim's role and copy progress when they
/// change, until it is a member; returns when, and its incarnation.
async fn follow_rejoin(
    client: &Client,
    stamp: &dyn Fn(Instant) -> String,
    text: bool,
) -> (Option<Instant>, Option<u64>) {
    let deadline = Instant::now() + REJOIN_TIMEOUT;
    let mut shown = String::new();
    while Instant::now() < deadline {
        let report = StatusReport::gather(client).await;
        if let Some(s) = report
            .participants
            .iter()
            .find_map(|r| r.status.as_ref().ok().filter(|s| s.id == VICTIM))
        {
            let role = report.role(s);
            let line = match &s.catchup {
                Some(c) => format!(
                    "{role}, copying ({}) from participant {}: {} of {} keys, {} batches",
                    c.phase,
                    c.source,
                    c.progress.keys_done,
                    c.progress.keys_total,
                    c.progress.batches
                ),
                None => format!("{role}, applied {}", s.applied),
            };
            if line != shown && text {
                println!(
                    "{} participant {VICTIM}: {line} (incarnation {:08x})",
                    stamp(Instant::now()),
                    s.incarnation >> 32
                );
            }
            shown = line;
            if role == "member" && s.lease_ms.is_some() {
                return (Some(Instant::now()), Some(s.incarnation));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (None, None)
}

/// The status once every replica has applied the same version (or after 10 s).
async fn settle(client: &Client) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = StatusReport::gather(client).await;
        let applied: Vec<u64> = report
            .participants
            .iter()
            .filter_map(|r| r.status.as_ref().ok().map(|s| s.applied))
            .collect();
        let settled = report.all_reachable() && applied.windows(2).all(|w| w[0] == w[1]);
        if settled || Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every acknowledged write, read at every replica (serializable: the
/// replicas have settled); returns what is missing or wrong.
async fn verify_everywhere(client: &Client, acked: &[Acked], replicas: usize) -> Vec<String> {
    use futures::StreamExt as _;
    let reads = acked
        .iter()
        .flat_map(|a| (0..replicas).map(move |i| (a, i)))
        .map(|((key, value, version, _), i)| async move {
            match client
                .get_at(i, key.as_bytes(), ReadLevel::Serializable)
                .await
            {
                Ok(r) if r.value == Some((value.clone().into_bytes(), *version)) => None,
                Ok(r) => Some(format!(
                    "{key} at replica {}: {:?} instead of version {version}",
                    i + 1,
                    r.value.map(|v| v.1)
                )),
                Err(e) => Some(format!("{key} at replica {}: {e}", i + 1)),
            }
        });
    futures::stream::iter(reads)
        .buffer_unordered(64)
        .filter_map(|m| async move { m })
        .collect()
        .await
}
