//! `quintet certs init`: the operator's side of
//! [`quintet_client::certs`]. Prints what it wrote and how to use it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use quintet_client::certs::{CertsOptions, default_hosts, init};

use super::EXIT_OK;
use super::commands::Failure;

/// `certs` subcommands.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a cluster CA (DIR/ca.crt, DIR/ca.key) and a certificate and key
    /// per node (coordinator, coordinator-N, participant-N, client); keeps
    /// what exists, adds what is missing.
    Init(InitArgs),
}

/// Arguments of `certs init`.
#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Where to write the files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Host names and addresses clients dial, comma-separated; every node
    /// certificate names them besides the node's own name.
    #[arg(long, value_delimiter = ',', value_name = "H,..",
          default_values_t = default_hosts())]
    pub hosts: Vec<String>,
    /// Participants to make certificates for (participant-1..N).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub participants: u32,
    /// Coordinator replicas to make certificates for (coordinator,
    /// coordinator-2..N); 3 covers compose's `ha` profile.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub coordinators: u32,
    /// Days the node and client certificates are valid (the CA: ten years).
    #[arg(long, default_value_t = 825, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub days: i64,
    /// Remake every node and client certificate with the existing CA
    /// (rotation); the CA itself is kept.
    #[arg(long)]
    pub force: bool,
}

/// Runs a `certs` subcommand.
pub fn run(cmd: CertsCommand) -> Result<i32, Failure> {
    let CertsCommand::Init(a) = cmd;
    let opts = CertsOptions {
        dir: a.dir.clone(),
        hosts: a
            .hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect(),
        participants: a.participants,
        coordinators: a.coordinators,
        days: a.days,
        force: a.force,
    };
    let report = init(&opts).map_err(|e| Failure::failed(format!("{e:#}")))?;
    let dir = std::path::absolute(&a.dir).unwrap_or(a.dir.clone());
    if report.new_ca {
        println!("new cluster CA: {}", dir.join("ca.crt").display());
    } else {
        println!("kept the cluster CA in {}", dir.display());
    }
    for f in &report.written {
        println!("wrote {}", f.display());
    }
    if !report.kept.is_empty() {
        println!(
            "kept {} existing files (--force remakes the node certificates)",
            report.kept.len()
        );
    }
    println!("names clients may dial: {}", opts.hosts.join(", "));
    println!("servers take --tls-cert DIR/NODE.crt --tls-key DIR/NODE.key --tls-ca DIR/ca.crt;");
    println!("clients:");
    println!("export QUINTET_CACERT={}", dir.join("ca.crt").display());
    println!("export QUINTET_CERT={}", dir.join("client.crt").display());
    println!("export QUINTET_KEY={}", dir.join("client.key").display());
    Ok(EXIT_OK)
}
