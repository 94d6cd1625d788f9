//! `quintet`, the command-line client: parse, set up quiet logging, dispatch
//! to [`cli::run`], exit with its code. Everything else lives in `cli/`.

mod cli;

use clap::Parser;
use quintet_common::telemetry::{LogFormat, init};

fn main() {
    let args = cli::Cli::parse();
    // Warnings only by default: stdout is for results, stderr for `error:`
    // lines. tarpc's own warnings about a broken connection are left out:
    // the client reports what failed, once, in its own words.
    init(LogFormat::Text, "warn,tarpc=error");
    std::process::exit(cli::run(args));
}
