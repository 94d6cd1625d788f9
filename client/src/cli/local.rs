//! `quintet local`: a whole cluster on this machine, in the foreground.
//!
//! The work is done by [`LocalCluster`]; this file is the operator's view of
//! it: print where everything is (endpoints, data, logs, an `export` line to
//! paste), then keep the cluster running until Ctrl-C/SIGTERM (stop every
//! child cleanly, participants first, exit 0). A child that exits on its
//! own is reported with its log and started again after a second on the
//! same data dir and port, like compose's `restart: unless-stopped`, so
//! killing one by hand shows what the cluster does about it: writes go on
//! at the others, and the child rejoins. `--no-restart` leaves it down.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use quintet_client::local::{LocalCluster, LocalOptions, Node};

use super::EXIT_OK;
use super::commands::{Ctx, Failure};

/// Arguments of `local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Data and log directory, kept after exit; default: a temp dir removed at exit.
    #[arg(long, env = "QUINTET_LOCAL_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Coordinator port; participant N listens on base + N for clients and
    /// base + 100 + N for the coordinator and other participants.
    #[arg(long, env = "QUINTET_BASE_PORT", default_value_t = 7700)]
    pub base_port: u16,
    /// Number of participants (1 to 7).
    #[arg(long, env = "QUINTET_PARTICIPANTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=7))]
    pub participants: u32,
    /// Coordinator replicas (1, 3 or 5): with more than one, the decision
    /// log is replicated with Raft and the cluster survives the loss of a
    /// coordinator. Replica N > 1 listens on base + 10 (N - 1).
    #[arg(long, env = "QUINTET_COORDINATORS_COUNT", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=7))]
    pub coordinators: u32,
    /// Leave a child that exits down instead of starting it again after 1 s.
    #[arg(long)]
    pub no_restart: bool,
    /// Client tokens for every participant (`quintet auth add` makes the
    /// file); clients then need --token.
    #[arg(long, env = "QUINTET_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// TLS on every port, mutual TLS between the servers: certificates
    /// from `quintet certs init` in DIR/certs (made there if missing);
    /// clients then need --cacert (the banner prints the lines to export).
    #[arg(long)]
    pub tls: bool,
}

/// How long a child that exited stays down before it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// How long each process may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each process may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs `quintet local`; returns the exit code.
pub async fn run(_ctx: &Ctx, a: LocalArgs) -> Result<i32, Failure> {
    let span = a.participants.max(10 * (a.coordinators - 1));
    let peer_span = u32::from(quintet_client::local::PEER_PORT_OFFSET) + a.participants;
    if u32::from(a.base_port) + span.max(peer_span) > u32::from(u16::MAX) {
        return Err(Failure::usage(format!(
            "--base-port {} leaves no room for {} participant ports; pick a lower port",
            a.base_port, a.participants
        )));
    }
    let temporary = a.dir.is_none();
    let mut participant_args = Vec::new();
    if let Some(file) = &a.auth_file {
        // Checked here so a bad file is one clear error, not five children
        // failing to start.
        let tokens = quintet_common::auth::Tokens::load(file).map_err(Failure::usage)?;
        let file = std::path::absolute(file)
            .map_err(|e| Failure::usage(format!("--auth-file {}: {e}", file.display())))?;
        println!(
            "client tokens: {} ({} entries); clients need --token",
            file.display(),
            tokens.entries().len()
        );
        participant_args.extend(["--auth-file".to_string(), file.display().to_string()]);
    }
    let opts = LocalOptions {
        dir: a.dir.clone(),
        base_port: Some(a.base_port),
        participants: a.participants,
        coordinators: a.coordinators,
        participant_args,
        tls: a.tls,
        ..LocalOptions::default()
    };
    let coordinators = if a.coordinators == 1 {
        "a coordinator".to_string()
    } else {
        format!("{} coordinator replicas", a.coordinators)
    };
    println!(
        "starting {coordinators} and {} participants on 127.0.0.1:{}..{} ...",
        a.participants,
        a.base_port,
        u32::from(a.base_port) + span
    );
    let mut cluster = LocalCluster::start(opts, START_TIMEOUT).await?;
    print_banner(&cluster, temporary);

    let stop = quintet_common::shutdown::signal();
    tokio::pin!(stop);
    // Children that exited, and when to start each again (never with --no-restart).
    let mut down: Vec<(Node, Option<Instant>)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for node in cluster.nodes() {
            if down.iter().any(|(n, _)| *n == node) || cluster.is_running(node) {
                continue;
            }
            let log = cluster.log_file(node);
            if a.no_restart {
                eprintln!(
                    "{node} exited; leaving it down (--no-restart); see its log {}",
                    log.display()
                );
                down.push((node, None));
            } else {
                eprintln!(
                    "{node} exited; starting it again in {}s; see its log {}",
                    RESTART_AFTER.as_secs(),
                    log.display()
                );
                down.push((node, Some(Instant::now() + RESTART_AFTER)));
            }
        }
        let due: Vec<Node> = down
            .iter()
            .filter(|(_, at)| at.is_some_and(|at| Instant::now() >= at))
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            down.retain(|(n, _)| *n != node);
            match cluster.start_node(node) {
                Ok(()) => println!(
                    "started {node} again (pid {})",
                    cluster.pid(node).unwrap_or_default()
                ),
                Err(e) => {
                    eprintln!("error: cannot start {node} again: {e:#}; retrying in 1s");
                    down.push((node, Some(Instant::now() + RESTART_AFTER)));
                }
            }
        }
    }

    println!("stopping ...");
    let unclean = tokio::task::block_in_place(|| stop_all(&mut cluster));
    if temporary {
        println!("removing {}", cluster.dir().display());
    } else {
        println!("data kept in {}", cluster.dir().display());
    }
    drop(cluster);
    if !unclean.is_empty() {
        return Err(Failure::failed(format!(
            "{} did not stop cleanly; see the logs",
            unclean.join(", ")
        )));
    }
    println!("all processes stopped cleanly");
    Ok(EXIT_OK)
}

/// Stops every live node, participants first; returns the ones that did not exit cleanly.
fn stop_all(cluster: &mut LocalCluster) -> Vec<String> {
    let mut order = cluster.nodes();
    order.reverse();
    let mut unclean = Vec::new();
    for node in order {
        if !cluster.is_running(node) {
            continue;
        }
        match cluster.stop(node, STOP_GRACE) {
            Ok(true) => println!("stopped {node}"),
            Ok(false) => unclean.push(node.to_string()),
            Err(e) => {
                eprintln!("warning: stopping {node}: {e:#}");
                unclean.push(node.to_string());
            }
        }
    }
    unclean
}

fn print_banner(cluster: &LocalCluster, temporary: bool) {
    println!("quintet is running:");
    for node in cluster.nodes() {
        if let Node::Coordinator(_) = node {
            println!("  {:<14} {}", node.to_string(), cluster.addr(node));
        }
    }
    for node in cluster.nodes() {
        if let Node::Participant(i) = node {
            println!(
                "  participant {i}  {}  (peer port {})",
                cluster.addr(node),
                cluster.peer_addr(i)
            );
        }
    }
    let dir = cluster.dir().display();
    let note = if temporary {
        " (temporary: removed at exit; use --dir to keep it)"
    } else {
        ""
    };
    println!("data dir: {dir}{note}");
    println!("log dir:  {}", cluster.dir().join("logs").display());
    println!("export QUINTET_ENDPOINTS={}", cluster.endpoints().join(","));
    if let Some(certs) = cluster.certs_dir() {
        println!("TLS on every port; certificates in {}:", certs.display());
        println!("export QUINTET_CACERT={}", certs.join("ca.crt").display());
        println!("export QUINTET_CERT={}", certs.join("client.crt").display());
        println!("export QUINTET_KEY={}", certs.join("client.key").display());
    }
    println!("press Ctrl-C to stop every process; a process that exits is started again after 1s");
}
