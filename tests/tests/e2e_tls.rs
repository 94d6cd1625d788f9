//! End-to-end: a cluster with TLS on every port (as `quintet local --tls`
//! runs it). Clients with the CA read and write; every bad credential is
//! refused with a clear error (the CLI exits 3 with an `error:` line that
//! says what to pass) and changes nothing: plain TCP to a TLS port, no
//! `--cacert`, a certificate from another CA at the peer port, a valid
//! certificate of the wrong node, an expired one. Servers refuse bad TLS
//! files at start with one line, and log one warning per refused
//! connection.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use quintet_client::certs::{CertsOptions, init};
use quintet_client::local::{LocalCluster, LocalOptions, Node};
use quintet_client::{Client, ClientError};
use quintet_common::error::Error;
use quintet_common::net::{Dial, Link, LinkError, context_with_timeout};
use quintet_common::protocol::view::View;
use quintet_common::rpc::{ParticipantRequest, ParticipantResponse, PrepareRequest, peer_conn};
use quintet_common::tls::{TlsProblem, client_config};
use quintet_common::types::{Batch, BatchId, ClusterId, Op, ReadLevel};
use quintet_tests::cluster::{ensure_binaries, wait_for};

type ParticipantLink = Link<ParticipantRequest, ParticipantResponse>;

const WAIT: Duration = Duration::from_secs(20);

fn prepare(cluster: ClusterId, epoch: u64, version: u64) -> PrepareRequest {
    PrepareRequest {
        cluster,
        to: 1,
        batch: Batch {
            id: BatchId {
                epoch,
                seq: 1_000_000,
            },
            first_version: version,
            ops: vec![Op::Put {
                key: b"injected".to_vec(),
                value: b"x".to_vec(),
            }],
        },
        last_committed: None,
        view: View {
            epoch,
            members: Vec::new(),
        },
        prev: None,
    }
}

/// Runs the `quintet` CLI with `args` and `env`; returns (exit code, stderr).
async fn cli(args: &[&str], env: &[(&str, String)]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(ensure_binaries().join("quintet"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("QUINTET_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the CLI ends")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a participant binary; returns (success, stderr).
async fn participant(args: &[String]) -> (bool, String) {
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
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the participant must exit, not serve")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_error(e: ClientError) -> String {
    assert_eq!(e.exit_code(), 3, "{e}");
    match e {
        ClientError::Tls { detail, .. } => detail,
        other => panic!("expected a TLS refusal, got {other}"),
    }
}

fn refusals(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refused a connection"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_its_clients_and_refuses_every_bad_credential() {
    let cluster = LocalCluster::start(
        LocalOptions {
            participants: 3,
            tls: true,
            bin_dir: Some(ensure_binaries()),
            ..LocalOptions::default()
        },
        Duration::from_secs(60),
    )
    .await
    .expect("a TLS cluster starts");
    let certs = cluster.certs_dir().unwrap();
    let endpoints = cluster.endpoints();
    let good = Client::new(&endpoints, Duration::from_secs(5))
        .unwrap()
        .with_tls(cluster.client_tls())
        .unwrap();
    good.put(b"k", b"v1").await.expect("a write over TLS");
    let got = good.get(b"k", ReadLevel::Linearizable).await.unwrap();
    assert_eq!(got.value.map(|v| v.0), Some(b"v1".to_vec()));
    let before = good.status_at(0).await.unwrap();
    let cluster_id = before.cluster.unwrap();

    // Plain TCP to a TLS port.
    let plain = Client::new(&endpoints, Duration::from_secs(5)).unwrap();
    let detail = tls_error(plain.put(b"k", b"plain").await.unwrap_err());
    assert!(
        detail.contains("requires TLS") && detail.contains("--cacert"),
        "{detail}"
    );

    // TLS without --cacert: the server is not trusted.
    let no_ca = client_config(
        None,
        Some(&certs.join("client.crt")),
        Some(&certs.join("client.key")),
    )
    .unwrap();
    let untrusting = plain.clone().with_tls(no_ca).unwrap();
    let detail = tls_error(untrusting.put(b"k", b"untrusted").await.unwrap_err());
    assert!(
        detail.contains("not trusted") && detail.contains("--cacert"),
        "{detail}"
    );

    // The CLI, as a user runs it: exit 3, one `error:` line naming the fix.
    let env = vec![("QUINTET_ENDPOINTS", endpoints.join(","))];
    for (args, fix) in [
        (vec!["get", "k"], "--cacert"),
        (vec!["put", "k", "cli"], "--cacert"),
    ] {
        let (code, stderr) = cli(&args, &env).await;
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(code, 3, "{args:?}: {stderr}");
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with("error:") && lines[0].contains(fix),
            "{}",
            lines[0]
        );
    }
    let mut with_ca = env.clone();
    with_ca.push(("QUINTET_CACERT", certs.join("ca.crt").display().to_string()));
    let (code, stderr) = cli(&["get", "k"], &with_ca).await;
    assert_eq!(code, 0, "{stderr}");

    // A peer certificate from another CA, at the peer port: refused in the
    // handshake, nothing prepared.
    let other = tempfile::tempdir().unwrap();
    init(&CertsOptions {
        dir: other.path().to_path_buf(),
        participants: 3,
        coordinators: 1,
        ..CertsOptions::default()
    })
    .unwrap();
    let foreign = client_config(
        Some(&certs.join("ca.crt")),
        Some(&other.path().join("coordinator.crt")),
        Some(&other.path().join("coordinator.key")),
    )
    .unwrap()
    .unwrap();
    let link: ParticipantLink = Link::with_dial(
        cluster.peer_addr(1),
        Duration::from_secs(2),
        Dial::tls(foreign, "participant-1").unwrap(),
    );
    let req = prepare(cluster_id, before.epoch, before.applied + 1);
    let answer = link
        .call(|ch| async move {
            peer_conn(ch)
                .prepare(context_with_timeout(Duration::from_secs(2)), req)
                .await
        })
        .await;
    match answer {
        Err(
            e @ LinkError::Tls {
                problem: TlsProblem::Refused(_),
                ..
            },
        ) => {
            assert!(e.surely_not_sent())
        }
        other => panic!("another CA's certificate must be refused: {other:?}"),
    }

    // The cluster's own CA, but the client's certificate: the handshake
    // passes, the call is refused (only a coordinator may prepare).
    let wrong_node = client_config(
        Some(&certs.join("ca.crt")),
        Some(&certs.join("client.crt")),
        Some(&certs.join("client.key")),
    )
    .unwrap()
    .unwrap();
    let link: ParticipantLink = Link::with_dial(
        cluster.peer_addr(1),
        Duration::from_secs(2),
        Dial::tls(wrong_node.clone(), "participant-1").unwrap(),
    );
    let req = prepare(cluster_id, before.epoch, before.applied + 1);
    let answer = link
        .call(|ch| async move {
            peer_conn(ch)
                .prepare(context_with_timeout(Duration::from_secs(2)), req)
                .await
        })
        .await;
    assert!(
        matches!(answer, Ok(Err(Error::PermissionDenied(_)))),
        "{answer:?}"
    );
    // The peer port must prove it is the node dialed: participant 2's port
    // is not participant-1.
    let link: ParticipantLink = Link::with_dial(
        cluster.peer_addr(2),
        Duration::from_secs(2),
        Dial::tls(wrong_node, "participant-1").unwrap(),
    );
    let answer = link
        .call(|ch| async move {
            peer_conn(ch)
                .probe(
                    context_with_timeout(Duration::from_secs(2)),
                    quintet_common::rpc::ProbeRequest {
                        cluster: cluster_id,
                        to: 1,
                        epoch: before.epoch,
                    },
                )
                .await
        })
        .await;
    assert!(
        matches!(
            answer,
            Err(LinkError::Tls {
                problem: TlsProblem::WrongName(_),
                ..
            })
        ),
        "{answer:?}"
    );

    // An expired client certificate from the cluster's CA.
    let expired = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(certs.join(f), expired.path().join(f)).unwrap();
    }
    init(&CertsOptions {
        dir: expired.path().to_path_buf(),
        participants: 1,
        coordinators: 1,
        days: -1,
        ..CertsOptions::default()
    })
    .unwrap();
    let stale = client_config(
        Some(&certs.join("ca.crt")),
        Some(&expired.path().join("client.crt")),
        Some(&expired.path().join("client.key")),
    )
    .unwrap();
    let stale = plain.clone().with_tls(stale).unwrap();
    let detail = tls_error(stale.put(b"k", b"stale").await.unwrap_err());
    assert!(
        detail.contains("refused this client's certificate"),
        "{detail}"
    );

    // Nothing any refused request asked for happened.
    for s in good.status_all().await {
        let s = s.unwrap();
        assert!(s.pending.is_empty(), "replica {}: {:?}", s.id, s.pending);
        assert_eq!(s.applied, before.applied, "replica {}", s.id);
    }
    let got = good.get(b"k", ReadLevel::Linearizable).await.unwrap();
    assert_eq!(got.value.map(|v| v.0), Some(b"v1".to_vec()));
    assert_eq!(
        good.get(b"injected", ReadLevel::Linearizable)
            .await
            .unwrap()
            .value,
        None
    );

    // Each refusal is one warning line at the server.
    let log = cluster.log_file(Node::Participant(1));
    wait_for("refusals in participant 1's log", WAIT, || async {
        (refusals(&log) >= 2).then_some(())
    })
    .await;

    // Bad TLS files stop a server at start, with one line saying why.
    let data = tempfile::tempdir().unwrap();
    let base = |cert: &Path, key: &Path| -> Vec<String> {
        vec![
            "--id".into(),
            "1".into(),
            "--listen".into(),
            "127.0.0.1:1".into(),
            "--data-dir".into(),
            data.path().join("p").display().to_string(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-ca".into(),
            certs.join("ca.crt").display().to_string(),
        ]
    };
    for (what, args, word) in [
        (
            "a key of another certificate",
            base(
                &certs.join("participant-1.crt"),
                &certs.join("participant-2.key"),
            ),
            "does not belong to",
        ),
        (
            "another node's certificate",
            base(
                &certs.join("participant-2.crt"),
                &certs.join("participant-2.key"),
            ),
            "does not name participant-1",
        ),
        (
            "an expired certificate",
            base(
                &expired.path().join("participant-1.crt"),
                &expired.path().join("participant-1.key"),
            ),
            "has expired",
        ),
        (
            "another CA's certificate",
            base(
                &other.path().join("participant-1.crt"),
                &other.path().join("participant-1.key"),
            ),
            "not signed by --tls-ca",
        ),
        (
            "a missing file",
            base(&certs.join("nope.crt"), &certs.join("participant-1.key")),
            "cannot read",
        ),
    ] {
        let (ok, stderr) = participant(&args).await;
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!ok, "{what}: started");
        assert_eq!(lines.len(), 1, "{what}: {stderr}");
        assert!(
            lines[0].starts_with("error:") && lines[0].contains(word),
            "{what}: {}",
            lines[0]
        );
    }
    assert!(!data.path().join("p").exists(), "nothing was created");
}
