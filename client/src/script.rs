//! The syntax of a `quintet shell` or `quintet run` line, and the `Args` of
//! the per-key commands, which the one-shot subcommands use too.
//!
//! A line is split into words by a small shell-like tokenizer ("double" quotes
//! with backslash escapes, 'single' quotes taken literally, backslash outside
//! quotes, `#` starting a comment at a word boundary), then the words are
//! parsed by clap with the very `Args` structs the one-shot subcommands use.
//! So `put k "hello world" --at 2` means the same in a script, in the shell
//! and on the command line, and a flag added to `get` appears in all three.
//!
//! It is in the library rather than the `quintet` binary so that it can be
//! tested and fuzzed (the `script` target in `fuzz/`) on its own; running a
//! parsed line is the binary's business (`cli/script.rs`).

use clap::{Args, Parser, Subcommand};

/// Arguments of `get`.
#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Answer from the replica's committed state at once (never blocks, may be stale).
    #[arg(long)]
    pub serializable: bool,
    /// Read at replica N (1-based position in --endpoints) only, no failover.
    #[arg(long, value_name = "N")]
    pub at: Option<usize>,
}

/// Arguments of `put`.
#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value; when omitted it is read from stdin, byte for byte (a
    /// trailing newline is kept: use `printf` or `echo -n`).
    pub value: Option<String>,
    /// Send the write through replica N (1-based position in --endpoints), no failover.
    #[arg(long, value_name = "N")]
    pub at: Option<usize>,
}

/// Arguments of `delete`.
#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Send the delete through replica N (1-based position in --endpoints), no failover.
    #[arg(long, value_name = "N")]
    pub at: Option<usize>,
}

/// Arguments of `status`.
#[derive(Args, Debug, Clone, Default)]
pub struct StatusArgs {}

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

/// Parses one line of the shell or a script. A bad line's error is one
/// line of text saying what is wrong (the caller makes it a usage error).
pub fn parse(line: &str) -> Result<Parsed, String> {
    let words = tokenize(line)?;
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
                _ => Err(clap_message(&e)),
            };
        }
    };
    Ok(match parsed.command {
        LineCommand::Get(a) => Parsed::Get(a),
        LineCommand::Put(PutArgs { key, value, at }) => match value {
            Some(value) => Parsed::Put { key, value, at },
            None => {
                return Err("put needs a VALUE here (stdin is the script): put KEY VALUE".into());
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

#[cfg(test)]
mod tests {
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
}
