//! `quintet shell`: read a line, run it, print the result, keep going.
//!
//! On a terminal it uses rustyline (editing, history in
//! `$HOME/.quintet_history`, none when `HOME` is unset); when stdin is piped
//! it reads plain lines without a prompt, so `printf 'put a 1\nget a\n' |
//! quintet shell` behaves like a script that never stops on errors. Lines are
//! parsed by [`super::script::parse`], the same parser `run` uses. The async
//! runtime is driven with `block_on` per command because rustyline blocks.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use rustyline::error::ReadlineError;
use tokio::runtime::Runtime;

use super::EXIT_OK;
use super::commands::{Ctx, Failure};
use super::script::{Parsed, execute, parse};

/// The prompt.
pub const PROMPT: &str = "quintet> ";

/// Runs the shell until `exit` or end of input; returns the exit code (0).
pub fn run(rt: &Runtime, ctx: &Ctx) -> Result<i32, Failure> {
    if std::io::stdin().is_terminal() {
        interactive(rt, ctx)
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| Failure::failed(format!("cannot read stdin: {e}")))?;
            if !one_line(rt, ctx, &line) {
                break;
            }
        }
        Ok(EXIT_OK)
    }
}

fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".quintet_history"))
}

fn interactive(rt: &Runtime, ctx: &Ctx) -> Result<i32, Failure> {
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Failure::failed(format!("cannot open the terminal: {e}")))?;
    let history = history_file();
    if let Some(h) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(h);
    }
    println!(
        "quintet shell: {} replica(s), timeout {:?}; type `help` for the commands, `exit` to leave",
        ctx.endpoints.len(),
        ctx.timeout
    );
    loop {
        match editor.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !one_line(rt, ctx, &line) {
                    break;
                }
            }
            // Ctrl-C abandons the line, as in bash; Ctrl-D leaves.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: cannot read the line: {e}");
                break;
            }
        }
    }
    if let Some(h) = &history
        && let Err(e) = editor.save_history(h)
    {
        eprintln!(
            "warning: could not save the history to {}: {e}",
            h.display()
        );
    }
    Ok(EXIT_OK)
}

/// Runs one line and prints its result; false when the shell should end.
fn one_line(rt: &Runtime, ctx: &Ctx, line: &str) -> bool {
    let parsed = match parse(line) {
        Ok(Parsed::Empty) => return true,
        Ok(Parsed::Exit) => return false,
        Ok(p) => p,
        Err(f) => {
            eprintln!("error: {}", f.message);
            return true;
        }
    };
    match rt.block_on(execute(ctx, parsed)) {
        Ok(reply) => {
            let out = ctx.output.render(&reply);
            if !out.is_empty() {
                println!("{out}");
            } else if reply.exit_code() == super::EXIT_NOT_FOUND {
                println!("(not found)");
            }
            if let Some(l) = reply.error_line() {
                eprintln!("error: {l}");
            }
        }
        Err(f) => eprintln!("error: {}", f.message),
    }
    true
}
