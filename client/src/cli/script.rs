//! The one parser behind `quintet shell` and `quintet run`, and the `run`
//! command itself.
//!
//! A line is split into words by a small shell-like tokenizer ("double" quotes
//! with backslash escapes, 'single' quotes taken literally, backslash outside
//! quotes, `#` starting a comment at a word boundary), then the words are
//! parsed by clap with the very `Args` structs the one-shot subcommands use.
//! So `put k "hello world" --at 2` means the same in a script, in the shell
//! and on the command line, and a flag added to `get` appears in all three.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokio::runtime::Runtime;

use super::EXIT_OK;
use super::commands::{self, Ctx, DeleteArgs, Failure, GetArgs, PutArgs, Reply, StatusArgs};
use super::output::Output;

/// Arguments of `run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The script: one command per line, `#` comments; `-` reads stdin.
    pub file: PathBuf,
    /// Run every line even after a failure; exit with the highest exit code seen.
    #[arg(long)]
    pub keep_going: bool,
}

/// The text `help` prints in the shell and in scripts.
pub const HELP: &str = "\
commands (same syntax as the quintet subcommands):
  get KEY [--serializable] [--at N]   read a key (at replica N, 1-based, if given)
  put KEY VALUE [--at N]              write a key
  delete KEY [--at N]                 delete a key
  status                              the coordinator and every replica
  help                                this text
  exit                                leave the shell (also: quit, Ctrl-D)
quoting: \"double quotes\" allow \\\" \\\\ \\n \\t escapes; 'single quotes' are literal;
a backslash outside quotes escapes the next character; # starts a comment.";

/// A command as a line of a script or the shell.
#[derive(Parser, Debug)]
#[command(
    name = "",
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_version_flag = true
)]
struct Line {
    #[command(subcommand)]
    command: LineCommand,
}

#[derive(Subcommand, Debug)]
enum LineCommand {
    /// Read a key.
    Get(GetArgs),
    /// Write a key.
    Put(PutArgs),
    /// Delete a key.
    Delete(DeleteArgs),
    /// Show the cluster.
    Status(StatusArgs),
    /// Show the commands.
    Help,
    /// Leave the shell.
    #[command(alias = "quit")]
    Exit,
}

/// What one line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Blank line or comment.
    Empty,
    /// Leave the shell (in a script: stop, successfully).
    Exit,
    /// Print this text (help, or `CMD --help`).
    Help(String),
    /// Read a key.
    Get(GetArgs),
    /// Write a key; the value is required in scripts.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Replica, 1-based.
        at: Option<usize>,
    },
    /// Delete a key.
    Delete(DeleteArgs),
    /// Show the cluster.
    Status(StatusArgs),
}

/// Splits a line into words. Errors name what is unbalanced.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    // Whether a word has started (so `""` yields an empty word).
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\\' => {
                let next = chars
                    .next()
                    .ok_or("a backslash at the end of the line escapes nothing")?;
                cur.push(next);
                in_word = true;
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated 'single quote'".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => cur.push('\n'),
                            Some('t') => cur.push('\t'),
                            Some('r') => cur.push('\r'),
                            Some('0') => cur.push('\0'),
                            Some(c) => cur.push(c),
                            None => return Err("unterminated \"double quote\"".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated \"double quote\"".into()),
                    }
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Parses one line of the shell or a script.
pub fn parse(line: &str) -> Result<Parsed, Failure> {
    let words = tokenize(line).map_err(Failure::usage)?;
    if words.is_empty() {
        return Ok(Parsed::Empty);
    }
    let parsed = match Line::try_parse_from(&words) {
        Ok(l) => l,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    Ok(Parsed::Help(e.to_string()))
                }
                _ => Err(Failure::usage(clap_message(&e))),
            };
        }
    };
    Ok(match parsed.command {
        LineCommand::Get(a) => Parsed::Get(a),
        LineCommand::Put(PutArgs { key, value, at }) => match value {
            Some(value) => Parsed::Put { key, value, at },
            None => {
                return Err(Failure::usage(
                    "put needs a VALUE here (stdin is the script): put KEY VALUE",
                ));
            }
        },
        LineCommand::Delete(a) => Parsed::Delete(a),
        LineCommand::Status(a) => Parsed::Status(a),
        LineCommand::Help => Parsed::Help(HELP.to_string()),
        LineCommand::Exit => Parsed::Exit,
    })
}

/// Clap's error as one line, without its `error: ` prefix and usage block.
fn clap_message(e: &clap::Error) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or("invalid command").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (type `help` for the commands)")
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

    fn words(s: &str) -> Vec<String> {
        tokenize(s).expect("tokenizes")
    }

    #[test]
    fn tokenizer_splits_on_whitespace_and_keeps_quoted_spaces() {
        assert_eq!(words("  put  k   v "), ["put", "k", "v"]);
        assert_eq!(words(r#"put k "hello world""#), ["put", "k", "hello world"]);
        assert_eq!(words("put k 'a b  c'"), ["put", "k", "a b  c"]);
        assert_eq!(words(r#"put k a"b c"d"#), ["put", "k", "ab cd"]);
    }

    #[test]
    fn tokenizer_handles_escapes_and_literal_single_quotes() {
        assert_eq!(
            words(r#"put k "say \"hi\"\n""#),
            ["put", "k", "say \"hi\"\n"]
        );
        assert_eq!(
            words(r"put k 'no \n escape'"),
            ["put", "k", r"no \n escape"]
        );
        assert_eq!(words(r"put k a\ b"), ["put", "k", "a b"]);
        assert_eq!(words(r#"put k "it's""#), ["put", "k", "it's"]);
    }

    #[test]
    fn tokenizer_keeps_empty_quoted_words_and_strips_comments() {
        assert_eq!(words(r#"put k """#), ["put", "k", ""]);
        assert_eq!(words("put k ''"), ["put", "k", ""]);
        assert_eq!(words("get k # a comment"), ["get", "k"]);
        assert_eq!(words("put k a#b"), ["put", "k", "a#b"]);
        assert_eq!(words(r##"put k "#x""##), ["put", "k", "#x"]);
        assert!(words("# only a comment").is_empty());
        assert!(words("   ").is_empty());
    }

    #[test]
    fn tokenizer_rejects_unbalanced_quotes() {
        assert!(tokenize(r#"put k "open"#).is_err());
        assert!(tokenize("put k 'open").is_err());
        assert!(tokenize("put k trailing\\").is_err());
    }

    #[test]
    fn parser_accepts_the_one_shot_syntax() {
        match parse("get k --serializable --at 2") {
            Ok(Parsed::Get(a)) => {
                assert_eq!(a.key, "k");
                assert!(a.serializable);
                assert_eq!(a.at, Some(2));
            }
            other => panic!("{other:?}"),
        }
        match parse("put 'my key' \"v 1\" --at 3") {
            Ok(Parsed::Put { key, value, at }) => {
                assert_eq!(
                    (key.as_str(), value.as_str(), at),
                    ("my key", "v 1", Some(3))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("delete k"), Ok(Parsed::Delete(_))));
        assert!(matches!(parse("status"), Ok(Parsed::Status(_))));
        assert!(matches!(parse("help"), Ok(Parsed::Help(_))));
        assert!(matches!(parse("get --help"), Ok(Parsed::Help(_))));
        assert!(matches!(parse("exit"), Ok(Parsed::Exit)));
        assert!(matches!(parse("quit"), Ok(Parsed::Exit)));
        assert!(matches!(parse("  # comment"), Ok(Parsed::Empty)));
    }

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
