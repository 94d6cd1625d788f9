//! End-to-end: a short `quintet-chaos` run on the local backend with three
//! coordinator replicas while the nemesis kills whichever replica leads.
//!
//! About ten seconds of a mixed workload with `--coordinators 3 --nemesis
//! kill-coordinator-leader`, then the three checks: the history is
//! linearizable, no acknowledged write is lost, and the replicas (and the
//! coordinator replicas' logs) converge. Every fault must have hit the
//! replica that led at the time, and it must have come back; afterwards
//! none of the runner's processes may be left running.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quintet_client::local::Node;
use quintet_tests::chaos::nemesis::FaultKind;
use quintet_tests::chaos::{Args, run};
use quintet_tests::history::{History, Outcome};

/// Whether a process with this pid still exists (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; Z is a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Pids of the live processes whose command line names `dir`.
fn servers_under(dir: &std::path::Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_local_chaos_run_killing_the_coordinator_leader_passes_and_cleans_up() {
    let bin_dir = quintet_tests::cluster::ensure_binaries();
    let work = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = work.path().join("cluster");
    let history = work.path().join("history.jsonl");
    let args = Args::try_parse_from([
        "quintet-chaos",
        "--backend",
        "local",
        "--coordinators",
        "3",
        "--duration",
        "10s",
        "--clients",
        "4",
        "--keys",
        "5",
        "--nemesis",
        "kill-coordinator-leader",
        "--seed",
        "3",
        "--history",
        &history.to_string_lossy(),
        "--bin-dir",
        &bin_dir.to_string_lossy(),
        "--dir",
        &data.to_string_lossy(),
    ])
    .expect("valid arguments");

    let report = run(&args).await.expect("the run completes");
    println!("{report}");
    assert!(report.passed(), "chaos run failed:\n{report}");
    assert_eq!(report.coordinators, 3);
    assert!(report.skipped.is_empty(), "{report}");
    assert!(
        !report.faults.is_empty(),
        "no fault was injected in 10 s:\n{report}"
    );
    for f in &report.faults {
        assert!(f.errors.is_empty(), "{f}\n{report}");
        assert_eq!(f.kind(), FaultKind::KillCoordinatorLeader, "{f}");
        // It hit the replica that led right before, and that one came back.
        let &[target @ Node::Coordinator(_)] = f.fault.targets.as_slice() else {
            panic!("not one coordinator replica: {f}");
        };
        assert_eq!(f.leader_before, Some(target), "{f}");
        assert!(
            f.rejoins.iter().any(|r| r.node == target),
            "{target} not back: {f}"
        );
    }
    let by_kind = report.availability_by_kind();
    let (n, _, _, rejoins) = by_kind
        .get(&FaultKind::KillCoordinatorLeader)
        .expect("a summary for the kind");
    assert_eq!(*n, report.faults.len());
    assert_eq!(rejoins.len(), report.faults.len(), "{report}");
    assert!(report.count("put", Outcome::Ok) > 0, "{report}");
    let h = History::read_jsonl(&history).expect("history file reads back");
    assert_eq!(h.len(), report.history_len);

    // Every process the runner started is gone once the run is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = servers_under(&data);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server processes left running: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
