//! End-to-end: bad input never hurts the store.
//!
//! Oversized or empty keys and oversized values are refused before 2PC with
//! `InvalidArgument` and leave every replica's applied version unchanged;
//! garbage, huge length prefixes, truncated frames and silent clients on any
//! port only cost their own connection (with a warning in the node's log);
//! a data dir is never served under another cluster or participant id, and
//! such a start exits non-zero with one clear line and touches nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use quintet_client::local::{LocalCluster, LocalOptions, Node};
use quintet_client::{Client, ClientError};
use quintet_common::error::Error;
use quintet_common::types::{DEFAULT_MAX_VALUE_LEN, MAX_KEY_LEN, Op, ReadLevel, Version};
use quintet_tests::cluster::{ensure_binaries, start_cluster, wait_converged, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn client_for(cluster: &LocalCluster) -> Client {
    Client::new(&cluster.endpoints(), Duration::from_secs(5)).unwrap()
}

async fn applied_everywhere(client: &Client) -> Vec<Version> {
    client
        .status_all()
        .await
        .into_iter()
        .map(|s| s.expect("status").applied)
        .collect()
}

fn assert_invalid(result: Result<impl std::fmt::Debug, ClientError>, what: &str) {
    match result {
        Err(ClientError::Server {
            error: Error::InvalidArgument(msg),
            ..
        }) => assert!(!msg.is_empty(), "{what}: empty message"),
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> Op {
    Op::Put { key, value }
}

/// Sends every bad write through every replica; none may change anything.
async fn assert_rejected_and_nothing_stored(client: &Client, bad: &[(&str, Op)]) {
    let before = applied_everywhere(client).await;
    for (what, op) in bad {
        for i in 0..before.len() {
            let result = client.write_at(i, op.clone()).await;
            if let Err(e) = &result {
                assert!(e.surely_not_applied(), "{what}: {e}");
            }
            assert_invalid(result, &format!("{what} via replica {}", i + 1));
        }
        if !op.key().is_empty() && op.key().len() <= MAX_KEY_LEN {
            let got = client
                .get_at(0, op.key(), ReadLevel::Linearizable)
                .await
                .unwrap();
            assert_eq!(got.value, None, "{what}: the key was stored");
        }
    }
    assert_eq!(
        applied_everywhere(client).await,
        before,
        "a rejected write changed an applied version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_value_and_empty_or_long_key_are_invalid_and_store_nothing() {
    // A 1 MiB prepare in a debug build on a loaded 2-core machine can take
    // longer than the default 500 ms prepare timeout; this test is about
    // the limits, not the timing.
    let cluster = LocalCluster::start(
        LocalOptions {
            participants: 3,
            coordinator_args: vec!["--prepare-timeout".into(), "5s".into()],
            bin_dir: Some(ensure_binaries()),
            ..LocalOptions::default()
        },
        Duration::from_secs(60),
    )
    .await
    .expect("local cluster starts");
    let client = client_for(&cluster);
    client.put(b"existing", b"v").await.unwrap();

    let bad = [
        (
            "value of 1 MiB + 1",
            put(b"big".to_vec(), vec![7; DEFAULT_MAX_VALUE_LEN + 1]),
        ),
        ("empty key (put)", put(Vec::new(), b"v".to_vec())),
        ("empty key (delete)", Op::Delete { key: Vec::new() }),
        (
            "key of 4097 bytes",
            put(vec![b'k'; MAX_KEY_LEN + 1], b"v".to_vec()),
        ),
    ];
    assert_rejected_and_nothing_stored(&client, &bad).await;
    assert_invalid(
        client.get_at(1, b"", ReadLevel::Linearizable).await,
        "get of an empty key",
    );
    assert_invalid(
        client
            .get_at(1, &vec![b'k'; MAX_KEY_LEN + 1], ReadLevel::Serializable)
            .await,
        "get of a 4097-byte key",
    );

    // The limits are inclusive. Should the prepare still miss its timeout
    // (a three-member view cannot drop anyone), that is an abort, surely
    // not applied, and is retried here; a refusal of the size never is.
    let (key, value) = (vec![b'k'; MAX_KEY_LEN], vec![1; DEFAULT_MAX_VALUE_LEN]);
    wait_for(
        "a 4096-byte key with a 1 MiB value to be accepted",
        Duration::from_secs(30),
        || async {
            match client.put(&key, &value).await {
                Ok(_) => Some(()),
                Err(
                    e @ ClientError::Server {
                        error: Error::Aborted(_),
                        ..
                    },
                ) => {
                    eprintln!("retrying: {e}");
                    None
                }
                Err(e) => panic!("a 4096-byte key with a 1 MiB value is accepted: {e}"),
            }
        },
    )
    .await;
    wait_converged(&client, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_value_size_flag_is_enforced_at_every_replica() {
    let cluster = start_cluster(3, &["--max-value-size", "1000"]).await;
    let client = client_for(&cluster);
    let bad = [("value of 1001 bytes", put(b"v".to_vec(), vec![1; 1001]))];
    assert_rejected_and_nothing_stored(&client, &bad).await;
    let version = client
        .put(b"v", &[1; 1000])
        .await
        .expect("a value of exactly --max-value-size is accepted")
        .version();
    let got = client
        .get_at(2, b"v", ReadLevel::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.value, Some((vec![1; 1000], version)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_beyond_the_frame_limit_fails_as_not_applied_and_cluster_keeps_serving() {
    let cluster = start_cluster(3, &[]).await;
    let client = client_for(&cluster);
    let before = applied_everywhere(&client).await;
    let err = client
        .write_at(0, put(b"huge".to_vec(), vec![0; 17 << 20]))
        .await
        .expect_err("a 17 MiB value must be refused");
    assert!(
        err.surely_not_applied(),
        "a refused 17 MiB write is reported as {} ({err}); it surely was not applied",
        err.kind()
    );
    assert_eq!(applied_everywhere(&client).await, before);
    client.put(b"small", b"ok").await.expect("still serving");
}

/// Deterministic junk (xorshift), so a failure can be replayed.
fn junk(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `bytes`, closes the write half and waits (bounded) until the server
/// closes the connection.
async fn send_and_expect_drop(addr: &str, bytes: &[u8], what: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let mut buf = vec![0; 4096];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{addr} kept the {what} connection open");
}

fn warnings(log: &Path) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("dropping connection"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_port_drops_only_that_connection_with_a_warning() {
    let cluster = start_cluster(3, &[]).await;
    let client = client_for(&cluster);
    let v1 = client.put(b"before", b"1").await.unwrap().version();

    let mut huge_prefix = vec![0xFF, 0xFF, 0xFF, 0xFF];
    huge_prefix.extend(junk(32));
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend(junk(10));
    let mut bad_payload = 16u32.to_be_bytes().to_vec();
    bad_payload.extend([0xFF; 16]);
    let attacks: [(&str, Vec<u8>); 4] = [
        ("random bytes", junk(256)),
        ("0xFFFFFFFF length prefix", huge_prefix),
        ("truncated frame", truncated),
        ("undecodable payload", bad_payload),
    ];

    let mut silent = Vec::new();
    for node in cluster.nodes() {
        let addr = cluster.addr(node);
        // A client that connects and sends nothing stays open meanwhile.
        silent.push(TcpStream::connect(&addr).await.unwrap());
        for (what, bytes) in &attacks {
            send_and_expect_drop(&addr, bytes, what).await;
        }
    }

    // Everyone else is still served: writes through and reads at every replica.
    let client2 = client_for(&cluster);
    for i in 0..3 {
        let op = put(format!("after-{i}").into_bytes(), b"2".to_vec());
        client2.write_at(i, op).await.unwrap();
        let got = client2
            .get_at(i, b"before", ReadLevel::Linearizable)
            .await
            .unwrap();
        assert_eq!(got.value, Some((b"1".to_vec(), v1)));
    }
    wait_converged(&client2, WAIT).await;
    for node in cluster.nodes() {
        let log = cluster.log_file(node);
        wait_for(
            &format!("{} warnings in {}", attacks.len(), log.display()),
            WAIT,
            || async { (warnings(&log) >= attacks.len()).then_some(()) },
        )
        .await;
    }
    drop(silent);
}

/// Every file of a directory tree with its size.
fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, meta.len());
            }
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a participant binary with `args` and no logging; returns (exit
/// success, stderr). Killed if it has not exited within `WAIT`.
async fn run_participant(args: &[String]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(ensure_binaries().join("quintet-participant"));
    cmd.args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("QUINTET_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd.spawn().unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the participant must exit, not serve")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_or_id_is_refused_and_left_untouched() {
    let mut a = start_cluster(1, &[]).await;
    let b = start_cluster(1, &[]).await;
    client_for(&a).put(b"a-key", b"a-value").await.unwrap();
    let node = Node::Participant(1);
    assert!(a.stop(node, Duration::from_secs(10)).unwrap());
    let dir = a.data_dir(node);
    let before = listing(&dir);
    let bytes_before: BTreeMap<String, Vec<u8>> = before
        .keys()
        .map(|f| (f.clone(), fs::read(dir.join(f)).unwrap()))
        .collect();

    let common = |id: &str, coordinator: String| -> Vec<String> {
        vec![
            "--id".into(),
            id.into(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--peer-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--coordinator".into(),
            coordinator,
            "--data-dir".into(),
            dir.display().to_string(),
            "--startup-timeout".into(),
            "5s".into(),
        ]
    };

    for (what, args, word) in [
        (
            "A's data dir against B's coordinator",
            common("1", b.addr(Node::Coordinator(1))),
            "cluster",
        ),
        (
            "participant 1's data dir started as --id 2",
            common("2", a.addr(Node::Coordinator(1))),
            "participant 1",
        ),
    ] {
        let (ok, stderr) = run_participant(&args).await;
        assert!(!ok, "{what}: exited 0");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: expected one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("error:") && lines[0].contains(word),
            "{what}: unclear error {:?}",
            lines[0]
        );
        assert_eq!(listing(&dir), before, "{what}: data dir listing changed");
        for (f, bytes) in &bytes_before {
            assert_eq!(
                &fs::read(dir.join(f)).unwrap(),
                bytes,
                "{what}: {f} changed"
            );
        }
    }

    // The data dir still works in its own cluster.
    a.start_node(node).unwrap();
    a.wait_ready(node, WAIT).await.unwrap();
    let got = client_for(&a)
        .get_at(0, b"a-key", ReadLevel::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.value.map(|v| v.0), Some(b"a-value".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_filling_every_connection_slot_are_dropped_and_service_resumes() {
    let cluster = start_cluster(1, &[]).await;
    let addr = cluster.addr(Node::Participant(1));
    // Connections that never send a byte, as many as the server admits.
    let mut silent = Vec::new();
    for _ in 0..quintet_common::net::MAX_CONNECTIONS {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The server must shed stalled connections (issue 3, "Bad input") so
    // that everyone else is served again within a bounded time.
    let client = Client::new(&cluster.endpoints(), Duration::from_secs(2)).unwrap();
    wait_for(
        "the replica to serve a new client while silent ones hold every slot",
        Duration::from_secs(15),
        || async {
            client
                .get_at(0, b"k", ReadLevel::Serializable)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_value_size_no_frame_can_carry_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--id",
        "1",
        "--max-value-size",
        "20000000",
        "--coordinator",
        "127.0.0.1:1",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.path().join("p1").display().to_string()])
    .collect();
    let (ok, stderr) = run_participant(&args).await;
    assert!(!ok);
    assert!(
        stderr.contains("--max-value-size 20000000 cannot work") && stderr.contains("give 1 to"),
        "{stderr}"
    );
    assert!(!dir.path().join("p1").exists(), "nothing was created");
}
