//! `quintet local`: a whole cluster on this machine, in the foreground.
//!
//! The work is done by [`LocalCluster`]; this file is the operator's view of
//! it: print where everything is (endpoints, data, logs, an `export` line to
//! paste), then wait for either Ctrl-C/SIGTERM (stop every child cleanly,
//! participants first, exit 0) or a child dying on its own (say which and
//! where its log is, stop the rest, exit non-zero) — a half-dead cluster left
//! running would only confuse whoever is using it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use quintet_client::local::{LocalCluster, LocalOptions, Node};

use super::commands::{Ctx, Failure};
use super::{EXIT_FAILED, EXIT_OK};

/// Arguments of `local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Data and log directory, kept after exit; default: a temp dir removed at exit.
    #[arg(long, env = "QUINTET_LOCAL_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Coordinator port; participant N listens on base + N.
    #[arg(long, env = "QUINTET_BASE_PORT", default_value_t = 7700)]
    pub base_port: u16,
    /// Number of participants (1 to 7).
    #[arg(long, env = "QUINTET_PARTICIPANTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=7))]
    pub participants: u32,
}

/// How long each process may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each process may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs `quintet local`; returns the exit code.
pub async fn run(_ctx: &Ctx, a: LocalArgs) -> Result<i32, Failure> {
    if u32::from(a.base_port) + a.participants > u32::from(u16::MAX) {
        return Err(Failure::usage(format!(
            "--base-port {} leaves no room for {} participant ports; pick a lower port",
            a.base_port, a.participants
        )));
    }
    let temporary = a.dir.is_none();
    let opts = LocalOptions {
        dir: a.dir.clone(),
        base_port: Some(a.base_port),
        participants: a.participants,
        ..LocalOptions::default()
    };
    println!(
        "starting a coordinator and {} participants on 127.0.0.1:{}..{} ...",
        a.participants,
        a.base_port,
        u32::from(a.base_port) + a.participants
    );
    let mut cluster = LocalCluster::start(opts, START_TIMEOUT).await?;
    print_banner(&cluster, temporary);

    let stop = quintet_common::shutdown::signal();
    tokio::pin!(stop);
    let dead = loop {
        tokio::select! {
            biased;
            _ = &mut stop => break Vec::new(),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let dead: Vec<Node> = cluster
            .nodes()
            .into_iter()
            .filter(|n| !cluster.is_running(*n))
            .collect();
        if dead.is_empty() {
            continue;
        }
        // A Ctrl-C on the terminal reaches the children too, and one may exit
        // before our own signal handler runs: give the signal a moment to
        // arrive before calling this a crash.
        tokio::select! {
            biased;
            _ = &mut stop => break Vec::new(),
            _ = tokio::time::sleep(Duration::from_millis(500)) => break dead,
        }
    };

    if !dead.is_empty() {
        for node in &dead {
            eprintln!(
                "error: {node} exited unexpectedly; see its log {}",
                cluster.log_file(*node).display()
            );
        }
    } else {
        println!("stopping ...");
    }
    let unclean = tokio::task::block_in_place(|| stop_all(&mut cluster, &dead));
    if temporary {
        println!("removing {}", cluster.dir().display());
    } else {
        println!("data kept in {}", cluster.dir().display());
    }
    drop(cluster);
    if !dead.is_empty() {
        return Ok(EXIT_FAILED);
    }
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
fn stop_all(cluster: &mut LocalCluster, dead: &[Node]) -> Vec<String> {
    let mut order = cluster.nodes();
    order.reverse();
    let mut unclean = Vec::new();
    for node in order {
        if dead.contains(&node) {
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
    println!("  coordinator    {}", cluster.addr(Node::Coordinator));
    for node in cluster.nodes() {
        if let Node::Participant(i) = node {
            println!("  participant {i}  {}", cluster.addr(node));
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
    println!("press Ctrl-C to stop every process");
}
