//! Test support: make sure the server binaries under test are fresh, then
//! start a [`LocalCluster`] from them.
//!
//! `cargo test --workspace` builds test harnesses, not the other packages'
//! binaries, so an end-to-end test could otherwise run a stale
//! `quintet-participant`. The first test in each test binary runs
//! `cargo build --bins` (same profile, same target dir) once; cargo releases
//! its build lock before running tests, so this is safe.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use quintet_client::local::{LocalCluster, LocalOptions};

/// Builds the workspace binaries once per test process; returns their directory.
pub fn ensure_binaries() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let bin_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let profile = bin_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "quintet-coordinator",
            "-p",
            "quintet-participant",
            "-p",
            "quintet-client",
        ]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the quintet binaries failed");
        bin_dir
    })
    .clone()
}

/// Starts a local cluster of `participants` from freshly built binaries.
pub async fn start_cluster(participants: u32, participant_args: &[&str]) -> LocalCluster {
    let opts = LocalOptions {
        participants,
        participant_args: participant_args.iter().map(|s| s.to_string()).collect(),
        bin_dir: Some(ensure_binaries()),
        ..LocalOptions::default()
    };
    LocalCluster::start(opts, Duration::from_secs(60))
        .await
        .expect("local cluster starts")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` naming `what`. The bounded wait every end-to-end test uses
/// instead of fixed sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every replica answers status with the same applied version
/// and digest and holds no pending batch; returns those statuses. Panics
/// after `timeout` with the last answers.
pub async fn wait_converged(
    client: &quintet_client::Client,
    timeout: Duration,
) -> Vec<quintet_common::rpc::ParticipantStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let all = client.status_all().await;
        let converged = all.iter().all(|s| s.is_ok()) && {
            let ok: Vec<_> = all.iter().flatten().collect();
            ok.iter().all(|s| {
                s.pending.is_empty() && s.applied == ok[0].applied && s.digest == ok[0].digest
            })
        };
        if converged {
            return all.into_iter().flatten().collect();
        }
        if std::time::Instant::now() >= deadline {
            let report: Vec<String> = all
                .iter()
                .map(|s| match s {
                    Ok(s) => format!(
                        "replica {}: applied {} digest {} pending {:?}",
                        s.id, s.applied, s.digest, s.pending
                    ),
                    Err(e) => format!("error: {e}"),
                })
                .collect();
            panic!(
                "replicas did not converge within {timeout:?}:\n{}",
                report.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
