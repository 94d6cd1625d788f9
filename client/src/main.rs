//! `quintet`, the command-line client: parse, set up quiet logging, dispatch
//! to [`cli::run`], exit with its code. Everything else lives in `cli/`.

mod cli;

use clap::Parser;
use quintet_common::telemetry::{LogFormat, init};

fn main() {
    let args = cli::Cli::parse();
    // A one-shot command piped into `head` ends quietly when the reader
    // goes away, as Unix tools do, instead of panicking on a broken pipe.
    // Long-running ones (local, demo, bench, shell) keep ignoring SIGPIPE.
    if args.command.is_one_shot() {
        // SAFETY: called before any thread is started; restores the
        // default disposition the Rust runtime replaced.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    // Warnings only by default: stdout is for results, stderr for `error:`
    // lines. tarpc's own warnings about a broken connection are left out:
    // the client reports what failed, once, in its own words.
    init(LogFormat::Text, "warn,tarpc=error");
    std::process::exit(cli::run(args));
}
