//! End-to-end: many clients writing at once through every replica of a real
//! six-process cluster.
//!
//! Proves invariant 2 (same applied version ⇒ same digest) under concurrent
//! load and that versions are global and gap-free: with no faults every write
//! is acknowledged, the acknowledged versions are exactly 1..=N, and every
//! replica serves, for each key, the acknowledged write with the highest
//! version.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quintet_client::Client;
use quintet_common::types::{Op, OpResult, ReadLevel, Version};
use quintet_tests::cluster::{start_cluster, wait_converged};

const CLIENTS: usize = 8;
const OPS_PER_CLIENT: usize = 45;
const SHARED_KEYS: usize = 4;
const REPLICAS: usize = 5;

/// One acknowledged write: key, version, and the value it left (None = delete).
type Acked = (Vec<u8>, Version, Option<Vec<u8>>);

/// Client `c`'s `k`-th operation: two of three write the client's own keys,
/// one of three writes (put or delete) a key every client shares.
fn op_for(c: usize, k: usize) -> Op {
    if k % 3 == 2 {
        let key = format!("shared-{}", k % SHARED_KEYS).into_bytes();
        if k % 6 == 5 {
            Op::Delete { key }
        } else {
            Op::Put {
                key,
                value: format!("c{c}-op{k}").into_bytes(),
            }
        }
    } else {
        Op::Put {
            key: format!("own-c{c}-{}", k % 10).into_bytes(),
            value: format!("c{c}-op{k}").into_bytes(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_through_all_replicas_converge_with_every_acked_write_visible() {
    let cluster = start_cluster(REPLICAS as u32, &[]).await;
    let endpoints = cluster.endpoints();

    let writers = (0..CLIENTS).map(|c| {
        let client = Client::new(&endpoints, Duration::from_secs(10)).unwrap();
        tokio::spawn(async move {
            let mut acked: Vec<Acked> = Vec::new();
            for k in 0..OPS_PER_CLIENT {
                let op = op_for(c, k);
                let replica = (c + k) % REPLICAS;
                let result = client
                    .write_at(replica, op.clone())
                    .await
                    .unwrap_or_else(|e| {
                        panic!("client {c} op {k} at replica {}: {e}", replica + 1)
                    });
                let value = match (&op, result) {
                    (Op::Put { value, .. }, OpResult::Put { .. }) => Some(value.clone()),
                    (Op::Delete { .. }, OpResult::Delete { .. }) => None,
                    (op, r) => panic!("result {r:?} does not match {op:?}"),
                };
                acked.push((op.key().to_vec(), result.version(), value));
            }
            acked
        })
    });
    let mut all: Vec<Acked> = Vec::new();
    for w in futures::future::join_all(writers).await {
        all.extend(w.expect("writer task"));
    }

    // Versions are global and gap-free, one per write, none reused.
    let total = (CLIENTS * OPS_PER_CLIENT) as Version;
    let versions: BTreeSet<Version> = all.iter().map(|(_, v, _)| *v).collect();
    assert_eq!(versions.len(), all.len(), "a version was handed out twice");
    assert_eq!(versions, (1..=total).collect(), "versions are not 1..=N");

    let client = Client::new(&endpoints, Duration::from_secs(5)).unwrap();
    let statuses = wait_converged(&client, Duration::from_secs(10)).await;
    assert_eq!(statuses[0].applied, total);

    // The latest acknowledged write of each key is what every replica holds.
    let mut latest: BTreeMap<Vec<u8>, (Version, Option<Vec<u8>>)> = BTreeMap::new();
    for (key, version, value) in all {
        let e = latest.entry(key).or_insert((0, None));
        if version > e.0 {
            *e = (version, value);
        }
    }
    let live = latest.values().filter(|(_, v)| v.is_some()).count() as u64;
    for s in &statuses {
        assert_eq!(s.keys, live, "replica {} key count", s.id);
    }
    for (key, (version, value)) in &latest {
        let expected = value.clone().map(|v| (v, *version));
        for i in 0..REPLICAS {
            let got = client
                .get_at(i, key, ReadLevel::Linearizable)
                .await
                .unwrap_or_else(|e| panic!("get {key:?} at replica {}: {e}", i + 1));
            assert_eq!(
                got.value,
                expected,
                "key {} at replica {}",
                String::from_utf8_lossy(key),
                i + 1
            );
        }
    }
}
