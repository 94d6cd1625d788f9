//! `quintet-chaos`: fault injection against a quintet cluster with a
//! linearizability, lost-write and convergence check at the end. Everything
//! is in [`quintet_tests::chaos`]; this only parses arguments and maps the
//! result to an exit code: 0 passed, 1 a check failed, 2 the run could not
//! be done, 130 interrupted. SIGINT or SIGTERM drops the run, and with it
//! the backend, whose drop stops the local processes and deletes the
//! docker firewall rules, so an interrupted run leaves no fault behind.

use std::process::ExitCode;

use clap::Parser;
use quintet_tests::chaos::{Args, left_out, plan, run, seed_of};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.dry_run {
        if let Err(e) = args.validate() {
            eprintln!("quintet-chaos: {e}");
            return ExitCode::from(2);
        }
        let seed = seed_of(&args);
        println!("nominal schedule for seed {seed} over {:?}:", args.duration);
        for k in &args.nemesis.0 {
            if let Some(why) = left_out(&args, *k) {
                println!("  (left out: {why})");
            }
        }
        let mut at = std::time::Duration::ZERO;
        for f in plan(&args, seed) {
            at += f.gap;
            println!("  {:7.3}s {f}", at.as_secs_f64());
            at += f.hold;
        }
        return ExitCode::SUCCESS;
    }
    let outcome = tokio::select! {
        r = run(&args) => r,
        _ = quintet_common::shutdown::signal() => {
            eprintln!("quintet-chaos: interrupted; undoing the faults and stopping what this run started");
            return ExitCode::from(130);
        }
    };
    match outcome {
        Ok(report) => {
            println!("\n{report}");
            if let Some(path) = &args.report_json {
                let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text + "\n") {
                    eprintln!("quintet-chaos: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
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
