//! `quintet-chaos`: fault injection against a quintet cluster with a
//! linearizability, lost-write and convergence check at the end. Everything
//! is in [`quintet_tests::chaos`]; this only parses arguments and maps the
//! result to an exit code: 0 passed, 1 a check failed, 2 the run could not
//! be done.

use std::process::ExitCode;

use clap::Parser;
use quintet_tests::chaos::{Args, plan, run, seed_of};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.dry_run {
        let seed = seed_of(&args);
        println!("nominal schedule for seed {seed} over {:?}:", args.duration);
        let mut at = std::time::Duration::ZERO;
        for f in plan(&args, seed) {
            at += f.gap;
            println!("  {:7.3}s {f}", at.as_secs_f64());
            at += f.hold;
        }
        return ExitCode::SUCCESS;
    }
    match run(&args).await {
        Ok(report) => {
            println!("\n{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!(
                "quintet-chaos: {}",
                quintet_common::telemetry::error_line(&e)
            );
            ExitCode::from(2)
        }
    }
}
