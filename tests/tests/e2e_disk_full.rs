//! End-to-end: a participant whose disk fills up. Its data dir is a small
//! tmpfs made by the test (needs root, as CI has; skipped otherwise). Once
//! free space falls below the reserve it votes NO on writes ("disk full"),
//! so they fail as surely not applied, while it keeps serving reads; when
//! space is freed, writes resume by themselves. Nothing acknowledged is
//! lost, and its WAL is intact: it restarts from it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quintet_client::local::{LocalCluster, LocalOptions, Node};
use quintet_client::{Client, ClientError};
use quintet_common::error::Error;
use quintet_common::storage::space::free_bytes;
use quintet_common::types::ReadLevel;
use quintet_tests::cluster::{ensure_binaries, wait_for};

/// A tmpfs mounted for the test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .ok()?
            .success();
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` until less than `left` bytes are free.
fn fill(dir: &Path, left: u64) -> PathBuf {
    let ballast = dir.join("ballast");
    let free = free_bytes(dir).expect("statvfs");
    let size = free.saturating_sub(left / 2);
    let chunk = vec![0xabu8; 1 << 20];
    let mut f = std::fs::File::create(&ballast).unwrap();
    let mut written = 0;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        if std::io::Write::write_all(&mut f, &chunk[..n]).is_err() {
            break;
        }
        written += n as u64;
    }
    drop(f);
    assert!(
        free_bytes(dir).unwrap() < left,
        "the ballast fills the disk"
    );
    ballast
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_when_freed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let p3 = base.path().join(Node::Participant(3).to_string());
    let Some(small) = Tmpfs::mount(&p3, "64m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let opts = LocalOptions {
        dir: Some(base.path().to_path_buf()),
        bin_dir: Some(ensure_binaries()),
        ..LocalOptions::default()
    };
    let mut cluster = LocalCluster::start(opts, Duration::from_secs(60))
        .await
        .expect("cluster starts");
    let c = Client::new(&cluster.endpoints(), Duration::from_secs(5)).unwrap();
    let t0 = std::time::Instant::now();
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("k{i}");
        c.put(key.as_bytes(), b"before")
            .await
            .expect("room on every disk");
        acked.push((key, b"before".to_vec()));
    }

    // Below the 32 MiB reserve on participant 3's file system.
    let ballast = fill(&small.0, 32 << 20);
    eprintln!("{:?}: disk filled", t0.elapsed());
    // The check is cached for 100 ms: wait, bounded, for the first refusal
    // (a write that still got in is acknowledged, so it must survive).
    let mut n = 0;
    wait_for("participant 3 to vote no", Duration::from_secs(5), || {
        n += 1;
        let key = format!("early{n}");
        let c = &c;
        async move { c.put(key.as_bytes(), b"e").await.err().map(|_| ()) }
    })
    .await;
    // Every earlier probe was acknowledged.
    acked.extend((1..n).map(|i| (format!("early{i}"), b"e".to_vec())));
    let e = c.put(b"full", b"x").await.expect_err("3 votes no");
    let text = e.to_string();
    assert!(
        matches!(
            &e,
            ClientError::Server {
                error: Error::Aborted(_),
                ..
            }
        ) && text.contains("disk full"),
        "{text}"
    );
    assert_eq!(e.exit_code(), 3, "surely not applied");
    // Participant 3 still answers linearizable reads.
    let r = c.get_at(2, b"k7", ReadLevel::Linearizable).await.unwrap();
    assert_eq!(r.value.map(|v| v.0), Some(b"before".to_vec()));

    // Space freed: writes resume by themselves.
    eprintln!("{:?}: refused, reads go on", t0.elapsed());
    std::fs::remove_file(&ballast).unwrap();
    wait_for("writes to resume", Duration::from_secs(15), || async {
        c.put(b"after", b"y").await.ok()
    })
    .await;
    acked.push(("after".into(), b"y".to_vec()));
    assert!(
        c.get(b"full", ReadLevel::Linearizable)
            .await
            .unwrap()
            .value
            .is_none(),
        "the refused write was not applied"
    );

    eprintln!("{:?}: writes resumed", t0.elapsed());
    // Its WAL is intact: it restarts from it and holds every acked write.
    cluster.kill(Node::Participant(3)).unwrap();
    cluster.start_node(Node::Participant(3)).unwrap();
    let at3 = Client::new(
        &[cluster.addr(Node::Participant(3))],
        Duration::from_secs(5),
    )
    .unwrap();
    wait_for(
        "participant 3 to serve again",
        Duration::from_secs(30),
        || async { at3.get_at(0, b"after", ReadLevel::Linearizable).await.ok() },
    )
    .await;
    for (k, v) in &acked {
        let r = at3
            .get_at(0, k.as_bytes(), ReadLevel::Serializable)
            .await
            .unwrap();
        assert_eq!(r.value.map(|x| x.0).as_ref(), Some(v), "key {k}");
    }
    drop(cluster);
    drop(small);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_with_a_full_disk_refuses_writes_cleanly_and_recovers() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let at = base.path().join(Node::Coordinator(1).to_string());
    let Some(small) = Tmpfs::mount(&at, "64m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let opts = LocalOptions {
        dir: Some(base.path().to_path_buf()),
        bin_dir: Some(ensure_binaries()),
        ..LocalOptions::default()
    };
    let cluster = LocalCluster::start(opts, Duration::from_secs(60))
        .await
        .expect("cluster starts");
    let c = Client::new(&cluster.endpoints(), Duration::from_secs(5)).unwrap();
    c.put(b"k", b"before").await.expect("room on the disk");
    let ballast = fill(&small.0, 32 << 20);
    // The check is cached for 100 ms: wait for the refusal, bounded.
    let e = wait_for(
        "the coordinator to refuse",
        Duration::from_secs(5),
        || async { c.put(b"probe", b"during").await.err() },
    )
    .await;
    let text = e.to_string();
    assert!(
        matches!(
            &e,
            ClientError::Server {
                error: Error::Unavailable(_),
                ..
            }
        ) && text.contains("disk full")
            && text.contains("nothing was applied"),
        "{text}"
    );
    assert_eq!(e.exit_code(), 3);
    let r = c.get(b"k", ReadLevel::Linearizable).await.unwrap();
    assert_eq!(
        r.value.map(|v| v.0),
        Some(b"before".to_vec()),
        "reads go on"
    );
    std::fs::remove_file(&ballast).unwrap();
    wait_for("writes to resume", Duration::from_secs(15), || async {
        c.put(b"k", b"after").await.ok()
    })
    .await;
    drop(cluster);
    drop(small);
}

/// Without a reserve (`--min-free-mib 0`) a write can hit a truly full disk.
/// The failed WAL write is never retried: the participant stops with one
/// error line, the other members carry on without it, and once space is
/// freed it restarts from what is really on disk and rejoins with every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_write_stops_the_participant_and_loses_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let p3 = base.path().join(Node::Participant(3).to_string());
    let Some(small) = Tmpfs::mount(&p3, "64m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let opts = LocalOptions {
        dir: Some(base.path().to_path_buf()),
        bin_dir: Some(ensure_binaries()),
        participant_args: vec!["--min-free-mib".into(), "0".into()],
        ..LocalOptions::default()
    };
    let mut cluster = LocalCluster::start(opts, Duration::from_secs(60))
        .await
        .expect("cluster starts");
    let c = Client::new(&cluster.endpoints(), Duration::from_secs(5)).unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        let key = format!("k{i}");
        c.put(key.as_bytes(), b"before").await.expect("room");
        acked.push((key, b"before".to_vec()));
    }

    // Not a byte left: participant 3's next log write fails.
    let ballast = fill(&small.0, 4096);
    let mut filler = std::fs::OpenOptions::new()
        .append(true)
        .open(&ballast)
        .unwrap();
    while std::io::Write::write_all(&mut filler, &[0u8; 512]).is_ok() {}
    drop(filler);
    let value = vec![b'v'; 64 << 10];
    for i in 0..20 {
        let key = format!("full{i}");
        // Acked writes must survive; failed ones may or may not be applied.
        if c.put(key.as_bytes(), &value).await.is_ok() {
            acked.push((key, value.clone()));
        }
        if !cluster.is_running(Node::Participant(3)) {
            break;
        }
    }
    wait_for(
        "participant 3 to stop on the failed write",
        Duration::from_secs(30),
        || {
            let down = !cluster.is_running(Node::Participant(3));
            async move { down.then_some(()) }
        },
    )
    .await;
    let log = std::fs::read_to_string(cluster.log_file(Node::Participant(3))).unwrap_or_default();
    assert!(
        log.contains("the write-ahead log failed; stopping to protect the data"),
        "one clear line says why it stopped: {log}"
    );
    // The others carry on without it.
    let key = "without3".to_string();
    wait_for(
        "writes without participant 3",
        Duration::from_secs(15),
        || async { c.put(key.as_bytes(), b"w").await.ok() },
    )
    .await;
    acked.push((key, b"w".to_vec()));

    // Space freed: it restarts from its log and rejoins with everything.
    std::fs::remove_file(&ballast).unwrap();
    cluster.start_node(Node::Participant(3)).unwrap();
    let at3 = Client::new(
        &[cluster.addr(Node::Participant(3))],
        Duration::from_secs(5),
    )
    .unwrap();
    wait_for(
        "participant 3 to rejoin",
        Duration::from_secs(30),
        || async {
            at3.get_at(0, b"without3", ReadLevel::Linearizable)
                .await
                .ok()
        },
    )
    .await;
    for (k, v) in &acked {
        let r = at3
            .get_at(0, k.as_bytes(), ReadLevel::Serializable)
            .await
            .unwrap();
        assert_eq!(r.value.map(|x| x.0).as_ref(), Some(v), "key {k}");
    }
    drop(cluster);
    drop(small);
}
