//! `quintet-chaos`: fault injection against a quintet cluster with a
//! linearizability, lost-write and convergence check at the end. Everything
//! is in [`quintet_tests::chaos`]; this only parses arguments and maps the
//! result to an exit code: 0 passed, 1 a check failed, 2 the run could not
//! be done.

use std::process::ExitCode;

use clap::Parser;
use quintet_tests::chaos::{Args, run};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
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
            eprintln!("quintet-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
