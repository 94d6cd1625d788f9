//! End-to-end crash and restart tests on a real six-process cluster.
//!
//! Writers run while processes are killed (-9), stopped (SIGTERM) and
//! restarted. Every write ends in one of three outcomes, recorded in a
//! ledger: acknowledged (with its version), failed (the error says it surely
//! was not applied) or unknown. After the cluster settles, the replicas must
//! converge (same applied version and digest, nothing pending) and each key
//! must show its write's outcome at every replica: an acknowledged write with
//! its exact value and version, a failed write not at all, an unknown write
//! either not at all or with its value. Each write uses its own key, so every
//! outcome is checked on its own.
//!
//! Also here: snapshots with old-segment removal, a participant that is down
//! (writes go on at the others once it is dropped, reads stay current, and
//! it rejoins) and a damaged WAL segment. Wipes, pauses past the lease and
//! read fail-over are in `e2e_availability.rs`.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quintet_client::Client;
use quintet_client::local::{LocalCluster, Node};
use quintet_common::types::{Op, OpResult, ReadLevel, Version};
use quintet_tests::cluster::{start_cluster, wait_converged, wait_for};
use tokio::task::JoinHandle;

const REPLICAS: usize = 5;
const READY: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(15);
const PHASE: Duration = Duration::from_secs(15);

/// What became of one write.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged at this version.
    Acked(Version),
    /// Surely not applied; the error.
    Failed(String),
    /// May or may not be applied; the error.
    Unknown(String),
}

/// One write of the workload and its outcome.
#[derive(Clone, Debug)]
struct Entry {
    key: Vec<u8>,
    value: Vec<u8>,
    outcome: Outcome,
}

/// Writers putting fresh keys through rotating replicas until told to stop
/// (or a per-writer cap is reached), recording every outcome.
struct Workload {
    ledger: Arc<Mutex<Vec<Entry>>>,
    acked: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
}

impl Workload {
    fn start(endpoints: &[String], writers: usize, value_len: usize, cap: usize) -> Workload {
        let w = Workload {
            ledger: Arc::default(),
            acked: Arc::default(),
            failed: Arc::default(),
            stop: Arc::default(),
            writers: Vec::new(),
        };
        let handles = (0..writers)
            .map(|n| {
                let client = Client::new(endpoints, Duration::from_secs(5)).unwrap();
                let (ledger, acked, failed, stop) = (
                    w.ledger.clone(),
                    w.acked.clone(),
                    w.failed.clone(),
                    w.stop.clone(),
                );
                tokio::spawn(async move {
                    for k in 0..cap {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let key = format!("w{n}-{k:05}").into_bytes();
                        let mut value = format!("value of w{n}-{k:05};").into_bytes();
                        value.resize(value_len.max(value.len()), b'x');
                        let op = Op::Put {
                            key: key.clone(),
                            value: value.clone(),
                        };
                        let outcome = match client.write_at((n + k) % REPLICAS, op).await {
                            Ok(OpResult::Put { version }) => {
                                acked.fetch_add(1, Ordering::AcqRel);
                                Outcome::Acked(version)
                            }
                            Ok(other) => panic!("a put returned {other:?}"),
                            Err(e) if e.surely_not_applied() => {
                                failed.fetch_add(1, Ordering::AcqRel);
                                Outcome::Failed(e.to_string())
                            }
                            Err(e) => Outcome::Unknown(e.to_string()),
                        };
                        let failing = !matches!(outcome, Outcome::Acked(_));
                        ledger.lock().unwrap().push(Entry {
                            key,
                            value,
                            outcome,
                        });
                        if failing {
                            // Throttle only; no synchronisation depends on it.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        Workload {
            writers: handles,
            ..w
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Acquire)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Acquire)
    }

    /// Waits until at least `n` writes were acknowledged in total.
    async fn wait_acked(&self, n: usize) {
        wait_for(&format!("{n} acknowledged writes"), PHASE, || async {
            (self.acked() >= n).then_some(())
        })
        .await
    }

    /// Waits until at least `n` writes failed in total.
    async fn wait_failed(&self, n: usize) {
        wait_for(&format!("{n} failed writes"), PHASE, || async {
            (self.failed() >= n).then_some(())
        })
        .await
    }

    /// Stops the writers and returns the ledger.
    async fn finish(self) -> Vec<Entry> {
        self.stop.store(true, Ordering::Release);
        self.complete().await
    }

    /// Lets every writer run to its cap and returns the ledger.
    async fn complete(self) -> Vec<Entry> {
        for w in self.writers {
            w.await.expect("writer task");
        }
        let entries = self.ledger.lock().unwrap().clone();
        let count = |f: fn(&Outcome) -> bool| entries.iter().filter(|e| f(&e.outcome)).count();
        eprintln!(
            "workload: {} writes, {} acked, {} failed, {} unknown",
            entries.len(),
            count(|o| matches!(o, Outcome::Acked(_))),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Unknown(_))),
        );
        for e in entries
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Unknown(_)))
        {
            eprintln!("  unknown: {:?}", e.outcome);
        }
        entries
    }
}

/// Checks every ledger entry at every replica (see the module comment).
async fn verify(client: &Client, entries: &[Entry], applied: Version) {
    let mut versions = std::collections::BTreeSet::new();
    for e in entries {
        if let Outcome::Acked(v) = e.outcome {
            assert!(versions.insert(v), "version {v} acknowledged twice");
            assert!(v <= applied, "acked version {v} beyond applied {applied}");
        }
        let key = String::from_utf8_lossy(&e.key);
        for i in 0..REPLICAS {
            let got = client
                .get_at(i, &e.key, ReadLevel::Linearizable)
                .await
                .unwrap_or_else(|err| panic!("get {key} at replica {}: {err}", i + 1))
                .value;
            match &e.outcome {
                Outcome::Acked(v) => assert_eq!(
                    got,
                    Some((e.value.clone(), *v)),
                    "acknowledged write of {key} at version {v} is missing or wrong at replica {}",
                    i + 1
                ),
                Outcome::Failed(why) => assert!(
                    got.is_none(),
                    "write of {key} failed ({why}) but replica {} shows it at version {:?}",
                    i + 1,
                    got.map(|g| g.1)
                ),
                Outcome::Unknown(_) => {
                    if let Some((value, _)) = got {
                        assert_eq!(value, e.value, "{key} at replica {}", i + 1);
                    }
                }
            }
        }
    }
}

fn client_for(cluster: &LocalCluster) -> Client {
    Client::new(&cluster.endpoints(), Duration::from_secs(5)).unwrap()
}

/// Restarts every node that is not running: coordinator first.
async fn restart_all(cluster: &mut LocalCluster) {
    for node in cluster.nodes() {
        if !cluster.is_running(node) {
            cluster.start_node(node).expect("start node");
            if node == Node::Coordinator(1) {
                cluster.wait_ready(node, READY).await.expect("ready");
            }
        }
    }
    cluster.wait_all_ready(READY).await.expect("all ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_participant_during_writes_writes_resume_and_it_rejoins_with_every_acked_write()
{
    let mut cluster = start_cluster(REPLICAS as u32, &[]).await;
    let client = client_for(&cluster);
    let load = Workload::start(&cluster.endpoints(), 4, 16, 2000);

    load.wait_acked(40).await;
    cluster.kill(Node::Participant(3)).unwrap();
    // Writes through the other replicas go on once 3 is dropped (after its
    // lease); writes through 3 itself fail as not sent.
    load.wait_acked(load.acked() + 60).await;
    let view = client.coordinator_status().await.unwrap().view;
    assert!(
        view.member(3).is_none(),
        "replica 3 is still a member of {view} while down"
    );
    cluster.start_node(Node::Participant(3)).unwrap();
    // Ready means a member again, holding a lease.
    cluster
        .wait_ready(Node::Participant(3), READY)
        .await
        .unwrap();
    load.wait_acked(load.acked() + 40).await;
    let entries = load.finish().await;

    let statuses = wait_converged(&client, CONVERGE).await;
    verify(&client, &entries, statuses[0].applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_writes_survive_coordinator_kill_and_pending_batches_resolve() {
    let mut cluster = start_cluster(REPLICAS as u32, &[]).await;
    let client = client_for(&cluster);
    let epoch_before = client.coordinator_status().await.unwrap().epoch;
    let load = Workload::start(&cluster.endpoints(), 4, 16, 2000);

    load.wait_acked(40).await;
    cluster.kill(Node::Coordinator(1)).unwrap();
    load.wait_failed(load.failed() + 20).await;
    cluster.start_node(Node::Coordinator(1)).unwrap();
    cluster
        .wait_ready(Node::Coordinator(1), READY)
        .await
        .unwrap();
    load.wait_acked(load.acked() + 40).await;
    let entries = load.finish().await;

    let statuses = wait_converged(&client, CONVERGE).await;
    let epoch_after = client.coordinator_status().await.unwrap().epoch;
    assert!(
        epoch_after > epoch_before,
        "epoch did not grow across a coordinator restart: {epoch_before} -> {epoch_after}"
    );
    verify(&client, &entries, statuses[0].applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_all_six_exits_cleanly_and_restart_keeps_data_and_digest() {
    let mut cluster = start_cluster(REPLICAS as u32, &[]).await;
    let client = client_for(&cluster);
    let entries = Workload::start(&cluster.endpoints(), 4, 16, 15)
        .complete()
        .await;
    assert!(
        entries
            .iter()
            .all(|e| matches!(e.outcome, Outcome::Acked(_))),
        "a write failed on a healthy cluster: {entries:?}"
    );
    let before = wait_converged(&client, CONVERGE).await;

    // Participants first, the coordinator last; each must exit 0.
    let mut order = cluster.nodes();
    order.reverse();
    for node in order {
        let clean = cluster.stop(node, Duration::from_secs(10)).unwrap();
        assert!(clean, "{node} did not exit 0 on SIGTERM");
    }
    restart_all(&mut cluster).await;

    let after = wait_converged(&client, CONVERGE).await;
    assert_eq!(
        after[0].applied, before[0].applied,
        "applied version changed"
    );
    assert_eq!(after[0].digest, before[0].digest, "digest changed");
    verify(&client, &entries, after[0].applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_all_six_during_writes_loses_no_acked_write() {
    let mut cluster = start_cluster(REPLICAS as u32, &[]).await;
    let client = client_for(&cluster);
    let load = Workload::start(&cluster.endpoints(), 4, 16, 2000);

    load.wait_acked(60).await;
    for node in cluster.nodes() {
        cluster.kill(node).unwrap();
    }
    load.wait_failed(load.failed() + 8).await;
    let entries = load.finish().await;
    restart_all(&mut cluster).await;

    let statuses = wait_converged(&client, CONVERGE).await;
    verify(&client, &entries, statuses[0].applied).await;
    // And the restarted cluster takes writes.
    client
        .put(b"after-restart", b"ok")
        .await
        .expect("write after restart");
}

fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_drops_old_segments_and_restart_from_it_keeps_values_and_digest() {
    let mut cluster = start_cluster(REPLICAS as u32, &["--snapshot-mib", "1"]).await;
    let client = client_for(&cluster);
    // 8 writers x 100 puts x 4 KiB = 3.2 MiB of values.
    let entries = Workload::start(&cluster.endpoints(), 8, 4096, 100)
        .complete()
        .await;
    assert!(
        entries
            .iter()
            .all(|e| matches!(e.outcome, Outcome::Acked(_))),
        "a write failed on a healthy cluster"
    );

    let dir = cluster.data_dir(Node::Participant(2));
    wait_for("a snapshot and old segments removed", PHASE, || async {
        let snaps = names(&dir, "snapshot-");
        let segs = names(&dir, "wal-");
        (snaps.iter().any(|n| n.ends_with(".snap"))
            && !segs.contains(&"wal-0000000000000001.log".to_string())
            && segs.len() <= 2)
            .then_some(())
    })
    .await;
    let before = wait_converged(&client, CONVERGE).await;

    cluster.kill(Node::Participant(2)).unwrap();
    cluster.start_node(Node::Participant(2)).unwrap();
    cluster
        .wait_ready(Node::Participant(2), READY)
        .await
        .unwrap();
    let after = wait_converged(&client, CONVERGE).await;
    assert_eq!(after[0].applied, before[0].applied);
    assert_eq!(after[1].digest, before[1].digest, "participant 2 digest");
    verify(&client, &entries, after[0].applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_down_writes_go_on_reads_stay_current_and_it_rejoins() {
    let mut cluster = start_cluster(REPLICAS as u32, &[]).await;
    let client = client_for(&cluster);
    let entries = Workload::start(&cluster.endpoints(), 2, 16, 10)
        .complete()
        .await;
    let before = wait_converged(&client, CONVERGE).await;

    assert!(
        cluster
            .stop(Node::Participant(4), Duration::from_secs(10))
            .unwrap(),
        "participant 4 did not exit 0 on SIGTERM"
    );
    let live = [0usize, 1, 2, 4];
    let mut written = Vec::new();
    for (n, &i) in live.iter().enumerate() {
        let key = format!("while-down-{n}").into_bytes();
        let op = Op::Put {
            key: key.clone(),
            value: format!("v{n}").into_bytes(),
        };
        // The first write waits out replica 4's lease, then goes on in a
        // view without it.
        let r = client
            .write_at(i, op)
            .await
            .unwrap_or_else(|e| panic!("write through live replica {}: {e}", i + 1));
        written.push((key, format!("v{n}").into_bytes(), r.version()));
        // Linearizable reads at every live replica see every acked write.
        for e in &entries {
            let got = client
                .get_at(i, &e.key, ReadLevel::Linearizable)
                .await
                .unwrap_or_else(|err| panic!("read at live replica {}: {err}", i + 1));
            let Outcome::Acked(v) = e.outcome else {
                unreachable!()
            };
            assert_eq!(got.value, Some((e.value.clone(), v)));
        }
        for &j in &live {
            for (k, v, ver) in &written {
                let got = client.get_at(j, k, ReadLevel::Linearizable).await.unwrap();
                assert_eq!(got.value, Some((v.clone(), *ver)), "at replica {}", j + 1);
            }
        }
    }
    let view = client.coordinator_status().await.unwrap().view;
    assert_eq!(view.ids().collect::<Vec<_>>(), vec![1, 2, 3, 5], "{view}");

    cluster.start_node(Node::Participant(4)).unwrap();
    cluster
        .wait_ready(Node::Participant(4), READY)
        .await
        .unwrap();
    for i in 0..REPLICAS {
        let op = Op::Put {
            key: format!("after-{i}").into_bytes(),
            value: b"ok".to_vec(),
        };
        client
            .write_at(i, op)
            .await
            .unwrap_or_else(|e| panic!("write through replica {} after restart: {e}", i + 1));
    }
    let after = wait_converged(&client, CONVERGE).await;
    assert_eq!(
        after[0].applied,
        before[0].applied + (live.len() + REPLICAS) as Version
    );
    for (k, v, ver) in &written {
        let got = client.get_at(3, k, ReadLevel::Linearizable).await.unwrap();
        assert_eq!(got.value, Some((v.clone(), *ver)), "rejoined replica 4");
    }
}

/// Offsets and lengths of the records in a WAL segment's bytes.
fn records(data: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&data[..8], b"QNTWAL01", "segment magic");
    let mut out = Vec::new();
    let mut off = 8;
    while off + 8 <= data.len() {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        out.push((off, len));
        off += 8 + len;
    }
    assert_eq!(off, data.len(), "segment does not end on a record boundary");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wal_record_in_the_middle_refuses_start_naming_file_and_offset() {
    let mut cluster = start_cluster(3, &[]).await;
    let client = client_for(&cluster);
    for k in 0..20 {
        client
            .put(format!("k{k}").as_bytes(), b"some value")
            .await
            .unwrap();
    }
    let node = Node::Participant(2);
    assert!(cluster.stop(node, Duration::from_secs(10)).unwrap());

    let dir = cluster.data_dir(node);
    let segment = names(&dir, "wal-").pop().expect("a wal segment");
    let path = dir.join(&segment);
    let mut data = fs::read(&path).unwrap();
    let recs = records(&data);
    assert!(
        recs.len() >= 20,
        "expected many records, got {}",
        recs.len()
    );
    let (offset, len) = recs[recs.len() / 2];
    data[offset + 8 + len / 2] ^= 0x55;
    fs::write(&path, &data).unwrap();

    cluster.start_node(node).unwrap();
    let err = cluster
        .wait_ready(node, READY)
        .await
        .expect_err("a participant with a damaged log must not start");
    let err = format!("{err:#}");
    assert!(
        err.contains("exited with") && !err.contains("exit status: 0"),
        "expected a non-zero exit, got: {err}"
    );
    let log = fs::read_to_string(cluster.log_file(node)).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("corrupt WAL record"))
        .unwrap_or_else(|| panic!("no corruption error in the log:\n{log}"));
    assert!(
        line.contains(&segment) && line.contains(&format!("offset {offset}")),
        "error does not name {segment} and offset {offset}: {line}"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        data,
        "a refused start changed the segment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_write_after_idle_restart_of_any_node_succeeds() {
    let mut cluster = start_cluster(3, &[]).await;
    let fresh = |cluster: &LocalCluster| client_for(cluster);
    fresh(&cluster).put(b"warm-up", b"1").await.unwrap();

    // Coordinator restarted while no write is in flight: each replica's
    // link to it went stale; a fresh client's write must still succeed.
    assert!(
        cluster
            .stop(Node::Coordinator(1), Duration::from_secs(10))
            .unwrap()
    );
    cluster.start_node(Node::Coordinator(1)).unwrap();
    cluster
        .wait_ready(Node::Coordinator(1), READY)
        .await
        .unwrap();
    for i in 0..3 {
        let op = Op::Put {
            key: format!("after-coordinator-{i}").into_bytes(),
            value: b"ok".to_vec(),
        };
        fresh(&cluster).write_at(i, op).await.unwrap_or_else(|e| {
            panic!(
                "first write through replica {} after a coordinator restart: {e}",
                i + 1
            )
        });
    }

    // Participant restarted while idle: the coordinator's link to it went
    // stale; the next round must not abort because of that.
    assert!(
        cluster
            .stop(Node::Participant(2), Duration::from_secs(10))
            .unwrap()
    );
    cluster.start_node(Node::Participant(2)).unwrap();
    cluster
        .wait_ready(Node::Participant(2), READY)
        .await
        .unwrap();
    fresh(&cluster)
        .write_at(
            0,
            Op::Put {
                key: b"after-participant".to_vec(),
                value: b"ok".to_vec(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("first write after a participant restart: {e}"));
    wait_converged(&fresh(&cluster), CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_writes_exits_cleanly_and_loses_no_acked_write() {
    let mut cluster = start_cluster(REPLICAS as u32, &[]).await;
    let client = client_for(&cluster);
    let load = Workload::start(&cluster.endpoints(), 4, 16, 2000);

    for node in [Node::Coordinator(1), Node::Participant(2)] {
        load.wait_acked(load.acked() + 30).await;
        let clean = cluster.stop(node, Duration::from_secs(10)).unwrap();
        assert!(clean, "{node} did not exit 0 on SIGTERM during writes");
        load.wait_failed(load.failed() + 10).await;
        cluster.start_node(node).unwrap();
        cluster.wait_ready(node, READY).await.unwrap();
    }
    load.wait_acked(load.acked() + 30).await;
    let entries = load.finish().await;

    let statuses = wait_converged(&client, CONVERGE).await;
    verify(&client, &entries, statuses[0].applied).await;
}
