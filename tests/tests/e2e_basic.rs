//! End-to-end: a real six-process cluster on loopback.

use std::time::Duration;

use quintet_client::Client;
use quintet_common::types::{OpResult, ReadLevel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_at_one_replica_reads_same_value_and_version_at_all() {
    let cluster = quintet_tests::cluster::start_cluster(5, &[]).await;
    let client = Client::new(&cluster.endpoints(), Duration::from_secs(5)).unwrap();
    let op = client
        .write_at(
            0,
            quintet_common::types::Op::Put {
                key: b"greeting".to_vec(),
                value: b"hello".to_vec(),
            },
        )
        .await
        .expect("put succeeds");
    let OpResult::Put { version } = op else {
        panic!("unexpected result {op:?}")
    };
    for i in 0..5 {
        let r = client
            .get_at(i, b"greeting", ReadLevel::Linearizable)
            .await
            .expect("get succeeds");
        assert_eq!(
            r.value,
            Some((b"hello".to_vec(), version)),
            "replica {}",
            i + 1
        );
    }
}
