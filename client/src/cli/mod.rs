//! The `quintet` command line: flags, subcommands and dispatch.
//!
//! Every subcommand is a plain clap `Args` struct and one arm in
//! [`dispatch`], so adding one (e.g. `bench`) is a variant plus an arm. The
//! per-key commands (`get`, `put`, `delete`, `status`) reuse the same `Args`
//! structs inside `shell` and `run` (see [`script`]), which is what keeps the
//! interactive, scripted and one-shot syntaxes identical. Commands return a
//! [`commands::Reply`] or a [`commands::Failure`]; only this module and the
//! script runners print them, so exit codes are decided in one place.

pub mod auth;
pub mod certs;
pub mod commands;
pub mod demo;
pub mod failover;
pub mod local;
pub mod output;
pub mod script;
pub mod shell;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use commands::{Ctx, Failure};
use output::Output;

/// The participant addresses used when neither --endpoints nor QUINTET_ENDPOINTS is set.
pub const DEFAULT_ENDPOINTS: &str =
    "127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703,127.0.0.1:7704,127.0.0.1:7705";

/// Exit code: done.
pub const EXIT_OK: i32 = 0;
/// Exit code: the key does not exist.
pub const EXIT_NOT_FOUND: i32 = 1;
/// Exit code: the command line (or a script line) is malformed.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: failed, and surely nothing was applied. (4, outcome unknown,
/// comes only from [`quintet_client::ClientError::exit_code`].)
pub const EXIT_FAILED: i32 = 3;

/// quintet: a five-replica key-value store with two-phase commit.
///
/// Exit codes: 0 ok; 1 key not found; 2 usage error; 3 failed and surely not
/// applied (aborted, rejected, unreachable); 4 outcome unknown (read the key
/// before retrying a write).
#[derive(Parser, Debug)]
#[command(name = "quintet", version, propagate_version = true)]
pub struct Cli {
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every subcommand.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Participant addresses, comma-separated [default: 127.0.0.1:7701..7705].
    #[arg(long, global = true, env = "QUINTET_ENDPOINTS", value_name = "A,B,..")]
    pub endpoints: Option<String>,
    /// Per-request timeout (e.g. 500ms, 5s).
    #[arg(long, global = true, env = "QUINTET_TIMEOUT", default_value = "5s",
          value_parser = quintet_common::duration::parse)]
    pub timeout: Duration,
    /// Output format. JSON values are strings: non-UTF-8 bytes are shown as U+FFFD.
    #[arg(long, global = true, env = "QUINTET_OUTPUT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Token for a cluster with an auth file (prefer QUINTET_TOKEN: a flag
    /// shows in `ps`).
    #[arg(long, global = true, env = "QUINTET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster's CA certificate (PEM; DIR/ca.crt of `quintet certs
    /// init`): the client speaks TLS and trusts the servers it signed.
    #[arg(long, global = true, env = "QUINTET_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// A client certificate (PEM; DIR/client.crt) for servers that ask for
    /// one, with --key.
    #[arg(
        long = "cert",
        global = true,
        env = "QUINTET_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM; DIR/client.key).
    #[arg(long = "key", global = true, env = "QUINTET_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Arguments of `demo`.
#[derive(Args, Debug, Clone, Default)]
pub struct DemoArgs {
    /// Kill a participant during the workload, show writes and reads going
    /// on at the others, wipe its data dir, start it again and watch it
    /// catch up and rejoin (always on a local cluster of its own).
    #[arg(long)]
    pub failover: bool,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read a key (prints the value; exit 1 if the key does not exist).
    Get(commands::GetArgs),
    /// Write a key (VALUE from stdin when omitted).
    Put(commands::PutArgs),
    /// Delete a key.
    Delete(commands::DeleteArgs),
    /// Show the coordinator and every replica: applied version, digest, pending batches.
    Status(commands::StatusArgs),
    /// Probe one server (coordinator or participant); exit 0 only if it is ready.
    Health(commands::HealthArgs),
    /// Interactive shell: get/put/delete/status/help/exit, one per line.
    Shell,
    /// Run a script of shell commands, one per line ('-' reads stdin).
    Run(script::RunArgs),
    /// Start a coordinator and participants on this machine, in the foreground.
    Local(local::LocalArgs),
    /// Run a short checked workload at every replica and print what happened
    /// (--failover: kill and wipe a replica during the workload).
    Demo(DemoArgs),
    /// Drive a workload (C closed-loop clients) and report ops/s and latency percentiles.
    Bench(quintet_client::bench::BenchArgs),
    /// Manage an auth file of client tokens: `auth add`, `auth list`.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Make TLS certificates: `certs init` (a cluster CA and one
    /// certificate per node).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

impl Command {
    /// Whether the command prints its result and ends (no servers, no
    /// session).
    pub fn is_one_shot(&self) -> bool {
        matches!(
            self,
            Command::Get(_)
                | Command::Put(_)
                | Command::Delete(_)
                | Command::Status(_)
                | Command::Health(_)
                | Command::Run(_)
                | Command::Auth(_)
                | Command::Certs(_)
        )
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let ctx = Ctx::new(&cli.global);
    let result = match cli.command {
        Command::Shell => shell::run(&rt, &ctx),
        Command::Run(args) => script::run_file(&rt, &ctx, &args),
        Command::Local(args) => rt.block_on(local::run(&ctx, args)),
        Command::Auth(a) => auth::run(a),
        Command::Certs(c) => certs::run(c),
        Command::Demo(a) if a.failover => rt.block_on(failover::run(&ctx)),
        Command::Demo(_) => rt.block_on(demo::run(&ctx)),
        Command::Bench(args) => {
            let json = ctx.output == Output::Json;
            ctx.client().and_then(|c| {
                rt.block_on(quintet_client::bench::run(c, args, json))
                    .map_err(|e| Failure::failed(e.to_string()))
            })
        }
        other => rt.block_on(dispatch(&ctx, other)).map(|reply| {
            ctx.output.print(&reply);
            reply.exit_code()
        }),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            f.code
        }
    }
}

/// Runs a one-shot command and returns what it produced.
async fn dispatch(ctx: &Ctx, command: Command) -> Result<commands::Reply, Failure> {
    match command {
        Command::Get(a) => commands::get(ctx, &a).await,
        Command::Put(a) => commands::put(ctx, &a).await,
        Command::Delete(a) => commands::delete(ctx, &a).await,
        Command::Status(a) => commands::status(ctx, &a).await,
        Command::Health(a) => commands::health(ctx, &a).await,
        // Handled in `run`; listed here so a new subcommand needs no arm.
        _ => Err(Failure::usage("this command cannot be run here")),
    }
}
