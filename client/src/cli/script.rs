//! The `run` command, and running a line of `quintet shell` or `quintet run`.
//!
//! The one parser behind both is the library's [`quintet_client::script`]
//! (the tokenizer, and clap with the very `Args` structs the one-shot
//! subcommands use); a line it refuses is a usage error here.

use std::path::PathBuf;

use clap::Args;
use tokio::runtime::Runtime;

use super::EXIT_OK;
use super::commands::{self, Ctx, Failure, Reply};
use super::output::Output;

pub use quintet_client::script::Parsed;

/// Arguments of `run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The script: one command per line, `#` comments; `-` reads stdin.
    pub file: PathBuf,
    /// Run every line even after a failure; exit with the highest exit code seen.
    #[arg(long)]
    pub keep_going: bool,
}

/// Parses one line of the shell or a script; a bad line is a usage error.
pub fn parse(line: &str) -> Result<Parsed, Failure> {
    quintet_client::script::parse(line).map_err(Failure::usage)
}

/// Runs a parsed command.
pub async fn execute(ctx: &Ctx, p: Parsed) -> Result<Reply, Failure> {
    match p {
        Parsed::Empty | Parsed::Exit => Ok(Reply::Text(String::new())),
        Parsed::Help(t) => Ok(Reply::Text(t)),
        Parsed::Get(a) => commands::get(ctx, &a).await,
        Parsed::Put { key, value, at } => {
            commands::put_value(ctx, &key, value.as_bytes(), at).await
        }
        Parsed::Delete(a) => commands::delete(ctx, &a).await,
        Parsed::Status(a) => commands::status(ctx, &a).await,
    }
}

/// `quintet run FILE [--keep-going]`; returns the exit code.
pub fn run_file(rt: &Runtime, ctx: &Ctx, args: &RunArgs) -> Result<i32, Failure> {
    let name = args.file.display().to_string();
    let text = if name == "-" {
        let bytes = commands::read_all_stdin()
            .map_err(|e| Failure::usage(format!("cannot read the script from stdin: {e}")))?;
        String::from_utf8(bytes)
            .map_err(|_| Failure::usage("the script on stdin is not UTF-8 text"))?
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| {
            Failure::usage(format!(
                "cannot read script {name}: {e}; check the path (use - for stdin)"
            ))
        })?
    };
    let mut worst = EXIT_OK;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let parsed = parse(line);
        if matches!(parsed, Ok(Parsed::Empty)) {
            continue;
        }
        let command = line.trim();
        if ctx.output == Output::Text {
            println!("quintet> {command}");
        }
        if matches!(parsed, Ok(Parsed::Exit)) {
            break;
        }
        let result = match parsed {
            Ok(p) => rt.block_on(execute(ctx, p)),
            Err(f) => Err(f),
        };
        let code = report(ctx, lineno, command, &result);
        if code != EXIT_OK {
            worst = worst.max(code);
            if !args.keep_going {
                return Ok(code);
            }
        }
    }
    Ok(worst)
}

/// Prints one script line's result; returns its exit code.
fn report(ctx: &Ctx, lineno: usize, command: &str, result: &Result<Reply, Failure>) -> i32 {
    let code = match result {
        Ok(r) => r.exit_code(),
        Err(f) => f.code,
    };
    match ctx.output {
        Output::Text => {
            if let Ok(r) = result {
                let out = ctx.output.render(r);
                if !out.is_empty() {
                    println!("{out}");
                } else if code == super::EXIT_NOT_FOUND {
                    println!("(not found)");
                }
            }
        }
        Output::Json => {
            let mut record = serde_json::json!({
                "line": lineno,
                "command": command,
                "exit": code,
            });
            match result {
                Ok(r) => {
                    record["result"] = serde_json::from_str(&ctx.output.render(r))
                        .unwrap_or(serde_json::Value::Null);
                }
                Err(f) => record["error"] = f.message.clone().into(),
            }
            println!("{record}");
        }
    }
    match result {
        Err(f) => eprintln!("error: line {lineno}: {}", f.message),
        Ok(r) => {
            if let Some(l) = r.error_line() {
                eprintln!("error: line {lineno}: {l}");
            } else if code != EXIT_OK {
                eprintln!("line {lineno}: exit {code}");
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::super::EXIT_USAGE;
    use super::*;

    #[test]
    fn parser_rejects_bad_lines_as_usage_errors() {
        for bad in [
            "frobnicate k",
            "get",
            "put k",
            "get k --at x",
            "get k extra",
            "put k \"open",
        ] {
            match parse(bad) {
                Err(f) => {
                    assert_eq!(f.code, EXIT_USAGE, "{bad}");
                    assert!(
                        !f.message.contains('\n'),
                        "one line for {bad}: {}",
                        f.message
                    );
                }
                Ok(p) => panic!("{bad} parsed as {p:?}"),
            }
        }
    }
}
