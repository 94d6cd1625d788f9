//! End-to-end: client tokens. Participants with `--auth-file` refuse a
//! request without a known token (`unauthenticated`) and a write with a
//! `read` token (`permission denied`), change nothing when they refuse,
//! keep answering health probes without a token, and take a new token
//! after SIGHUP.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quintet_client::local::Node;
use quintet_client::{Client, ClientError};
use quintet_common::auth::{self, Entry, Role};
use quintet_common::error::Error;
use quintet_common::types::ReadLevel;
use quintet_tests::cluster::{start_cluster, wait_for};

fn line(role: Role, token: &str) -> String {
    Entry {
        role,
        hash: auth::hash(token),
        name: String::new(),
    }
    .line()
}

fn server_error(e: ClientError) -> Error {
    match e {
        ClientError::Server { error, .. } => error,
        other => panic!("expected a refusal from a replica, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_are_enforced_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth");
    let rw = "rw-token-0123456789abcdef";
    let ro = "ro-token-0123456789abcdef";
    std::fs::write(
        &file,
        format!("{}\n{}\n", line(Role::ReadWrite, rw), line(Role::Read, ro)),
    )
    .unwrap();
    let path = file.display().to_string();
    let cluster = start_cluster(3, &["--auth-file", &path]).await;
    let endpoints = cluster.endpoints();
    let anon = Client::new(&endpoints, Duration::from_secs(5)).unwrap();
    let writer = anon.clone().with_token(Some(rw.into()));
    let reader = anon.clone().with_token(Some(ro.into()));
    let stranger = anon.clone().with_token(Some("not-a-token-at-all".into()));

    writer
        .put(b"k", b"v1")
        .await
        .expect("a readwrite token writes");
    let e = server_error(anon.put(b"k", b"x").await.unwrap_err());
    assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
    let e = server_error(
        stranger
            .get(b"k", ReadLevel::Linearizable)
            .await
            .unwrap_err(),
    );
    assert!(matches!(e, Error::Unauthenticated(_)), "{e}");
    let e = server_error(reader.delete(b"k").await.unwrap_err());
    assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    assert_eq!(
        ClientError::Server {
            endpoint: String::new(),
            error: e
        }
        .exit_code(),
        3
    );
    // Nothing the refused requests asked for happened.
    let r = reader.get(b"k", ReadLevel::Linearizable).await.unwrap();
    assert_eq!(r.value.map(|v| v.0), Some(b"v1".to_vec()));
    assert!(reader.status_at(0).await.is_ok(), "read covers status");
    assert!(anon.status_at(0).await.is_err());
    // Health needs no token (healthchecks have none).
    let h = quintet_client::client::health(&endpoints[0], Duration::from_secs(2))
        .await
        .unwrap();
    assert!(h.ready);

    // A token added to the file works after SIGHUP, without a restart.
    let new = "new-token-0123456789abcdef";
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&line(Role::ReadWrite, new));
    text.push('\n');
    std::fs::write(&file, text).unwrap();
    let newcomer = anon.clone().with_token(Some(new.into()));
    assert!(newcomer.put(b"k", b"v2").await.is_err(), "not loaded yet");
    for i in 1..=3 {
        let pid = cluster.pid(Node::Participant(i)).expect("running");
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    }
    wait_for(
        "the new token to be loaded",
        Duration::from_secs(10),
        || async { newcomer.put(b"k", b"v2").await.ok() },
    )
    .await;
}
