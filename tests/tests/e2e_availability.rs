//! End-to-end availability tests on a real six-process cluster: a wiped
//! replica rebuilds itself from a member, a replica paused past its lease
//! never answers a linearizable read with stale data, and linearizable
//! reads fail over from replicas that refuse them (and fail cleanly only
//! when none can answer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quintet_client::local::Node;
use quintet_client::{Client, ClientError};
use quintet_common::types::{OpResult, ReadLevel};
use quintet_tests::cluster::{start_cluster, wait_converged, wait_for};

const READY: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);

fn client(endpoints: &[String]) -> Client {
    Client::new(endpoints, Duration::from_secs(5)).unwrap()
}

/// Writes `n` keys `key-00000..` through `writers` concurrent clients, each
/// retrying a write that surely failed; returns the acked version of each.
async fn populate(endpoints: &[String], n: usize, writers: usize) -> BTreeMap<String, u64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let client = client(endpoints);
            let next = next.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    if i >= n {
                        return acked;
                    }
                    let key = format!("key-{i:05}");
                    let value = format!("{key}:{}", "x".repeat(90));
                    for attempt in 0.. {
                        match client.put(key.as_bytes(), value.as_bytes()).await {
                            Ok(OpResult::Put { version }) => {
                                acked.push((key.clone(), version));
                                break;
                            }
                            Ok(other) => panic!("put returned {other:?}"),
                            Err(e) if e.surely_not_applied() && attempt < 20 => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            Err(e) => panic!("populating {key}: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// A replica holding 50,000 keys is killed, its data dir deleted, and it is
/// started again. Members keep only 1 MiB of recent batches here, so it must
/// copy a snapshot; it then follows, joins, and every replica ends with the
/// same digest and every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_participant_with_50k_keys_rebuilds_from_a_snapshot_and_digests_match() {
    let mut cluster = start_cluster(5, &["--catchup-log-mib", "1"]).await;
    let endpoints = cluster.endpoints();
    let keys = populate(&endpoints, 50_000, 64).await;
    let c = client(&endpoints);
    let before = wait_converged(&c, CONVERGE).await;
    let old_incarnation = before[1].incarnation;

    cluster.kill(Node::Participant(2)).unwrap();
    std::fs::remove_dir_all(cluster.data_dir(Node::Participant(2))).unwrap();
    // Writes go on while it is away and while it copies.
    let more = tokio::spawn({
        let endpoints = endpoints.clone();
        async move { populate_more(&endpoints).await }
    });
    cluster.start_node(Node::Participant(2)).unwrap();
    cluster
        .wait_ready(Node::Participant(2), READY)
        .await
        .unwrap();
    let extra = more.await.unwrap();

    let after = wait_converged(&c, CONVERGE).await;
    assert_ne!(
        after[1].incarnation, old_incarnation,
        "a wiped data dir must come back as a new incarnation"
    );
    assert_eq!(after[1].keys, after[0].keys);
    let log = std::fs::read_to_string(cluster.log_file(Node::Participant(2))).unwrap();
    assert!(
        log.contains("copying a snapshot"),
        "the wiped replica did not copy a snapshot:\n{log}"
    );
    for (key, version) in keys.iter().step_by(997).chain(&extra) {
        let got = c
            .get_at(1, key.as_bytes(), ReadLevel::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("{key} at the rebuilt replica: {e}"));
        assert_eq!(got.value.map(|v| v.1), Some(*version), "{key}");
    }
}

async fn populate_more(endpoints: &[String]) -> BTreeMap<String, u64> {
    let c = client(endpoints);
    let mut acked = BTreeMap::new();
    for i in 0..50 {
        let key = format!("during-{i:03}");
        if let Ok(r) = c.put(key.as_bytes(), b"during the rebuild").await {
            acked.insert(key, r.version());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

/// SIGSTOP a replica for twice its lease while another client keeps
/// writing one key; after SIGCONT its first linearizable reads are refused
/// or return the latest acknowledged value, never the one it had before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_past_its_lease_a_replica_refuses_or_answers_current_never_stale() {
    let cluster = start_cluster(5, &[]).await;
    let endpoints = cluster.endpoints();
    let c = client(&endpoints);
    let first = c.put(b"k", b"before the pause").await.unwrap().version();
    wait_for("replica 3 to see the first write", CONVERGE, || async {
        c.get_at(2, b"k", ReadLevel::Linearizable)
            .await
            .ok()
            .filter(|r| r.value.as_ref().map(|v| v.1) == Some(first))
    })
    .await;

    cluster.pause(Node::Participant(3)).unwrap();
    let mut latest = first;
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    while std::time::Instant::now() < until {
        let v = format!("during the pause {n}");
        if let Ok(r) = c
            .write_at(
                n % 2,
                quintet_common::types::Op::Put {
                    key: b"k".to_vec(),
                    value: v.into_bytes(),
                },
            )
            .await
        {
            latest = r.version();
        }
        n += 1;
    }
    assert!(
        latest > first,
        "no write committed while replica 3 was paused"
    );
    cluster.resume(Node::Participant(3)).unwrap();
    let mut answered = 0;
    for _ in 0..20 {
        match c.get_at(2, b"k", ReadLevel::Linearizable).await {
            Ok(r) => {
                // Newer than `latest` only if a write whose answer was lost
                // committed; older would be stale.
                let got = r.value.map(|v| v.1);
                assert!(
                    got >= Some(latest),
                    "replica 3 answered a linearizable read with version {got:?} after its pause; {latest} is committed"
                );
                answered += 1;
            }
            Err(ClientError::Server { error, .. }) => {
                assert!(error.read_elsewhere(), "unexpected refusal: {error}");
            }
            Err(e) => panic!("read at replica 3 after the pause: {e}"),
        }
    }
    eprintln!("after the pause: {answered} of 20 reads answered, the rest refused");
    // With fail-over, a read always finds a replica that may answer.
    let r = c.get(b"k", ReadLevel::Linearizable).await.unwrap();
    assert!(r.value.map(|v| v.1) >= Some(latest));
    drop(cluster);
}

/// While the coordinator is frozen past the lease, every replica refuses
/// linearizable reads; the client tries each and fails with `Refused`
/// (exit 3 in the CLI), serializable reads still answer, and once the
/// coordinator runs again linearizable reads come back by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_lease_anywhere_reads_fail_over_then_fail_cleanly_and_recover() {
    let cluster = start_cluster(5, &[]).await;
    let c = client(&cluster.endpoints());
    c.put(b"k", b"v").await.unwrap();
    // The commit reaches the replicas just after the client's answer:
    // freeze the coordinator only once every replica applied it, so the
    // serializable read below has the value wherever it lands.
    wait_for("every replica to apply the write", CONVERGE, || async {
        for at in 0..5 {
            let r = c.get_at(at, b"k", ReadLevel::Serializable).await.ok()?;
            r.value?;
        }
        Some(())
    })
    .await;
    cluster.pause(Node::Coordinator(1)).unwrap();
    let err = wait_for("every lease to run out", CONVERGE, || async {
        match c.get(b"k", ReadLevel::Linearizable).await {
            Err(e @ ClientError::Refused { .. }) => Some(e),
            _ => None,
        }
    })
    .await;
    assert_eq!(err.exit_code(), 3);
    let text = err.to_string();
    assert!(
        text.contains("lease expired") && text.contains("--serializable"),
        "{text}"
    );
    let r = c.get(b"k", ReadLevel::Serializable).await.unwrap();
    assert_eq!(r.value.map(|v| v.0), Some(b"v".to_vec()));
    cluster.resume(Node::Coordinator(1)).unwrap();
    wait_for("linearizable reads to come back", CONVERGE, || async {
        c.get(b"k", ReadLevel::Linearizable).await.ok()
    })
    .await;
}
