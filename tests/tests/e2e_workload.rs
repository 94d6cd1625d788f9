//! End-to-end: the workload engine against a real six-process cluster.
//!
//! A short mixed workload runs through random replicas; afterwards every
//! successful put must be visible: each key's value at every replica is at
//! least as new as the newest acknowledged put of that key, and when the
//! value's version is that of an acknowledged put, it is that put's value.
//! No timing is asserted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quintet_client::Client;
use quintet_client::workload::{
    self, KeyDist, Mix, OpKind, OpOutput, OpRecord, Stop, Target, WorkloadSpec,
};
use quintet_common::types::ReadLevel;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_workload_runs_and_every_acknowledged_put_is_readable() {
    let cluster = quintet_tests::cluster::start_cluster(5, &[]).await;
    let client = Client::new(&cluster.endpoints(), Duration::from_secs(10)).unwrap();
    let spec = WorkloadSpec {
        clients: 4,
        mix: Mix::new(70, 30, 0).unwrap(),
        keys: 20,
        key_dist: KeyDist::Zipf(0.9),
        value_size: 32,
        read_level: ReadLevel::Linearizable,
        stop: Stop::Duration(Duration::from_secs(2)),
        warmup: Duration::from_millis(200),
        seed: 11,
        key_prefix: "wl-".into(),
        target: Target::Random,
        error_backoff: Duration::ZERO,
    };
    let records: Arc<Mutex<Vec<OpRecord>>> = Arc::default();
    let sink = records.clone();
    let observer: workload::Observer = Arc::new(move |r| sink.lock().unwrap().push(r.clone()));
    let (_cancel, cancel_rx) = watch::channel(false);
    let summary = workload::run(&client, &spec, Some(observer), cancel_rx)
        .await
        .expect("valid spec");

    let records = records.lock().unwrap().clone();
    assert_eq!(
        records.iter().filter(|r| !r.warmup).count() as u64,
        summary.total.ops
    );
    let puts = &summary.by_kind[&OpKind::Put];
    assert!(puts.ok > 0, "no put succeeded: {summary:?}");
    assert!(summary.by_kind[&OpKind::Get].ok > 0, "no get succeeded");
    assert!(summary.total.latency.max_us > 0);

    // The newest acknowledged put of each key, and every acknowledged
    // put's value by (key, version).
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    let mut acked: BTreeMap<(String, u64), String> = BTreeMap::new();
    for r in &records {
        if let (OpKind::Put, Ok(OpOutput::Put { version })) = (r.kind, &r.outcome) {
            let v = newest.entry(r.key.clone()).or_default();
            *v = (*v).max(*version);
            let value = r.value.clone().expect("a put record carries its value");
            assert_eq!(value.len(), spec.value_size);
            acked.insert((r.key.clone(), *version), value);
        }
    }
    assert!(!newest.is_empty());
    quintet_tests::cluster::wait_converged(&client, Duration::from_secs(30)).await;
    for (key, min_version) in &newest {
        for replica in 0..5 {
            let reply = client
                .get_at(replica, key.as_bytes(), ReadLevel::Linearizable)
                .await
                .unwrap_or_else(|e| panic!("reading {key} at replica {replica}: {e}"));
            let (value, version) = reply
                .value
                .unwrap_or_else(|| panic!("{key} vanished at replica {replica}"));
            assert!(
                version >= *min_version,
                "{key} at replica {replica}: version {version} older than acknowledged {min_version}"
            );
            if let Some(want) = acked.get(&(key.clone(), version)) {
                assert_eq!(
                    String::from_utf8_lossy(&value),
                    *want,
                    "{key}@{version} at replica {replica}"
                );
            }
        }
    }
}
